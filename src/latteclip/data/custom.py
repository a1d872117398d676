"""The user's own data: `folder` (a folder per class), `csv` (path,label[,split] rows) and `images` (unlabeled: every
image under a folder, or the paths a .txt file lists, with `--classnames` required). Labelled data without a split
file or split column takes the fixed-seed fallback split (`subsets.py`)."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from latteclip.data.coop import check_present, read_split_file, split_entries
from latteclip.data.datasets import DatasetInfo, DatasetOptions, Sample
from latteclip.data.names import read_class_list
from latteclip.data.sources import IMAGE_EXTENSIONS, FolderSource, scan_class_folders
from latteclip.data.subsets import FALLBACK_SPLIT, seeded_split
from latteclip.errors import LatteclipError

GENERIC_TEMPLATES = ["a photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.", "a picture of a {}."]


def build_folder(name: str, root: str, split: str, options: DatasetOptions):
    path = Path(root)
    if not path.is_dir():
        raise LatteclipError(f"dataset root {root} is not a folder (--dataset folder wants a folder per class)")
    source = FolderSource(path)
    keys, by_class = scan_class_folders(source)
    parts = _split_or_file(by_class, keys, source, options)
    info = DatasetInfo(
        path.name or "folder",
        list(keys),
        list(keys),
        list(GENERIC_TEMPLATES),
        options.domain or "object",
        options.split_file if options.split_file not in (None, "none") else FALLBACK_SPLIT,
    )
    return info, parts, source


def _split_or_file(by_class, keys, source, options: DatasetOptions) -> dict[str, list[Sample]]:
    """The seeded split, or the user's split file with each label taken from the image's class folder."""
    if not options.split_file or options.split_file == "none":
        return seeded_split(by_class)
    split_path = Path(options.split_file)
    if not split_path.is_file():
        raise LatteclipError(f"split file {split_path} does not exist")
    data = read_split_file(split_path)
    index = {k: i for i, k in enumerate(keys)}
    parts: dict[str, list[Sample]] = {}
    for part in ("train", "val", "test"):
        parts[part] = []
        for path, _, _ in split_entries(data, part, split_path):
            folder = path.split("/")[0]
            if folder not in index:
                raise LatteclipError(
                    f"split file {split_path} names {path}, which is not in a class folder of {source.location}"
                )
            parts[part].append(Sample(path, index[folder]))
    check_present(parts, source, split_path, "train")
    check_present(parts, source, split_path, "test")
    return parts


# Column names that mark a CSV's first row as a header rather than an image.
CSV_PATH_HEADERS = {"path", "image", "image_path", "file", "filename", "filepath", "img"}
CSV_LABEL_HEADERS = {"label", "class", "classname", "class_name", "category", "target"}


def _read_csv_rows(path: Path) -> list[list[str]]:
    """Non-blank rows, stripped, without a header such as `path,label[,split]` or `image,class`."""
    try:  # utf-8-sig: spreadsheet programs start their CSV files with a byte-order mark
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [[c.strip() for c in r] for r in csv.reader(handle) if r and any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error) as err:
        raise LatteclipError(f"CSV file {path} cannot be read as UTF-8 CSV text: {err}") from err
    if (
        rows
        and len(rows[0]) >= 2
        and rows[0][0].lower() in CSV_PATH_HEADERS
        and rows[0][1].lower() in CSV_LABEL_HEADERS
    ):
        rows = rows[1:]
    if not rows:
        raise LatteclipError(f"CSV file {path} has no rows")
    for number, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0] or not row[1]:
            raise LatteclipError(f"CSV file {path}: row {number} ({','.join(row)}) needs path,label")
    return rows


def _label_order(labels: set[str]) -> list[str]:
    """Class keys in label order: numerically when every label is a whole number (so '10' follows '9')."""
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def build_csv(name: str, root: str, split: str, options: DatasetOptions):
    path = Path(root)
    if not path.is_file():
        raise LatteclipError(
            f"CSV file {root} does not exist (--dataset csv wants --root FILE.csv with path,label rows)"
        )
    rows = _read_csv_rows(path)
    keys = _label_order({r[1] for r in rows})
    index = {k: i for i, k in enumerate(keys)}
    source = FolderSource(path.parent)
    missing = [r[0] for r in rows if not source.exists(r[0])]
    if missing:
        raise LatteclipError(
            f"CSV file {root} names {len(missing)} missing images (first: {missing[0]}), paths are relative to "
            f"{path.parent}"
        )
    with_split = [len(r) >= 3 and bool(r[2]) for r in rows]
    if any(with_split):
        if not all(with_split):
            row = with_split.index(False) + 1
            raise LatteclipError(
                f"CSV file {root}: row {row} has no split column while others do; give every row train, val or test"
            )
        parts: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
        for r in rows:
            part = r[2].lower()
            if part not in parts:
                raise LatteclipError(f"CSV file {root}: split '{r[2]}' must be train, val or test")
            parts[part].append(Sample(r[0], index[r[1]]))
        split_source = f"{path} (split column)"
    else:
        by_class: dict[int, list[str]] = defaultdict(list)
        for r in rows:
            by_class[index[r[1]]].append(r[0])
        parts = seeded_split(by_class)
        split_source = FALLBACK_SPLIT
    info = DatasetInfo(
        path.stem, list(keys), list(keys), list(GENERIC_TEMPLATES), options.domain or "object", split_source
    )
    return info, parts, source


def build_images(name: str, root: str, split: str, options: DatasetOptions):
    """Unlabeled images: every image file under a folder (recursive, sorted), or the paths a .txt file lists.

    Every image is a training image with label -1; the class names come from `--classnames` only.
    """
    path = Path(root)
    if not options.classnames_file:
        raise LatteclipError("--dataset images needs --classnames FILE (one class name per line, or a JSON list)")
    if path.is_dir():
        source = FolderSource(path)
        files = [f for f in source.list_files() if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
        if not files:
            raise LatteclipError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}")
    elif path.is_file() and path.suffix == ".txt":
        source = FolderSource(path.parent)
        files = [
            ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")
        ]
        missing = [f for f in files if not source.exists(f)]
        if not files or missing:
            raise LatteclipError(
                f"image list {root} "
                + (
                    f"names {len(missing)} missing files (first: {missing[0]}); paths are relative to {path.parent}"
                    if missing
                    else "lists no images"
                )
            )
    else:
        raise LatteclipError(
            f"--root {root} must be a folder of images or a .txt file listing image paths (--dataset images)"
        )
    keys, classnames = read_class_list(options.classnames_file)
    parts = {"train": [Sample(f, -1) for f in files], "val": [], "test": []}
    info = DatasetInfo(
        path.stem or "images",
        classnames,
        keys,
        list(GENERIC_TEMPLATES),
        options.domain or "object",
        f"every image of {root} (unlabeled)",
        labelled=False,
    )
    return info, parts, source
