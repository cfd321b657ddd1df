"""The MLflow record of a sweep, as both its writer (`sweep.tracking`) and its reader (`report.data`) see it.

One experiment per sweep: a parent run tagged `seabench.role=sweep` and one child run per cell tagged
`seabench.role=cell` with a `cell_id`. A cell is complete iff one of its child runs is FINISHED with
tag `status=ok`; a run that is FAILED or KILLED, or tagged `status=failed`, is a failed attempt.
"""

from __future__ import annotations

from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ROLE_TAG = "seabench.role"
PARENT_TAG = "mlflow.parentRunId"
SWEEP_ROLE, CELL_ROLE = "sweep", "cell"
CELL_TAGS = ("backbone", "task", "method", "seed")   # the parts of a cell_id, in order
PAGE_SIZE = 1000
CELLS_ARTIFACT = "cells.json"            # parent run: cell_id -> the fingerprint of the current plan
CANDIDATES_ARTIFACT = "candidates.csv"   # cell run: one row per candidate configuration
UNITS_ARTIFACT = "units.csv"             # parent run: the extraction cost of each unit the sweep reads
PREDICTIONS_ARTIFACT = "predictions.parquet"   # cell run: test labels and predictions (index, label, pred, …)


def cell_id(fields: dict[str, Any]) -> str:
    """A cell's id from its parts (CELL_TAGS, by name): "backbone|task|method|seed"."""
    return "|".join(str(fields[t]) for t in CELL_TAGS)


def cell_parts(text: str) -> dict[str, str] | None:
    """The parts of a cell id by name (seed as text); None if `text` is not one. Backbone and task names may
    hold '|' no more than the id's other parts: split from the right."""
    parts = text.rsplit("|", len(CELL_TAGS) - 1)
    return dict(zip(CELL_TAGS, parts)) if len(parts) == len(CELL_TAGS) else None


def role_filter(role: str) -> str:
    """The MLflow filter string selecting the runs of one role (sweep or cell)."""
    return f"tags.`{ROLE_TAG}` = '{role}'"


def search_runs(client: Any, experiment_id: str, filter_string: str) -> list:
    """Every run of the experiment matching `filter_string`, across all result pages."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=PAGE_SIZE,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def is_complete(run: Any) -> bool:
    """The run holds a cell's result: FINISHED and tagged status=ok."""
    return run.info.status == "FINISHED" and run.data.tags.get("status") == "ok"


def is_failed(run: Any) -> bool:
    """The run records a failed attempt at its cell."""
    return run.info.status in ("FAILED", "KILLED") or run.data.tags.get("status") == "failed"
