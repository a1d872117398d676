"""The report's figures, drawn with matplotlib's Agg canvas (no display, no pyplot state) and saved as PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SUBJECT_COLOUR = "#1f6fb4"
OTHER_COLOUR = "#9aa5b1"
ZERO_SHOT_COLOUR = "#d1495b"
GAIN_COLOUR = "#2a9d5c"
LOSS_COLOUR = "#d1495b"
PALETTE = ["#e08e0b", "#2a9d5c", "#8e6cc1", "#9aa5b1", "#b5651d", "#17becf"]
KIND_COLOURS = {"class": "#1f6fb4", "image": "#e08e0b", "group": "#2a9d5c"}
DPI = 110


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, format="png", dpi=DPI, facecolor="white")
    return path


def short_label(text: str, width: int = 30) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def plot_headline(names: Sequence[str], top1: Sequence[float], zero_shot: float | None, path: Path) -> Path:
    """Top-1 of every run named (the first, the subject, highlighted) against the zero-shot line."""
    figure = _figure(7.0, 0.9 + 0.45 * len(names))
    axes = figure.add_subplot()
    y = np.arange(len(names))
    values = [100 * v for v in top1]
    colours = [SUBJECT_COLOUR if i == 0 else OTHER_COLOUR for i in range(len(names))]
    axes.barh(y, values, color=colours, height=0.6)
    for row, value in zip(y, values):
        axes.text(value + 0.5, row, f"{value:.2f}%", va="center", fontsize=9)
    if zero_shot is not None:
        axes.axvline(
            100 * zero_shot,
            color=ZERO_SHOT_COLOUR,
            linestyle="--",
            linewidth=1.5,
            label=f"zero-shot {100 * zero_shot:.2f}%",
        )
        axes.legend(loc="lower right", fontsize=8)
    axes.set_yticks(y, [short_label(n, 40) for n in names])
    axes.invert_yaxis()
    axes.set_xlim(0, min(100, max([*values, 100 * (zero_shot or 0)]) * 1.15 + 5))
    axes.set_xlabel("test top-1 accuracy (%)")
    return _save(figure, path)


def plot_per_class_gain(gains: Sequence[tuple[str, float, float]], path: Path, most: int = 20) -> tuple[Path, int]:
    """Accuracy change per class in points, sorted; with many classes only the `most` largest gains and drops.

    Returns the path and how many classes were left out of the figure.
    """
    rows = sorted(gains, key=lambda g: g[1] - g[2], reverse=True)
    omitted = 0
    if len(rows) > 2 * most:
        omitted = len(rows) - 2 * most
        rows = rows[:most] + rows[-most:]
    figure = _figure(7.5, 0.8 + 0.28 * len(rows))
    axes = figure.add_subplot()
    delta = [100 * (ft - zs) for _, ft, zs in rows]
    y = np.arange(len(rows))
    axes.barh(y, delta, color=[GAIN_COLOUR if d >= 0 else LOSS_COLOUR for d in delta], height=0.7)
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_yticks(y, [f"{short_label(name)}  ({100 * zs:.0f}→{100 * ft:.0f})" for name, ft, zs in rows], fontsize=8)
    axes.invert_yaxis()
    span = max([abs(d) for d in delta] + [1.0])
    axes.set_xlim(-span * 1.15, span * 1.15)
    axes.set_xlabel("accuracy change vs zero-shot (points)")
    if omitted:
        axes.set_title(f"{most} largest gains and drops ({omitted} classes in between not shown)", fontsize=9)
    return _save(figure, path), omitted


def plot_confusion(confusion: Sequence[Sequence[int]], classnames: Sequence[str], path: Path) -> Path:
    """Rows = true class, normalised to sum 1; counts written in the cells when the matrix is small."""
    matrix = np.asarray(confusion, dtype=float)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    n = len(classnames)
    size = min(10.0, 2.6 + 0.34 * n)
    figure = _figure(size + 1.2, size)
    axes = figure.add_subplot()
    image = axes.imshow(rates, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.8, label="fraction of the true class")
    if n <= 40:
        labels = [short_label(c, 24) for c in classnames]
        axes.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=7)
        axes.set_yticks(range(n), labels, fontsize=7)
    if n <= 15:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    axes.text(
                        j,
                        i,
                        f"{int(matrix[i, j])}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black",
                    )
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    return _save(figure, path)


def plot_curves(
    series: Sequence[tuple[str, Sequence[int], Sequence[float]]],
    path: Path,
    ylabel: str,
    percent: bool = False,
    reference: tuple[str, float] | None = None,
    colours: Sequence[str] | None = None,
    xlabel: str = "step",
    log_x: bool = False,
) -> Path:
    """Lines over training steps (or another `xlabel`, on a log axis with `log_x`); without `colours` the first series
    is the subject (bold), `reference` is dashed."""
    figure = _figure(7.0, 3.2)
    axes = figure.add_subplot()
    scale = 100.0 if percent else 1.0
    bold_first = colours is None
    colours = colours or [SUBJECT_COLOUR] + [PALETTE[i % len(PALETTE)] for i in range(len(series) - 1)]
    for i, (label, steps, values) in enumerate(series):
        axes.plot(
            steps,
            [scale * v for v in values],
            label=label,
            color=colours[i],
            zorder=3 if i == 0 else 2,
            linewidth=2.2 if bold_first and i == 0 else 1.4,
            marker="o" if len(steps) <= 12 else None,
            markersize=3,
        )
    if reference is not None:
        axes.axhline(scale * reference[1], color=ZERO_SHOT_COLOUR, linestyle="--", linewidth=1.2, label=reference[0])
    axes.set_xlabel(xlabel)
    if log_x:
        axes.set_xscale("log")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    if len(series) > 1 or reference is not None:
        axes.legend(fontsize=8)
    return _save(figure, path)


def plot_small_multiples(series: dict[str, tuple[Sequence[int], Sequence[float]]], path: Path) -> Path:
    """One small panel per metric, three to a row."""
    columns = min(3, len(series))
    rows = math.ceil(len(series) / columns)
    figure = _figure(3.0 * columns + 0.5, 2.4 * rows)
    for index, (name, (steps, values)) in enumerate(series.items(), start=1):
        axes = figure.add_subplot(rows, columns, index)
        axes.plot(
            steps, values, color=SUBJECT_COLOUR, linewidth=1.4, marker="o" if len(steps) <= 12 else None, markersize=3
        )
        axes.set_title(short_label(name, 36), fontsize=9)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_mixer_distribution(weights: dict[str, Sequence[float]], path: Path) -> Path:
    """Histogram of the mixer weight of each text kind on shared bins, with the median marked."""
    figure = _figure(7.0, 3.2)
    axes = figure.add_subplot()
    values = [v for kind in weights.values() for v in kind]
    bins = np.linspace(min(values), max(values) if max(values) > min(values) else min(values) + 1e-3, 31)
    for kind, samples in weights.items():
        colour = KIND_COLOURS.get(kind)
        axes.hist(samples, bins=bins, histtype="step", linewidth=1.8, color=colour, label=f"{kind} (n={len(samples)})")
        axes.axvline(float(np.median(samples)), color=colour, linestyle=":", linewidth=1.2)
    axes.set_xlabel("mixer weight w(T) = top-1 − top-2 prototype similarity (dotted: median)")
    axes.set_ylabel("texts")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_grouped_bars(labels: Sequence[str], series: dict[str, Sequence[float]], path: Path, xlabel: str) -> Path:
    """Horizontal bars per label, one bar per series side by side (e.g. zero-shot vs adapted share per class)."""
    figure = _figure(7.0, 0.9 + 0.32 * len(labels) * max(1, len(series)))
    axes = figure.add_subplot()
    y = np.arange(len(labels))
    height = 0.8 / max(1, len(series))
    colours = [SUBJECT_COLOUR, ZERO_SHOT_COLOUR, *PALETTE]
    for number, (name, values) in enumerate(series.items()):
        axes.barh(
            y + (number - (len(series) - 1) / 2) * height,
            list(values),
            height=height,
            color=colours[number % len(colours)],
            label=name,
        )
    axes.set_yticks(y, [short_label(n, 40) for n in labels])
    axes.invert_yaxis()
    axes.set_xlabel(xlabel)
    if len(series) > 1:
        axes.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def plot_against_share(
    shares: Sequence[float],
    runs: Sequence[Sequence[float]],
    label: str,
    lines: dict[str, float],
    path: Path,
    xlabel: str,
) -> Path:
    """Top-1 of each run (several seeds per share: mean and each seed) against a share, with reference levels as
    lines."""
    figure = _figure(6.5, 4.0)
    axes = figure.add_subplot()
    means = [100 * sum(r) / len(r) for r in runs]
    for share, values in zip(shares, runs):
        axes.scatter([share] * len(values), [100 * v for v in values], color=SUBJECT_COLOUR, alpha=0.35, s=14)
    axes.plot(shares, means, color=SUBJECT_COLOUR, marker="o", label=f"{label} (mean over seeds)")
    for (name, value), colour in zip(lines.items(), [ZERO_SHOT_COLOUR, *PALETTE]):
        axes.axhline(100 * value, color=colour, linestyle="--", linewidth=1.3, label=f"{name} {100 * value:.2f}%")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("test top-1 accuracy (%)")
    axes.set_xticks(list(shares))
    axes.legend(fontsize=8, loc="best")
    return _save(figure, path)
