"""MLflow tracking of a sweep, written from the Tune driver only (SQLite breaks under concurrent writers).

Schema (see the contract): one experiment per sweep, a parent run (`seabench.role=sweep`, run name
`sweep`) and one child run per cell (`seabench.role=cell`, tag `cell_id`). A cell is complete iff a
child run with its `cell_id` is FINISHED with tag `status=ok`; any other child run of a cell about to
be (re)computed — RUNNING after a killed driver, or failed — is terminated as KILLED and deleted, so
the experiment always holds exactly one active run per cell.

One sweep per experiment at a time: a sweep's tracker takes a lease on the parent run before it
touches any cell run (orchestrator.sweep.lease), tags each cell run with its lease token, and its
clean-up never touches a run tagged with another live holder's token.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from orchestrator.runs import (
    CANDIDATES_ARTIFACT,
    CELL_ROLE,
    CELLS_ARTIFACT,
    PARENT_TAG,
    PREDICTIONS_ARTIFACT,
    ROLE_TAG,
    UNITS_ARTIFACT,
    is_complete,
    role_filter,
    search_runs,
)
from orchestrator.sweep.cells import Cell, candidates_csv
from orchestrator.sweep.fingerprint import config_hash
from orchestrator.sweep.lease import TOKEN_TAG, Lease, Timing, check_experiment, open_sweep, read_state
from orchestrator.sweep.trial import CellOutcome
from orchestrator.tracking_retry import Backlog, RetryPolicy, TrackingUnavailable, retried

logger = logging.getLogger(__name__)

MAX_BATCH_METRICS = 1000   # MLflow's log_batch limit
WRITE_TAG = "seabench.write"   # on every cell run: its write's id, so that a replayed write finds the run


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


def _metric_list(outcome: CellOutcome, now: int) -> list:
    from mlflow.entities import Metric

    out = [Metric(k, float(v), now, 0) for k, v in outcome.metrics.items() if v is not None and math.isfinite(v)]
    out += [Metric("candidate_val_top1", float(v), now, i) for i, v in enumerate(outcome.candidate_val_top1)]
    out += [Metric("val_best_top1", float(v), now, e) for e, v in enumerate(outcome.val_best_top1, start=1)]
    out += [Metric(k, float(v), now, e) for k, vs in outcome.curves.items() for e, v in enumerate(vs, 1) if math.isfinite(v)]
    return out


class SweepTracker:
    """The sweep's experiment and parent run; logs one child run per finished or failed cell."""

    def __init__(self, tracking_uri: str, experiment: str, config: dict[str, Any] | None = None, *,
                 takeover: bool = False, timing: Timing | None = None, retry: RetryPolicy | None = None) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.config = config or {}
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.code_version = code_version()
        self.experiment_id = ""
        self.parent_id = ""
        self.takeover, self.timing = takeover, timing or Timing.from_env()
        self.lease: Lease | None = None   # a sweep's tracker holds it from start() to finish()
        self.retry = retry or RetryPolicy.from_env()
        self.backlog = Backlog(tracking_uri, self.retry)   # cell records kept while the store is down

    @retried
    def start(self, fingerprints: Mapping[str, str] | None = None) -> dict[str, set[str]]:
        """Create or reopen the experiment and its parent run (one per sweep, reused on resume); a sweep's
        tracker (one with a config) then takes the experiment's lease, or raises naming its holder.
        Returns `completed()`.

        The resolved config is an artifact `configs/config-<hash>.json` of the parent run, never
        truncated and never overwritten (a rerun with another config adds its own); `cells.json`
        maps each planned cell to its current fingerprint, which is what the report reads. Both are
        written by the lease holder only.
        """
        self.experiment_id, self.parent_id = open_sweep(self.client, self.experiment)
        if self.config:
            self.lease = self.lease or Lease(self.client, self.parent_id, self.experiment, self.timing)
            self.lease.acquire(self.takeover)
        self.client.update_run(self.parent_id, status="RUNNING")
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
        return self.completed()

    @contextlib.contextmanager
    def finish_on_error(self) -> Iterator[None]:
        """A block whose failure (Ctrl-C included) ends the sweep: parent run FAILED, lease released."""
        try:
            yield
        except BaseException:
            self.finish("FAILED")
            raise

    @retried
    def check_lease(self) -> None:
        """Raise at once, naming the holder, when another live sweep holds this experiment's lease (reads
        only: `seabench run` asks before it starts Ray and extracts; the sweep itself claims it later)."""
        check_experiment(self.client, self.experiment, self.timing, self.takeover)

    @retried
    def cell_runs(self) -> list:
        return search_runs(self.client, self.experiment_id, role_filter(CELL_ROLE))

    def completed(self) -> dict[str, set[str]]:
        """cell_id -> the fingerprints of its FINISHED child runs tagged status=ok."""
        done: dict[str, set[str]] = {}
        for run in self.cell_runs():
            if is_complete(run):
                done.setdefault(run.data.tags.get("cell_id", ""), set()).add(run.data.tags.get("fingerprint", ""))
        return done

    @retried
    def discard_unfinished(self, cell_ids: Iterable[str]) -> int:
        """Mark KILLED and delete the unfinished or failed child runs of these cells; returns how many.

        A run tagged with the token of another live lease holder is never touched (that sweep is writing
        it); runs of a dead holder (stale, or taken over) and untagged ones are discarded. FINISHED results
        of a cell's older fingerprints stay: they are another config's record."""
        state = read_state(self.client, self.parent_id)
        live = state.live(self.timing) and not (self.lease and state.holder.token == self.lease.token)
        protected, holder = (state.holder.token, state.holder.describe()) if live else ("", "")
        wanted, count, kept = set(cell_ids), 0, 0
        for run in self.cell_runs():
            if run.data.tags.get("cell_id") in wanted and not is_complete(run):
                if protected and run.data.tags.get(TOKEN_TAG) == protected:
                    kept += 1
                    continue
                if run.info.status == "RUNNING":
                    self.client.set_terminated(run.info.run_id, status="KILLED")
                self.client.delete_run(run.info.run_id)
                count += 1
        if kept:
            logger.warning("experiment %r: %d unfinished run(s) of the live sweep of %s left alone",
                           self.experiment, kept, holder)
        return count

    def _cell_tags(self, cell: Cell, extra: dict[str, str]) -> dict[str, str]:
        return {ROLE_TAG: CELL_ROLE, PARENT_TAG: self.parent_id, "cell_id": cell.cell_id,
                "backbone": cell.backbone, "task": cell.task, "method": cell.method, "seed": str(cell.seed),
                "code_version": self.code_version, **({TOKEN_TAG: self.lease.token} if self.lease else {}),
                WRITE_TAG: secrets.token_hex(8), **{k: str(v) for k, v in extra.items()}}

    @retried
    def _create(self, cell: Cell, tags: dict[str, str], start_ms: int | None = None, state: dict | None = None) -> str:
        """The write's run, created once (a retry first looks for the run a lost answer's create made)."""
        state = {} if state is None else state
        if state.get("run_id"):
            return state["run_id"]
        if self.lease:
            self.lease.ensure_held()   # a sweep taken over while frozen writes no more cell runs
        found = search_runs(self.client, self.experiment_id, f"tags.`{WRITE_TAG}` = '{tags[WRITE_TAG]}'") \
            if state.get("tried") else []
        state["tried"] = True
        state["run_id"] = found[0].info.run_id if found else self.client.create_run(
            self.experiment_id, tags=tags, run_name=cell.cell_id, start_time=start_ms).info.run_id
        return state["run_id"]

    @retried
    def _log_batch(self, run_id: str, metrics: list, params: list) -> None:
        self.client.log_batch(run_id, metrics=metrics, params=params)

    @retried
    def _terminate(self, run_id: str, status: str, end_ms: int | None = None) -> None:
        self.client.set_terminated(run_id, status=status, end_time=end_ms)

    @retried
    def _log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    @retried
    def _log_file(self, run_id: str, path: str) -> None:
        """A file the cell left on this node (in a folder of its own), logged, then its folder deleted."""
        self.client.log_artifact(run_id, path)
        shutil.rmtree(Path(path).parent, ignore_errors=True)

    @retried
    def _log_predictions(self, run_id: str, predictions: Mapping[str, list[int]]) -> None:
        """The cell's test predictions as a small Parquet artifact (index int64, the rest int32), so that a
        report can pair two cells example by example (its bootstrap over test images)."""
        import tempfile

        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({name: pa.array(values, pa.int64() if name == "index" else pa.int32())
                          for name, values in predictions.items()})
        with tempfile.TemporaryDirectory(prefix="seabench-predictions-") as tmp:
            path = Path(tmp) / PREDICTIONS_ARTIFACT
            pq.write_table(table, path, compression="zstd")
            self.client.log_artifact(run_id, str(path))

    def log_cell(self, cell: Cell, outcome: CellOutcome) -> str:
        """One FINISHED child run with status=ok, spanning the cell's real compute time; returns its run id,
        or "" when the store is down: the record is kept in memory and logged once it answers (`finish`)."""
        tags = self._cell_tags(cell, {**outcome.tags, "status": "ok"})
        return self.backlog.submit(f"cell {cell.cell_id}", functools.partial(self._write_cell, cell, tags, outcome, {})) or ""

    def _write_cell(self, cell: Cell, tags: dict[str, str], outcome: CellOutcome, state: dict[str, Any]) -> str:
        from mlflow.entities import Param

        start_ms = int(outcome.started * 1000) if outcome.started else None
        end_ms = int(outcome.ended * 1000) if outcome.ended else None
        run_id = self._create(cell, tags, start_ms, state)
        metrics = _metric_list(outcome, end_ms or int(time.time() * 1000))
        params = [Param(k, str(v)) for k, v in sorted(outcome.params.items())]
        for start in range(0, max(len(metrics), 1), MAX_BATCH_METRICS):
            self._log_batch(run_id, metrics[start:start + MAX_BATCH_METRICS], params if start == 0 else [])
        if outcome.candidates:
            self._log_text(run_id, candidates_csv(outcome.candidates), CANDIDATES_ARTIFACT)
        if outcome.predictions:
            self._log_predictions(run_id, outcome.predictions)
        for path in outcome.artifacts.values():   # finetune.save_weights' finetuned.safetensors
            self._log_file(run_id, path)
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
        """A FAILED child run tagged status=failed with the error (its last 5000 characters); kept like
        `log_cell`'s record while the store is down."""
        tags = self._cell_tags(cell, {**(extra or {}), "status": "failed", "error": error.strip()[-5000:] or "?"})
        return self.backlog.submit(f"failed cell {cell.cell_id}",
                                   functools.partial(self._write_failed, cell, tags, {})) or ""

    def _write_failed(self, cell: Cell, tags: dict[str, str], state: dict[str, Any]) -> str:
        self._terminate(run_id := self._create(cell, tags, None, state), "FAILED")
        return run_id

    def finish(self, status: str = "FINISHED") -> None:
        """Log what a store's outage kept (a bounded wait; else TrackingUnavailable naming those cells), end
        the parent run with `status` and release the lease (heartbeat stopped), on every path. A sweep refused
        or taken over leaves the parent run alone: it is another holder's."""
        try:
            self.backlog.drain()
            if self.parent_id and (self.lease is None or (self.lease.held and not self.lease.lost)):
                self._terminate(self.parent_id, status)
        except TrackingUnavailable:
            if self.lease:   # a store that is down cannot be told: the lease goes stale, a rerun here reclaims it
                self.lease.stop()
                self.lease = None
            raise
        finally:
            lease, self.lease = self.lease, None   # a later start() claims a fresh epoch
            if lease:
                lease.release()
