"""Section "Sources": per experiment and backbone, the methods, tasks and cells it contributed, and the conflicts
`report.sources.combine` decided."""

from __future__ import annotations

import pandas as pd

from orchestrator.report.blocks import Heading, Para, Table, TableCell
from orchestrator.report.sections.base import ReportInputs, SectionOutput
from orchestrator.report.sources import CELL, Sources


def section(inputs: ReportInputs) -> SectionOutput:
    return SectionOutput(sources_blocks(inputs.results, inputs.sources))


def sources_blocks(results: pd.DataFrame, sources: Sources) -> list:
    """The sources section: per experiment and backbone, the methods, tasks and cells it contributed."""
    cells = results.drop_duplicates([*CELL, "source"])
    rows = []
    for name in sources.experiments:
        mine = cells[cells["source"] == name]
        parent = sources.parents.get(name) or "(none)"
        if mine.empty:
            rows.append((name, parent, "–", "–", "0", "0"))
        for backbone, part in mine.groupby("backbone", sort=True):
            methods = ", ".join(sorted(part["method"].unique()))
            rows.append((name, parent, backbone, methods, str(part["task"].nunique()), str(len(part))))
    blocks: list = [Heading("Sources"), Para(
        f"Every number comes from one MLflow experiment ({len(sources.experiments)} read: "
        f"{', '.join(sources.experiments)}); results.csv names it in its column 'source'."),
        Table(("experiment", "parent run", "backbone", "methods", "tasks", "cells"),
              tuple(tuple(TableCell(v) for v in row) for row in rows), css="failed")]
    if len(sources.conflicts):
        blocks += [Para(f"{len(sources.conflicts)} cell(s) had results in more than one experiment; the one "
                        "below was kept, by the rule shown."),
                   Table(("backbone", "task", "method", "seed", "kept from", "run", "instead of", "rule"),
                         tuple(tuple(TableCell(str(v)) for v in r) for r in sources.conflicts.itertuples(index=False)),
                         css="failed")]
    return blocks
