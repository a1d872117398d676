"""The domain-shift experiment shared by `latteclip demo` and `benchmarks/domain_shift.py`.

Pre-train a CLIP on a labelled source domain once (cached), then for each target domain and
each method adapt it without labels and measure top-1 on the target's test split. Which
methods run, with which options, is data: a YAML file (`configs/demo.yaml` for the demo) with
a list of method entries, so that a new method is one more entry.

Hyper-parameters listed under an entry's `search` are chosen per target domain on held-out
training images (the `fmnist-heldout-<shift>` view: train on the rest of the training split,
score top-1 on the held-out part); test labels are never read for a choice.

An optional `describer` section pre-trains a second CLIP the same way (its own model config,
seed and augmentation policy, still only on the labelled source domain): the offline describer
of the description stage, a stand-in for the paper's LMM, and the model of entries with
`weights: describer` (its own zero-shot accuracy, as the paper reports LLaVA's).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from latteclip.config import FIELD_NAMES, RunConfig, read_yaml, resolve_config
from latteclip.describe.clip_vocab import describer_model_id, read_vocabulary
from latteclip.engine.pretraining import PretrainedWeights, pretrained_weights
from latteclip.engine.trainer import run_training
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
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
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
    return MethodEntry(name, raw["method"], str(raw.get("label", name)), overrides, search, list(raw.get("needs") or []), weights)


def package_experiment_file(name: str) -> Path:
    return Path(str(resources.files("latteclip").joinpath("configs", f"{name}.yaml")))


TOP_KEYS = {"root", "model", "output", "threads", "seeds", "dataset_prefix", "pretrain", "shifts", "run", "methods", "more_methods",
            "report", "describe", "describer"}


def _check_top_keys(data: dict[str, Any], path: str | Path) -> None:
    """Top-level keys are experiment settings or variants (a section of settings, like `quick`)."""
    for key, value in data.items():
        if key in TOP_KEYS:
            continue
        if not isinstance(value, dict) or not set(value) <= TOP_KEYS:
            raise LatteclipError(f"{path}: unknown setting '{key}' (known: {', '.join(sorted(TOP_KEYS))}, or a variant section of them)")


def load_experiment(path: str | Path, variant: str | None = None, overrides: dict[str, Any] | None = None) -> Experiment:
    """Read an experiment file; `variant` (e.g. `quick`) deep-merges the file's section of that name."""
    data = read_yaml(path)
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
    )


