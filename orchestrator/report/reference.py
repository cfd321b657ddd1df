"""The fine-tuning claim: SeA within 1 point of (or above) fine-tuning on N of M tasks.

Computed from the sweep's own `finetune` cells when it has them — same tasks, splits, seeds and selection
rule as SeA, the difference SeA − fine-tuning paired by seed with a t-interval per (task, backbone). A
user-supplied CSV is still accepted and labelled external (another recipe, other splits, no seeds): it
decides the claim only when the sweep has no finetune cells, and is shown beside it otherwise.

CSV columns: `task`, optional `backbone`, and the reference accuracy in percent as `top1` (compared
with SeA's test top-1) or `value` (compared with SeA's test value of the task's primary metric).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from orchestrator.errors import OrchestratorError

WITHIN = 1.0  # points: "comparable to fine-tuning" means at most this far below it
PAPER_TASKS = (6, 11)  # the paper: SeA comparable to fine-tuning on 6 of its 11 tasks
VALUE_COLUMNS = ("top1", "value")
COMPARISON_COLUMNS = ["task", "backbone", "metric", "sea", "finetune", "gap", "within"]


def _known_tasks() -> set[str]:
    try:
        from tasks import TASKS
    except ImportError:  # the registry is optional here: the experiment's own tasks still count
        return set()
    return set(TASKS)


def load_reference(path: str | Path, experiment_tasks: Collection[str] = ()) -> pd.DataFrame:
    """Read and validate the CSV; returns columns task, backbone ('' = any), metric, finetune."""
    path = Path(path)
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise OrchestratorError(f"fine-tuning reference {path} does not exist") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise OrchestratorError(f"fine-tuning reference {path} is not a readable CSV: {exc}") from None
    raw.columns = [c.strip() for c in raw.columns]
    if "task" not in raw.columns:
        raise OrchestratorError(f"fine-tuning reference {path} lacks the column 'task' (has: {list(raw.columns)})")
    value_column = next((c for c in VALUE_COLUMNS if c in raw.columns), None)
    if value_column is None:
        raise OrchestratorError(
            f"fine-tuning reference {path} lacks a value column: add 'top1' or 'value' (has: {list(raw.columns)})"
        )
    if raw.empty:
        raise OrchestratorError(f"fine-tuning reference {path} has no rows")
    tasks = raw["task"].str.strip()
    unknown = sorted(set(tasks) - _known_tasks() - set(experiment_tasks))
    if unknown:
        raise OrchestratorError(
            f"fine-tuning reference {path}, column 'task': unknown task(s) {', '.join(map(repr, unknown))} "
            "(neither registered nor in the experiment)"
        )
    values = pd.to_numeric(raw[value_column].str.strip(), errors="coerce")
    if values.isna().any():
        bad = raw.loc[values.isna(), value_column].tolist()
        raise OrchestratorError(f"fine-tuning reference {path}, column {value_column!r}: non-numeric {bad[:5]}")
    backbone = raw["backbone"].str.strip() if "backbone" in raw.columns else pd.Series("", index=raw.index)
    return pd.DataFrame(
        {"task": tasks, "backbone": backbone, "metric": value_column, "finetune": values.astype(float)}
    )


def _sea_value(results: pd.DataFrame, task: str, backbone: str, metric: str) -> float:
    rows = results[(results["method"] == "sea") & (results["task"] == task) & (results["split"] == "test")]
    rows = rows[rows["primary"].astype(bool)] if metric == "value" else rows[rows["metric"] == metric]
    if backbone:
        rows = rows[rows["backbone"] == backbone]
    # mean over seeds per backbone, then over backbones: each backbone weighs the same
    per_backbone = rows.groupby("backbone")["value"].mean()
    return float(per_backbone.mean()) if len(per_backbone) else math.nan


@dataclass(frozen=True)
class FinetuneComparison:
    table: pd.DataFrame  # COMPARISON_COLUMNS, one row per reference row
    within: int  # tasks on which SeA is within WITHIN points of (or above) fine-tuning
    compared: int  # tasks with both a reference and SeA results
    paper: tuple[int, int] = PAPER_TASKS
    source: str = "external"  # "sweep": the sweep's own finetune cells; "external": the CSV
    differences: pd.DataFrame | None = None  # sweep: per (task, backbone) SeA − finetune paired over seeds
    external: FinetuneComparison | None = None  # a CSV shown beside the sweep's own comparison, not counted


def compare_to_finetuning(results: pd.DataFrame, reference: pd.DataFrame) -> FinetuneComparison:
    """A task counts when every reference row of it (one per backbone, or one for all) is matched."""
    rows = []
    for ref in reference.itertuples(index=False):
        sea = _sea_value(results, ref.task, ref.backbone, ref.metric)
        gap = sea - ref.finetune
        rows.append({"task": ref.task, "backbone": ref.backbone or "mean over backbones",
                     "metric": ref.metric, "sea": sea, "finetune": ref.finetune, "gap": gap,
                     "within": bool(gap >= -WITHIN) if not math.isnan(gap) else None})
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    judged = table[table["within"].notna()]
    per_task = judged.groupby("task")["within"].all()
    return FinetuneComparison(table, int(per_task.sum()), len(per_task))


def compare_with_sweep(results: pd.DataFrame) -> FinetuneComparison | None:
    """SeA against the sweep's own finetune cells, paired by seed per (task, backbone); None without any pair.
    A (task, backbone) is within when its mean paired difference is ≥ −1 point; a task when all its backbones are."""
    from orchestrator.report.stats import paired_differences, primary_values

    differences = paired_differences(results, treatment="sea", baseline="finetune")
    if differences.empty:
        return None
    values = primary_values(results)
    rows = []
    for d in differences.itertuples(index=False):
        cell = values[(values["task"] == d.task) & (values["backbone"] == d.backbone)]
        by_method = {m: cell[cell["method"] == m].set_index("seed")["value"] for m in ("sea", "finetune")}
        seeds = by_method["sea"].index.intersection(by_method["finetune"].index)
        rows.append({"task": d.task, "backbone": d.backbone, "metric": str(cell["metric"].iloc[0]),
                     "sea": float(by_method["sea"][seeds].mean()), "finetune": float(by_method["finetune"][seeds].mean()),
                     "gap": float(d.mean), "within": bool(d.mean >= -WITHIN)})
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    per_task = table.groupby("task")["within"].all()
    return FinetuneComparison(table, int(per_task.sum()), len(per_task), source="sweep", differences=differences)


def finetune_claim(results: pd.DataFrame, reference: pd.DataFrame | None = None) -> FinetuneComparison | None:
    """The claim from the sweep's finetune cells when there are any, else from the CSV (external); None
    when neither exists. With both, the CSV's rows are kept as `external`, shown but not counted."""
    own = compare_with_sweep(results)
    external = compare_to_finetuning(results, reference) if reference is not None else None
    if own is None or external is None:
        return own or external
    return replace(own, external=external)


