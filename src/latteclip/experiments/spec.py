"""An experiment as data: a pre-training, target domains, shared run options and method entries.

One YAML file (`configs/demo.yaml` for the demo and the benchmark) lists the method entries, so that a
new method is one more entry. Hyper-parameters listed under an entry's `search` are chosen per target
domain on held-out training images (the `fmnist-heldout-<shift>` view); test labels are never read for
a choice. An optional `describer` section names a second CLIP pre-trained the same way (the offline
describer, the stand-in for the paper's LMM, and the model of entries with `weights: describer`).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from latteclip.config import FIELD_NAMES, read_yaml
from latteclip.errors import LatteclipError
from latteclip.methods import get_method

ENTRY_KEYS = {"name", "method", "label", "search", "needs", "weights"}
WEIGHTS = ("source", "describer")  # the pre-trained models an entry may start from


@dataclass
class MethodEntry:
    """One row of the table: a method with its own options on top of the shared run options."""

    name: str  # unique among the entries; names the run folders
    method: str
    label: str  # what the table calls it
    overrides: dict[str, Any] = field(default_factory=dict)  # RunConfig fields (method_options included)
    search: dict[str, list[Any]] = field(default_factory=dict)  # RunConfig field -> candidate values
    needs: list[str] = field(default_factory=list)  # stages that must run first, e.g. descriptions
    weights: str = "source"  # source: the adapted model; describer: the describer's model and weights

    def candidates(self) -> list[dict[str, Any]]:
        """Every combination of the search grid (one empty choice when there is no grid)."""
        keys = sorted(self.search)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.search[k] for k in keys))]


@dataclass
class Experiment:
    """A pre-training, target domains, shared run options and method entries: one experiment file, resolved."""

    source: str  # where the experiment was read from, for messages
    root: str
    model: str
    output: Path
    dataset_prefix: str
    pretrain: dict[str, Any]
    shifts: list[str]
    run: dict[str, Any]
    methods: list[MethodEntry]
    seeds: list[int]
    threads: int = 0  # torch threads; 0: one per idle core
    report: str | None = None  # the entry whose runs the per-shift reports are about
    describe: dict[str, Any] = field(default_factory=dict)  # options of the description stage (`latteclip describe`)
    describer: dict[str, Any] = field(default_factory=dict)  # model: NAME, pretrain: {run options}; empty: none
    weights: dict[str, Path] = field(default_factory=dict)  # "source" / "describer" -> weights file, once pre-trained
    choose: bool = False  # choose each entry's `search` options on held-out images (the benchmark) before its runs

    def target(self, shift: str) -> str:
        return f"{self.dataset_prefix}-{shift}"

    def heldout(self, shift: str) -> str:
        return f"{self.dataset_prefix}-heldout-{shift}"

    def label_free_trainers(self) -> list[MethodEntry]:
        """The entries whose method trains without reading training labels: what the pages set against the baselines."""
        methods = [get_method(entry.method) for entry in self.methods]
        return [entry for entry, m in zip(self.methods, methods) if m.trains and not m.reads_train_labels]


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (
            deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def _check_fields(values: dict[str, Any], where: str) -> None:
    unknown = sorted(set(values) - FIELD_NAMES)
    if unknown:
        raise LatteclipError(f"{where}: unknown run option(s) {', '.join(unknown)}")


def _parse_entry(raw: Any, where: str) -> MethodEntry:
    if not isinstance(raw, dict) or "method" not in raw:
        raise LatteclipError(f"{where}: each entry of 'methods' needs at least 'method: NAME'")
    overrides = {k: v for k, v in raw.items() if k not in ENTRY_KEYS}
    _check_fields(overrides, f"{where} ({raw['method']})")
    search = raw.get("search") or {}
    if not isinstance(search, dict) or not all(isinstance(v, list) and v for v in search.values()):
        raise LatteclipError(f"{where} ({raw['method']}): 'search' maps a run option to a non-empty list of values")
    _check_fields(search, f"{where} ({raw['method']}) search")
    name = str(raw.get("name", raw["method"]))
    weights = str(raw.get("weights", "source"))
    if weights not in WEIGHTS:
        raise LatteclipError(f"{where} ({raw['method']}): 'weights: {weights}' must be one of {', '.join(WEIGHTS)}")
    return MethodEntry(
        name, raw["method"], str(raw.get("label", name)), overrides, search, list(raw.get("needs") or []), weights
    )


def package_experiment_file(name: str) -> Path:
    """A packaged experiment: configs/experiments/NAME.yaml (paper, domain-shift), else configs/NAME.yaml (demo)."""
    experiments = resources.files("latteclip").joinpath("configs", "experiments", f"{name}.yaml")
    if experiments.is_file():
        return Path(str(experiments))
    return Path(str(resources.files("latteclip").joinpath("configs", f"{name}.yaml")))


TOP_KEYS = {
    "root",
    "model",
    "output",
    "threads",
    "seeds",
    "dataset_prefix",
    "pretrain",
    "shifts",
    "run",
    "methods",
    "more_methods",
    "report",
    "describe",
    "describer",
    "choose",
}


def _check_top_keys(data: dict[str, Any], path: str | Path) -> None:
    """Top-level keys are experiment settings or variants (a section of settings, like `quick`)."""
    for key, value in data.items():
        if key in TOP_KEYS:
            continue
        if not isinstance(value, dict) or not set(value) <= TOP_KEYS:
            raise LatteclipError(
                f"{path}: unknown setting '{key}' (known: {', '.join(sorted(TOP_KEYS))}, or a variant section of them)"
            )


def _extended(data: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """`extends: {file: F, variant: V}`: the experiment of file F (relative to this one) with its section V applied,
    then this file's settings on top (the benchmark is the demo's file with its own pre-training)."""
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, dict) or "file" not in base:
        raise LatteclipError(f"{path}: 'extends' holds file: EXPERIMENT.yaml and optionally variant: SECTION")
    extended = Path(path).parent / base["file"]
    parent = files_rebased(read_yaml(extended), extended.parent, Path(path).parent)
    variant = base.get("variant")
    if variant and variant not in parent:
        raise LatteclipError(f"{path}: {base['file']} has no '{variant}' section")
    merged = deep_merge(parent, parent[variant]) if variant else parent
    return deep_merge({k: v for k, v in merged.items() if k in TOP_KEYS}, data)


FILE_OPTIONS = ("class_descriptions",)  # method options naming a file, relative to the experiment file naming it


def files_rebased(data: Any, folder: Path, new_folder: Path) -> Any:
    """`data` with every relative file a method option names, relative to `folder`, made relative to `new_folder`:
    an extending file keeps the files of the file it extends (the benchmark's CoFT+ entry names the class
    descriptions beside the demo's), and its runs and pages name them the same on every machine."""
    if isinstance(data, list):
        return [files_rebased(item, folder, new_folder) for item in data]
    if not isinstance(data, dict):
        return data
    data = {key: files_rebased(value, folder, new_folder) for key, value in data.items()}
    options = data.get("method_options")
    if isinstance(options, dict):
        data["method_options"] = {
            key: os.path.relpath(folder / value, new_folder)
            if key in FILE_OPTIONS and isinstance(value, str) and value and not Path(value).is_absolute()
            else value
            for key, value in options.items()
        }
    return data


def load_experiment(
    path: str | Path, variant: str | None = None, overrides: dict[str, Any] | None = None
) -> Experiment:
    """Read an experiment file; `variant` (e.g. `quick`) deep-merges the file's section of that name."""
    data = _extended(read_yaml(path), path)
    _check_top_keys(data, path)
    if variant:
        if variant not in data:
            raise LatteclipError(f"{path} has no '{variant}' section")
        data = deep_merge(data, data[variant])
    data = deep_merge(data, overrides or {})
    for key in ("pretrain", "run"):
        _check_fields(data.get(key) or {}, f"{path}: {key}")
    methods = [_parse_entry(raw, str(path)) for raw in data.get("methods") or []]
    if not methods:
        raise LatteclipError(f"{path}: 'methods' lists no method")
    # `more_methods` (e.g. the benchmark's ablations) are appended, so a variant adds rows without repeating the list
    methods += [_parse_entry(raw, str(path)) for raw in data.get("more_methods") or []]
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise LatteclipError(f"{path}: two method entries share a name; give one a distinct 'name:'")
    if data.get("report") is not None and data["report"] not in names:
        raise LatteclipError(f"{path}: 'report: {data['report']}' names no method entry (entries: {', '.join(names)})")
    shifts = list(data.get("shifts") or [])
    if not shifts:
        raise LatteclipError(f"{path}: 'shifts' lists no target domain")
    return Experiment(
        source=str(path),
        root=str(data.get("root", "bundled")),
        model=str(data.get("model", "latte-fmnist")),
        output=Path(data.get("output", "runs/domain-shift")),
        dataset_prefix=str(data.get("dataset_prefix", "fmnist")),
        pretrain=dict(data.get("pretrain") or {}),
        shifts=shifts,
        run=dict(data.get("run") or {}),
        methods=methods,
        seeds=[int(s) for s in data.get("seeds", [0])],
        threads=int(data.get("threads", 0)),
        report=data.get("report"),
        describe=dict(data.get("describe") or {}),
        describer=_describer_section(data.get("describer"), path, methods),
        choose=bool(data.get("choose", False)),
    )


def _describer_section(raw: Any, path: str | Path, methods: list[MethodEntry]) -> dict[str, Any]:
    describer = dict(raw or {})
    unknown = sorted(set(describer) - {"model", "pretrain"})
    if describer and (unknown or "model" not in describer):
        raise LatteclipError(
            f"{path}: 'describer' holds model: NAME and pretrain: {{run options}}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    _check_fields(describer.get("pretrain") or {}, f"{path}: describer: pretrain")
    needing = [entry.name for entry in methods if entry.weights == "describer"]
    if needing and not describer:
        raise LatteclipError(
            f"{path}: entries {', '.join(needing)} start from 'weights: describer' but there is no 'describer' section"
        )
    return describer
