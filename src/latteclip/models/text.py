"""Text-tower helpers: tokenise once, encode each distinct text once, cut tokens to the longest text.

CLIP's text transformer is causal and pools at the end-of-text token (the highest id in the
sequence), so the tokens after the longest text's end never influence any pooled feature:
cutting every sequence to that length gives the same features at a fraction of the cost. Other
towers (Hugging Face, SigLIP: no causal mask, an end token that is not the highest id, a pad id
that is not 0) see every token, so they get the tokenizer's full sequences.
`encode_tokens` / `encode_embedded` are OpenCLIP's text-tower forward on the cut sequences, kept because
that cut is most of the fast LatteCLIP step's speed-up (`benchmarks/train_step.py`: fast_text against the
77-token reference, in docs/results.md) and pinned to OpenCLIP's `encode_text` by tests/test_models.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import open_clip
import torch
import torch.nn.functional as F


class TokenCache:
    """Tokenises each distinct string once for the life of a run (texts repeat every epoch)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            for text, tokens in zip(todo, self.tokenizer(todo)):
                self._cache[text] = tokens
        return torch.stack([self._cache[t] for t in texts])


def unique_with_inverse(texts: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """Distinct texts in first-seen order, and for each input the row of its distinct text."""
    position: dict[str, int] = {}
    inverse = [position.setdefault(t, len(position)) for t in texts]
    return list(position), torch.tensor(inverse, dtype=torch.long)


def trim_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Cut [N, 77] tokens to the longest sequence (end-of-text included)."""
    length = int(tokens.argmax(dim=-1).max().item()) + 1
    return tokens[:, :length]


def causal_text_tower(model: torch.nn.Module) -> bool:
    """Whether `model` is an OpenCLIP CLIP whose text tower is token embedding, causal transformer, argmax-id pooling.

    Only then do the tokens after the pooled one change nothing, so only then may sequences be cut.
    """
    return isinstance(model, open_clip.CLIP) and model.text_pool_type == "argmax" and model.attn_mask is not None


def encode_embedded(model: torch.nn.Module, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The text tower of a `causal_text_tower` model after its token embedding (unnormalised).

    `x` [N, L, width] are the embedded tokens (or learned vectors in their place), `tokens` [N, L]
    the ids that say where each sequence's end-of-text token, the pooled one, sits.
    """
    length = x.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = x.to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    x = model.transformer(x, attn_mask=mask)
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    if model.text_projection is not None:
        x = (
            model.text_projection(x)
            if isinstance(model.text_projection, torch.nn.Linear)
            else x @ model.text_projection
        )
    return x


def encode_tokens(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text` (unnormalised) for full sequences, or for sequences cut by `trim_tokens` on a causal tower.

    OpenCLIP's `CLIP.encode_text` adds the full 77-row positional table, so for a `causal_text_tower`
    shorter sequences go through the same layers here with the table and causal mask cut to their
    length. Other text towers (Hugging Face, SigLIP, custom) need the sequences as tokenised.
    """
    if not causal_text_tower(model):
        return model.encode_text(tokens)
    return encode_embedded(model, model.token_embedding(tokens), tokens)


def encode_texts(
    model: torch.nn.Module,
    tokens: TokenCache,
    texts: Sequence[str],
    device: torch.device | str = "cpu",
    normalize: bool = True,
) -> torch.Tensor:
    """Features of `texts` [N, d]: each distinct text encoded once, tokens cut where exact (gradients flow)."""
    distinct, inverse = unique_with_inverse(texts)
    ids = tokens(distinct)
    if causal_text_tower(model):
        ids = trim_tokens(ids)  # on the host, before the copy: no device sync
    feats = encode_tokens(model, ids.to(device))
    if normalize:
        feats = F.normalize(feats, dim=-1)
    return feats[inverse.to(feats.device)]


@torch.no_grad()
def class_text_features(
    model: torch.nn.Module,
    tokens: TokenCache,
    classnames: Sequence[str],
    templates: Sequence[str],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Zero-shot classifier [C, d]: the mean of the normalised template features, renormalised."""
    texts = [t.format(c) for c in classnames for t in templates]
    feats = encode_texts(model, tokens, texts, device).view(len(classnames), len(templates), -1)
    return F.normalize(feats.mean(dim=1), dim=-1)
