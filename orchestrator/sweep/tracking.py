"""MLflow tracking of a sweep, written from the Tune driver only (SQLite breaks under concurrent writers).

Schema (see the contract): one experiment per sweep, a parent run (`seabench.role=sweep`, run name
`sweep`) and one child run per cell (`seabench.role=cell`, tag `cell_id`). A cell is complete iff a
child run with its `cell_id` is FINISHED with tag `status=ok`; any other child run of a cell about to
be (re)computed — RUNNING after a killed driver, or failed — is terminated as KILLED and deleted, so
the experiment always holds exactly one active run per cell.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.errors import OrchestratorError
from orchestrator.runs import (
    CANDIDATES_ARTIFACT,
    CELL_ROLE,
    CELLS_ARTIFACT,
    PARENT_TAG,
    ROLE_TAG,
    SWEEP_ROLE,
    UNITS_ARTIFACT,
    is_complete,
    role_filter,
    search_runs,
)
from orchestrator.sweep.cells import Cell
from orchestrator.sweep.fingerprint import config_hash
from orchestrator.sweep.trial import CellOutcome

logger = logging.getLogger(__name__)

MAX_BATCH_METRICS = 1000   # MLflow's log_batch limit
RETRY_SECONDS = 60.0
T = TypeVar("T")


def code_version() -> str:
    """`<package version>` plus `+g<git sha>` when the package runs from a git checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        base = version("seabench")
    except PackageNotFoundError:
        from orchestrator import __version__ as base
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return base
    return f"{base}+g{sha}" if sha else base


