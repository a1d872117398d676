"""Dataset loaders on the real EuroSAT archive and split file, and on small custom datasets built from it."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from latteclip.data import DatasetOptions, build_dataset
from latteclip.errors import LatteclipError

RESIDENTIAL = "residential buildings or homes or apartments"


@pytest.fixture(scope="module")
def split_file(eurosat_zip) -> Path:
    """The CoOp split file that sits beside the archive."""
    return eurosat_zip.parent / "split_zhou_EuroSAT.json"


@pytest.fixture(scope="module")
def coop_split(split_file) -> dict:
    return json.loads(split_file.read_text())


@pytest.fixture(scope="module")
def archive_classes(eurosat_zip) -> dict[str, list[str]]:
    """The archive's own listing, read independently of the loader: class folder -> image paths."""
    by_class: dict[str, list[str]] = {}
    with zipfile.ZipFile(eurosat_zip) as archive:
        for name in archive.namelist():
            if name.startswith("2750/") and name.endswith(".jpg"):
                _, folder, _ = name.split("/")
                by_class.setdefault(folder, []).append(name[len("2750/") :])
    return by_class


def pairs(dataset) -> list[tuple[str, int]]:
    return [(s.path, s.label) for s in dataset.samples]


# --- the EuroSAT archive with its CoOp split file ---------------------------------------------------------------
def test_zip_is_read_in_place_with_the_split_file(eurosat_zip, coop_split, split_file):
    train = build_dataset("eurosat", eurosat_zip, "train")
    test = build_dataset("eurosat", eurosat_zip, "test")
    assert train.info.split_source == str(split_file)
    # train is CoOp train + val (what the unsupervised methods see); test is CoOp test
    assert pairs(train) == [(e[0], e[1]) for e in coop_split["train"] + coop_split["val"]]
    assert pairs(test) == [(e[0], e[1]) for e in coop_split["test"]]
    assert len(train) == 13500 + 5400 and len(test) == 8100
    image = test.load_image(0)
    assert image.mode == "RGB" and image.size == (64, 64)


def test_train_only_and_val_parts(eurosat_zip, coop_split):
    options = DatasetOptions(limit=None)
    assert pairs(build_dataset("eurosat", eurosat_zip, "train_only", None, options)) == [
        (e[0], e[1]) for e in coop_split["train"]
    ]
    assert pairs(build_dataset("eurosat", eurosat_zip, "val", None, options)) == [
        (e[0], e[1]) for e in coop_split["val"]
    ]


def test_folder_holding_the_zip_reads_the_same_samples(eurosat_zip):
    from_zip = build_dataset("eurosat", eurosat_zip, "test", None, DatasetOptions(limit=30))
    from_folder = build_dataset("eurosat", eurosat_zip.parent, "test", None, DatasetOptions(limit=30))
    assert pairs(from_folder) == pairs(from_zip)
    assert from_folder.read_bytes(7) == from_zip.read_bytes(7)


def test_extracted_official_layout(eurosat_folder, eurosat_zip):
    local_split = json.loads((eurosat_folder / "split_zhou_EuroSAT.json").read_text())
    train = build_dataset("eurosat", eurosat_folder, "train")
    test = build_dataset("eurosat", eurosat_folder, "test")
    assert train.info.split_source == str(eurosat_folder / "split_zhou_EuroSAT.json")
    assert pairs(train) == [(e[0], e[1]) for e in local_split["train"] + local_split["val"]]
    assert pairs(test) == [(e[0], e[1]) for e in local_split["test"]]
    assert Counter(s.label for s in test.samples) == {c: 6 for c in range(10)}
    with zipfile.ZipFile(eurosat_zip) as archive:
        assert test.read_bytes(0) == archive.read("2750/" + test.samples[0].path)
    # the image folder itself works as a root too, with the split file beside it
    assert pairs(build_dataset("eurosat", eurosat_folder / "2750", "test")) == pairs(test)


