"""What a report section is given and what it gives back (the registry is `orchestrator.report.sections`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from orchestrator.report.data import ExperimentData
from orchestrator.report.evidence.stability import Evidence
from orchestrator.report.plots import Plot
from orchestrator.report.sources import Sources
from orchestrator.report.stats import Leaderboard


@dataclass(frozen=True)
class ReportInputs:
    """Everything read and computed before any section is built: a section reads, never writes."""

    tracking: Any                 # the report's MLflow client (a section's reads go through it)
    data: ExperimentData          # the results (long table), failed cells, skipped images
    runs: Mapping[str, Any]       # run id -> the MLflow run of every cell
    sources: Sources              # the experiments the numbers come from
    board: Leaderboard            # statistics of the results
    evidence: Evidence            # runs' details and per-cell bootstraps

    @property
    def results(self) -> pd.DataFrame:
        return self.data.results


@dataclass(frozen=True)
class SectionOutput:
    """A section: its blocks (after the per-task bars, in registry order), the plots its blocks show (written
    beside the pages) and its tables (file name -> CSV text, written beside the pages). Empty blocks: no
    section."""

    blocks: list = field(default_factory=list)
    plots: tuple[Plot, ...] = ()
    tables: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Section:
    name: str
    build: Callable[[ReportInputs], SectionOutput] | str   # or "module:function", imported when first built

    def make(self, inputs: ReportInputs) -> SectionOutput:
        build = self.build
        if isinstance(build, str):
            import importlib

            module, _, name = build.partition(":")
            build = getattr(importlib.import_module(module), name)
        return build(inputs)
