"""The LatteCLIP paper's published numbers (package data), read for the side-by-side tables of a reproduction."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import yaml

PUBLISHED_FILE = ("configs", "experiments", "paper_published.yaml")


@dataclass(frozen=True)
class PublishedRow:
    key: tuple[
        str, ...
    ]  # the row's label cells, as the paper prints them (e.g. ("LATTECLIP",), ("2", "yes", "yes", ""))
    average: float  # the paper's own Average column
    values: dict[str, float]  # dataset -> top-1 %


@dataclass(frozen=True)
class PublishedTable:
    number: str
    title: str
    keys: tuple[str, ...]
    rows: tuple[PublishedRow, ...]

    def row(self, *key: str) -> PublishedRow:
        for row in self.rows:
            if row.key == key:
                return row
        raise KeyError(f"table {self.number} has no row {key}")


def published_columns() -> list[str]:
    """The paper's datasets in its column order."""
    return list(_published()["columns"])


def published_tables() -> dict[str, PublishedTable]:
    data = _published()
    columns = data["columns"]
    return {
        number: PublishedTable(
            number,
            table["title"],
            tuple(table["keys"]),
            tuple(
                PublishedRow(tuple(row["key"]), float(row["average"]), dict(zip(columns, map(float, row["values"]))))
                for row in table["rows"]
            ),
        )
        for number, table in data["tables"].items()
    }


def published_figure_6() -> dict[str, dict[float, float]]:
    """method -> {fraction of training images: drop of the ten-dataset average, points}."""
    figure = _published()["figure_6"]
    return {method: dict(zip(figure["fractions"], drops)) for method, drops in figure["drop"].items()}


def _published() -> dict:
    return yaml.safe_load(resources.files("latteclip").joinpath(*PUBLISHED_FILE).read_text())