@pytest.mark.parametrize("inner", ["data/EuroSAT/2750", "EuroSAT_RGB"])
def test_zip_with_the_images_in_another_folder(eurosat_folder, tmp_path, inner):
    """Re-packed archives: the image folder deeper down, or a lone top folder; macOS extras are ignored."""
    archive = tmp_path / "packed.zip"
    with zipfile.ZipFile(archive, "w") as packed:
        for image in sorted((eurosat_folder / "2750").rglob("*.jpg")):
            relative = image.relative_to(eurosat_folder / "2750").as_posix()
            packed.write(image, f"{inner}/{relative}")
            packed.writestr(f"__MACOSX/{inner}/{relative}", b"resource fork")
        packed.writestr(f"{inner}/Forest/.DS_Store", b"finder data")
    split_file = str(eurosat_folder / "split_zhou_EuroSAT.json")
    test = build_dataset("eurosat", archive, "test", None, DatasetOptions(split_file=split_file))
    assert pairs(test) == pairs(build_dataset("eurosat", eurosat_folder, "test"))
    assert test.load_image(0).size == (64, 64)
    seeded = build_dataset("eurosat", archive, "test", None, DatasetOptions(split_file="none"))
    assert seeded.info.class_keys == build_dataset("eurosat", eurosat_folder, "test").info.class_keys
    assert all(not s.path.startswith(("__MACOSX", ".")) and "/." not in s.path for s in seeded.samples)


def test_class_names_follow_the_folder_not_the_label_number(eurosat_folder, coop_split, tmp_path):
    """Relabel the split file with a permuted label order: names must still follow each image's folder."""
    keys = sorted({e[0].split("/")[0] for e in coop_split["train"]})
    permuted = {key: (i * 3 + 7) % 10 for i, key in enumerate(keys)}  # a bijection of 0..9
    local = json.loads((eurosat_folder / "split_zhou_EuroSAT.json").read_text())
    relabelled = {
        part: [[e[0], permuted[e[0].split("/")[0]], e[2]] for e in entries] for part, entries in local.items()
    }
    split_file = tmp_path / "permuted.json"
    split_file.write_text(json.dumps(relabelled))
    test = build_dataset(
        "eurosat", eurosat_folder, "test", None, DatasetOptions(split_file=str(split_file), prompt_set="clip")
    )
    residential = next(s for s in test.samples if s.path.startswith("Residential/"))
    assert residential.label == permuted["Residential"] != keys.index("Residential")
    assert test.info.classnames[residential.label] == RESIDENTIAL
    authors = build_dataset("eurosat", eurosat_folder, "test", None, DatasetOptions(split_file=str(split_file)))
    assert authors.info.classnames[residential.label] == "residential buildings"  # CoOp's name, lower-cased
    assert test.info.class_keys[residential.label] == "Residential"
    for sample in test.samples:
        assert test.info.class_keys[sample.label] == sample.path.split("/")[0]


def test_prompt_sets_of_the_authors_runs_and_of_clip(eurosat_zip):
    authors = build_dataset("eurosat", eurosat_zip, "test").info
    clip = build_dataset("eurosat", eurosat_zip, "test", None, DatasetOptions(prompt_set="clip")).info
    assert authors.class_texts()[:2] == ["a photo of a annual crop land.", "a photo of a forest."]
    assert authors.templates == ["a photo of a {}."] and authors.classnames[9] == "sea or lake"
    assert (
        clip.class_texts()[0] == "a centered satellite photo of annual crop land."
        and clip.classnames[9] == "lake or sea"
    )
    assert authors.class_keys == clip.class_keys
    with pytest.raises(LatteclipError, match="--prompt-set"):
        build_dataset("eurosat", eurosat_zip, "test", None, DatasetOptions(prompt_set="coop"))


def test_seeded_split_without_split_file(eurosat_zip, archive_classes):
    def seeded(part: str, seed: int = 0, root: Path = eurosat_zip):
        return build_dataset(
            "eurosat", root, part, None, DatasetOptions(split_file="none", seed=seed, prompt_set="clip")
        )

    split = {p: seeded(p) for p in ("train_only", "val", "test")}
    assert split["test"].info.split_source == "seeded 50/20/30 (fixed seed 0)"
    keys = split["test"].info.class_keys
    assert keys == sorted(archive_classes)
    assert split["test"].info.classnames[keys.index("Residential")] == RESIDENTIAL
    for label, key in enumerate(keys):
        total = len(archive_classes[key])  # 2000, 2500 or 3000 images: every share is a whole number
        paths = {p: [s.path for s in d.samples if s.label == label] for p, d in split.items()}
        assert [len(paths["train_only"]), len(paths["val"]), len(paths["test"])] == [
            total // 2,
            total // 5,
            total * 3 // 10,
        ]
        everything = paths["train_only"] + paths["val"] + paths["test"]
        assert len(set(everything)) == total and set(everything) == set(archive_classes[key])  # disjoint, complete
        assert all(p.startswith(key + "/") for p in everything)
    # `train` is train + val here too
    assert pairs(build_dataset("eurosat", eurosat_zip, "train", None, DatasetOptions(split_file="none"))) == (
        pairs(split["train_only"]) + pairs(split["val"])
    )
    # the same split from the archive or from the folder holding it, and for every run seed (the split's seed is fixed)
    assert pairs(seeded("test", 0, eurosat_zip.parent)) == pairs(split["test"])
    assert pairs(seeded("test", 1)) == pairs(split["test"])


