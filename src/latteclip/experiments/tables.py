"""Tables of an experiment's runs: cells are per (entry, shift) lists of run summaries, one per seed."""

from __future__ import annotations

import math
import statistics
from typing import Any

from latteclip.data.shifts import UNSHIFTED
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


def shifted_mean(cells: Cells, entry: str, shifted: list[str], key: str = "top1") -> float | None:
    """The mean over the shifted domains `shifted` of an entry's seed means; None if a cell is missing."""
    means = []
    for shift in shifted:
        values = [run[key] for run in cells.get((entry, shift), []) if key in run]
        if not values:
            return None
        means.append(aggregate(values)["mean"])
    return sum(means) / len(means) if means else None


def results_table(
    experiment: Experiment, cells: Cells, key: str = "top1", rows: list[tuple[str, str]] | None = None
) -> str:
    """Markdown table: one row per method entry (or per (cells name, label) of `rows`), one column per shift, `key`
    of each run averaged over seeds.

    With two shifted domains or more, a last column gives the mean over them (the clean reference left out).
    """
    shifted = [s for s in experiment.shifts if s != UNSHIFTED]
    with_mean = len(shifted) > 1
    head = experiment.shifts + (["mean of the shifted domains"] if with_mean else [])
    lines = ["| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for name, label in rows or [(entry.name, entry.label) for entry in experiment.methods]:
        row = [
            format_cell([run[key] for run in cells.get((name, shift), []) if key in run]) for shift in experiment.shifts
        ]
        if with_mean:
            mean = shifted_mean(cells, name, shifted, key)
            row.append(f"{100 * mean:.2f}" if mean is not None else "–")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines)
