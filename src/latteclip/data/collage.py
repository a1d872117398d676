"""The group collage of method.md 1.2: the images of a group tiled on one black square canvas.

The LMM sees a group as one picture, so the layout decides what it can compare: a grid of
equal cells separated by black gaps (no outer border), each image scaled with its aspect kept
(LANCZOS) and centred in its cell. Groups of 2, 4, 8 and 16 give grids 1x2, 2x2, 3x3 (the last
cell empty) and 4x4, as in the paper's Table 5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

CANVAS_SIZE = 672
GAP = 20


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) of the smallest near-square grid that holds `count` images."""
    if count < 1:
        raise ValueError("a collage needs at least one image")
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns


def _edges(length: int, parts: int, gap: int) -> list[tuple[int, int]]:
    """Start and end of each of `parts` equal spans with `gap` between them, rounded to pixels."""
    span = (length - (parts - 1) * gap) / parts
    if span < 1:
        raise ValueError(f"{parts} cells with {gap} px gaps do not fit in {length} px")
    return [(round(i * (span + gap)), round(i * (span + gap) + span)) for i in range(parts)]


def cell_boxes(count: int, canvas_size: int = CANVAS_SIZE, gap: int = GAP) -> list[tuple[int, int, int, int]]:
    """The (left, top, right, bottom) box of each image's cell, row by row."""
    rows, columns = grid_shape(count)
    ys = _edges(canvas_size, rows, gap)
    xs = _edges(canvas_size, columns, gap)
    return [(xs[i % columns][0], ys[i // columns][0], xs[i % columns][1], ys[i // columns][1]) for i in range(count)]


def fit_box(image_size: tuple[int, int], cell: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Where an image of `image_size` lands in `cell`: scaled to touch the cell's sides, aspect kept, centred."""
    width, height = image_size
    cell_w, cell_h = cell[2] - cell[0], cell[3] - cell[1]
    scale = min(cell_w / width, cell_h / height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    left = cell[0] + (cell_w - new_w) // 2
    top = cell[1] + (cell_h - new_h) // 2
    return left, top, left + new_w, top + new_h


def make_collage(images: Sequence[Image.Image], canvas_size: int = CANVAS_SIZE, gap: int = GAP) -> Image.Image:
    """Tile `images` (anchor first) on a black RGB canvas of `canvas_size` squared."""
    canvas = Image.new("RGB", (canvas_size, canvas_size), (0, 0, 0))
    for image, cell in zip(images, cell_boxes(len(images), canvas_size, gap)):
        box = fit_box(image.size, cell)
        resized = image.convert("RGB").resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.LANCZOS)
        canvas.paste(resized, box[:2])
    return canvas
