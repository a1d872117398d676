"""The `offline` describer: a SUBSTITUTE for an LMM that ranks attribute phrases with CLIP itself.

Like CLIP-interrogator, it scores every phrase of a vocabulary (`attribute_vocab.json`, or the
user's file) against the image with the CLIP model and writes the best ones of each slot into
a fixed sentence. It needs no server and no weights beyond the CLIP model, so the whole pipeline
runs offline; its texts are poorer than an LMM's and it ignores the prompt. For a group it
scores the mean feature of the group's images: the attributes they share.
"""

from __future__ import annotations

import hashlib
import json
import threading
from importlib import resources
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from latteclip.data.transforms import eval_transform
from latteclip.describe.backend import Describer, ItemFailed, Request
from latteclip.errors import LatteclipError
from latteclip.models import LoadedModel, TokenCache, encode_texts


def read_vocabulary(path: str | Path | None = None) -> tuple[dict, str]:
    """The vocabulary (checked) and a short digest of its content, which goes into the model id."""
    if path is None:
        text = resources.files("latteclip.describe").joinpath("attribute_vocab.json").read_text()
        origin = "describe/attribute_vocab.json"
    else:
        if not Path(path).is_file():
            raise LatteclipError(f"vocabulary file {path} does not exist")
        text, origin = Path(path).read_text(encoding="utf-8"), str(path)
    try:
        vocab = json.loads(text)
    except json.JSONDecodeError as err:
        raise LatteclipError(f"vocabulary file {origin} is not valid JSON: {err}") from err
    slots = vocab.get("slots") if isinstance(vocab, dict) else None
    if not isinstance(slots, dict) or not slots:
        raise LatteclipError(f"vocabulary file {origin} needs 'slots': {{name: {{pick: N, phrases: [...]}}}}")
    for name, slot in slots.items():
        phrases = slot.get("phrases") if isinstance(slot, dict) else None
        if not isinstance(phrases, list) or not phrases or not all(isinstance(p, str) and p for p in phrases):
            raise LatteclipError(f"vocabulary file {origin}: slot '{name}' needs a non-empty list of phrases")
        if not 1 <= int(slot.get("pick", 1)) <= len(phrases):
            raise LatteclipError(f"vocabulary file {origin}: slot '{name}' picks {slot.get('pick')} of {len(phrases)} phrases")
    for key, needed in (("template", "{phrase}"), ("sentence", "")):
        if not isinstance(vocab.get(key), str) or needed not in vocab[key]:
            raise LatteclipError(f"vocabulary file {origin} needs a '{key}' string" + (f" containing {needed}" if needed else ""))
    try:
        vocab["sentence"].format(domain="", **{name: "" for name in slots})
    except (KeyError, IndexError, ValueError) as err:
        raise LatteclipError(f"vocabulary file {origin}: sentence uses a placeholder that is not a slot or {{domain}} ({err})") from err
    return vocab, hashlib.sha1(text.encode()).hexdigest()[:8]


class ClipVocabularyDescriber(Describer):
    backend = "offline-clip"

    def __init__(
        self,
        loaded: LoadedModel,
        domain: str,
        device: torch.device | str = "cpu",
        vocabulary: str | Path | None = None,
        batch_size: int = 64,
    ):
        self.loaded = loaded
        loaded.model.eval()
        self.domain = domain
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.vocab, digest = read_vocabulary(vocabulary)
        weights = Path(loaded.pretrained).name if loaded.pretrained else "random"
        self.model = f"clip-vocab:{loaded.model_name}:{weights}:{digest}"
        self.transform = eval_transform(loaded.image_size, loaded.mean, loaded.std)
        self._lock = threading.Lock()  # one forward pass at a time: the model is shared
        tokens = TokenCache(loaded.tokenizer)
        self.slots = {}
        with torch.no_grad():
            for name, slot in self.vocab["slots"].items():
                texts = [self.vocab["template"].format(domain=domain, phrase=p) for p in slot["phrases"]]
                features = encode_texts(loaded.model, tokens, texts, self.device).float()
                self.slots[name] = (slot["phrases"], features, int(slot.get("pick", 1)))

    def sentence(self, feature: torch.Tensor) -> str:
        """The description of one normalised image feature: the best phrases of each slot, in the sentence."""
        picks = {}
        for name, (phrases, features, pick) in self.slots.items():
            order = (features @ feature).argsort(descending=True)[:pick].tolist()
            picks[name] = " and ".join(phrases[i] for i in order)
        return self.vocab["sentence"].format(domain=self.domain, **picks)

    @torch.no_grad()
    def image_features(self, images: Sequence) -> torch.Tensor:
        model = self.loaded.model
        features = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack([self.transform(image.convert("RGB")) for image in images[start : start + self.batch_size]])
            features.append(F.normalize(model.encode_image(pixels.to(self.device)).float(), dim=-1))
        return torch.cat(features)

    def describe(self, requests: Sequence[Request], stop: threading.Event) -> list[str | ItemFailed]:
        pictures = [list(r.parts) or [r.image] for r in requests]
        flat = [image for group in pictures for image in group]
        with self._lock:
            features = self.image_features(flat)
        out: list[str | ItemFailed] = []
        start = 0
        for group in pictures:
            feature = F.normalize(features[start : start + len(group)].mean(dim=0), dim=-1)
            start += len(group)
            out.append(self.sentence(feature))
        return out
