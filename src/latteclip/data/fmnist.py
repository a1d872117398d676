"""Fashion-MNIST as a source domain (`fmnist`) and shifted target domains (`fmnist-<shift>`).

The demo's stand-in for the paper's set-up: a tiny CLIP is pre-trained with labels on the
source domain, then adapted without labels to a target domain. The two use different images:
- source (`fmnist`): training images with index < 50,000 in the original file; test: the test set.
- target (`fmnist-<shift>`): training images with index >= 50,000, corrupted by the shift; every
  fifth of them (index % 5 == 4) is the `val` part, held out for choosing hyper-parameters
  without test labels; test: the test set, corrupted the same way.
`fmnist-clean` is the target domain without corruption, for reference. `fmnist-heldout-<shift>`
is the view used to choose hyper-parameters without test labels: its train split is the target's
train part and its test split the held-out `val` part.

`--root bundled` reads the subset shipped in the package (`data/fmnist/`, MIT licence); a folder
with the four original IDX files (e.g. /usr/share/datasets/fashion-mnist from the Debian package
`dataset-fashion-mnist`) gives the full set. Paths are `<split>/<original index>`, so an image
and its corruption are the same in both.
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from latteclip.data.datasets import DatasetInfo, DatasetOptions, Sample
from latteclip.data.registry import register_builder
from latteclip.data.shifts import SHIFTS, apply_shift
from latteclip.data.sources import ImageSource
from latteclip.errors import LatteclipError

BUNDLED = "bundled"
BUNDLED_FILE = "fashion_mnist_subset.npz"
SOURCE_END = 50_000  # training images before this index are the source domain, the rest the target
VAL_EVERY = 5  # target images with index % 5 == 4 are the held-out `val` part
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DEBIAN_FOLDER = "/usr/share/datasets/fashion-mnist"


@dataclass(frozen=True)
class ImageArrays:
    """One split of Fashion-MNIST in memory: grey images, labels and their original file indices."""

    images: np.ndarray  # [N, 28, 28] uint8
    labels: np.ndarray  # [N] int
    indices: np.ndarray  # [N] index in the original file

    def row_of(self) -> dict[int, int]:
        return {int(index): row for row, index in enumerate(self.indices)}


@dataclass(frozen=True)
class FashionMnist:
    origin: str  # "bundled" or the folder of IDX files
    splits: dict[str, ImageArrays]


def spec() -> dict:
    return json.loads(resources.files("latteclip.data").joinpath("fmnist", "fmnist.json").read_text())


def class_attributes() -> dict[str, dict[str, list[str]]]:
    """Object nouns and attribute phrases of each class, written by the project (`fmnist/class_attributes.json`)."""
    return json.loads(resources.files("latteclip.data").joinpath("fmnist", "class_attributes.json").read_text())[
        "classes"
    ]


def bundled_path() -> Path:
    return Path(str(resources.files("latteclip.data").joinpath("fmnist", BUNDLED_FILE)))


def _read_idx(folder: Path, stem: str, what: str) -> np.ndarray:
    """An IDX file (gzip or not): magic 0x0000 08 <ndim>, big-endian dims, then uint8 data."""
    for path in (folder / f"{stem}.gz", folder / stem):
        if path.is_file():
            break
    else:
        raise LatteclipError(
            f"no {what} file {stem}(.gz) in {folder}: pass --root {BUNDLED} for the bundled subset, or a folder with "
            f"the Fashion-MNIST IDX files (e.g. {DEBIAN_FOLDER} from the Debian package dataset-fashion-mnist)"
        )
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as err:
        raise LatteclipError(f"{path} cannot be read: {err}") from err
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise LatteclipError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise LatteclipError(f"{path} is truncated: expected {int(np.prod(dims))} values after its header")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


def _load_idx_folder(folder: Path) -> FashionMnist:
    splits = {}
    for split, (image_stem, label_stem) in IDX_FILES.items():
        images = _read_idx(folder, image_stem, f"{split} images")
        labels = _read_idx(folder, label_stem, f"{split} labels").astype(np.int64)
        if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise LatteclipError(
                f"{folder}: {split} images {images.shape} do not match {len(labels)} labels of 28x28 images"
            )
        splits[split] = ImageArrays(images, labels, np.arange(len(labels)))
    return FashionMnist(str(folder), splits)


def _load_bundled() -> FashionMnist:
    path = bundled_path()
    if not path.is_file():
        raise LatteclipError(
            f"the bundled Fashion-MNIST subset {path} is missing: reinstall latteclip or pass --root FOLDER"
        )
    with np.load(path) as data:
        splits = {
            split: ImageArrays(
                data[f"{split}_images"],
                data[f"{split}_labels"].astype(np.int64),
                data[f"{split}_indices"].astype(np.int64),
            )
            for split in IDX_FILES
        }
    return FashionMnist(BUNDLED, splits)


@lru_cache(maxsize=2)
def load_fashion_mnist(root: str) -> FashionMnist:
    """The bundled subset (`bundled` or empty root) or the full set from a folder of IDX files."""
    if root in ("", BUNDLED):
        return _load_bundled()
    folder = Path(root)
    if not folder.is_dir():
        raise LatteclipError(
            f"Fashion-MNIST root {root} is not a folder: pass --root {BUNDLED} for the bundled subset or a folder with "
            f"the IDX files (e.g. {DEBIAN_FOLDER})"
        )
    return _load_idx_folder(folder)


def subset_per_class(arrays: ImageArrays, keep: np.ndarray, per_class: int | None) -> np.ndarray:
    """Rows of `arrays` where `keep` holds, the first `per_class` of each class in file order."""
    rows = np.flatnonzero(keep)
    if per_class is None:
        return rows
    chosen = [rows[arrays.labels[rows] == label][:per_class] for label in np.unique(arrays.labels)]
    return np.sort(np.concatenate(chosen))


def write_bundled_subset(
    folder: Path, out: Path, source_per_class: int, target_per_class: int, test_per_class: int | None
) -> dict[str, int]:
    """Write the package's subset from the full IDX files: the first N per class of each pool."""
    full = _load_idx_folder(folder)
    train, test = full.splits["train"], full.splits["test"]
    train_rows = np.sort(
        np.concatenate(
            [
                subset_per_class(train, train.indices < SOURCE_END, source_per_class),
                subset_per_class(train, train.indices >= SOURCE_END, target_per_class),
            ]
        )
    )
    test_rows = subset_per_class(test, np.ones(len(test.labels), dtype=bool), test_per_class)
    arrays = {}
    for split, arr, rows in (("train", train, train_rows), ("test", test, test_rows)):
        arrays[f"{split}_images"] = arr.images[rows]
        arrays[f"{split}_labels"] = arr.labels[rows].astype(np.uint8)
        arrays[f"{split}_indices"] = arr.indices[rows].astype(np.int32)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    out.write_bytes(buffer.getvalue())
    return {"train": len(train_rows), "test": len(test_rows), "bytes": out.stat().st_size}


