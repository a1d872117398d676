"""An experiment over paper datasets (`configs/experiments/paper.yaml`): datasets, entries, seeds and tables.

Each (dataset, entry, seed) is one independent run with its own folder `OUTPUT/DATASET/ENTRY-sSEED`, its data
under the one `--data-root`, so runs can go
to any launcher and a stopped experiment resumes run by run. Entries that read descriptions share one description
stage per dataset, group size, share of the training images (`train_fraction`) and seed, run before them; their
store is `OUTPUT/descriptions/DATASET-gSIZE.sqlite` (a share's images are described once, its groups are its own).
Entries with `needs: [class_texts]` (CoFT+) read an LLM's descriptions of each class name, asked once per dataset
(describe kind `classes`, store `OUTPUT/descriptions/DATASET-classes.sqlite`).
An entry names the published rows it reproduces (`tables: {"1": [LATTECLIP]}`), which the side-by-side page reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latteclip.config import FIELD_NAMES, RunConfig, read_yaml, resolve_config
from latteclip.errors import LatteclipError
from latteclip.experiments.runner import offline_describer_name
from latteclip.experiments.spec import (
    Experiment,
    deep_merge,
    load_experiment,
    package_experiment_file,
)

PLAN_KEYS = {"output", "data_root", "seeds", "datasets", "run", "describe", "entries", "tables"}
PLAN_ENTRY_KEYS = {"name", "method", "label", "kind", "needs", "describe", "tables"}
ENTRY_KINDS = ("train", "lmm_zeroshot")  # lmm_zeroshot: the LMM picks each test image's class (no training)
PACKAGED = ("paper", "domain-shift", "demo")


@dataclass(frozen=True)
class PlanEntry:
    """One row: a method with its options; `describe` options of its own description stage (e.g. group_size)."""

    name: str
    method: str
    label: str
    kind: str = "train"
    needs: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
    describe: dict[str, Any] = field(default_factory=dict)
    # table -> the published row it reproduces (None: a row of ours only)
    tables: dict[str, tuple[str, ...] | None] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedRun:
    dataset: str
    entry: PlanEntry
    seed: int
    config: RunConfig

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.entry.name}-s{self.seed}"


@dataclass
class Plan:
    source: str
    output: Path
    data_root: Path | None
    datasets: list[str]
    seeds: list[int]
    run: dict[str, Any]
    describe: dict[str, Any]
    entries: list[PlanEntry]
    tables: dict[str, str]  # table number -> its title on our page
    dataset_values: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> its own run options (root...)

    def dataset_root(self, dataset: str) -> str:
        """Each dataset is found in DIR, DIR/<name> or its archive there (data/specs); '' before --data-root is given.
        A dataset listed with its own `root` is read there."""
        own = self.dataset_values.get(dataset, {}).get("root")
        return str(own) if own else str(self.data_root) if self.data_root else ""

    def describe_options(self, entry: PlanEntry) -> dict[str, Any]:
        return {**self.describe, **entry.describe}

    def runs(self) -> list[PlannedRun]:
        """Every (dataset, entry, seed), datasets outermost: a dataset's runs are listed together."""
        return [
            PlannedRun(dataset, entry, seed, self.run_config(dataset, entry, seed))
            for dataset in self.datasets
            for entry in self.entries
            for seed in self.seeds
        ]

    def run_config(self, dataset: str, entry: PlanEntry, seed: int) -> RunConfig:
        values = deep_merge(
            {
                "method": entry.method,
                "dataset": dataset,
                "seed": seed,
                "output": str(self.output),
                "name": f"{dataset}/{entry.name}-s{seed}",
            },
            self.dataset_values.get(dataset, {}),
        )
        values = deep_merge(values, {"root": self.dataset_root(dataset), **entry.overrides})
        values = deep_merge(values, self.run)  # the experiment's overrides apply to every run
        if "class_texts" in entry.needs:  # an LLM's descriptions of the class names (CoFT+), one store per dataset
            values["store"] = str(self.output / "descriptions" / f"{dataset}-classes.sqlite")
        if "descriptions" in entry.needs or entry.kind == "lmm_zeroshot":
            group_size = self.describe_options(entry).get("group_size", 4)
            values["store"] = str(self.output / "descriptions" / f"{dataset}-g{group_size}.sqlite")
        config = resolve_config(values)
        if "descriptions" in entry.needs and "described_by" not in config.method_options:
            # the offline describer stores its texts under a name of its own: the run reads that set
            options = self.describe_options(entry)
            described_by = offline_describer_name(options, config.dataset, config.model, config.pretrained)
            if described_by:
                config = resolve_config(deep_merge(values, {"method_options": {"described_by": described_by}}))
        return config


def plan_file(name_or_path: str) -> Path:
    """A packaged experiment name (paper, domain-shift, demo) or a file."""
    if name_or_path in PACKAGED:
        return package_experiment_file(name_or_path)
    path = Path(name_or_path)
    if not path.is_file():
        raise LatteclipError(f"no experiment file {path}: give a YAML file or one of {', '.join(PACKAGED)}")
    return path


