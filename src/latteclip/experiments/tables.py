"""Tables of an experiment's runs: cells are per (entry, shift) lists of run summaries, one per seed."""

from __future__ import annotations

import math
import statistics
from typing import Any

from latteclip.experiments.spec import Experiment

Cells = dict[tuple[str, str], list[dict[str, Any]]]


def aggregate(values: list[float]) -> dict[str, float]:
    mean = sum(values) / len(values)
    spread = statistics.stdev(values) if len(values) > 1 else math.nan
    return {"mean": mean, "std": spread, "n": len(values)}


def format_cell(values: list[float]) -> str:
    """A percentage, with the spread across seeds when there are several."""
    if not values:
        return "–"
    stats = aggregate([100 * v for v in values])
    return f"{stats['mean']:.2f}" if stats["n"] == 1 else f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def results_table(experiment: Experiment, cells: Cells, key: str = "top1") -> str:
    """Markdown table: one row per method entry, one column per shift, `key` of each run averaged over seeds."""
    lines = ["| method | " + " | ".join(experiment.shifts) + " |", "|---|" + "---|" * len(experiment.shifts)]
    for entry in experiment.methods:
        row = [format_cell([run[key] for run in cells.get((entry.name, shift), []) if key in run]) for shift in experiment.shifts]
        lines.append(f"| {entry.label} | " + " | ".join(row) + " |")
    return "\n".join(lines)
