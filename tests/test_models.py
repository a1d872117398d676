"""The OpenCLIP loader (random weights, local files, offline tags) and the trimmed text encoder."""

from __future__ import annotations

import socket
import time

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from latteclip.errors import LatteclipError
from latteclip.models import TokenCache, class_text_features, encode_texts, load_clip


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_clip("latte-tiny", "random")


def test_tiny_model_with_the_real_tokenizer(tiny):
    assert tiny.image_size == 32
    tokens = tiny.tokenizer(["a photo of a forest."])
    assert tokens.shape == (1, 77)
    assert tokens[0, 0].item() == 49406 and 49407 in tokens[0].tolist()  # OpenCLIP's start and end tokens
    with torch.no_grad():
        assert tiny.model.encode_image(torch.zeros(2, 3, 32, 32)).shape == (2, 64)
        assert tiny.model.encode_text(tokens).shape == (1, 64)


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".safetensors"])
def test_local_weights_file_round_trips(tiny, tmp_path, suffix):
    state = tiny.model.state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    torch.manual_seed(123)  # a different random start, which the file must overwrite
    loaded = load_clip("latte-tiny", str(path))
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens = tiny.tokenizer(["a river.", "a satellite photo of a highway or road."])
    with torch.no_grad():
        assert torch.equal(loaded.model.encode_image(images), tiny.model.encode_image(images))
        assert torch.equal(loaded.model.encode_text(tokens), tiny.model.encode_text(tokens))
    assert loaded.pretrained == str(path) and str(path.resolve()) in loaded.weights_id


def test_random_weights_of_two_seeds_have_different_cache_ids():
    torch.manual_seed(0)
    first = load_clip("latte-tiny", "random").weights_id
    torch.manual_seed(1)
    second = load_clip("latte-tiny", "random").weights_id
    torch.manual_seed(0)
    assert load_clip("latte-tiny", "random").weights_id == first != second


def test_unusable_weights_files(tiny, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(LatteclipError, match=f"weights file {garbage} cannot be loaded into latte-tiny"):
        load_clip("latte-tiny", str(garbage))
    other_model = tmp_path / "fmnist.safetensors"
    save_file(
        {k: v.contiguous() for k, v in load_clip("latte-fmnist", "random").model.state_dict().items()}, str(other_model)
    )
    with pytest.raises(LatteclipError, match=f"weights file {other_model} cannot be loaded into latte-tiny"):
        load_clip("latte-tiny", str(other_model))
    with pytest.raises(LatteclipError, match=r"weights file .*missing\.bin does not exist"):
        load_clip("latte-tiny", str(tmp_path / "missing.bin"))
    with pytest.raises(LatteclipError, match="unknown model 'ViT-Q-99'"):
        load_clip("ViT-Q-99", "random")
    with pytest.raises(
        LatteclipError, match=r"unknown pretrained tag 'laion9' for ViT-B-32; known: .*laion2b_s34b_b79k"
    ):
        load_clip("ViT-B-32", "laion9")


def test_offline_download_fails_fast_with_a_hint(monkeypatch, tmp_path):
    """No network (DNS fails): a tag or hub id must not retry for a minute, and must say what to do."""
    import huggingface_hub.constants

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty local cache
    for model, tag in (("ViT-B-32", "laion2b_s34b_b79k"), ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", None)):
        started = time.monotonic()
        with pytest.raises(LatteclipError) as caught:
            load_clip(model, tag)
        assert time.monotonic() - started < 10
        message = str(caught.value)
        assert (
            "no network was reached" in message and "--pretrained /path/to/weights" in message and "\n" not in message
        )
        assert model in message


# --- trimmed text encoding ---------------------------------------------------------------------------------------
TEXTS = [
    "a river.",
    "a centered satellite photo of residential buildings or homes or apartments.",
    "a river.",
    "lake or sea",
    "a centered satellite photo of residential buildings or homes or apartments.",
]


def test_trimmed_encoding_equals_full_length_encode_text(tiny):
    model = tiny.model
    cache = TokenCache(tiny.tokenizer)
    trimmed = encode_texts(model, cache, TEXTS, normalize=False)
    full = model.encode_text(tiny.tokenizer(TEXTS))
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-6)

    # gradients: the same loss through either path gives the same gradient on every text-tower parameter
    weights = torch.randn(full.shape, generator=torch.Generator().manual_seed(2))
    grads = []
    for features in (
        lambda: encode_texts(model, cache, TEXTS),
        lambda: torch.nn.functional.normalize(model.encode_text(tiny.tokenizer(TEXTS)), dim=-1),
    ):
        model.zero_grad(set_to_none=True)
        (features() * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad(set_to_none=True)
    assert grads[0].keys() == grads[1].keys() and "positional_embedding" in grads[0]
    for name in grads[0]:  # float32 sums in another order: differences scale with the gradient's size
        scale = grads[1][name].abs().max().item()
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5 * scale, msg=name)
    # rows past the longest text never reach a pooled feature
    assert grads[1]["positional_embedding"][30:].abs().max() == 0


def test_each_distinct_text_is_encoded_once_at_the_longest_length(tiny):
    seen: list[tuple[int, ...]] = []
    hook = tiny.model.token_embedding.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    try:
        features = encode_texts(tiny.model, TokenCache(tiny.tokenizer), TEXTS)
    finally:
        hook.remove()
    longest = int(tiny.tokenizer(TEXTS).argmax(dim=-1).max()) + 1  # position of the end-of-text token, plus one
    assert seen == [(3, longest)] and longest < 77
    assert torch.equal(features[0], features[2]) and torch.equal(features[1], features[4])
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(5))


