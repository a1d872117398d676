"""The group collage on real EuroSAT images: cell boxes, pixels and black gaps, computed by hand."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from latteclip.data.collage import cell_boxes, fit_box, grid_shape, make_collage

LANCZOS = Image.Resampling.LANCZOS


@pytest.fixture(scope="module")
def eurosat_images(eurosat_zip) -> list[Image.Image]:
    with zipfile.ZipFile(eurosat_zip) as archive:
        names = sorted(n for n in archive.namelist() if n.endswith(".jpg"))[::1500][:16]
        return [Image.open(io.BytesIO(archive.read(n))).convert("RGB") for n in names]


def test_grids_of_the_paper_group_sizes():
    assert [grid_shape(n) for n in (2, 4, 8, 16)] == [(1, 2), (2, 2), (3, 3), (4, 4)]


def test_two_by_two_cells_are_326_px_with_20_px_gaps():
    # (672 - 20) / 2 = 326: cells at 0..326 and 346..672 on both axes
    assert cell_boxes(4) == [(0, 0, 326, 326), (346, 0, 672, 326), (0, 346, 326, 672), (346, 346, 672, 672)]


def test_two_by_two_collage_pixels(eurosat_images):
    images = eurosat_images[:4]
    assert all(im.size == (64, 64) for im in images)
    canvas = np.asarray(make_collage(images))
    assert canvas.shape == (672, 672, 3)
    for image, (left, top, right, bottom) in zip(images, cell_boxes(4)):
        expected = np.asarray(image.resize((326, 326), LANCZOS))
        assert np.array_equal(canvas[top:bottom, left:right], expected)
    assert not canvas[:, 326:346].any() and not canvas[326:346, :].any()  # the gaps are black


def test_one_by_two_keeps_the_square_centred(eurosat_images):
    # cells 326 x 672; a 64 x 64 image scales to 326 x 326 and sits (672 - 326) // 2 = 173 px down
    assert cell_boxes(2) == [(0, 0, 326, 672), (346, 0, 672, 672)]
    assert fit_box((64, 64), (346, 0, 672, 672)) == (346, 173, 672, 499)
    canvas = np.asarray(make_collage(eurosat_images[:2]))
    assert np.array_equal(canvas[173:499, 346:672], np.asarray(eurosat_images[1].resize((326, 326), LANCZOS)))
    assert not canvas[:173].any() and not canvas[499:].any() and not canvas[:, 326:346].any()


def test_three_by_three_for_eight_images_leaves_the_last_cell_black(eurosat_images):
    # (672 - 40) / 3 = 210.67 px per cell: edges 0..211, 231..441, 461..672 after rounding
    boxes = cell_boxes(8)
    assert boxes[0] == (0, 0, 211, 211) and boxes[4] == (231, 231, 441, 441) and boxes[7] == (231, 461, 441, 672)
    canvas = np.asarray(make_collage(eurosat_images[:8]))
    assert not canvas[461:672, 461:672].any()
    assert np.array_equal(canvas[231:441, 231:441], np.asarray(eurosat_images[4].resize((210, 210), LANCZOS)))
    assert not canvas[:, 211:231].any() and not canvas[:, 441:461].any()


def test_four_by_four_cells(eurosat_images):
    # (672 - 60) / 4 = 153
    assert [b[0] for b in cell_boxes(16)[:4]] == [0, 173, 346, 519]
    assert cell_boxes(16)[15] == (519, 519, 672, 672)
    canvas = np.asarray(make_collage(eurosat_images[:16]))
    assert np.array_equal(canvas[519:672, 519:672], np.asarray(eurosat_images[15].resize((153, 153), LANCZOS)))


def test_aspect_ratio_is_kept_for_a_wide_image(eurosat_images):
    wide = eurosat_images[0].crop((0, 0, 64, 32))
    # scale min(326/64, 326/32) = 5.09: 326 x 163, centred (326 - 163) // 2 = 81 px down
    assert fit_box(wide.size, (0, 0, 326, 326)) == (0, 81, 326, 244)
    canvas = np.asarray(make_collage([wide, *eurosat_images[1:4]]))
    assert np.array_equal(canvas[81:244, 0:326], np.asarray(wide.resize((326, 163), LANCZOS)))
    assert not canvas[:81, :326].any() and not canvas[244:326, :326].any()