def _difference_rows(comparison: FinetuneComparison) -> tuple:
    from orchestrator.report.blocks import TableCell, interval, num

    merged = comparison.differences.merge(comparison.table, on=["task", "backbone"])
    return tuple(
        (TableCell(r.task), TableCell(r.backbone), TableCell(r.metric), TableCell(str(r.n)), TableCell(num(r.sea)),
         TableCell(num(r.finetune)), TableCell(num(r.mean, True)), TableCell(interval(r.ci_low, r.ci_high)),
         TableCell("yes" if r.within else "no", bool(r.within)))
        for r in merged.itertuples(index=False))


def _external_rows(comparison: FinetuneComparison) -> tuple:
    from orchestrator.report.blocks import NA, TableCell, num

    return tuple(
        (TableCell(r.task), TableCell(r.backbone), TableCell(r.metric), TableCell(num(r.sea)), TableCell(num(r.finetune)),
         TableCell(num(r.gap, True)), TableCell(NA if r.within is None else ("yes" if r.within else "no")))
        for r in comparison.table.itertuples(index=False))


def finetune_blocks(comparison: FinetuneComparison | None, label: str = "") -> list:
    """The report's fine-tuning section: where the fine-tuning numbers come from, and the comparison in full;
    `label` (e.g. "under-trained (20 of 5 000 steps): a check of the machinery, not a verdict") heads it."""
    from orchestrator.report.blocks import Heading, Para, Table  # blocks → plots → stats → this module

    if comparison is None:
        return []
    blocks: list = [Heading("SeA vs fine-tuning")]
    if label and comparison.source == "sweep":
        blocks.append(Para(f"{label[0].upper()}{label[1:]}.", strong=True))
    external = comparison if comparison.source == "external" else comparison.external
    if comparison.source == "sweep":
        blocks += [
            Para(f"Source: this sweep's own finetune cells (the backbone + a linear head trained on the images with "
                 f"Ray Train), under the same tasks, splits, seeds and selection rule as SeA. SeA is within 1 point "
                 f"of (or above) fine-tuning on {comparison.within} of {comparison.compared} tasks (a task counts when "
                 "the mean paired difference of each of its backbones is ≥ −1 point).", strong=True),
            Table(("task", "backbone", "metric", "paired seeds", "SeA", "fine-tuning", "SeA − FT", "95 % CI",
                   "within 1 point"), _difference_rows(comparison),
                  caption="Test, mean over the paired seeds; SeA − FT: mean of the per-seed differences, t-interval")]
    if external is not None:
        counted = "decides the claim above" if comparison.source == "external" else "shown beside, not counted"
        blocks += [Para(f"External reference (the CSV given with --reference): another recipe on other splits, without "
                        f"seeds — {counted}."),
                   Table(("task", "backbone", "compared on", "SeA", "fine-tuning (external)", "SeA − FT", "within 1 point"),
                         _external_rows(external), caption="SeA (test, mean over seeds) vs the external reference")]
    return blocks
