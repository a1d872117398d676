"""The dataset object every stage shares: a list of (path, label) samples over an image source."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from latteclip.data.sources import ImageSource


@dataclass
class DatasetOptions:
    """Everything besides name/root/split that decides which samples and names a dataset has."""

    limit: int | None = None
    train_fraction: float = 1.0  # the seeded share of the training images kept (subsets.training_share)
    seed: int = 0
    classnames_file: str | None = None
    templates_file: str | None = None
    domain: str | None = None
    split_file: str | None = None  # a path, "none" for the seeded split, None to look for the CoOp file
    prompt_set: str = "latteclip"  # paper datasets: latteclip (the authors' names and template) or clip

    @classmethod
    def from_run(cls, config: Mapping[str, Any]) -> DatasetOptions:
        """The options a run's (resolved or saved) config names; a run saved before prompt sets existed used CLIP's."""
        return cls(
            limit=config.get("limit"),
            train_fraction=config.get("train_fraction", 1.0),
            seed=config.get("seed", 0),
            classnames_file=config.get("classnames"),
            templates_file=config.get("templates"),
            domain=config.get("domain"),
            split_file=config.get("split_file"),
            prompt_set=config.get("prompt_set", "clip"),
        )


@dataclass(frozen=True)
class Sample:
    path: str  # relative to the dataset's image folder (or archive prefix)
    label: int


@dataclass
class DatasetInfo:
    """What a method may know about a dataset besides its images: names, prompts, domain word."""

    name: str
    classnames: list[str]  # prompt names in label order
    class_keys: list[str]  # folder (or split-file) names in label order
    templates: list[str]
    domain: str
    split_source: str = ""  # the split file used, or "seeded 50/20/30 (fixed seed 0)"
    prompts: dict[str, str] = field(default_factory=dict)  # the dataset's own LMM prompts (describe/prompts.py)
    labelled: bool = True  # False for `--dataset images`: every label is -1 and nothing may read one
    # world knowledge the project writes about each class (class name -> vocabulary slot -> phrases), for pre-training
    # captions
    class_attributes: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def class_texts(self, template_index: int = 0) -> list[str]:
        template = self.templates[template_index]
        return [template.format(name) for name in self.classnames]


class CorruptImage(Exception):
    """An image file that cannot be decoded: reported and skipped by the loaders, never hidden."""


def decode_image(data: bytes, where: str | Callable[[], str]) -> Image.Image:
    """The RGB image of a file's bytes; CorruptImage naming it by `where` (or by what `where()` returns: most images
    decode, so a caller on a hot path need not build the name) when they cannot be decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            image.load()
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise CorruptImage(f"{where() if callable(where) else where}: {err}") from err


@dataclass
class ImageDataset(Dataset):
    """Samples of one split; `transform` maps a PIL image to a tensor.

    `item_seed` makes random train-time augmentation a function of (seed, epoch, index), so a
    resumed run sees exactly the augmented images an uninterrupted one would have seen.
    """

    info: DatasetInfo
    samples: list[Sample]
    source: ImageSource
    split: str
    transform: Callable | None = None
    item_seed: int | None = None
    epoch: int = 0
    image_transform: Callable[[Image.Image, int], Image.Image] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([s.label for s in self.samples], dtype=torch.long)

    def read_bytes(self, index: int) -> bytes:
        return self.source.read(self.samples[index].path)

    def where(self, index: int) -> str:
        """How an image is named in messages (a CSV's absolute paths stay as they are)."""
        return str(Path(self.source.location) / self.samples[index].path)

    def read_image(self, index: int) -> tuple[Image.Image, bytes]:
        """The decoded RGB image as stored (no domain transform) and the file bytes it came from."""
        try:
            data = self.read_bytes(index)
        except (OSError, KeyError) as err:
            raise CorruptImage(f"{self.where(index)}: {err}") from err
        return decode_image(data, lambda: self.where(index)), data

    def load_image(self, index: int) -> Image.Image:
        """The decoded RGB image (after the dataset's own deterministic domain transform, if any)."""
        image, _ = self.read_image(index)
        if self.image_transform is not None:
            image = self.image_transform(image, index)
        return image

    def __getitem__(self, index: int) -> dict | None:
        try:
            image = self.load_image(index)
        except CorruptImage as err:
            warnings.warn(f"skipping unreadable image {err}", stacklevel=2)
            return {"index": index, "corrupt": True}
        if self.transform is not None:
            if self.item_seed is None:
                image = self.transform(image)
            else:
                with torch.random.fork_rng(devices=[]):
                    # the CPU generator only: the transforms run on CPU, and the GPUs' generators are the model's
                    torch.default_generator.manual_seed(hash((self.item_seed, self.epoch, index)) & 0x7FFFFFFF)
                    image = self.transform(image)
        return {"image": image, "label": self.samples[index].label, "index": index}

    def with_transform(self, transform: Callable | None, item_seed: int | None = None) -> ImageDataset:
        return ImageDataset(
            self.info, self.samples, self.source, self.split, transform, item_seed, 0, self.image_transform
        )


def collate(items: list[dict]) -> dict:
    """Stack the readable items; the indices of unreadable ones travel in `skipped` to be counted."""
    good = [it for it in items if not it.get("corrupt")]
    skipped = [it["index"] for it in items if it.get("corrupt")]
    if not good:
        return {"image": None, "label": None, "index": None, "skipped": skipped}
    return {
        "image": torch.stack([it["image"] for it in good]),
        "label": torch.tensor([it["label"] for it in good], dtype=torch.long),
        "index": torch.tensor([it["index"] for it in good], dtype=torch.long),
        "skipped": skipped,
    }