def _describer_section(raw: Any, path: str | Path, methods: list[MethodEntry]) -> dict[str, Any]:
    describer = dict(raw or {})
    unknown = sorted(set(describer) - {"model", "pretrain"})
    if describer and (unknown or "model" not in describer):
        raise LatteclipError(f"{path}: 'describer' holds model: NAME and pretrain: {{run options}}"
                             + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    _check_fields(describer.get("pretrain") or {}, f"{path}: describer: pretrain")
    needing = [entry.name for entry in methods if entry.weights == "describer"]
    if needing and not describer:
        raise LatteclipError(f"{path}: entries {', '.join(needing)} start from 'weights: describer' but there is no 'describer' section")
    return describer


def cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies over all cores from /proc/stat; None where there is no /proc."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])  # guest time is already counted in user time


def idle_cores(window_s: float = 1.0) -> int:
    """Cores left by other jobs right now: CPU use measured over `window_s`, else the one-minute load average.

    The load average lags: just after another job ends it still counts that job's cores, which would
    halve the threads of a demo started on a machine that has meanwhile gone idle.
    """
    cores = os.cpu_count() or 1
    busy = None
    before = cpu_times()
    if before is not None:
        time.sleep(window_s)
        after = cpu_times()
        if after is not None and after[1] > before[1]:
            busy = cores * (after[0] - before[0]) / (after[1] - before[1])
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (OSError, AttributeError):
            return cores
    return max(1, min(cores, int(cores - busy + 0.5)))


def use_threads(threads: int) -> int:
    """Set torch's threads: `threads`, or with 0 one per idle core.

    On a machine busy with other jobs, more threads than idle cores is several times slower
    (measured: 2 threads on 2 shared cores took 5 s a step where 1 thread took 0.7 s), because
    each operation waits for its slowest thread.
    """
    torch.set_num_threads(threads if threads > 0 else idle_cores())
    return torch.get_num_threads()


def pretrain_source(experiment: Experiment) -> PretrainedWeights:
    """The source model: the experiment's pre-training, from the cache when it was done before."""
    values = {"method": "pretrain", "model": experiment.model, "root": experiment.root, **experiment.pretrain}
    source = pretrained_weights(resolve_config(values))
    experiment.weights["source"] = source.path
    return source


def pretrain_describer(experiment: Experiment) -> PretrainedWeights | None:
    """The describer's model (None without a `describer` section), pre-trained or from the cache.

    It starts from the source's pre-training options with the section's own on top, and becomes the
    description stage's `describer_model` / `describer_pretrained`.
    """
    if not experiment.describer:
        return None
    model = experiment.describer["model"]
    values = deep_merge({"method": "pretrain", "model": model, "root": experiment.root, **experiment.pretrain},
                         experiment.describer.get("pretrain") or {})
    describer = pretrained_weights(resolve_config(values))
    experiment.weights["describer"] = describer.path
    experiment.describe = {**experiment.describe, "describer_model": model, "describer_pretrained": str(describer.path)}
    return describer


def offline_describer_name(describe: dict[str, Any], dataset: str, model: str, pretrained: str) -> str | None:
    """The model name the offline describer stores its texts under for `dataset` (None for other describers)."""
    if describe.get("lmm") != "offline":
        return None
    _, digest = read_vocabulary(describe.get("vocabulary"), dataset)
    if describe.get("describer_model"):
        return describer_model_id(describe["describer_model"], describe.get("describer_pretrained"), digest)
    return describer_model_id(model, pretrained, digest)


def run_config(experiment: Experiment, entry: MethodEntry, dataset: str, seed: int, name: str, choice: dict[str, Any] | None = None) -> RunConfig:
    """One run's configuration: package defaults, then the shared run options, the entry's, and the chosen values.

    An entry that needs descriptions reads those of the experiment's describer only (unless it names its own).
    """
    if entry.weights not in experiment.weights:
        raise LatteclipError(f"the {entry.weights} model of {experiment.source} is not pre-trained yet (pretrain_{entry.weights} first)")
    values: dict[str, Any] = {
        "method": entry.method,
        "dataset": dataset,
        "root": experiment.root,
        "model": experiment.describer["model"] if entry.weights == "describer" else experiment.model,
        "pretrained": str(experiment.weights[entry.weights]),
        "seed": seed,
        "output": str(experiment.output),
        "name": name,
    }
    values = deep_merge(values, experiment.run)
    values = deep_merge(values, entry.overrides)
    values = deep_merge(values, choice or {})
    options = values.get("method_options") or {}
    if options.get("class_descriptions") and not Path(options["class_descriptions"]).is_absolute():
        # files named in an experiment are relative to the experiment file
        where = (Path(experiment.source).parent / options["class_descriptions"]).resolve()
        values["method_options"] = {**options, "class_descriptions": str(where)}
    if "descriptions" in entry.needs and "describer_model" not in (values.get("method_options") or {}):
        described_by = offline_describer_name(experiment.describe, dataset, values["model"], values["pretrained"])
        if described_by:
            values["method_options"] = {**(values.get("method_options") or {}), "describer_model": described_by}
    return resolve_config(values)


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    """A configuration as saved in a run folder, without the resume and overwrite flags (which differ between calls)."""
    return json.loads(json.dumps({k: v for k, v in data.items() if k not in ("resume", "overwrite")}))


def run_or_reuse(config: RunConfig, prepare: Callable[[RunConfig], None] | None = None) -> dict:
    """Train and evaluate, or return the results of a finished run with the same configuration.

    An interrupted run with the same configuration continues from its last checkpoint, so a
    stopped demo or benchmark resumes where it was and reaches the same numbers. `prepare` (e.g.
    the description stage for the run's training images) runs only when the run trains.
    """
    run_dir = config.run_dir
    saved_config = run_dir / "config.yaml"
    same = saved_config.is_file() and _comparable(yaml.safe_load(saved_config.read_text()) or {}) == _comparable(config.to_dict())
    if same and (run_dir / "results.json").is_file():
        return json.loads((run_dir / "results.json").read_text())
    config.resume = same and (run_dir / "last.pt").is_file()
    config.overwrite = not config.resume  # the experiment's own folder: a run of another configuration is replaced
    if prepare is not None:
        prepare(config)
    return run_training(config)


def run_summary(results: dict, run_dir: Path) -> dict[str, Any]:
    """Top-1 plus what the training log says about pseudo-labels, mixer weights and prototype drift (averaged over its last fifth).

    `predictions/top_class_share` is the share of test predictions given to the most-predicted class (column sums
    of the confusion matrix: no label is read): self-training that collapses onto one class shows there.
    """
    summary: dict[str, Any] = {"top1": results["top1"], "steps": results["steps"], "seconds": results["timings"].get("total_s")}
    confusion = results.get("test", {}).get("confusion")
    if confusion:
        predicted = [sum(column) for column in zip(*confusion)]
        summary["predictions/top_class_share"] = max(predicted) / max(1, sum(predicted))
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line]
        train_records = [r for r in records if "loss" in r]
        tail = train_records[len(train_records) - max(1, len(train_records) // 5) :] if train_records else []
        keys = sorted({k for r in tail for k in r if k.startswith(("analysis/", "mixer/", "prototypes/"))})
        for key in keys:
            values = [r[key] for r in tail if isinstance(r.get(key), (int, float))]
            if values:
                summary[key] = sum(values) / len(values)
    return summary


def select(
    experiment: Experiment,
    entry: MethodEntry,
    shift: str,
    progress: Callable[[str], None],
    prepare: Callable[[RunConfig], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The grid point with the best held-out top-1 (first seed); ties go to the earlier candidate.

    `prepare` runs before each candidate's run that trains (e.g. the description stage for its training images).
    """
    candidates = entry.candidates()
    if len(candidates) == 1:
        return candidates[0], []
    scores = []
    for choice in candidates:
        tag = "-".join(f"{k}{v}" for k, v in choice.items())
        name = f"select/{shift}/{entry.name}/{tag}"
        progress(f"choose {entry.label} on held-out {shift} images: {choice}")
        config = run_config(experiment, entry, experiment.heldout(shift), experiment.seeds[0], name, choice)
        results = run_or_reuse(config, prepare)
        scores.append({"choice": choice, "heldout_top1": results["top1"]})
    best = max(range(len(scores)), key=lambda i: (scores[i]["heldout_top1"], -i))
    return scores[best]["choice"], scores


def aggregate(values: list[float]) -> dict[str, float]:
    mean = sum(values) / len(values)
    spread = statistics.stdev(values) if len(values) > 1 else math.nan
    return {"mean": mean, "std": spread, "n": len(values)}


def machine_description() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def elapsed(since: float) -> str:
    seconds = int(time.time() - since)
    return f"{seconds // 60}:{seconds % 60:02d}"


def format_cell(values: list[float]) -> str:
    """A percentage, with the spread across seeds when there are several."""
    if not values:
        return "–"
    stats = aggregate([100 * v for v in values])
    return f"{stats['mean']:.2f}" if stats["n"] == 1 else f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def results_table(experiment: Experiment, cells: dict[tuple[str, str], list[dict[str, Any]]], key: str = "top1") -> str:
    """Markdown table: one row per method entry, one column per shift, `key` of each run averaged over seeds."""
    lines = ["| method | " + " | ".join(experiment.shifts) + " |", "|---|" + "---|" * len(experiment.shifts)]
    for entry in experiment.methods:
        row = [format_cell([run[key] for run in cells.get((entry.name, shift), []) if key in run]) for shift in experiment.shifts]
        lines.append(f"| {entry.label} | " + " | ".join(row) + " |")
    return "\n".join(lines)
