"""The `offline` describer: a SUBSTITUTE for an LMM that ranks a vocabulary's phrases with a CLIP model.

Like CLIP-interrogator, it scores every phrase of a vocabulary (object nouns, as an LMM names what
it sees, and attribute phrases) against the image and writes the best ones of each slot into a
short sentence. It needs no server, so the whole pipeline runs offline; it ignores the prompt.
The CLIP model is the adapted one by default, or any OpenCLIP model (`--describer-model`), e.g.
a ViT-L-14 describing for a ViT-B-32: like an LMM, a describer that knows more than the model it
teaches. A group is described from its collage: the mean feature of the collage's cells, i.e.
the attributes its images share.

Vocabularies are data: `describe/vocabularies/<name>.json` names the datasets it is the default
for; any other dataset reads the generic `describe/attribute_vocab.json`, and `--vocabulary FILE`
replaces both.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from latteclip.data.collage import CANVAS_SIZE, GAP, cell_boxes, fit_box
from latteclip.describe.backend import Describer, ItemFailed, Request
from latteclip.errors import LatteclipError
from latteclip.models import LoadedModel, TokenCache, encode_texts

GENERIC_VOCABULARY = "attribute_vocab.json"


def bundled_vocabulary(dataset: str) -> str:
    """The bundled vocabulary file (relative to the describe package) that is the default for `dataset`.

    A name in a vocabulary's `datasets` matches that dataset and its variants: fmnist matches fmnist-blur-noise.
    """
    folder = resources.files("latteclip.describe").joinpath("vocabularies")
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            names = json.loads(entry.read_text()).get("datasets") or []
            if any(dataset == name or dataset.startswith(f"{name}-") for name in names):
                return f"vocabularies/{entry.name}"
    return GENERIC_VOCABULARY


def read_vocabulary(path: str | Path | None = None, dataset: str = "") -> tuple[dict, str]:
    """The vocabulary (checked) and a short digest of its content, which goes into the model id."""
    if path is None:
        origin = f"describe/{bundled_vocabulary(dataset)}"
        text = resources.files("latteclip.describe").joinpath(*origin.split("/")[1:]).read_text()
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
            raise LatteclipError(
                f"vocabulary file {origin}: slot '{name}' picks {slot.get('pick')} of {len(phrases)} phrases"
            )
        if "template" in slot and (not isinstance(slot["template"], str) or "{phrase}" not in slot["template"]):
            raise LatteclipError(f"vocabulary file {origin}: slot '{name}' has a 'template' without {{phrase}}")
    for key, needed in (("template", "{phrase}"), ("sentence", "")):
        if not isinstance(vocab.get(key), str) or needed not in vocab[key]:
            raise LatteclipError(
                f"vocabulary file {origin} needs a '{key}' string" + (f" containing {needed}" if needed else "")
            )
    try:
        vocab["sentence"].format(domain="", **{name: "" for name in slots})
    except (KeyError, IndexError, ValueError) as err:
        raise LatteclipError(
            f"vocabulary file {origin}: sentence uses a placeholder that is not a slot or {{domain}} ({err})"
        ) from err
    return vocab, hashlib.sha1(text.encode()).hexdigest()[:8]


def compose(vocab: dict, picks: Mapping[str, Sequence[str]], domain: str) -> str:
    """The vocabulary's sentence with each slot's chosen phrases ("a and b" when a slot picks two)."""
    return vocab["sentence"].format(domain=domain, **{name: " and ".join(picks[name]) for name in vocab["slots"]})


def compose_at_random(vocab: dict, phrases: Mapping[str, Sequence[str]], domain: str, rng: random.Random) -> str:
    """A sentence of the vocabulary's form whose phrases are drawn from `phrases` (slot -> allowed phrases)."""
    picks = {}
    for name, slot in vocab["slots"].items():
        allowed = list(phrases[name])
        picks[name] = rng.sample(allowed, min(int(slot.get("pick", 1)), len(allowed)))
    return compose(vocab, picks, domain)


