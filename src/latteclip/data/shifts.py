"""Target domains for the demo: deterministic corruptions of 28x28 grey images.

Each shift maps a grey uint8 image [28, 28] and a random generator to an RGB uint8 image
[28, 28, 3]. The generator is seeded by (shift, split, original image index) only, so an
image looks the same in every run, in the bundled subset and in the full set, and its
encoded bytes (which key its descriptions) never change.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]

# Fixed for the benchmark: the target domains are data, not something a run's --seed varies.
DOMAIN_SEED = 20240


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def clean(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """No corruption: the unshifted target images, for reference."""
    return _rgb(image)


def blur_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur (radius 1.0-1.6 px) followed by grey Gaussian noise (std 25-45 of 255)."""
    radius = rng.uniform(1.0, 1.6)
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)), dtype=np.float64)
    noisy = blurred + rng.normal(0.0, rng.uniform(25.0, 45.0), size=image.shape)
    return _rgb(_to_uint8(noisy))


def rotation(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotation by an angle drawn uniformly in [-180, 180) degrees about the centre (black fill)."""
    angle = rng.uniform(-180.0, 180.0)
    rotated = Image.fromarray(image).rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=0)
    return _rgb(np.asarray(rotated))


def tint(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lower contrast (x0.35-0.6), a random colour gain per channel and a coloured background offset."""
    contrast = rng.uniform(0.35, 0.6)
    gain = rng.uniform(0.3, 1.0, size=3)
    offset = rng.uniform(0.0, 90.0, size=3)
    values = offset[None, None, :] + contrast * gain[None, None, :] * image[:, :, None].astype(np.float64)
    return _to_uint8(values)


def inversion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photographic negative: light garments on a white background."""
    return _rgb(255 - image)


def cutout(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two squares (side 8-12 px) at random places, each filled with a random grey level."""
    out = image.copy()
    height, width = image.shape
    for _ in range(2):
        side = int(rng.integers(8, 13))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        out[top : top + side, left : left + side] = int(rng.integers(0, 256))
    return _rgb(out)


UNSHIFTED = "clean"  # the target domain without corruption: a reference, not a domain shift

SHIFTS: dict[str, Shift] = {
    "clean": clean,
    "blur-noise": blur_noise,
    "rotation": rotation,
    "tint": tint,
    "inversion": inversion,
    "cutout": cutout,
}


def shift_rng(shift: str, split: str, index: int) -> np.random.Generator:
    """The generator of one image's corruption: a function of (shift, split, index) alone."""
    return np.random.default_rng([DOMAIN_SEED, zlib.crc32(shift.encode()), zlib.crc32(split.encode()), index])


def apply_shift(shift: str, image: np.ndarray, split: str, index: int) -> np.ndarray:
    """The shifted RGB image of the grey image `index` of `split` (the original file's order)."""
    return SHIFTS[shift](image, shift_rng(shift, split, index))
