"""What moved: every cell run's refit and selected-head test numbers and flags (`Evidence`), and the
report's Stability section listing the flagged runs with both numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from orchestrator.report.blocks import Heading, Para, Table, TableCell, num
from orchestrator.report.evidence.bootstrap import (
    Interval,
    hierarchical_bootstrap,
    pooled_sd,
    seeds_for_half_width,
)
from orchestrator.report.evidence.flags import (
    CAVEAT,
    EXCLUDED,
    MARKS,
    PROTOCOL_EPOCHS,
    REDUCED_BUDGET,
    RUN,
    UNDER_TRAINED,
    flagged_units,
    runs_table,
    split_flags,
    without_flagged,
)
from orchestrator.report.evidence.predictions import BOOTSTRAP_COLUMNS, DETAIL_METRICS
from orchestrator.report.stats import (
    CELL,
    OverallDifference,
    overall_difference,
    paired_differences,
    primary_values,
)

RUN_COLUMNS = [*RUN, "run_id", "flags", "metric", "refit", "selected", *DETAIL_METRICS, "epochs"]
CLAIM_METHODS = ("sea", "linear")


@dataclass(frozen=True)
class Evidence:
    """What backs the report's claims beyond means and t-intervals, computed once (pure) from the results,
    the runs' details and the per-cell bootstrap."""

    runs: pd.DataFrame  # RUN_COLUMNS: one row per cell run (refit = its test value, selected = test_selected)
    without: OverallDifference  # the headline recomputed without the EXCLUDED runs
    flagged_cells: int  # headline (task, backbone) cells with an EXCLUDED sea or linear run
    flagged_runs: int  # those runs
    hierarchical: Interval  # the headline's bootstrap over cells, then seeds
    spread: float  # pooled sample sd (ddof = 1) of the paired per-seed differences within cells
    seeds_needed: int | None  # seeds for a ± 1 point t-interval at that spread
    bootstrap: pd.DataFrame  # BOOTSTRAP_COLUMNS: per (task, backbone), over test examples (empty: none)


def seed_differences(results: pd.DataFrame, treatment: str = "sea", baseline: str = "linear") -> dict[tuple, np.ndarray]:
    """(task, backbone) -> the per-seed differences treatment − baseline (seeds run by both)."""
    values = primary_values(results)
    pivot = values[values["method"].isin([treatment, baseline])].pivot_table(
        index=[*CELL, "seed"], columns="method", values="value", aggfunc="first")
    if treatment not in pivot.columns or baseline not in pivot.columns:
        return {}
    diff = (pivot[treatment] - pivot[baseline]).dropna()
    return {key: d.to_numpy(dtype=float) for key, d in diff.groupby(level=CELL, sort=True)}


def _runs(results: pd.DataFrame, details: pd.DataFrame | None) -> pd.DataFrame:
    runs = runs_table(results)
    primary = primary_values(results).drop_duplicates("run_id").set_index("run_id")
    runs["metric"] = runs["run_id"].map(primary["metric"])
    runs["refit"] = runs["run_id"].map(primary["value"])
    selected = results[results["split"] == "test_selected"]
    selected = selected[selected["metric"] == selected["run_id"].map(primary["metric"])].set_index("run_id")["value"]
    runs["selected"] = runs["run_id"].map(selected)
    if details is not None and len(details):
        runs = runs.merge(details, on="run_id", how="left")
    return runs.reindex(columns=RUN_COLUMNS)


def gather_evidence(results: pd.DataFrame, details: pd.DataFrame | None = None,
                    bootstrap: pd.DataFrame | None = None) -> Evidence:
    diffs = seed_differences(results)
    spread = pooled_sd(list(diffs.values()))
    cells, runs = flagged_units(results[results["method"].isin(CLAIM_METHODS)], CLAIM_METHODS)
    return Evidence(
        runs=_runs(results, details),
        without=overall_difference(paired_differences(without_flagged(results))),
        flagged_cells=cells, flagged_runs=runs,
        hierarchical=hierarchical_bootstrap(list(diffs.values())),
        spread=spread, seeds_needed=seeds_for_half_width(spread),
        bootstrap=bootstrap if bootstrap is not None else pd.DataFrame(columns=BOOTSTRAP_COLUMNS))


