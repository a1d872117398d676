"""Name and template files: `--classnames` and `--templates` over a dataset's own names, and the class list of
unlabeled images (one name per line, a JSON list, or a JSON {key: name} object)."""

from __future__ import annotations

import json
from pathlib import Path

from latteclip.data.datasets import DatasetInfo, DatasetOptions
from latteclip.errors import LatteclipError


def read_names_file(path: str, what: str) -> list[str] | dict[str, str]:
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


def read_class_list(path: str) -> tuple[list[str], list[str]]:
    """Class keys and prompt names of unlabeled data: one name per line, a JSON list, or a JSON {key: name} object."""
    file = Path(path)
    if file.suffix == ".json":
        names = read_names_file(path, "class names")
    elif file.is_file():
        names = [
            ln.strip() for ln in file.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")
        ]
    else:
        raise LatteclipError(f"class names file {path} does not exist")
    keys, values = (list(names), list(names.values())) if isinstance(names, dict) else (list(names), list(names))
    if not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise LatteclipError(
            f"class names file {path} must list one or more class names (one per line, or a JSON list)"
        )
    if len(set(values)) != len(values):
        raise LatteclipError(
            f"class names file {path} names a class twice: {sorted(v for v in values if values.count(v) > 1)[0]}"
        )
    return [str(k) for k in keys], values


def apply_overrides(info: DatasetInfo, options: DatasetOptions) -> DatasetInfo:
    if options.classnames_file and info.labelled:  # unlabeled data took its names from this file already
        names = read_names_file(options.classnames_file, "class names")
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
        templates = read_names_file(options.templates_file, "templates")
        if not isinstance(templates, list) or not templates or not all("{}" in t for t in templates):
            raise LatteclipError(f"templates file {options.templates_file} must list templates that contain '{{}}'")
        info.templates = list(templates)
    if options.domain:
        info.domain = options.domain
    return info
