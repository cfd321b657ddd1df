"""Concurrency: two extractions on one store (file locks), and an MLflow SQLite store that is busy.

The two-process extraction and the 24 s lock are `soak` tests (pytest --soak); so is the 200-cell memory
check in test_soak.py. test_store.py also runs two writer processes on one unit in the default run.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from faultkit import BACKBONE, SHARD, extract, seabench_background, shard_digests, store_digests, unit_folder

from orchestrator.errors import OrchestratorError
from orchestrator.extract.store import FeatureStore
from orchestrator.sweep.cells import Cell
from orchestrator.sweep.tracking import SweepTracker
from orchestrator.sweep.trial import CellOutcome
from orchestrator.tracking_retry import RetryPolicy, retried


@pytest.mark.soak
def test_two_extract_processes_on_one_store_finish_with_correct_uncorrupted_output(
        ray_cluster, make_fake_task, tmp_path):
    import ray

    task = make_fake_task(n_train=8, n_test=4)   # train 24 rows = 6 shards, test 12 = 3 shards
    clean = tmp_path / "clean"
    extract(task.name, clean)
    shared = tmp_path / "shared"
    argv = ["extract", "--backbone", BACKBONE, "--task", task.name, "--store", str(shared), "--shard-size",
            str(SHARD), "--num-actors", "1", "--batch-size", str(SHARD), "--no-progress",
            "--address", ray.get_runtime_context().gcs_address]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    children = [seabench_background(*argv, log=log) for log in logs]
    codes = [child.wait(timeout=300) for child in children]
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]

    assert store_digests(shared).keys() == store_digests(clean).keys()   # one set of shards, none twice
    for split in ("train", "test"):
        assert shard_digests(shared, task.name, split) == shard_digests(clean, task.name, split)
        folder = unit_folder(shared, task.name, split)
        on_disk = sorted(p.name for p in folder.glob("shard-*.parquet"))
        assert on_disk == sorted(shard_digests(shared, task.name, split))
        assert not list(folder.glob(".tmp-*"))
        labels = FeatureStore(shared).load(BACKBONE, task.name, split)[1]
        frame = pd.read_parquet(folder).sort_values("index")
        assert (frame["label"].to_numpy() == labels).all() and len(frame) == len(labels)
    for path, digest in store_digests(shared).items():
        assert hashlib.sha256((shared / path).read_bytes()).hexdigest() == digest


def _hold_write_lock(db: Path, seconds: float, locked: threading.Event) -> None:
    """Another writer: holds SQLite's RESERVED lock (BEGIN IMMEDIATE) for `seconds`, as a second sweep
    logging to the same file would."""
    con = sqlite3.connect(db, timeout=30, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    locked.set()
    time.sleep(seconds)
    con.execute("COMMIT")
    con.close()


def _tracker(tmp_path: Path) -> tuple[SweepTracker, Path]:
    db = tmp_path / "mlflow.db"
    tracker = SweepTracker(f"sqlite:///{db}", "locked")
    tracker.start()
    return tracker, db


OUTCOME = CellOutcome("bb|digits|linear|0", {"lr": 0.8}, {"test_top1": 90.0, "val_top1": 88.0})


def _log_while_locked(tmp_path: Path, seconds: float, caplog: pytest.LogCaptureFixture) -> float:
    tracker, db = _tracker(tmp_path)
    locked = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(db, seconds, locked))
    holder.start()
    locked.wait(10)
    started = time.monotonic()
    with caplog.at_level("INFO", logger="orchestrator.tracking_retry"):
        run_id = tracker.log_cell(Cell("bb", "digits", "linear", 0), OUTCOME)
    waited = time.monotonic() - started
    holder.join()
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["test_top1"] == 90.0
    assert set(tracker.completed()) == {"bb|digits|linear|0"}
    return waited


def test_logging_waits_for_another_writer_of_the_sqlite_store(tmp_path, caplog):
    waited = _log_while_locked(tmp_path, 4.0, caplog)
    assert waited > 3.0, "the store was never contended: the test proves nothing"


@pytest.mark.soak
def test_logging_retries_when_another_writer_outlasts_mlflows_busy_timeout(tmp_path, caplog):
    """MLflow waits 20 s (PRAGMA busy_timeout) and then raises "database is locked"; the tracker retries."""
    waited = _log_while_locked(tmp_path, 24.0, caplog)
    assert waited > 20.0 and any("locked during" in r.message for r in caplog.records)


def test_a_store_locked_past_the_retry_deadline_is_a_clear_error():
    calls = []

    class Busy:
        tracking_uri, retry = "sqlite:///busy.db", RetryPolicy(retry_s=0.3)

        @retried
        def create(self) -> None:
            calls.append(time.monotonic())
            raise RuntimeError("(sqlite3.OperationalError) database is locked")

        @retried
        def other(self) -> None:
            calls.append(time.monotonic())
            raise RuntimeError("no such table: runs")

    with pytest.raises(OrchestratorError, match=r"sqlite:///busy.db stayed locked for 0 s \(create\): another"):
        Busy().create()
    assert len(calls) >= 2   # retried with back-off before giving up

    calls.clear()
    with pytest.raises(RuntimeError, match="no such table"):   # other errors are not retried
        Busy().other()
    assert len(calls) == 1
