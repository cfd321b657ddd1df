"""The fine-tuning claim: SeA within 1 point of (or above) fine-tuning on N of M tasks.

Computed from the sweep's own `finetune` cells when it has them — same tasks, splits, seeds and selection
rule as SeA, the difference SeA − fine-tuning paired by seed with a t-interval per (task, backbone). A
user-supplied CSV is still accepted and labelled external (another recipe, other splits, no seeds): it
decides the claim only when the sweep has no finetune cells, and is shown beside it otherwise.

Rendered by `report.sections` (`finetune_blocks`). CSV columns: `task`, optional `backbone`, and the reference accuracy in percent as `top1` (compared
with SeA's test top-1) or `value` (compared with SeA's test value of the task's primary metric).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

import pandas as pd

from orchestrator.errors import OrchestratorError
from orchestrator.report.stats import WITHIN, FinetuneComparison, paired_differences, primary_values

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