def describer_model_id(model_name: str, pretrained: str | None, digest: str) -> str:
    """The model name the descriptions are stored under (what LatteCLIP's described_by option names)."""
    weights = Path(pretrained).name if pretrained else "random"
    return f"clip-vocab:{model_name}:{weights}:{digest}"


def collage_cells(collage: Image.Image, sizes: Sequence[tuple[int, int]]) -> list[Image.Image]:
    """The pictures of a group as its collage shows them (data/collage.py's layout for images of these sizes).

    What an LMM sees: each image resized into its cell of the grid, without the black around it.
    """
    gap = round(GAP * collage.width / CANVAS_SIZE)
    cells = cell_boxes(len(sizes), collage.width, gap)
    return [collage.crop(fit_box(size, cell)) for size, cell in zip(sizes, cells)]


class ClipVocabularyDescriber(Describer):
    backend = "offline-clip"

    def __init__(
        self,
        loaded: LoadedModel,
        domain: str,
        device: torch.device | str = "cpu",
        vocabulary: str | Path | None = None,
        batch_size: int = 64,
        dataset: str = "",
    ):
        self.loaded = loaded
        loaded.model.eval()
        self.domain = domain
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.vocab, digest = read_vocabulary(vocabulary, dataset)
        self.model = describer_model_id(loaded.model_name, loaded.pretrained, digest)
        self.transform = loaded.eval_transform()
        self._lock = threading.Lock()  # one forward pass at a time: the model is shared
        tokens = TokenCache(loaded.tokenizer)
        self.slots = {}
        with torch.no_grad():
            for name, slot in self.vocab["slots"].items():
                template = slot.get("template", self.vocab["template"])
                texts = [template.format(domain=domain, phrase=p) for p in slot["phrases"]]
                features = encode_texts(loaded.model, tokens, texts, self.device).float()
                self.slots[name] = (slot["phrases"], features, int(slot.get("pick", 1)))

    def sentence(self, feature: torch.Tensor) -> str:
        """The description of one normalised image feature: the best phrases of each slot, in the sentence."""
        picks = {}
        for name, (phrases, features, pick) in self.slots.items():
            order = (features @ feature).argsort(descending=True)[:pick].tolist()
            picks[name] = [phrases[i] for i in order]
        return compose(self.vocab, picks, self.domain)

    @torch.no_grad()
    def image_features(self, images: Sequence) -> torch.Tensor:
        model = self.loaded.model
        features = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack(
                [self.transform(image.convert("RGB")) for image in images[start : start + self.batch_size]]
            )
            features.append(F.normalize(model.encode_image(pixels.to(self.device)).float(), dim=-1))
        return torch.cat(features)

    def describe(self, requests: Sequence[Request], stop: threading.Event) -> list[str | ItemFailed]:
        """A picture's sentence from its image feature; a text-only question's (a class's description) from the text
        feature of the prompt itself, which names the class: the phrases CLIP puts nearest to that question."""
        questions = [r.prompt for r in requests if r.image is None]
        pictures = [
            collage_cells(r.image, [p.size for p in r.parts]) if r.parts else [r.image]
            for r in requests
            if r.image is not None
        ]
        flat = [image for group in pictures for image in group]
        with self._lock, torch.no_grad():
            features = self.image_features(flat) if flat else None
            tokens = TokenCache(self.loaded.tokenizer)
            asked = encode_texts(self.loaded.model, tokens, questions, self.device).float() if questions else []
        sentences = iter(self.sentence(F.normalize(feature, dim=-1)) for feature in asked)
        groups = iter(pictures)
        out: list[str | ItemFailed] = []
        start = 0
        for request in requests:
            if request.image is None:
                out.append(next(sentences))
                continue
            group = next(groups)
            feature = F.normalize(features[start : start + len(group)].mean(dim=0), dim=-1)
            start += len(group)
            out.append(self.sentence(feature))
        return out
