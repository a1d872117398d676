"""`build_dataset(name, root, split, transform)`: the one entry point to every dataset.

Paper datasets are described by JSON files in `data/specs/` (layout, CoOp split file, class
names keyed by folder or split-file name, templates, domain word, LMM prompts); users override
any of them with `--classnames`, `--templates`, `--domain` and `--split-file`.

Two prompt sets name the classes of a paper dataset (`--prompt-set`):
- `latteclip` (default): what the LatteCLIP authors ran, so what Table 1 measured: CoOp's class
  names (the split file's) lower-cased, with one template per dataset (the spec's `latteclip_template`);
- `clip`: CLIP's own class names and template list (`classnames`, `templates`). Custom data is `folder`
(a folder per class) or `csv` (path,label[,split]); unlabeled images are `images` (every image
under a folder, or the paths listed in a .txt file, with `--classnames` required). Other builders
register with `register_builder`, e.g. the demo's Fashion-MNIST shifts.

No training split depends on the seed of a run or, under `--limit`, on labels: the fallback
50/20/30 split has a fixed seed, and `--limit` takes a seeded uniform subset of a training split
(class-balanced subsets only for evaluation splits).
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from collections import defaultdict
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

from latteclip.config import PROMPT_SETS
from latteclip.data.datasets import DatasetInfo, ImageDataset, Sample
from latteclip.data.sources import FolderSource, ImageSource, ZipSource
from latteclip.errors import LatteclipError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SPLITS = ("train", "test", "train_only", "val")
FALLBACK_SPLIT_SEED = 0  # the 50/20/30 split of datasets without a split file: the same split for every --seed
GENERIC_TEMPLATES = ["a photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.", "a picture of a {}."]


@dataclass
class DatasetOptions:
    """Everything besides name/root/split that decides which samples and names a dataset has."""

    limit: int | None = None
    seed: int = 0
    classnames_file: str | None = None
    templates_file: str | None = None
    domain: str | None = None
    split_file: str | None = None  # a path, "none" for the seeded split, None to look for the CoOp file
    prompt_set: str = "latteclip"  # paper datasets: latteclip (the authors' names and template) or clip

    @classmethod
    def from_run(cls, config: Mapping[str, Any]) -> "DatasetOptions":
        """The options a run's (resolved or saved) config names; a run saved before prompt sets existed used CLIP's."""
        return cls(
            limit=config.get("limit"),
            seed=config.get("seed", 0),
            classnames_file=config.get("classnames"),
            templates_file=config.get("templates"),
            domain=config.get("domain"),
            split_file=config.get("split_file"),
            prompt_set=config.get("prompt_set", "clip"),
        )




Builder = Callable[[str, str, str, DatasetOptions], tuple[DatasetInfo, dict[str, list[Sample]], ImageSource]]
_BUILDERS: dict[str, Builder] = {}


def register_builder(name: str, builder: Builder) -> None:
    """Make `name` (or every name starting with `name` when it ends in '-') buildable."""
    _BUILDERS[name] = builder


def spec_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("latteclip.data").joinpath("specs").iterdir() if p.name.endswith(".json"))


def available_datasets() -> list[str]:
    return spec_names() + ["folder", "csv", "images"] + sorted(_BUILDERS)


def load_spec(name: str) -> dict:
    path = resources.files("latteclip.data").joinpath("specs", f"{name}.json")
    return json.loads(path.read_text())


def build_dataset(
    name: str,
    root: str | Path,
    split: str = "train",
    transform: Callable | None = None,
    options: DatasetOptions | None = None,
) -> ImageDataset:
    """Build one split. `train` is CoOp train + val (what unsupervised methods see); `test` is evaluation."""
    options = options or DatasetOptions()
    if split not in SPLITS:
        raise LatteclipError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
    root = str(root)
    builder = _find_builder(name)
    info, parts, source = builder(name, root, split, options)
    if split == "train":
        samples = parts["train"] + parts["val"]
    elif split == "train_only":
        samples = parts["train"]
    else:
        samples = parts[split]
    if options.limit is not None:
        if options.limit < 1:
            raise LatteclipError(f"--limit must be a positive number of images per split, got {options.limit}")
        if split in ("train", "train_only"):  # what training sees must not depend on labels
            samples = uniform_subset(samples, options.limit, options.seed)
        else:
            samples = stratified_subset(samples, options.limit, options.seed)
    if not samples and split == "test" and not info.labelled:
        raise LatteclipError(f"--dataset {name} has no labels, so no test split: pass --eval-dataset NAME --eval-root PATH "
                             "(a labelled copy with the same classes) to measure accuracy")
    if not samples and split in ("train", "test"):
        raise LatteclipError(f"dataset {name} under {root} has no {split} images (split: {info.split_source})")
    info = _apply_overrides(info, options)
    return ImageDataset(info, samples, source, split, transform)


def build_info(name: str, root: str | Path, options: DatasetOptions | None = None) -> DatasetInfo:
    """A dataset's names, prompts and domain word (what a method is built from), whichever splits it has."""
    options = options or DatasetOptions()
    info, _, _ = _find_builder(name)(name, str(root), "test", options)
    return _apply_overrides(info, options)


