"""The report's format-neutral blocks (rendered by `orchestrator.report.render`) and its number formats.

Every section builder (`sections`, `leaderboard`, `sensitivity`, `cost`, `sources`) returns a list of
these; the renderers turn one list into Markdown, HTML and LaTeX, so all three always say the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from orchestrator.report.plots import Plot

NA = "n/a"
MISSING = "–"  # a table cell with no value (no result for that column, or a metric not recorded)


@dataclass(frozen=True)
class TableCell:
    text: str
    best: bool = False  # highlighted: bold in Markdown and LaTeX, class "best" in HTML


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str
    strong: bool = False


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[TableCell, ...], ...]
    caption: str = ""
    css: str = "board"
    # an optional header row above `header`: (label, number of columns it spans), spans summing to len(header)
    groups: tuple[tuple[str, int], ...] = ()
    summary_rows: int = 0  # the last rows summarise the others (e.g. an average): ruled off in HTML and LaTeX

    def __post_init__(self) -> None:
        if self.groups and sum(span for _, span in self.groups) != len(self.header):
            raise ValueError(f"table groups span {sum(s for _, s in self.groups)} columns, header has {len(self.header)}")
        bad = [i for i, row in enumerate(self.rows) if len(row) != len(self.header)]
        if bad:
            raise ValueError(f"table rows {bad[:5]} do not have the header's {len(self.header)} cells")


@dataclass(frozen=True)
class Figure:
    plot: Plot


@dataclass(frozen=True)
class Details:
    """A collapsed section in HTML (`<details>`), a plain section in Markdown."""

    summary: str
    blocks: tuple = ()  # Heading | Para | Table | Figure


@dataclass(frozen=True)
class Document:
    title: str
    blocks: list = field(default_factory=list)  # Heading | Para | Table | Figure | Details, in order


def num(value: float | None, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return NA
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def mean_std(mean: float, std: float) -> str:
    return f"{num(mean)} ± {num(std)}"


def interval(low: float, high: float) -> str:
    return NA if math.isnan(low) else f"[{num(low, True)}, {num(high, True)}]"


def seconds(value: float | None) -> str:
    """A duration in seconds: two decimals below 100 s, one above (thousands separated)."""
    if value is None or math.isnan(value):
        return MISSING
    return f"{value:.2f}" if abs(value) < 100 else f"{value:,.1f}"
