"""Learnable class prompts (CoOp-style context vectors) on OpenCLIP's text tower.

A prompt is "<context> <class name><suffix>", e.g. "a centered satellite photo of" + "forest" +
".": the context words' token embeddings are replaced by learnable vectors shared by every class,
initialised from the embeddings of the words themselves, so that before any training the prompt
features equal the text features of the hand-written template. The text tower stays frozen; only
the context vectors learn.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from latteclip.errors import LatteclipError
from latteclip.models.text import causal_text_tower, encode_embedded, trim_tokens


def split_template(template: str) -> tuple[str, str]:
    """A template's words before and after '{}': "a photo of a {}." -> ("a photo of a", ".")."""
    if template.count("{}") != 1:
        raise LatteclipError(f"template '{template}' must hold exactly one '{{}}' for the class name")
    prefix, suffix = template.split("{}")
    return prefix.strip(), suffix.rstrip()


class PromptLearner(nn.Module):
    """Text features [C, d] of "<learnable context> <class name><suffix>" for every class.

    `context_init` gives both the number of context vectors (its token count) and their start
    values. Only OpenCLIP CLIP models with a causal, end-of-text pooled text tower are supported,
    because the learnable vectors enter between the token embedding and the transformer.
    """

    def __init__(self, model: nn.Module, tokenizer, classnames: Sequence[str], context_init: str, suffix: str = "."):
        super().__init__()
        if not causal_text_tower(model):
            raise LatteclipError(
                "learnable prompts need an OpenCLIP CLIP text tower (token embedding, causal transformer, end-of-text "
                f"pooling); {type(model).__name__} has none: choose an OpenCLIP CLIP model such as ViT-B-32"
            )
        if not callable(getattr(tokenizer, "encode", None)):
            raise LatteclipError(f"learnable prompts need OpenCLIP's own tokenizer, not {type(tokenizer).__name__}")
        context_ids = tokenizer.encode(context_init) if context_init else []
        if not context_ids:
            raise LatteclipError("a learnable prompt needs at least one context word (set the prompt's init phrase)")
        tokens = tokenizer([f"{context_init} {name}{suffix}" for name in classnames])
        if not torch.equal(tokens[:, 1 : 1 + len(context_ids)], torch.tensor(context_ids).expand(len(classnames), -1)):
            raise LatteclipError(
                f"the context '{context_init}' does not tokenise apart from the class names; end it with a whole word"
            )
        self.n_context = len(context_ids)
        self.register_buffer(
            "tokens", trim_tokens(tokens).clone(), persistent=False
        )  # cut after the longest prompt's end-of-text token
        device = model.token_embedding.weight.device
        with torch.no_grad():
            embedded = model.token_embedding(self.tokens.to(device)).detach()
        self.register_buffer("prefix", embedded[:, :1].clone(), persistent=False)  # start-of-text
        self.register_buffer(
            "rest", embedded[:, 1 + self.n_context :].clone(), persistent=False
        )  # class name, suffix, end
        self.context = nn.Parameter(embedded[0, 1 : 1 + self.n_context].clone())
        self.tokens = self.tokens.to(device)

    def forward(self, model: nn.Module) -> torch.Tensor:
        """Unnormalised prompt features [C, d] through `model`'s (frozen) text tower; gradients reach the context."""
        context = self.context.unsqueeze(0).expand(self.tokens.shape[0], -1, -1)
        return encode_embedded(model, torch.cat([self.prefix, context, self.rest], dim=1), self.tokens)

    def features(self, model: nn.Module) -> torch.Tensor:
        return F.normalize(self.forward(model), dim=-1)
