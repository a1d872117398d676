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
    published_figure_6,
    published_tables,
)
from latteclip.experiments.tables import aggregate

PlanCells = dict[tuple[str, str], list[float]]  # (entry, dataset) -> top-1 of each finished seed
FIGURE_6 = "fig6"  # the table id of the paper's Figure 6 (top-1 against the share of training images)
SharePoints = dict[str, dict[float, float | None]]  # method -> share of training images -> average top-1 (0-1)


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


def share_points(plan: Plan, cells: PlanCells) -> SharePoints:
    """Figure 6's points: per method its entries' shares (their `train_fraction`) and top-1 averaged over the datasets
    shown (each the mean over seeds); None where a dataset has no finished run yet."""
    points: SharePoints = {}
    for entry in plan.entries:
        key = entry.tables.get(FIGURE_6)
        if key is None or not plan.datasets:
            continue
        share = plan.run_config(plan.datasets[0], entry, plan.seeds[0]).train_fraction
        means = [
            aggregate(cells[(entry.name, d)])["mean"] if cells.get((entry.name, d)) else None for d in plan.datasets
        ]
        points.setdefault(key[0], {})[share] = None if None in means else sum(means) / len(means)
    return {method: dict(sorted(shares.items())) for method, shares in points.items()}


def figure_6_section(title: str, datasets: list[str], points: SharePoints, figure: str | None = None) -> str:
    """Markdown: per share, each method's average top-1, its drop from all the training images, and the paper's drop
    where its text gives one (only 20% and 1%: the figure itself prints no values)."""
    published = published_figure_6()
    shares = sorted({share for by_share in points.values() for share in by_share}, reverse=True)
    head = ["share of training images"]
    for method in points:
        head += [method, "drop", "paper's drop"]
    lines = [
        f"## Figure 6: {title}",
        "",
        f"Top-1 (%) averaged over {', '.join(datasets)} (each the mean over seeds); drop: from the same method on all "
        "the training images. The paper prints no values of its figure; its text gives the drops at 20% and 1% "
        "(the paper's drop column), the other points are ours only.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for share in shares:
        cells = [f"{100 * share:g}%"]
        for method, by_share in points.items():
            value, whole = by_share.get(share), by_share.get(1.0)
            paper = published.get(method, {}).get(share)
            cells += [
                f"{100 * value:.2f}" if value is not None else "–",
                f"{100 * (whole - value):.2f}" if value is not None and whole is not None else "–",
                f"{paper:.2f}" if paper is not None else "–",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    if figure:
        lines += ["", f"![Figure 6: top-1 against the share of training images]({figure})"]
    return "\n".join(lines)


def comparison_tables(plan: Plan, cells: PlanCells, figure_6: str | None = None) -> str:
    """Markdown: one table per selected table number, rows of the entries that name it, ours / paper (difference);
    Figure 6 as its points (`figure_6`: the file name of its plot, linked from the page)."""
    published = published_tables()
    columns = ordered_columns(plan.datasets)
    parts = []
    for number, title in plan.tables.items():
        rows = [(entry, entry.tables[number]) for entry in plan.entries if number in entry.tables]
        if not rows:
            continue
        if number == FIGURE_6:
            parts.append(figure_6_section(title, columns, share_points(plan, cells), figure_6))
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