def _retry(func: Callable[..., T]) -> Callable[..., T]:
    """Retry a tracking call while SQLite reports "database is locked" (another reader/writer)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        deadline, delay = time.monotonic() + RETRY_SECONDS, 0.2
        while True:
            try:
                return func(*args, **kwargs)
            except Exception as exc:  # MlflowException or sqlalchemy OperationalError, both carry the text
                if "database is locked" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    uri = getattr(args[0], "tracking_uri", "the MLflow store") if args else "the MLflow store"
                    raise OrchestratorError(
                        f"{uri} stayed locked for {RETRY_SECONDS:.0f} s ({func.__name__}): another process holds "
                        "the SQLite file; stop it, or use an MLflow server (--tracking-uri http://…) for "
                        "concurrent sweeps. Rerunning resumes where this stopped") from exc
                logger.info("MLflow store locked during %s; retrying in %.1f s", func.__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    return wrapper


def candidates_csv(rows: list[dict[str, Any]]) -> str:
    """The candidate table as CSV: the union of the rows' columns, in first-seen order."""
    import csv
    import io

    columns = list(dict.fromkeys(k for row in rows for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _metric_list(outcome: CellOutcome, now: int) -> list:
    from mlflow.entities import Metric

    out = [Metric(k, float(v), now, 0) for k, v in outcome.metrics.items() if v is not None and math.isfinite(v)]
    out += [Metric("candidate_val_top1", float(v), now, i) for i, v in enumerate(outcome.candidate_val_top1)]
    out += [Metric("val_best_top1", float(v), now, e) for e, v in enumerate(outcome.val_best_top1, start=1)]
    return out


class SweepTracker:
    """The sweep's experiment and parent run; logs one child run per finished or failed cell."""

    def __init__(self, tracking_uri: str, experiment: str, config: dict[str, Any] | None = None) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.config = config or {}
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.code_version = code_version()
        self.experiment_id = ""
        self.parent_id = ""

    @_retry
    def start(self, fingerprints: Mapping[str, str] | None = None) -> None:
        """Create or reopen the experiment and its parent run (one per sweep, reused on resume).

        The resolved config is an artifact `configs/config-<hash>.json` of the parent run, never
        truncated and never overwritten (a rerun with another config adds its own); `cells.json`
        maps each planned cell to its current fingerprint, which is what the report reads.
        """
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None and found.lifecycle_stage == "deleted":
            raise OrchestratorError(f"MLflow experiment {self.experiment!r} is deleted; restore it "
                                    "(mlflow experiments restore) or choose another sweep name")
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        parents = search_runs(self.client, self.experiment_id, role_filter(SWEEP_ROLE))
        if parents:
            self.parent_id = parents[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name="sweep", tags={ROLE_TAG: SWEEP_ROLE})
            self.parent_id = run.info.run_id
        if self.config:   # a tracker opened only to read (no config) records nothing
            digest = config_hash(self.config)
            logged = {f.path for f in self.client.list_artifacts(self.parent_id, "configs")}
            if f"configs/config-{digest}.json" not in logged:
                self.client.log_text(self.parent_id, json.dumps(self.config, indent=1, sort_keys=True),
                                     f"configs/config-{digest}.json")
            self.client.set_tag(self.parent_id, "seabench.config_hash", digest)
            self.client.set_tag(self.parent_id, "code_version", self.code_version)
        if fingerprints is not None:
            self.client.log_text(self.parent_id, json.dumps(dict(fingerprints), indent=1, sort_keys=True),
                                 CELLS_ARTIFACT)

    @_retry
    def cell_runs(self) -> list:
        return search_runs(self.client, self.experiment_id, role_filter(CELL_ROLE))

    def completed(self) -> dict[str, set[str]]:
        """cell_id -> the fingerprints of its FINISHED child runs tagged status=ok."""
        done: dict[str, set[str]] = {}
        for run in self.cell_runs():
            if is_complete(run):
                done.setdefault(run.data.tags.get("cell_id", ""), set()).add(run.data.tags.get("fingerprint", ""))
        return done

    @_retry
    def discard_unfinished(self, cell_ids: Iterable[str]) -> int:
        """Mark KILLED and delete every unfinished or failed child run of these cells; returns how many.

        FINISHED results of a cell's older fingerprints stay: they are another config's record."""
        wanted, count = set(cell_ids), 0
        for run in self.cell_runs():
            if run.data.tags.get("cell_id") in wanted and not is_complete(run):
                if run.info.status == "RUNNING":
                    self.client.set_terminated(run.info.run_id, status="KILLED")
                self.client.delete_run(run.info.run_id)
                count += 1
        return count

    def _cell_tags(self, cell: Cell, extra: dict[str, str]) -> dict[str, str]:
        return {ROLE_TAG: CELL_ROLE, PARENT_TAG: self.parent_id, "cell_id": cell.cell_id,
                "backbone": cell.backbone, "task": cell.task, "method": cell.method, "seed": str(cell.seed),
                "code_version": self.code_version, **{k: str(v) for k, v in extra.items()}}

    @_retry
    def _create(self, cell: Cell, tags: dict[str, str], start_ms: int | None = None) -> str:
        return self.client.create_run(self.experiment_id, tags=tags, run_name=cell.cell_id,
                                      start_time=start_ms).info.run_id

    @_retry
    def _log_batch(self, run_id: str, metrics: list, params: list) -> None:
        self.client.log_batch(run_id, metrics=metrics, params=params)

    @_retry
    def _terminate(self, run_id: str, status: str, end_ms: int | None = None) -> None:
        self.client.set_terminated(run_id, status=status, end_time=end_ms)

    @_retry
    def _log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_cell(self, cell: Cell, outcome: CellOutcome) -> str:
        """One FINISHED child run with status=ok, spanning the cell's real compute time; returns its run id."""
        from mlflow.entities import Param

        start_ms = int(outcome.started * 1000) if outcome.started else None
        end_ms = int(outcome.ended * 1000) if outcome.ended else None
        run_id = self._create(cell, self._cell_tags(cell, {**outcome.tags, "status": "ok"}), start_ms)
        metrics = _metric_list(outcome, end_ms or int(time.time() * 1000))
        params = [Param(k, str(v)) for k, v in sorted(outcome.params.items())]
        for start in range(0, max(len(metrics), 1), MAX_BATCH_METRICS):
            self._log_batch(run_id, metrics[start:start + MAX_BATCH_METRICS], params if start == 0 else [])
        if outcome.candidates:
            self._log_text(run_id, candidates_csv(outcome.candidates), CANDIDATES_ARTIFACT)
        self._terminate(run_id, "FINISHED", end_ms)
        return run_id

    def log_units(self, metrics: Mapping[str, float], table: str) -> None:
        """The extraction cost of the sweep's units, on the parent run: metrics and `units.csv`."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if math.isfinite(v)]
        for start in range(0, len(batch), MAX_BATCH_METRICS):
            self._log_batch(self.parent_id, batch[start:start + MAX_BATCH_METRICS], [])
        self._log_text(self.parent_id, table, UNITS_ARTIFACT)

    def log_failed(self, cell: Cell, error: str, extra: dict[str, str] | None = None) -> str:
        """A FAILED child run tagged status=failed with the error (its last 5000 characters)."""
        tags = self._cell_tags(cell, {**(extra or {}), "status": "failed", "error": error.strip()[-5000:] or "?"})
        run_id = self._create(cell, tags)
        self._terminate(run_id, "FAILED")
        return run_id

    @_retry
    def finish(self, status: str = "FINISHED") -> None:
        if self.parent_id:
            self.client.set_terminated(self.parent_id, status=status)