def test_limit_takes_a_seeded_subset_class_balanced_for_evaluation(eurosat_zip):
    full_train = set(pairs(build_dataset("eurosat", eurosat_zip, "train")))
    full_test = set(pairs(build_dataset("eurosat", eurosat_zip, "test")))
    train = build_dataset("eurosat", eurosat_zip, "train", None, DatasetOptions(limit=25))
    test = build_dataset("eurosat", eurosat_zip, "test", None, DatasetOptions(limit=25))
    for subset, full in ((train, full_train), (test, full_test)):
        assert len(subset) == 25 and set(pairs(subset)) <= full
    counts = Counter(s.label for s in test.samples)
    assert sorted(counts.values()) == [2] * 5 + [3] * 5  # 25 over 10 classes: every class present, balanced
    # a training subset is uniform (labels unread), in the split's order
    order = {p: i for i, p in enumerate(pairs(build_dataset("eurosat", eurosat_zip, "train")))}
    assert [order[p] for p in pairs(train)] == sorted(order[p] for p in pairs(train))
    assert pairs(build_dataset("eurosat", eurosat_zip, "train", None, DatasetOptions(limit=25))) == pairs(train)
    assert pairs(build_dataset("eurosat", eurosat_zip, "train", None, DatasetOptions(limit=25, seed=3))) != pairs(train)
    larger = build_dataset("eurosat", eurosat_zip, "train", None, DatasetOptions(limit=100000))
    assert set(pairs(larger)) == full_train


# --- custom data: a folder per class, a CSV ----------------------------------------------------------------------
@pytest.fixture()
def three_class_folder(eurosat_folder, tmp_path) -> Path:
    """Forest, River, SeaLake with 10 real EuroSAT images each."""
    root = tmp_path / "aerial"
    for key in ("Forest", "River", "SeaLake"):
        (root / key).mkdir(parents=True)
        for image in sorted((eurosat_folder / "2750" / key).iterdir())[:10]:
            shutil.copy(image, root / key / image.name)
    return root


def test_folder_dataset_names_domain_and_seeded_split(three_class_folder, tmp_path):
    (three_class_folder / "River" / ".DS_Store").write_bytes(b"\0")  # hidden files are not images
    names = tmp_path / "names.txt"
    names.write_text("SeaLake: lake or sea\nForest: dense forest\n")
    options = DatasetOptions(classnames_file=str(names), domain="aerial scene")
    parts = {p: build_dataset("folder", three_class_folder, p, None, options) for p in ("train_only", "val", "test")}
    info = parts["test"].info
    assert info.class_keys == ["Forest", "River", "SeaLake"]
    assert info.classnames == ["dense forest", "River", "lake or sea"]  # unmapped folders keep their name
    assert info.domain == "aerial scene"
    for label in range(3):
        assert [sum(s.label == label for s in parts[p].samples) for p in ("train_only", "val", "test")] == [5, 2, 3]
    everything = [s.path for d in parts.values() for s in d.samples]
    assert len(everything) == len(set(everything)) == 30
    plain = build_dataset("folder", three_class_folder, "test")
    assert plain.info.classnames == ["Forest", "River", "SeaLake"] and plain.info.domain == "object"


