"""Read a sweep's MLflow experiment into long-format tables (one row per cell and metric).

The schema read here is the one `orchestrator.sweep.driver` writes (see the contract): a parent run tagged
`seabench.role=sweep` and one child run per cell tagged `seabench.role=cell`. A cell is a result iff
its run is FINISHED with tag `status=ok`; cells whose every run failed are reported as failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.errors import OrchestratorError
from orchestrator.runs import (
    CELL_ROLE,
    CELL_TAGS,
    CELLS_ARTIFACT,
    DEFAULT_TRACKING_URI,
    SWEEP_ROLE,
    cell_id,
    cell_parts,
    is_complete,
    is_failed,
    role_filter,
    search_runs,
)

logger = logging.getLogger(__name__)

PRIMARY_METRICS = ("top1", "mean_per_class")
# final metrics only: curves (candidate_val_top1, val_best_top1) are not results
# split test_selected: the selected candidate's train-only head, scored in the same test pass as the refit
RESULT_METRIC = re.compile(r"^(?P<split>val|test|test_selected)_(?P<metric>top1|mean_per_class)$")
RESULT_COLUMNS = ["backbone", "task", "method", "seed", "metric", "split", "value", "run_id", "primary", "flags"]
FLAG_SEPARATOR = ";"
FAILED_COLUMNS = ["backbone", "task", "method", "seed", "error", "run_id", "attempts"]
SKIPPED_COLUMNS = ["backbone", "task", "skipped_images"]


@dataclass(frozen=True)
class ExperimentData:
    """What a report is built from: results of finished cells, failed cells, and the sweep's parent run."""

    experiment: str
    results: pd.DataFrame  # RESULT_COLUMNS; `primary` marks the test value of the task's primary metric
    failed: pd.DataFrame  # FAILED_COLUMNS; cells with no successful run
    parent_run_id: str | None
    mode: str  # "select" | "reference" | "mixed" | "" — which protocol produced the numbers
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SKIPPED_COLUMNS))
    # SKIPPED_COLUMNS: (backbone, task) whose cells left out unreadable images, and how many
    superseded: int = 0  # finished runs of older configurations (other fingerprints), left out


def primary_metric_for(task: str, tag: str | None) -> str:
    """The task registry decides; the run's `primary_metric` tag covers tasks the registry does not know."""
    from tasks.errors import TaskError

    try:
        from tasks import get_task

        metric = get_task(task).metric
    except (ImportError, TaskError):
        metric = tag or ""
    if metric not in PRIMARY_METRICS:
        logger.warning("task %r has no known primary metric (tag %r); ranking it by top1", task, tag)
        return "top1"
    return metric


def _check_store_exists(tracking_uri: str) -> None:
    # MLflow silently creates an empty SQLite store for a missing file; a typo should be an error instead
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        path = Path(tracking_uri[len(prefix) :])
        if not path.exists():
            raise OrchestratorError(
                f"no MLflow store at {path} (tracking URI {tracking_uri}); run `seabench run --config ...` "
                "first or pass --tracking-uri pointing at the sweep's store"
            )


def tracking_client(tracking: Any):
    """The MLflow client of `tracking`, a tracking URI (checked to exist) or already a client (a report opens
    one and hands it to every reader)."""
    if not isinstance(tracking, str):
        return tracking
    from mlflow import MlflowClient

    _check_store_exists(tracking)
    return MlflowClient(tracking_uri=tracking)