def test_class_text_features_average_the_templates(tiny):
    cache = TokenCache(tiny.tokenizer)
    templates = ["a photo of {}.", "a satellite image showing {}."]
    classifier = class_text_features(tiny.model, cache, ["forest", "river"], templates)
    with torch.no_grad():
        for row, name in enumerate(["forest", "river"]):
            per_template = torch.nn.functional.normalize(
                tiny.model.encode_text(tiny.tokenizer([t.format(name) for t in templates])), dim=-1
            )
            expected = torch.nn.functional.normalize(per_template.mean(dim=0), dim=-1)
            torch.testing.assert_close(classifier[row], expected, rtol=1e-5, atol=1e-6)


class WordTokenizer:
    """A Hugging Face-style tokenizer: ids by word, end token 2, pad id 1: the end token is never the highest id."""

    def __init__(self, context_length: int):
        self.context_length = context_length
        self.vocab: dict[str, int] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        rows = torch.ones(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.vocab.setdefault(word, 60 - len(self.vocab)) for word in text.split()] + [2]
            rows[row, : len(ids)] = torch.tensor(ids)
        return rows


@pytest.mark.parametrize("tower", ["siglip_like", "clip_without_causal_mask"])
def test_towers_that_see_every_token_get_the_full_sequence(tower):
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=16)
    torch.manual_seed(0)
    if tower == "siglip_like":  # no causal mask, pooled at the last position, pad id 1
        text = CLIPTextCfg(
            context_length=16,
            vocab_size=64,
            width=32,
            heads=2,
            layers=1,
            no_causal_mask=True,
            pool_type="last",
            pad_id=1,
        )
        model = open_clip.CustomTextCLIP(16, vision, text)
    else:  # pooled at the argmax id, but every token sees every other
        text = CLIPTextCfg(context_length=16, vocab_size=64, width=32, heads=2, layers=1, no_causal_mask=True)
        model = open_clip.CLIP(16, vision, text)
    tokenizer = WordTokenizer(16)
    texts = ["a river near the forest", "lake", "a river near the forest", "houses and roads"]
    assert tokenizer(texts)[0].argmax() == 0  # the highest id is the first word, not the end token
    with torch.no_grad():
        fast = encode_texts(model, TokenCache(tokenizer), texts, normalize=False)
        reference = model.encode_text(tokenizer(texts))
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)
