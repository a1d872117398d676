"""The paper datasets, described by JSON files in `data/specs/`, with CoOp's split files.

A spec names the layout (image folder, where it may sit, archives), the CoOp split file, the class names keyed by
folder or split-file name, the templates, the domain word and the dataset's LMM prompts. Two prompt sets name the
classes (`--prompt-set`):
- `latteclip` (default): what the LatteCLIP authors ran, so what Table 1 measured: CoOp's class names (the split
  file's) lower-cased, with one template per dataset (the spec's `latteclip_template`);
- `clip`: CLIP's own class names and template list (`classnames`, `templates`).
Without a split file, a dataset of class folders takes the fixed-seed fallback split (`subsets.py`).
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

from latteclip.config import PROMPT_SETS
from latteclip.data.datasets import DatasetInfo, DatasetOptions, Sample
from latteclip.data.sources import FolderSource, ImageSource, ZipSource, scan_class_folders
from latteclip.data.subsets import FALLBACK_SPLIT, seeded_split
from latteclip.errors import LatteclipError


def spec_names() -> list[str]:
    return sorted(
        p.name[:-5] for p in resources.files("latteclip.data").joinpath("specs").iterdir() if p.name.endswith(".json")
    )


def load_spec(name: str) -> dict:
    path = resources.files("latteclip.data").joinpath("specs", f"{name}.json")
    return json.loads(path.read_text())


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
    """The archive's folder of class folders: `image_dir` at any depth (`2750/`, `EuroSAT/2750/`), else a lone top
    folder."""
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


def read_split_file(path: Path) -> dict:
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, json.JSONDecodeError) as err:
        raise LatteclipError(f"split file {path} cannot be read: {err}") from err
    if not isinstance(data, dict) or not all(k in data for k in ("train", "val", "test")):
        raise LatteclipError(f"split file {path} must hold 'train', 'val' and 'test' lists")
    return data


def split_entries(data: dict, part: str, split_path: Path) -> list[tuple[str, int, str]]:
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


def check_present(parts: dict[str, list[Sample]], source: ImageSource, split_path: Path, split: str) -> None:
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


def build_spec_dataset(name: str, root: str, split: str, options: DatasetOptions):
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
        check_present(parts, source, base / spec["split_lists"]["test" if split == "test" else "train"], split)
        coop_names = {k: coop_classname(k) for k in keys}
    elif split_path is None:
        if spec["class_key"] != "folder":
            raise LatteclipError(
                f"{name} needs its split file {spec.get('split_file') or '(CoOp split)'}: pass --split-file PATH"
            )
        keys, by_class = scan_class_folders(source)
        parts = seeded_split(by_class)
        split_source = FALLBACK_SPLIT
        coop_names = {k: coop_classname(k) for k in keys}
    else:
        data = read_split_file(split_path)
        key_of: dict[int, str] = {}
        coop_names = {}
        parts = {}
        for part in ("train", "val", "test"):
            parts[part] = []
            for path, label, cname in split_entries(data, part, split_path):
                key = path.split("/")[0] if spec["class_key"] == "folder" else cname
                if key_of.setdefault(label, key) != key:
                    raise LatteclipError(
                        f"split file {split_path}: label {label} is used for both {key_of[label]} and {key}"
                    )
                coop_names.setdefault(key, coop_classname(cname or key))
                parts[part].append(Sample(path, label))
        if sorted(key_of) != list(range(len(key_of))):
            raise LatteclipError(f"split file {split_path}: labels are not 0..{len(key_of) - 1}")
        keys = [key_of[i] for i in range(len(key_of))]
        check_present(parts, source, split_path, split)
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
        raise LatteclipError(
            f"{name}: {missing[0]} is missing (the dataset's split lists); pass --split-file PATH or "
            "download the dataset again (latteclip data download)"
        )
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
