"""`latteclip data download` and the loaders on torchvision's download layout (as well as CoOp's).

The folders are built here in each layout, from the bundled CoOp split files (empty files stand in for
images whose pixels the check does not read) and, for FGVC-Aircraft, from its official split lists.
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import time
from importlib import resources
from pathlib import Path

import pytest
from PIL import Image

from latteclip.cli import main
from latteclip.data import DatasetOptions, build_dataset
from latteclip.data.coop import load_spec


def bundled_split(name: str) -> dict:
    file = resources.files("latteclip.data").joinpath("splits", load_spec(name)["split_file"] + ".gz")
    with gzip.open(io.BytesIO(file.read_bytes()), "rt") as handle:
        return json.load(handle)


def jpeg(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, layout",
    [
        ("oxford_flowers", "flowers-102/jpg"),  # torchvision Flowers102
        ("oxford_flowers", "oxford_flowers/jpg"),  # CoOp
        ("oxford_pets", "oxford-iiit-pet/images"),  # torchvision OxfordIIITPet
        ("oxford_pets", "oxford_pets/images"),  # CoOp
        ("dtd", "dtd/dtd/images"),  # torchvision DTD
        ("caltech101", "caltech101/101_ObjectCategories"),  # torchvision Caltech101
    ],
)
def test_spec_datasets_read_torchvision_and_coop_layouts(name, layout, tmp_path):
    split = bundled_split(name)
    images = tmp_path / layout
    for part in ("train", "val", "test"):
        for path, _, _ in split[part]:
            (images / path).parent.mkdir(parents=True, exist_ok=True)
            (images / path).touch()
    first = split["train"][0][0]
    (images / first).write_bytes(jpeg((200, 10, 10)))
    train = build_dataset(name, tmp_path, "train")
    test = build_dataset(name, tmp_path, "test")
    assert len(train) == len(split["train"]) + len(split["val"]) and len(test) == len(split["test"])
    assert Path(train.source.location.rstrip("/:")) == images
    index = [s.path for s in train.samples].index(first)
    assert train.read_bytes(index) == (images / first).read_bytes()
    assert train.samples[index].label == split["train"][0][1]


@pytest.mark.parametrize("layout", ["fgvc-aircraft-2013b/data", "fgvc_aircraft"])  # torchvision FGVCAircraft, CoOp
def test_fgvc_aircraft_reads_its_split_lists_in_both_layouts(layout, tmp_path):
    base = tmp_path / layout
    (base / "images").mkdir(parents=True)
    variants = ["707-320", "A320", "Cessna 172"]
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    lists = {
        "train": [("0001", "A320"), ("0002", "707-320")],
        "val": [("0003", "Cessna 172")],
        "test": [("0004", "A320"), ("0005", "Cessna 172")],
    }
    for part, rows in lists.items():
        (base / f"images_variant_{part}.txt").write_text("".join(f"{image} {variant}\n" for image, variant in rows))
        for number, (image, _) in enumerate(rows):
            (base / "images" / f"{image}.jpg").write_bytes(jpeg((number * 80, 0, 0)))
    train = build_dataset("fgvc_aircraft", tmp_path, "train")
    test = build_dataset("fgvc_aircraft", tmp_path, "test")
    assert train.info.classnames == [
        "707-320",
        "a320",
        "cessna 172",
    ]  # CoOp's names, lower-cased (--prompt-set latteclip)
    assert (
        build_dataset("fgvc_aircraft", tmp_path, "train", options=DatasetOptions(prompt_set="clip")).info.classnames
        == variants
    )
    assert [(s.path, s.label) for s in train.samples] == [("0001.jpg", 1), ("0002.jpg", 0), ("0003.jpg", 2)]
    assert [(s.path, s.label) for s in test.samples] == [("0004.jpg", 1), ("0005.jpg", 2)]
    assert train.read_bytes(0) == (base / "images" / "0001.jpg").read_bytes()
    (base / "images_variant_test.txt").write_text("0004 A380\n")
    with pytest.raises(Exception, match="class 'A380' is not in"):
        build_dataset("fgvc_aircraft", tmp_path, "test")


def test_download_offline_fails_at_once_in_one_line_with_the_url_and_manual_steps(tmp_path, capsys):
    try:
        socket.getaddrinfo("huggingface.co", 443)
        pytest.skip("this machine reaches the network: a real download would start")
    except OSError:
        pass
    started = time.monotonic()
    assert main(["data", "download", "eurosat", "--root", str(tmp_path / "data")]) == 2
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert (
        "https://huggingface.co/datasets/torchgeo/eurosat/" in err
        and f"unzip it into {tmp_path / 'data'}/eurosat/" in err
    )


def test_download_names_the_datasets_it_can_fetch(tmp_path, capsys):
    assert main(["data", "download", "stanford_cars", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot download 'stanford_cars'" in err
    for name in ("eurosat", "dtd", "oxford_flowers", "oxford_pets", "fgvc_aircraft", "food101", "sun397", "caltech101"):
        assert name in err
