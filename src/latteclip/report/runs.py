"""Read run folders (config, metrics, results, method extras) and pair a run with its zero-shot baseline."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from latteclip.engine.results import RunResults, read_results
from latteclip.errors import LatteclipError

EVAL_KEY = "eval/top1"
TEXT_KINDS = ("class", "image", "group")


@dataclass
class Run:
    """One finished run folder as the trainer wrote it."""

    folder: Path
    config: dict[str, Any]
    results: RunResults
    train_records: list[dict[str, Any]] = field(default_factory=list)  # per-step records (loss, lr, method metrics)
    eval_records: list[dict[str, Any]] = field(default_factory=list)  # {"step", "eval/top1"}
    # gallery.json (LatteCLIP): [{"image": path in the dataset, "zs_label", "ft_label", "texts": {kind: text},
    #   "weights": {kind: w}, "group_members": [paths]}]
    gallery: list[dict[str, Any]] | None = None
    mixer_weights: dict[str, list[float]] | None = None  # mixer_weights.json (LatteCLIP): {kind: [sampled weights]}

    @property
    def name(self) -> str:
        return self.folder.name

    def recorded(self, key: str, default: str = "?") -> str:
        """A setting as results.json recorded it, else as config.yaml asked for it."""
        return str(self.results.get(key, self.config.get(key, default)))

    @property
    def method(self) -> str:
        return self.recorded("method")

    @property
    def dataset(self) -> str:
        return self.recorded("dataset")

    @property
    def model(self) -> str:
        return self.recorded("model")

    @property
    def pretrained(self) -> str:
        return self.recorded("pretrained", "")

    @property
    def labelled(self) -> bool:
        """False for a run on unlabeled images without --eval-dataset: it has diagnostics instead of accuracy."""
        return self.results.get("top1") is not None

    @property
    def diagnostics(self) -> dict[str, Any]:
        return dict(self.results.get("diagnostics") or {})

    @property
    def top1(self) -> float:
        return float(self.results["top1"])

    @property
    def steps(self) -> int:
        return int(self.results.get("steps", 0))

    @property
    def per_class(self) -> dict[str, float | None]:
        return dict(self.results.get("test", {}).get("per_class", {}))

    @property
    def confusion(self) -> list[list[int]]:
        return list(self.results.get("test", {}).get("confusion", []))

    @property
    def timings(self) -> dict[str, float]:
        return dict(self.results.get("timings", {}))

    @property
    def logged_zero_shot_top1(self) -> float | None:
        """The engine evaluates the untouched model at step 0 before training: that is zero-shot accuracy."""
        for record in self.eval_records:
            if record.get("step") == 0:
                return float(record[EVAL_KEY])
        return None

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric across the records that hold it (finite values only)."""
        records = self.eval_records if key == EVAL_KEY else self.train_records
        points = [(int(r["step"]), float(r[key])) for r in records if _is_number(r.get(key)) and math.isfinite(r[key])]
        return [s for s, _ in points], [v for _, v in points]

    def metric_keys(self) -> list[str]:
        """Every numeric metric the training records hold, in first-seen order (step/epoch excluded)."""
        keys: dict[str, None] = {}
        for record in self.train_records:
            for key, value in record.items():
                if key not in ("step", "epoch") and _is_number(value):
                    keys.setdefault(key)
        return list(keys)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise LatteclipError(f"{path} cannot be read as {what} ({err}); rerun the training that writes it") from err


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """Training and evaluation records of metrics.jsonl; a damaged line (a run killed mid-write) is skipped with a
    warning."""
    train, evals = [], []
    if not path.is_file():
        return train, evals
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{number} is not a JSON record; skipped", stacklevel=2)
            continue
        if not isinstance(record, dict) or "step" not in record:
            continue
        (evals if EVAL_KEY in record else train).append(record)
    return train, evals


def load_run(folder: str | Path) -> Run:
    """A run folder written by `latteclip train` or `latteclip zeroshot`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LatteclipError(f"run folder {folder} does not exist")
    results = read_results(folder)
    config_path = folder / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    train, evals = read_metrics(folder / "metrics.jsonl")
    gallery = _read_json(folder / "gallery.json", "a gallery") if (folder / "gallery.json").is_file() else None
    mixer = (
        _read_json(folder / "mixer_weights.json", "mixer weights")
        if (folder / "mixer_weights.json").is_file()
        else None
    )
    return Run(folder, config or {}, results, train, evals, gallery, mixer)


@dataclass
class Comparison:
    """The run the report is about, the other runs named, and where its zero-shot reference comes from."""

    subject: Run
    others: list[Run]
    zero_shot_run: Run | None  # a named zeroshot run of the same dataset and model: gives per-class accuracy too
    zero_shot_top1: float | None
    zero_shot_source: str  # said in the report next to the number

    @property
    def runs(self) -> list[Run]:
        return [self.subject, *self.others]

    def label(self, run: Run) -> str:
        """The folder name, or parent/name where two runs named share a folder name (runs/a/x vs runs/b/x)."""
        if sum(r.name == run.name for r in self.runs) > 1:
            return f"{run.folder.parent.name}/{run.name}"
        return run.name


def compare(runs: list[Run]) -> Comparison:
    """The first run that trains is the subject; a named zeroshot run of its model beats the step-0 record."""
    if not runs:
        raise LatteclipError("name at least one run folder")
    subject = next((r for r in runs if r.method != "zeroshot"), runs[0])
    for run in runs:
        if run.dataset != subject.dataset:
            raise LatteclipError(
                f"run {run.folder} is on {run.dataset} but {subject.folder} is on {subject.dataset}: name runs of one "
                "dataset"
            )
    others = [r for r in runs if r is not subject]
    zero_shot_run = None
    if subject.method != "zeroshot":
        candidates = [r for r in others if r.method == "zeroshot"]
        zero_shot_run = next(
            (r for r in candidates if (r.model, r.pretrained) == (subject.model, subject.pretrained)), None
        )
        if zero_shot_run is None and candidates:
            warnings.warn(
                f"zeroshot run {candidates[0].folder} uses {candidates[0].model} '{candidates[0].pretrained}', not "
                f"{subject.model} '{subject.pretrained}': it is listed but not used as the zero-shot reference",
                stacklevel=2,
            )
    if not subject.labelled:
        return Comparison(subject, others, zero_shot_run, None, "")
    if zero_shot_run is not None and zero_shot_run.labelled:
        return Comparison(subject, others, zero_shot_run, zero_shot_run.top1, f"zeroshot run {zero_shot_run.name}")
    if subject.method == "zeroshot":
        return Comparison(subject, others, subject, subject.top1, "this run")
    logged = subject.logged_zero_shot_top1
    if logged is not None:
        return Comparison(subject, others, None, logged, "step-0 evaluation of this run")
    return Comparison(subject, others, None, None, "")


def per_class_gain(subject: Run, reference: Run) -> list[tuple[str, float, float]]:
    """(class, subject accuracy, reference accuracy) for classes both runs measured, in class order."""
    ref = reference.per_class
    return [
        (name, float(acc), float(ref[name]))
        for name, acc in subject.per_class.items()
        if acc is not None and ref.get(name) is not None
    ]
