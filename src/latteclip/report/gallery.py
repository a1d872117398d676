"""Pictures for the LatteCLIP gallery: training images read back from the run's dataset, and group collages."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from latteclip.data import CorruptImage, DatasetOptions, build_dataset
from latteclip.data.collage import fit_box, grid_shape
from latteclip.errors import LatteclipError

THUMBNAIL = 128


@dataclass
class GalleryImages:
    """The decoded images the gallery names, their true class names (analysis only), and why any are missing."""

    images: dict[str, Image.Image] = field(default_factory=dict)
    true_classes: dict[str, str] = field(default_factory=dict)
    problem: str | None = None


def gallery_paths(gallery: list[dict[str, Any]]) -> list[str]:
    """Every image a gallery names (the images and their group members), first-seen order."""
    paths: dict[str, None] = {}
    for entry in gallery:
        paths.setdefault(entry["image"])
        for member in entry.get("group_members", []):
            paths.setdefault(member)
    return list(paths)


def load_gallery_images(config: dict[str, Any], relpaths: list[str]) -> GalleryImages:
    """Open the run's training split as it was configured and decode the named images."""
    options = DatasetOptions.from_run(config)
    try:
        dataset = build_dataset(config.get("dataset", ""), config.get("root", ""), "train", None, options)
    except LatteclipError as err:
        return GalleryImages(problem=f"the run's dataset cannot be opened here ({err})")
    index_of = {sample.path: i for i, sample in enumerate(dataset.samples)}
    found = GalleryImages()
    missing = []
    for path in relpaths:
        index = index_of.get(path)
        if index is None:
            missing.append(path)
            continue
        try:
            found.images[path] = dataset.load_image(index)
        except CorruptImage:
            missing.append(path)
            continue
        if dataset.info.labelled:
            found.true_classes[path] = dataset.info.classnames[dataset.samples[index].label]
    if missing:
        found.problem = f"{len(missing)} image(s) not found or unreadable in the training split, e.g. {missing[0]}"
    return found


def thumbnail(image: Image.Image, size: int = THUMBNAIL) -> Image.Image:
    """The image scaled (up or down, aspect kept) so its longer side is `size`."""
    left, top, right, bottom = fit_box(image.size, (0, 0, size, size))
    return image.resize((right - left, bottom - top), Image.Resampling.BICUBIC)


def collage(images: list[Image.Image], cell: int = THUMBNAIL // 2, gap: int = 4) -> Image.Image:
    """A square grid of the images on black, each fitted into its cell with aspect kept (like the group prompt's
    collage)."""
    rows, columns = grid_shape(len(images))
    canvas = Image.new("RGB", (columns * cell + (columns + 1) * gap, rows * cell + (rows + 1) * gap), "black")
    for i, image in enumerate(images):
        small = thumbnail(image, cell)
        row, column = divmod(i, columns)
        x = gap + column * (cell + gap) + (cell - small.width) // 2
        y = gap + row * (cell + gap) + (cell - small.height) // 2
        canvas.paste(small, (x, y))
    return canvas


def save_png(image: Image.Image, path: Path) -> Path:
    image.save(path, format="PNG")
    return path