def test_folder_dataset_with_a_split_file_labels_by_folder(three_class_folder, tmp_path):
    images = sorted(p.relative_to(three_class_folder).as_posix() for p in three_class_folder.rglob("*.jpg"))
    split = {"train": [[p, 99, "x"] for p in images[:20]], "val": [], "test": [[p, 99, "x"] for p in images[20:]]}
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps(split))
    test = build_dataset("folder", three_class_folder, "test", None, DatasetOptions(split_file=str(split_file)))
    assert [s.path for s in test.samples] == images[20:]
    assert all(test.info.class_keys[s.label] == s.path.split("/")[0] for s in test.samples)


def test_csv_dataset(three_class_folder):
    images = sorted(p.relative_to(three_class_folder).as_posix() for p in three_class_folder.rglob("*.jpg"))
    label_of = {"Forest": "2", "River": "10", "SeaLake": "9"}  # numbers: ordered as numbers, not as text
    table = three_class_folder / "labels.csv"
    table.write_text("path,label\n" + "".join(f"{p},{label_of[p.split('/')[0]]}\n" for p in images))
    test = build_dataset("csv", table, "test", None, DatasetOptions(domain="land cover"))
    assert test.info.class_keys == ["2", "9", "10"] and test.info.domain == "land cover"
    assert Counter(test.info.class_keys[s.label] for s in test.samples) == {"2": 3, "9": 3, "10": 3}
    assert all(test.info.class_keys[s.label] == label_of[s.path.split("/")[0]] for s in test.samples)

    with_split = three_class_folder / "split.csv"
    with_split.write_text(
        "".join(f"{p},{p.split('/')[0]},{'test' if i % 3 == 0 else 'train'}\n" for i, p in enumerate(images))
    )
    test = build_dataset("csv", with_split, "test")
    assert [s.path for s in test.samples] == images[::3]
    assert len(build_dataset("csv", with_split, "train")) == 20


def test_corrupt_image_is_skipped_with_a_warning(three_class_folder):
    (three_class_folder / "Forest" / "broken.jpg").write_bytes(b"this is not a jpeg")
    everything = [build_dataset("folder", three_class_folder, p) for p in ("train", "test")]
    where = [(d, i) for d in everything for i, s in enumerate(d.samples) if s.path == "Forest/broken.jpg"]
    assert len(where) == 1
    dataset, index = where[0]
    with pytest.warns(UserWarning, match=f"unreadable image {three_class_folder / 'Forest' / 'broken.jpg'}: "):
        item = dataset[index]
    assert item == {"index": index, "corrupt": True}
    assert dataset[(index + 1) % len(dataset)]["label"] in (0, 1, 2)
    table = three_class_folder / "with-broken.csv"  # a CSV names absolute paths: the warning names each once
    table.write_text(f"{three_class_folder / 'Forest' / 'broken.jpg'},Forest,test\n")
    with pytest.warns(UserWarning, match=f"unreadable image {three_class_folder / 'Forest' / 'broken.jpg'}: "):
        build_dataset("csv", table, "test")[0]


def test_bad_inputs_name_the_path_or_value(three_class_folder, eurosat_zip, tmp_path):
    with pytest.raises(LatteclipError, match="unknown dataset 'imagenet9'"):
        build_dataset("imagenet9", tmp_path)
    with pytest.raises(LatteclipError, match=f"dataset root {tmp_path / 'absent'} does not exist"):
        build_dataset("eurosat", tmp_path / "absent")
    with pytest.raises(LatteclipError, match="--limit must be a positive"):
        build_dataset("eurosat", eurosat_zip, "test", None, DatasetOptions(limit=0))
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"Jungle": "jungle"}))
    with pytest.raises(LatteclipError, match="unknown classes \\['Jungle'\\]"):
        build_dataset("folder", three_class_folder, "test", None, DatasetOptions(classnames_file=str(names)))
    bad_split = tmp_path / "bad_split.json"
    bad_split.write_text(json.dumps({"train": [["Forest/Forest_1.jpg"]], "val": [], "test": []}))
    with pytest.raises(
        LatteclipError, match=rf"split file {bad_split}: entry 0 of 'train' .* is not \[path, label, class name\]"
    ):
        build_dataset("eurosat", eurosat_zip, "train", None, DatasetOptions(split_file=str(bad_split)))
    (three_class_folder / "Desert").mkdir()
    with pytest.raises(LatteclipError, match=r"class folder .*Desert has no images"):
        build_dataset("folder", three_class_folder)
