"""The page of an experiment over datasets: each of our cells (mean ± std over seeds) beside the published value.

Columns follow the paper's order (datasets it did not run come after); the average column is computed from the
columns shown, ours and the paper's alike, so that a subset of datasets compares like with like. Nothing is
trained here: the cells are read from finished run folders.
"""

from __future__ import annotations

from latteclip.engine.results import read_results
from latteclip.experiments.jobs import run_state
from latteclip.experiments.plan import Plan, PlanEntry
from latteclip.experiments.published import (
    PublishedTable,
    published_columns,
    published_tables,
)
from latteclip.experiments.tables import aggregate

PlanCells = dict[tuple[str, str], list[float]]  # (entry, dataset) -> top-1 of each finished seed


def plan_cells(plan: Plan) -> PlanCells:
    cells: PlanCells = {}
    for run in plan.runs():
        if run_state(run.config).state == "done":
            cells.setdefault((run.entry.name, run.dataset), []).append(read_results(run.config.run_dir)["top1"])
    return cells


def ordered_columns(datasets: list[str]) -> list[str]:
    paper = published_columns()
    return [d for d in paper if d in datasets] + [d for d in datasets if d not in paper]


def _ours(values: list[float]) -> str:
    if not values:
        return "–"
    stats = aggregate([100 * v for v in values])
    return f"{stats['mean']:.2f}" if stats["n"] == 1 else f"{stats['mean']:.2f} ± {stats['std']:.2f}"


def _cell(ours: float | None, spread: str, paper: float | None) -> str:
    if paper is None:
        return spread
    if ours is None:
        return f"– / {paper:.2f}"
    return f"{spread} / {paper:.2f} ({ours - paper:+.2f})"


def _row(
    entry: PlanEntry, key: tuple[str, ...] | None, table: PublishedTable | None, columns: list[str], cells: PlanCells
) -> str:
    published = table.row(*key).values if table is not None and key is not None else {}
    texts, ours_means, paper_values = [], [], []
    for dataset in columns:
        values = cells.get((entry.name, dataset), [])
        mean = 100 * aggregate(values)["mean"] if values else None
        texts.append(_cell(mean, _ours(values), published.get(dataset)))
        ours_means.append(mean)
        paper_values.append(published.get(dataset))
    ours_average = sum(ours_means) / len(columns) if columns and None not in ours_means else None
    paper_average = sum(paper_values) / len(columns) if columns and published and None not in paper_values else None
    average = _cell(ours_average, f"{ours_average:.2f}" if ours_average is not None else "–", paper_average)
    return f"| {entry.label} | {average} | " + " | ".join(texts) + " |"


def comparison_tables(plan: Plan, cells: PlanCells) -> str:
    """Markdown: one table per selected table number, rows of the entries that name it, ours / paper (difference)."""
    published = published_tables()
    columns = ordered_columns(plan.datasets)
    parts = []
    for number, title in plan.tables.items():
        rows = [(entry, entry.tables[number]) for entry in plan.entries if number in entry.tables]
        if not rows:
            continue
        table = published.get(number)
        head = ["method", "average", *columns]
        lines = [
            f"## Table {number}: {title}",
            "",
            ("Top-1 (%): ours (mean ± std over seeds) / the paper's (our difference); average over the columns shown."),
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        lines += [_row(entry, key, table, columns, cells) for entry, key in rows]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"
