"""Fashion-MNIST domains: the bundled subset, the source/target partition and the shifts."""

from __future__ import annotations

import io
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latteclip.data import build_dataset, fmnist
from latteclip.data.shifts import SHIFTS, apply_shift
from latteclip.errors import LatteclipError

DEBIAN = Path(fmnist.DEBIAN_FOLDER)
TARGET_SHIFTS = [s for s in SHIFTS if s != "clean"]


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def fresh_bytes(name: str, count: int) -> list[bytes]:
    """Bytes of the first test images from a source built from scratch (no in-process cache)."""
    fmnist.shifted_source.cache_clear()
    data = build_dataset(name, "bundled", "test")
    return [data.read_bytes(i) for i in range(count)]


def test_bundled_subset_sizes_and_known_labels():
    source_train = build_dataset("fmnist", "bundled", "train")
    test = build_dataset("fmnist", "bundled", "test")
    assert len(source_train) == 20_000 and len(test) == 10_000
    assert Counter(s.label for s in source_train.samples) == {c: 2000 for c in range(10)}
    # Fashion-MNIST's published first labels: test 9 2 1 1 6 1 4 6 5 7, train 9 0 0 3 0 2 7 2 5 5
    assert [s.label for s in test.samples[:10]] == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert [s.label for s in source_train.samples[:10]] == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert test.samples[3].path == "test/00003"
    assert test.info.classnames[0] == "t-shirt or top" and test.info.classnames[9] == "ankle boot"
    assert test.info.domain == "clothing" and len(test.info.templates) == 10
    assert test.info.class_texts()[1] == "a photo of a trouser."
    first = test.load_image(0)
    assert first.size == (28, 28) and first.mode == "RGB"
    bundle = fmnist.bundled_path()
    assert bundle.stat().st_size <= 20_000_000 and (bundle.parent / "LICENSE").is_file()
    assert "MIT" in (bundle.parent / "LICENSE").read_text()


def test_target_domain_is_disjoint_from_source_and_split_into_train_and_heldout():
    source = {s.path for s in build_dataset("fmnist", "bundled", "train").samples}
    train_part = build_dataset("fmnist-rotation", "bundled", "train_only").samples
    held_out = build_dataset("fmnist-rotation", "bundled", "val").samples
    everything = build_dataset("fmnist-rotation", "bundled", "train").samples
    assert len(everything) == 6000 and len(train_part) + len(held_out) == 6000
    assert not source & {s.path for s in everything}
    assert all(int(s.path.split("/")[1]) % 5 == 4 for s in held_out)
    assert all(int(s.path.split("/")[1]) % 5 != 4 for s in train_part)
    view_train = build_dataset("fmnist-heldout-rotation", "bundled", "train").samples
    view_test = build_dataset("fmnist-heldout-rotation", "bundled", "test").samples
    assert view_train == train_part and view_test == held_out


@pytest.mark.parametrize("shift", TARGET_SHIFTS)
def test_shifts_are_deterministic_and_differ_from_clean(shift):
    name = f"fmnist-{shift}"
    first = fresh_bytes(name, 5)
    again = fresh_bytes(name, 5)
    assert first == again
    clean = build_dataset("fmnist-clean", "bundled", "test")
    for i, data in enumerate(first):
        assert not np.array_equal(pixels(data), pixels(clean.read_bytes(i)))


def test_shift_details_by_hand():
    image = build_dataset("fmnist", "bundled", "test").source.data.splits["test"].images[0]
    grey = np.repeat(image[:, :, None], 3, axis=2).astype(int)
    assert np.array_equal(apply_shift("inversion", image, "test", 0), 255 - grey)
    cut = apply_shift("cutout", image, "test", 0).astype(int)
    # two squares of at most 12x12 px: everything else is untouched
    assert (cut != grey).any(axis=2).sum() <= 2 * 144 and (cut == grey).all(axis=2).sum() >= 784 - 2 * 144
    tinted = apply_shift("tint", image, "test", 0).astype(float)
    assert tinted.std() < 0.6 * grey.std() and tinted[0, 0].min() >= 0
    angles = {apply_shift("rotation", image, "test", i).tobytes() for i in range(4)}
    assert len(angles) == 4  # the angle depends on the image index


def test_bundled_matches_full_set_when_installed():
    if not (DEBIAN / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    full = build_dataset("fmnist-tint", str(DEBIAN), "test")
    bundled = build_dataset("fmnist-tint", "bundled", "test")
    assert [s.path for s in full.samples] == [s.path for s in bundled.samples]
    assert all(full.read_bytes(i) == bundled.read_bytes(i) for i in (0, 17, 9999))
    assert len(build_dataset("fmnist", str(DEBIAN), "train")) == 50_000


def test_bad_roots_and_names_say_what_to_do(tmp_path):
    with pytest.raises(LatteclipError, match="not a folder"):
        build_dataset("fmnist", str(tmp_path / "nowhere"), "test")
    with pytest.raises(LatteclipError, match="train-images-idx3-ubyte"):
        build_dataset("fmnist", str(tmp_path), "test")
    with pytest.raises(LatteclipError, match="unknown Fashion-MNIST shift 'sepia'"):
        build_dataset("fmnist-sepia", "bundled", "test")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(
        bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28]) + b"\x00" * 10
    )
    with pytest.raises(LatteclipError, match="truncated"):
        build_dataset("fmnist", str(tmp_path), "test")


def test_fashion_mnist_registers_itself_when_first_named():
    """The data package does not import the demo's dataset: naming it does, and the module registers its builders."""
    code = (
        "import sys; import latteclip.data as data; print('latteclip.data.fmnist' in sys.modules); "
        "print(len(data.build_dataset('fmnist-rotation', 'bundled', 'test'))); print('latteclip.data.fmnist' in "
        "sys.modules); print(data.available_datasets()[-2:])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split("\n")[:4] == ["False", "10000", "True", "['fmnist', 'fmnist-']"], done.stderr