class ShiftedArraySource(ImageSource):
    """Fashion-MNIST images in memory; `read` returns PNG bytes of the image after the shift.

    The bytes are a pure function of (shift, split, index), which is what lets the description
    store key texts by image content. They are kept once made (about 2 KB an image), because
    every epoch and every method's evaluation reads the same images again.
    """

    def __init__(self, data: FashionMnist, shift: str):
        self.data = data
        self.shift = shift
        self.location = f"fashion-mnist:{data.origin}#{shift}"
        self._rows = {split: arrays.row_of() for split, arrays in data.splits.items()}
        self._encoded: dict[str, bytes] = {}

    def _locate(self, relpath: str) -> tuple[str, int]:
        split, _, index = relpath.partition("/")
        if split not in self._rows or not index.isdigit() or int(index) not in self._rows[split]:
            raise KeyError(f"no image {relpath} in {self.location}")
        return split, int(index)

    def read(self, relpath: str) -> bytes:
        if relpath not in self._encoded:
            split, index = self._locate(relpath)
            grey = self.data.splits[split].images[self._rows[split][index]]
            buffer = io.BytesIO()
            Image.fromarray(apply_shift(self.shift, grey, split, index)).save(buffer, format="PNG", compress_level=1)
            self._encoded[relpath] = buffer.getvalue()
        return self._encoded[relpath]

    def exists(self, relpath: str) -> bool:
        try:
            self._locate(relpath)
        except KeyError:
            return False
        return True

    def list_files(self) -> list[str]:
        return [sample_path(split, int(i)) for split, arrays in self.data.splits.items() for i in arrays.indices]


@lru_cache(maxsize=8)
def shifted_source(root: str, shift: str) -> ShiftedArraySource:
    """One source per (data, shift) in a process, so that its encoded images serve every split and run."""
    return ShiftedArraySource(load_fashion_mnist(root), shift)


def sample_path(split: str, index: int) -> str:
    return f"{split}/{index:05d}"


def _samples(arrays: ImageArrays, split: str, keep: np.ndarray) -> list[Sample]:
    return [Sample(sample_path(split, int(arrays.indices[r])), int(arrays.labels[r])) for r in np.flatnonzero(keep)]


def build_fmnist(name: str, root: str, split: str, options: DatasetOptions):
    """`fmnist` (source domain, clean) or `fmnist-<shift>` (target domain); see the module docstring."""
    heldout = name.startswith("fmnist-heldout-")
    if name == "fmnist":
        shift = "clean"
    else:
        shift = name[len("fmnist-heldout-" if heldout else "fmnist-") :]
        if shift not in SHIFTS:
            raise LatteclipError(
                f"unknown Fashion-MNIST shift '{shift}': use fmnist or fmnist-<shift> with shift one of "
                f"{', '.join(SHIFTS)}"
            )
    source = shifted_source(root, shift)
    data = source.data
    train, test = data.splits["train"], data.splits["test"]
    if name == "fmnist":
        parts = {
            "train": _samples(train, "train", train.indices < SOURCE_END),
            "val": [],
            "test": _samples(test, "test", np.ones(len(test.indices), dtype=bool)),
        }
        pools = f"source domain: training images with index < {SOURCE_END}"
    else:
        target = train.indices >= SOURCE_END
        held_out = train.indices % VAL_EVERY == VAL_EVERY - 1
        train_part = _samples(train, "train", target & ~held_out)
        val_part = _samples(train, "train", target & held_out)
        pools = (
            f"target domain '{shift}': training images with index >= {SOURCE_END}, val = index % {VAL_EVERY} == "
            f"{VAL_EVERY - 1}"
        )
        if heldout:
            parts = {"train": train_part, "val": [], "test": val_part}
            pools += "; held-out view: train = train part, test = val part"
        else:
            parts = {
                "train": train_part,
                "val": val_part,
                "test": _samples(test, "test", np.ones(len(test.indices), dtype=bool)),
            }
    names = spec()
    info = DatasetInfo(
        name,
        list(names["classnames"]),
        list(names["class_keys"]),
        list(names["templates"]),
        names["domain"],
        f"Fashion-MNIST {data.origin}; {pools}",
        class_attributes=class_attributes(),
    )
    return info, parts, source


register_builder("fmnist", build_fmnist)
register_builder("fmnist-", build_fmnist)