def count_text(value: float) -> str:
    return f"{int(value):,}".replace(",", " ")  # "5 000", the protocol's spelling


def budget_text(row) -> str:
    """"20 of 5 000 steps" for an under-trained fine-tuning run, "50 of 100 epochs" for a reduced head."""
    flags = split_flags(row.flags)
    if UNDER_TRAINED in flags and not (math.isnan(row.steps_run) or math.isnan(row.steps_budget)):
        return f"{count_text(row.steps_run)} of {count_text(row.steps_budget)} steps"
    if REDUCED_BUDGET in flags and not math.isnan(row.epochs):
        return f"{count_text(row.epochs)} of {PROTOCOL_EPOCHS} epochs"
    return ""


def budgets(runs: pd.DataFrame, flag: str) -> str:
    """The distinct budgets of the runs carrying `flag`, e.g. "50 of 100 epochs" (joined with " / ")."""
    mine = runs[runs["flags"].map(lambda f: flag in split_flags(f))]
    return " / ".join(dict.fromkeys(t for t in (budget_text(r) for r in mine.itertuples(index=False)) if t))


def _moved(runs: pd.DataFrame) -> str:
    both = runs.dropna(subset=["refit", "selected"])
    if both.empty:
        return ("No cell run recorded its selected head's test score (test_selected_*): runs recorded before "
                "issue #19 have only the refit's.")
    gap = (both["refit"] - both["selected"]).abs()
    worst = both.loc[gap.idxmax()]
    name = f"{worst['task']} · {worst['backbone']} · {worst['method']} · seed {worst['seed']}"
    return (f"Refit vs selected head over the {len(both)} head cell runs that recorded both: |refit − selected| "
            f"is {num(float(gap.mean()))} points on average, at most {num(float(gap.max()))} ({name}).")


def stability_blocks(evidence: Evidence) -> list:
    """The Stability section: the rules, the runs flagged refit_unstable or under_trained with both test
    numbers, and one line for the runs that only ran a reduced budget."""
    runs = evidence.runs
    blocks: list = [Heading("Stability"), Para(
        "Every head cell tests two heads in one pass: the refit on train + validation (the reported number) and "
        "the selected candidate's train-only head (results.csv split test_selected). A run is flagged "
        f"refit_unstable ({MARKS['refit_unstable']}) when the refit scores below the selected head on test "
        "(primary metric) by more than both the val spread (the selected candidate's max − min validation score "
        "over its last k epochs) and the test set's paired noise (two standard errors of the paired difference); "
        "one-sided, since the refit trains on more data; under_trained ({MARKS['under_trained']}): a fine-tuning cell that ran fewer "
        f"optimiser steps than its recipe's budget; reduced_budget ({MARKS['reduced_budget']}): a head trained "
        f"for fewer than the protocol's {PROTOCOL_EPOCHS} epochs. Claims are recomputed without the "
        f"{' and '.join(EXCLUDED)} runs; {' '.join(CAVEAT)} is stated as a budget caveat."), Para(_moved(runs))]
    listed = runs[runs["flags"].map(lambda f: bool(set(split_flags(f)) & set(EXCLUDED)))]
    if listed.empty:
        blocks.append(Para(f"No cell run is flagged {' or '.join(EXCLUDED)}."))
    else:
        rows = tuple(tuple(TableCell(t) for t in (
            r.task, r.backbone, r.method, str(r.seed), r.flags.replace(";", ", "), str(r.metric), num(r.refit),
            num(r.selected), num(r.refit - r.selected, True), num(r.val_spread), budget_text(r) or "–"))
            for r in listed.itertuples(index=False))
        blocks.append(Table(("task", "backbone", "method", "seed", "flags", "metric", "refit test",
                             "selected-head test", "refit − selected", "val spread", "budget"), rows,
                            caption="flagged cell runs: test accuracy (%) of both heads, points"))
    reduced = runs[runs["flags"].map(lambda f: split_flags(f) == (REDUCED_BUDGET,))]
    if len(reduced):
        blocks.append(Para(f"{len(reduced)} more cell run(s) are flagged reduced_budget only "
                           f"({budgets(reduced, REDUCED_BUDGET)}); results.csv's column flags names each."))
    return blocks
