"""Statistics of a leaderboard: mean ± std over seeds, paired SeA − linear differences with t-intervals.

All functions are pure: they take the long-format results table of `orchestrator.report.data`
(columns backbone, task, method, seed, metric, split, value, primary) and return DataFrames.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
PAPER_GAIN = 2.0  # points; the paper's mean SeA − linear over all (backbone, task) cells
CELL = ["task", "backbone"]
WITHIN = 1.0  # points: "comparable to fine-tuning" means at most this far below it
PAPER_TASKS = (6, 11)  # the paper: SeA comparable to fine-tuning on 6 of its 11 tasks


def t_interval(values: np.ndarray | pd.Series, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high) of a Student-t interval; low/high are NaN when n < 2 (no spread to estimate)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half


def primary_values(results: pd.DataFrame) -> pd.DataFrame:
    """The rows a leaderboard ranks by: the test value of each task's primary metric."""
    return results[results["primary"].astype(bool)]


def flag_union(flags: Iterable[str]) -> str:
    """The flags any of these runs carries (each a ";"-joined string, "" or NaN for none), sorted, ";"-joined."""
    found = {f for text in flags if isinstance(text, str) for f in text.split(";") if f}
    return ";".join(sorted(found))


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per (method, task, backbone): mean, sample std (ddof=1, NaN for one seed) and n over seeds, and the
    flags any of its seeds carries ("" when none)."""
    values = primary_values(results)
    if "flags" not in values.columns:  # a frame built by hand, or results from before flags existed
        values = values.assign(flags="")
    grouped = values.groupby(["method", *CELL], sort=True)
    out = grouped["value"].agg(mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else math.nan, n="count")
    out["flags"] = grouped["flags"].agg(flag_union)
    out = out.reset_index()
    out["best"] = out.groupby(CELL)["mean"].transform(lambda m: np.isclose(m, m.max(), rtol=0, atol=1e-9))
    return out


def paired_differences(
    results: pd.DataFrame, treatment: str = "sea", baseline: str = "linear"
) -> pd.DataFrame:
    """Per (task, backbone): treatment − baseline paired by seed, with its 95 % t-interval over seeds."""
    values = primary_values(results)
    pivot = values[values["method"].isin([treatment, baseline])].pivot_table(
        index=[*CELL, "seed"], columns="method", values="value", aggfunc="first"
    )
    columns = [*CELL, "n", "mean", "std", "ci_low", "ci_high"]
    if treatment not in pivot.columns or baseline not in pivot.columns:
        return pd.DataFrame(columns=columns)
    diff = (pivot[treatment] - pivot[baseline]).dropna()  # seeds run by both methods only
    rows = []
    for (task, backbone), d in diff.groupby(level=CELL, sort=True):
        mean, low, high = t_interval(d.to_numpy())
        std = float(d.std(ddof=1)) if len(d) > 1 else math.nan
        rows.append({"task": task, "backbone": backbone, "n": len(d), "mean": mean, "std": std,
                     "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=columns)


@dataclass(frozen=True)
class FinetuneComparison:
    """The fine-tuning claim (`report.reference` computes it): SeA within WITHIN points of fine-tuning on
    `within` of `compared` tasks."""

    table: pd.DataFrame  # reference.COMPARISON_COLUMNS, one row per (task, backbone) or reference row
    within: int  # tasks on which SeA is within WITHIN points of (or above) fine-tuning
    compared: int  # tasks with both a reference and SeA results
    paper: tuple[int, int] = PAPER_TASKS
    source: str = "external"  # "sweep": the sweep's own finetune cells; "external": the CSV
    differences: pd.DataFrame | None = None  # sweep: per (task, backbone) SeA − finetune paired over seeds
    external: FinetuneComparison | None = None  # a CSV shown beside the sweep's own comparison, not counted


@dataclass(frozen=True)
class OverallDifference:
    """Mean over cells of the per-cell mean difference, with a t-interval over cells."""

    n_cells: int
    mean: float
    ci_low: float
    ci_high: float
    paper: float = PAPER_GAIN

    @property
    def supports_paper(self) -> bool | None:
        """True when the gain is significantly positive and +2 is not excluded from above; None if unknown."""
        if self.n_cells < 2 or math.isnan(self.ci_low):
            return None
        return self.ci_low > 0 and self.ci_high >= self.paper

    @property
    def kind(self) -> str:
        """The verdict's category (what "the verdict holds" compares): its words before the colon."""
        return self.verdict.split(":", 1)[0]

    @property
    def verdict(self) -> str:
        """One plain sentence on what our numbers say about the paper's ≈ +2 points."""
        p = f"+{self.paper:g}"
        if self.n_cells == 0:
            return "No (backbone, task) cell has both SeA and linear results: the claim cannot be checked."
        if self.n_cells < 2 or math.isnan(self.ci_low):
            return f"Only {self.n_cells} cell: no confidence interval, so the claim ({p}) cannot be checked."
        if self.ci_low > self.paper:
            return f"Supports the claim: SeA beats linear by more than the paper's {p} (the whole CI is above it)."
        if self.ci_low > 0:
            if self.ci_high >= self.paper:
                return f"Supports the claim: SeA beats linear, and the paper's {p} lies within our 95 % CI."
            return f"Partly: SeA beats linear significantly, but by less than the paper's {p} (our CI excludes it)."
        if self.ci_high < 0:
            return f"Does not support the claim: SeA is significantly worse than linear (paper: {p})."
        if self.ci_high >= self.paper:
            return f"Inconclusive: our CI contains both no gain (0) and the paper's {p}."
        return f"Does not support the claim: no significant gain, and our CI excludes the paper's {p}."


