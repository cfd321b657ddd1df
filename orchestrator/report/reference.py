"""A user-supplied fine-tuning reference (seabench never fine-tunes) and SeA's distance to it.

CSV columns: `task`, optional `backbone`, and the reference accuracy in percent as `top1` (compared
with SeA's test top-1) or `value` (compared with SeA's test value of the task's primary metric).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
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