def _experiment_id(client, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage == "deleted":
        names = sorted(e.name for e in client.search_experiments())
        state = "is deleted" if found is not None else "does not exist"
        raise OrchestratorError(
            f"MLflow experiment {experiment!r} {state}; existing experiments: {', '.join(names) or '(none)'}"
        )
    return found.experiment_id


def _cell_fields(run) -> dict:
    tags = run.data.tags
    missing = [t for t in CELL_TAGS if t not in tags]
    if missing and (parts := cell_parts(tags.get("cell_id", ""))) is not None:
        tags = {**tags, **parts}   # a run that failed before its tags were written still carries its canonical id
    elif missing:
        raise OrchestratorError(
            f"cell run {run.info.run_id} lacks tag(s) {', '.join(missing)}; it was not written by seabench's sweep"
        )
    try:
        seed = int(tags["seed"])
    except ValueError:
        raise OrchestratorError(f"cell run {run.info.run_id} has a non-integer seed tag {tags['seed']!r}") from None
    return {"backbone": tags["backbone"], "task": tags["task"], "method": tags["method"], "seed": seed}


def run_flags(tag: str | None) -> str:
    """The run's `flags` tag as results.csv holds it: ";"-joined, blanks dropped, "" when none (older runs)."""
    return FLAG_SEPARATOR.join(f.strip() for f in (tag or "").split(FLAG_SEPARATOR) if f.strip())


def result_rows(run, fields: dict) -> list[dict]:
    """Long-format rows of one finished cell run: one per (split, metric) it logged, each with the run's flags."""
    primary = primary_metric_for(fields["task"], run.data.tags.get("primary_metric"))
    flags = run_flags(run.data.tags.get("flags"))
    rows = []
    for key, value in sorted(run.data.metrics.items()):
        match = RESULT_METRIC.match(key)
        if match is None:
            continue
        metric, split = match["metric"], match["split"]
        rows.append(
            {
                **fields,
                "metric": metric,
                "split": split,
                "value": float(value),
                "run_id": run.info.run_id,
                "primary": metric == primary and split == "test",
                "flags": flags,
            }
        )
    return rows


def _latest_per_cell(runs: Iterable) -> dict[str, object]:
    # a resumed sweep may have re-run a cell: the most recent run of a cell is its result
    latest: dict[str, object] = {}
    for run in runs:
        cid = cell_id(_cell_fields(run))
        if cid not in latest or (run.info.start_time or 0) > (latest[cid].info.start_time or 0):
            latest[cid] = run
    return latest


def _tables(runs: list) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    ok = _latest_per_cell(r for r in runs if is_complete(r))
    failed = _latest_per_cell(r for r in runs if is_failed(r))
    duplicates = sum(1 for r in runs if is_complete(r)) - len(ok)
    if duplicates:
        logger.info("%d superseded re-runs of finished cells ignored (latest run per cell kept)", duplicates)
    rows = [row for run in ok.values() for row in result_rows(run, _cell_fields(run))]
    results = pd.DataFrame(rows, columns=RESULT_COLUMNS).sort_values(
        ["task", "backbone", "method", "seed", "split", "metric"], ignore_index=True
    )
    failed_rows = [
        {**_cell_fields(run), "error": run.data.tags.get("error", run.info.status), "run_id": run.info.run_id,
         "attempts": _int_tag(run, "attempts", 1)}
        for cid, run in failed.items()
        if cid not in ok
    ]
    failed_df = pd.DataFrame(failed_rows, columns=FAILED_COLUMNS).sort_values(
        ["task", "backbone", "method", "seed"], ignore_index=True
    )
    modes = {run.data.tags.get("mode", "") for run in ok.values()}
    mode = modes.pop() if len(modes) == 1 else ("mixed" if modes else "")
    return results, failed_df, mode


def _int_tag(run, name: str, default: int) -> int:
    try:
        return int(run.data.tags.get(name, default))
    except ValueError:
        return default


def skipped_images(runs: Iterable) -> pd.DataFrame:
    """(backbone, task, skipped_images) wherever a finished cell left out unreadable images; every cell
    of a (backbone, task) reads the same units, so the largest count is the one to show."""
    counts: dict[tuple[str, str], int] = {}
    for run in runs:
        fields, n = _cell_fields(run), _int_tag(run, "skipped_images", 0)
        if n > 0:
            key = (fields["backbone"], fields["task"])
            counts[key] = max(counts.get(key, 0), n)
    rows = [{"backbone": b, "task": t, "skipped_images": n} for (b, t), n in sorted(counts.items())]
    return pd.DataFrame(rows, columns=SKIPPED_COLUMNS)


def load_experiment(experiment: str, tracking_uri: str | None = None, *, client: Any = None,
                    runs: Iterable | None = None) -> ExperimentData:
    """Read an experiment's cell runs (`runs`: already fetched, those of every experiment of a report, or fetched
    here); raise OrchestratorError when it is unknown or has no finished cells."""
    uri = tracking_uri or DEFAULT_TRACKING_URI
    client = tracking_client(client or uri)
    experiment_id = _experiment_id(client, experiment)
    runs = ([r for r in runs if r.info.experiment_id == experiment_id] if runs is not None
            else search_runs(client, experiment_id, role_filter(CELL_ROLE)))
    parents = search_runs(client, experiment_id, role_filter(SWEEP_ROLE))
    # the most recent parent is the sweep that wrote (or last resumed) these cells
    parents.sort(key=lambda r: r.info.start_time or 0, reverse=True)
    parent_id = parents[0].info.run_id if parents else None
    runs, superseded = current_runs(runs, current_fingerprints(client, parent_id))
    results, failed, mode = _tables(runs)
    if results.empty:
        raise OrchestratorError(
            f"MLflow experiment {experiment!r} at {uri} has no finished cells "
            f"({len(runs)} cell run(s), {len(failed)} failed); produce them with "
            f"`seabench run --config <sweep.yaml> --tracking-uri {uri}` (the config's `name` is the "
            "experiment name), then rerun `seabench report`"
        )
    return ExperimentData(experiment, results, failed, parent_id, mode, skipped_images(r for r in runs if is_complete(r)),
                          superseded)


def current_fingerprints(client, parent_id: str | None) -> dict[str, str] | None:
    """cell_id -> fingerprint of the sweep's current plan (the parent run's cells.json); None if absent."""
    import json
    import tempfile

    if parent_id is None:
        return None
    with tempfile.TemporaryDirectory(prefix="seabench-cells-") as tmp:
        try:
            path = client.download_artifacts(parent_id, CELLS_ARTIFACT, tmp)
        except Exception:  # MlflowException / OSError: a sweep written before fingerprints existed
            return None
        return json.loads(Path(path).read_text())


def current_runs(runs: list, fingerprints: dict[str, str] | None) -> tuple[list, int]:
    """The runs of the current plan's cells with the current fingerprints, and how many finished runs of
    older configurations (other fingerprints, or cells no longer planned) were left out."""
    if fingerprints is None:
        return runs, 0
    keep = [r for r in runs if fingerprints.get(r.data.tags.get("cell_id", "")) == r.data.tags.get("fingerprint")]
    return keep, sum(1 for r in runs if is_complete(r)) - sum(1 for r in keep if is_complete(r))


PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextlib.contextmanager
def quiet_downloads():
    """No MLflow progress bar per downloaded table (a report reads one per cell)."""
    previous = os.environ.get(PROGRESS_BAR)
    os.environ[PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(PROGRESS_BAR, None)
        else:
            os.environ[PROGRESS_BAR] = previous


def log_report(tracking: Any, parent_run_id: str, files: Iterable[Path]) -> None:
    """Attach the report files to the sweep's parent run under the artifact path `report` (`tracking`: a URI,
    None for the default, or the report's client)."""
    client = tracking_client(tracking or DEFAULT_TRACKING_URI)
    for path in files:
        client.log_artifact(parent_run_id, str(path), artifact_path="report")