def overall_difference(differences: pd.DataFrame) -> OverallDifference:
    """t-interval over cells of the cells' mean differences (each cell weighs the same)."""
    means = differences["mean"].dropna().to_numpy(dtype=float)
    mean, low, high = t_interval(means)
    return OverallDifference(len(means), mean, low, high)


def best_method(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (task, backbone): the best method(s) by mean, ties joined with ' = '."""
    best = summary[summary["best"]]
    return best.groupby(CELL, sort=True)["method"].agg(lambda m: " = ".join(sorted(m))).reset_index()


@dataclass(frozen=True)
class Leaderboard:
    """Everything the renderers show, computed once from the long results table."""

    experiment: str
    summary: pd.DataFrame  # summarise(results)
    differences: pd.DataFrame  # paired_differences(results)
    overall: OverallDifference
    best: pd.DataFrame  # best_method(summary)
    failed: pd.DataFrame  # failed cells (may be empty)
    primary_metric: dict[str, str]  # task -> the metric it is ranked by
    mode: str = ""
    finetune: FinetuneComparison | None = None  # set when a fine-tuning reference was given
    skipped: pd.DataFrame | None = None  # (backbone, task, skipped_images) with unreadable images left out
    superseded: int = 0  # finished runs of older configurations (other fingerprints), not used
    results: pd.DataFrame | None = None  # the long table it was computed from (flags, test_selected rows)


def compute_leaderboard(
    results: pd.DataFrame,
    failed: pd.DataFrame | None = None,
    experiment: str = "",
    mode: str = "",
    finetune: FinetuneComparison | None = None,
    skipped: pd.DataFrame | None = None,
) -> Leaderboard:
    summary = summarise(results)
    differences = paired_differences(results)
    primary = primary_values(results)
    metrics = dict(zip(primary["task"], primary["metric"]))
    return Leaderboard(
        experiment=experiment,
        summary=summary,
        differences=differences,
        overall=overall_difference(differences),
        best=best_method(summary),
        failed=failed if failed is not None else pd.DataFrame(),
        primary_metric=metrics,
        mode=mode,
        finetune=finetune,
        skipped=skipped,
        results=results,
    )