def _parse_entry(raw: Any, where: str) -> PlanEntry:
    if not isinstance(raw, dict) or "method" not in raw or "name" not in raw:
        raise LatteclipError(f"{where}: each entry needs 'name:' and 'method:'")
    overrides = {k: v for k, v in raw.items() if k not in PLAN_ENTRY_KEYS}
    unknown = sorted(set(overrides) - FIELD_NAMES)
    if unknown:
        raise LatteclipError(f"{where} ({raw['name']}): unknown run option(s) {', '.join(unknown)}")
    kind = str(raw.get("kind", "train"))
    if kind not in ENTRY_KINDS:
        raise LatteclipError(f"{where} ({raw['name']}): 'kind: {kind}' must be one of {', '.join(ENTRY_KINDS)}")
    tables = {str(k): (tuple(map(str, v)) if v is not None else None) for k, v in (raw.get("tables") or {}).items()}
    return PlanEntry(
        str(raw["name"]),
        str(raw["method"]),
        str(raw.get("label", raw["name"])),
        kind,
        tuple(raw.get("needs") or ()),
        overrides,
        dict(raw.get("describe") or {}),
        tables,
    )


def _parse_datasets(raw: Any, path: Path) -> dict[str, dict[str, Any]]:
    """`datasets:` lists paper dataset names, or mappings {name, dataset, root, other run options} (a folder dataset,
    a copy of one elsewhere); a relative root is relative to the experiment file."""
    parsed: dict[str, dict[str, Any]] = {}
    for item in raw or []:
        if not isinstance(item, dict):
            parsed[str(item)] = {}
            continue
        values = {k: v for k, v in item.items() if k != "name"}
        unknown = sorted(set(values) - FIELD_NAMES)
        if "name" not in item or unknown:
            raise LatteclipError(
                f"{path}: a dataset mapping holds name: NAME and run options (unknown: {', '.join(unknown) or 'none'})"
            )
        if values.get("root"):
            values["root"] = str((path.parent / values["root"]).resolve())
        parsed[str(item["name"])] = values
    if not parsed:
        raise LatteclipError(f"{path}: 'datasets' lists no dataset")
    return parsed


def _select(names: list[str], chosen: list[str] | None, what: str, where: str) -> list[str]:
    if not chosen:
        return names
    unknown = [name for name in chosen if name not in names]
    if unknown:
        raise LatteclipError(f"{where}: no {what} {', '.join(unknown)} (known: {', '.join(names)})")
    return [name for name in names if name in chosen]


def load_plan(
    name_or_path: str,
    datasets: list[str] | None = None,
    entries: list[str] | None = None,
    seeds: list[int] | None = None,
    tables: list[str] | None = None,
    data_root: str | None = None,
    output: str | None = None,
    run: dict[str, Any] | None = None,
    describe: dict[str, Any] | None = None,
) -> Plan:
    """Read an experiment file and narrow it: `--datasets`, `--entries`, `--tables` (entries of those tables), seeds."""
    path = plan_file(name_or_path)
    data = read_yaml(path)
    unknown = sorted(set(data) - PLAN_KEYS)
    if unknown or "datasets" not in data:
        raise LatteclipError(
            f"{path}: an experiment over datasets holds {', '.join(sorted(PLAN_KEYS))} "
            f"(unknown: {', '.join(unknown) or 'none'}; 'datasets' is required)"
        )
    all_entries = [_parse_entry(raw, str(path)) for raw in data.get("entries") or []]
    known_tables = {str(k): str(v) for k, v in (data.get("tables") or {}).items()}
    chosen_tables = _select(list(known_tables), tables, "table", str(path))
    kept = _select([e.name for e in all_entries], entries, "entry", str(path))
    kept_entries = [e for e in all_entries if e.name in kept and (not tables or set(e.tables) & set(chosen_tables))]
    root = data_root or data.get("data_root")
    dataset_values = _parse_datasets(data["datasets"], path)
    # absolute, so that a job on another node or in another folder finds the same run folders
    output_folder = Path(output or data.get("output", "runs/experiment")).resolve()
    return Plan(
        str(path),
        output_folder,
        Path(root).resolve() if root else None,
        _select(list(dataset_values), datasets, "dataset", str(path)),
        list(seeds) if seeds else [int(s) for s in data.get("seeds", [0])],
        deep_merge(dict(data.get("run") or {}), run or {}),
        {**(data.get("describe") or {}), **(describe or {})},
        kept_entries,
        {k: known_tables[k] for k in chosen_tables},
        dataset_values,
    )


def is_shift_experiment(name_or_path: str) -> bool:
    """Whether the file is an experiment over the proxy's shifted domains (the demo's kind), not over datasets."""
    data = read_yaml(plan_file(name_or_path))
    return "shifts" in data or "extends" in data


def load_shift_experiment(
    name_or_path: str,
    shifts: list[str] | None = None,
    entries: list[str] | None = None,
    seeds: list[int] | None = None,
    output: str | None = None,
    run: dict[str, Any] | None = None,
) -> Experiment:
    """The demo's kind of experiment narrowed like one over datasets: `--datasets` names shifts, `--entries` entries."""
    overrides: dict[str, Any] = {"run": run or {}}
    overrides.update({k: v for k, v in (("shifts", shifts), ("seeds", seeds), ("output", output)) if v})
    experiment = load_experiment(plan_file(name_or_path), None, overrides)
    kept = _select([entry.name for entry in experiment.methods], entries, "entry", experiment.source)
    experiment.methods = [entry for entry in experiment.methods if entry.name in kept]
    return experiment