def _class_match_key(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def align_classes(dataset: ImageDataset, info: DatasetInfo) -> ImageDataset:
    """`dataset` (labelled) with its labels renumbered to the classes of `info`, matched by class key or name.

    Lets a run on unlabeled images be measured on any labelled copy whose classes have the same names,
    whatever order that dataset numbers them in.
    """
    target: dict[str, int] = {}
    for index, (key, name) in enumerate(zip(info.class_keys, info.classnames)):
        for text in (key, name):
            target.setdefault(_class_match_key(text), index)
    mapping: dict[int, int] = {}
    for label, (key, name) in enumerate(zip(dataset.info.class_keys, dataset.info.classnames)):
        found = target.get(_class_match_key(key), target.get(_class_match_key(name)))
        if found is None:
            raise LatteclipError(f"evaluation dataset {dataset.info.name} has class '{key}', which is none of the run's class "
                                 f"names ({', '.join(info.classnames[:10])}): name the same classes in --classnames")
        mapping[label] = found
    if len(set(mapping.values())) != len(mapping):
        raise LatteclipError(f"evaluation dataset {dataset.info.name} has two classes matching one class name of the run")
    samples = [Sample(s.path, mapping[s.label]) for s in dataset.samples]
    aligned = replace(info, name=dataset.info.name, split_source=dataset.info.split_source, labelled=True)
    return ImageDataset(aligned, samples, dataset.source, dataset.split, dataset.transform)


def _find_builder(name: str) -> Builder:
    if name in _BUILDERS:
        return _BUILDERS[name]
    for prefix, builder in _BUILDERS.items():
        if prefix.endswith("-") and name.startswith(prefix):
            return builder
    if name == "folder":
        return _build_folder
    if name == "csv":
        return _build_csv
    if name == "images":
        return _build_images
    if name in spec_names():
        return _build_spec
    raise LatteclipError(f"unknown dataset '{name}': choose one of {', '.join(available_datasets())}")


def stratified_subset(samples: list[Sample], limit: int, seed: int) -> list[Sample]:
    """A seeded subset of `limit` samples that takes classes in turn, so every class is present."""
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        by_class[s.label].append(s)
    rng = random.Random(seed)
    queues = []
    for label in sorted(by_class):
        items = list(by_class[label])
        rng.shuffle(items)
        queues.append(items)
    chosen: list[Sample] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(chosen) < limit:
                chosen.append(q[depth])
        depth += 1
    return sorted(chosen, key=lambda s: (s.label, s.path))


def uniform_subset(samples: list[Sample], limit: int, seed: int) -> list[Sample]:
    """A seeded subset of `limit` samples drawn by position only (labels unread), in their original order."""
    if limit >= len(samples):
        return list(samples)
    chosen = sorted(random.Random(seed).sample(range(len(samples)), limit))
    return [samples[i] for i in chosen]


FALLBACK_SPLIT = f"seeded 50/20/30 (fixed seed {FALLBACK_SPLIT_SEED})"


def seeded_split(by_class: dict[int, list[str]]) -> dict[str, list[Sample]]:
    """Per class: shuffle with the fixed split seed, then 50% train, 20% val, 30% test.

    The seed is not the run's: runs with other seeds must train and test on the same images.
    """
    parts: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for label in sorted(by_class):
        paths = sorted(by_class[label])
        random.Random(f"{FALLBACK_SPLIT_SEED}-{label}").shuffle(paths)
        n_train = round(0.5 * len(paths))
        n_val = round(0.2 * len(paths))
        parts["train"] += [Sample(p, label) for p in paths[:n_train]]
        parts["val"] += [Sample(p, label) for p in paths[n_train : n_train + n_val]]
        parts["test"] += [Sample(p, label) for p in paths[n_train + n_val :]]
    return parts


def _read_names_file(path: str, what: str) -> list[str] | dict[str, str]:
    file = Path(path)
    if not file.is_file():
        raise LatteclipError(f"{what} file {path} does not exist")
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise LatteclipError(f"{what} file {path} is not valid JSON: {err}") from err
        if isinstance(data, (list, dict)):
            return data
        raise LatteclipError(f"{what} file {path} must hold a JSON list or object")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if all(":" in ln or "," in ln or "\t" in ln for ln in lines) and what == "class names":
        mapping = {}
        for ln in lines:
            for sep in ("\t", ":", ","):
                if sep in ln:
                    key, value = ln.split(sep, 1)
                    mapping[key.strip()] = value.strip()
                    break
        return mapping
    return lines


def _class_list(path: str) -> tuple[list[str], list[str]]:
    """Class keys and prompt names of unlabeled data: one name per line, a JSON list, or a JSON {key: name} object."""
    file = Path(path)
    if file.suffix == ".json":
        names = _read_names_file(path, "class names")
    elif file.is_file():
        names = [ln.strip() for ln in file.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]
    else:
        raise LatteclipError(f"class names file {path} does not exist")
    keys, values = (list(names), list(names.values())) if isinstance(names, dict) else (list(names), list(names))
    if not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise LatteclipError(f"class names file {path} must list one or more class names (one per line, or a JSON list)")
    if len(set(values)) != len(values):
        raise LatteclipError(f"class names file {path} names a class twice: {sorted(v for v in values if values.count(v) > 1)[0]}")
    return [str(k) for k in keys], values


def _apply_overrides(info: DatasetInfo, options: DatasetOptions) -> DatasetInfo:
    if options.classnames_file and info.labelled:  # unlabeled data took its names from this file already
        names = _read_names_file(options.classnames_file, "class names")
        if isinstance(names, dict):
            unknown = sorted(set(names) - set(info.class_keys))
            if unknown:
                raise LatteclipError(
                    f"class names file {options.classnames_file} names unknown classes {unknown[:5]}; "
                    f"known: {info.class_keys[:10]}"
                )
            info.classnames = [names.get(k, n) for k, n in zip(info.class_keys, info.classnames)]
        else:
            if len(names) != info.num_classes:
                raise LatteclipError(
                    f"class names file {options.classnames_file} has {len(names)} names for {info.num_classes} classes"
                )
            info.classnames = list(names)
    if options.templates_file:
        templates = _read_names_file(options.templates_file, "templates")
        if not isinstance(templates, list) or not templates or not all("{}" in t for t in templates):
            raise LatteclipError(f"templates file {options.templates_file} must list templates that contain '{{}}'")
        info.templates = list(templates)
    if options.domain:
        info.domain = options.domain
    return info


def _locate(spec: dict, root: Path) -> tuple[ImageSource, Path]:
    """Find the images of a spec dataset under `root` (a folder, or the archive itself)."""
    image_dir = spec["image_dir"]
    if root.is_file():
        if root.suffix != ".zip":
            raise LatteclipError(f"dataset root {root} is a file but not a .zip archive")
        whole = ZipSource(root, "")
        return whole.within(_zip_image_dir(whole, image_dir)), root.parent
    if image_dir and root.name == image_dir and root.is_dir():  # the image folder itself (e.g. .../2750)
        return FolderSource(root), root.parent
    for folder in spec["folders"]:
        base = root / folder if folder else root
        if image_dir and (base / image_dir).is_dir():
            return FolderSource(base / image_dir), base
        if not image_dir and base.is_dir() and any(base.iterdir()):
            return FolderSource(base), base
        for archive in spec.get("archives", []):
            if (base / archive).is_file():
                return _locate(spec, base / archive)
    looked = ", ".join(str((root / f / image_dir) if f else (root / image_dir)) for f in spec["folders"])
    raise LatteclipError(f"no {spec['name']} images found under {root} (looked for {looked})")


def _zip_image_dir(whole: ZipSource, image_dir: str) -> str:
    """The archive's folder of class folders: `image_dir` at any depth (`2750/`, `EuroSAT/2750/`), else a lone top folder."""
    marker = f"/{image_dir}/"
    if image_dir:
        for name in whole.list_files():
            position = f"/{name}".find(marker)
            if position >= 0:
                return name[: position + len(image_dir)]
    top = whole.top_folders()
    return top[0] if len(top) == 1 else ""


def _find_split_file(spec: dict, base: Path, root: Path, options: DatasetOptions) -> Path | None:
    if options.split_file == "none":
        return None
    if options.split_file:
        path = Path(options.split_file)
        if not path.is_file():
            raise LatteclipError(f"split file {path} does not exist")
        return path
    name = spec.get("split_file")
    if not name:
        return None
    for candidate in (base / name, root / name, (root if root.is_dir() else root.parent) / name):
        if candidate.is_file():
            return candidate
    bundled = resources.files("latteclip.data").joinpath("splits", f"{name}.gz")
    if bundled.is_file():
        return Path(str(bundled))
    return None


def _read_split_file(path: Path) -> dict:
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise LatteclipError(f"split file {path} cannot be read: {err}") from err
    if not isinstance(data, dict) or not all(k in data for k in ("train", "val", "test")):
        raise LatteclipError(f"split file {path} must hold 'train', 'val' and 'test' lists")
    return data


def _split_entries(data: dict, part: str, split_path: Path) -> list[tuple[str, int, str]]:
    """The [path, label, class name] entries of one part of a CoOp split file, checked."""
    entries = []
    for number, entry in enumerate(data[part]):
        try:
            entries.append((str(entry[0]), int(entry[1]), str(entry[2]) if len(entry) > 2 else ""))
        except (TypeError, ValueError, IndexError, KeyError) as err:
            raise LatteclipError(
                f"split file {split_path}: entry {number} of '{part}' ({entry!r}) is not [path, label, class name]"
            ) from err
    return entries


def _check_present(parts: dict[str, list[Sample]], source: ImageSource, split_path: Path, split: str) -> None:
    wanted = parts["train"] + parts["val"] if split in ("train", "train_only", "val") else parts["test"]
    missing = [s.path for s in wanted if not source.exists(s.path)]
    if missing:
        raise LatteclipError(
            f"split file {split_path} names {len(missing)} images missing under {source.location} "
            f"(first: {missing[0]}); check --root or pass the matching --split-file"
        )


def coop_classname(name: str) -> str:
    """CoOp's class name as the LatteCLIP authors wrote it in prompts: lower-cased, underscores as spaces."""
    return name.replace("_", " ").lower()


def _build_spec(name: str, root: str, split: str, options: DatasetOptions):
    if options.prompt_set not in PROMPT_SETS:
        raise LatteclipError(f"--prompt-set {options.prompt_set} is not one of {', '.join(PROMPT_SETS)}")
    spec = load_spec(name)
    root_path = Path(root)
    if not root_path.exists():
        raise LatteclipError(f"dataset root {root} does not exist")
    source, base = _locate(spec, root_path)
    split_path = _find_split_file(spec, base, root_path, options)
    if split_path is None and spec.get("split_lists") and options.split_file != "none":
        keys, parts, split_source = _read_split_lists(spec["split_lists"], base, name)
        _check_present(parts, source, base / spec["split_lists"]["test" if split == "test" else "train"], split)
        coop_names = {k: coop_classname(k) for k in keys}
    elif split_path is None:
        if spec["class_key"] != "folder":
            raise LatteclipError(
                f"{name} needs its split file {spec.get('split_file') or '(CoOp split)'}: pass --split-file PATH"
            )
        keys, by_class = _scan_class_folders(source)
        parts = seeded_split(by_class)
        split_source = FALLBACK_SPLIT
        coop_names = {k: coop_classname(k) for k in keys}
    else:
        data = _read_split_file(split_path)
        key_of: dict[int, str] = {}
        coop_names = {}
        parts = {}
        for part in ("train", "val", "test"):
            parts[part] = []
            for path, label, cname in _split_entries(data, part, split_path):
                key = path.split("/")[0] if spec["class_key"] == "folder" else cname
                if key_of.setdefault(label, key) != key:
                    raise LatteclipError(f"split file {split_path}: label {label} is used for both {key_of[label]} and {key}")
                coop_names.setdefault(key, coop_classname(cname or key))
                parts[part].append(Sample(path, label))
        if sorted(key_of) != list(range(len(key_of))):
            raise LatteclipError(f"split file {split_path}: labels are not 0..{len(key_of) - 1}")
        keys = [key_of[i] for i in range(len(key_of))]
        _check_present(parts, source, split_path, split)
        split_source = str(split_path)
    if options.prompt_set == "latteclip" and "latteclip_template" in spec:
        classnames, templates = [coop_names[k] for k in keys], [spec["latteclip_template"]]
    else:
        classnames, templates = [spec["classnames"].get(k, k.replace("_", " ")) for k in keys], list(spec["templates"])
    info = DatasetInfo(name, classnames, keys, templates, spec["domain"], split_source, dict(spec.get("prompts", {})))
    return info, parts, source


def _read_split_lists(lists: dict[str, str], base: Path, name: str) -> tuple[list[str], dict[str, list[Sample]], str]:
    """The official split lists (FGVC-Aircraft: `images_variant_<part>.txt` lines "<image id> <class>" and the class
    order in `variants.txt`), which CoOp's layout and torchvision's download both keep next to `images/`."""
    files = {part: base / file for part, file in lists.items()}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise LatteclipError(f"{name}: {missing[0]} is missing (the dataset's split lists); pass --split-file PATH or "
                             "download the dataset again (latteclip data download)")
    keys = [line.strip() for line in files["classes"].read_text(encoding="utf-8").splitlines() if line.strip()]
    index = {key: i for i, key in enumerate(keys)}
    parts: dict[str, list[Sample]] = {}
    for part in ("train", "val", "test"):
        parts[part] = []
        for number, line in enumerate(files[part].read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            image, _, key = line.strip().partition(" ")
            if key not in index:
                raise LatteclipError(f"{files[part]}, line {number}: class '{key}' is not in {files['classes']}")
            parts[part].append(Sample(f"{image}.jpg", index[key]))
    return keys, parts, str(files["train"].parent)


def _scan_class_folders(source: ImageSource) -> tuple[list[str], dict[int, list[str]]]:
    """Class keys (sorted folder names) and the images under each; an empty class folder is an error."""
    folders = source.top_folders()
    if not folders:
        raise LatteclipError(f"{source.location} has no class folders (expected one folder of images per class)")
    index = {k: i for i, k in enumerate(folders)}
    by_class: dict[int, list[str]] = {i: [] for i in range(len(folders))}
    for f in source.list_files():
        if "/" in f and Path(f).suffix.lower() in IMAGE_EXTENSIONS:
            by_class[index[f.split("/")[0]]].append(f)
    empty = [folders[i] for i, v in by_class.items() if not v]
    if empty:
        raise LatteclipError(f"class folder {source.location.rstrip('/:')}/{empty[0]} has no images; remove it or add images")
    return folders, by_class


def _build_folder(name: str, root: str, split: str, options: DatasetOptions):
    path = Path(root)
    if not path.is_dir():
        raise LatteclipError(f"dataset root {root} is not a folder (--dataset folder wants a folder per class)")
    source = FolderSource(path)
    keys, by_class = _scan_class_folders(source)
    parts = _split_or_file(by_class, keys, source, options)
    info = DatasetInfo(path.name or "folder", list(keys), list(keys), list(GENERIC_TEMPLATES), options.domain or "object",
                       options.split_file if options.split_file not in (None, "none") else FALLBACK_SPLIT)
    return info, parts, source


def _split_or_file(by_class, keys, source, options: DatasetOptions) -> dict[str, list[Sample]]:
    """The seeded split, or the user's split file with each label taken from the image's class folder."""
    if not options.split_file or options.split_file == "none":
        return seeded_split(by_class)
    split_path = Path(options.split_file)
    if not split_path.is_file():
        raise LatteclipError(f"split file {split_path} does not exist")
    data = _read_split_file(split_path)
    index = {k: i for i, k in enumerate(keys)}
    parts: dict[str, list[Sample]] = {}
    for part in ("train", "val", "test"):
        parts[part] = []
        for path, _, _ in _split_entries(data, part, split_path):
            folder = path.split("/")[0]
            if folder not in index:
                raise LatteclipError(
                    f"split file {split_path} names {path}, which is not in a class folder of {source.location}"
                )
            parts[part].append(Sample(path, index[folder]))
    _check_present(parts, source, split_path, "train")
    _check_present(parts, source, split_path, "test")
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
    if rows and len(rows[0]) >= 2 and rows[0][0].lower() in CSV_PATH_HEADERS and rows[0][1].lower() in CSV_LABEL_HEADERS:
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


def _build_csv(name: str, root: str, split: str, options: DatasetOptions):
    path = Path(root)
    if not path.is_file():
        raise LatteclipError(f"CSV file {root} does not exist (--dataset csv wants --root FILE.csv with path,label rows)")
    rows = _read_csv_rows(path)
    keys = _label_order({r[1] for r in rows})
    index = {k: i for i, k in enumerate(keys)}
    source = FolderSource(path.parent)
    missing = [r[0] for r in rows if not source.exists(r[0])]
    if missing:
        raise LatteclipError(f"CSV file {root} names {len(missing)} missing images (first: {missing[0]}), paths are relative to {path.parent}")
    with_split = [len(r) >= 3 and bool(r[2]) for r in rows]
    if any(with_split):
        if not all(with_split):
            row = with_split.index(False) + 1
            raise LatteclipError(f"CSV file {root}: row {row} has no split column while others do; give every row train, val or test")
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
    info = DatasetInfo(path.stem, list(keys), list(keys), list(GENERIC_TEMPLATES), options.domain or "object", split_source)
    return info, parts, source


def _build_images(name: str, root: str, split: str, options: DatasetOptions):
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
        files = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]
        missing = [f for f in files if not source.exists(f)]
        if not files or missing:
            raise LatteclipError(f"image list {root} " + (f"names {len(missing)} missing files (first: {missing[0]}); "
                                 f"paths are relative to {path.parent}" if missing else "lists no images"))
    else:
        raise LatteclipError(f"--root {root} must be a folder of images or a .txt file listing image paths (--dataset images)")
    keys, classnames = _class_list(options.classnames_file)
    parts = {"train": [Sample(f, -1) for f in files], "val": [], "test": []}
    info = DatasetInfo(path.stem or "images", classnames, keys, list(GENERIC_TEMPLATES), options.domain or "object",
                       f"every image of {root} (unlabeled)", labelled=False)
    return info, parts, source
