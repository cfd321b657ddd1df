"""One sweep per experiment at a time (orchestrator.sweep.lease), on a real SQLite MLflow store: a second
sweep is refused naming the holder, a takeover needs a stale heartbeat, clean-up spares a live holder's
runs, a killed holder's lease is reclaimed, and racing drivers open one experiment and one parent run."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator.errors import OrchestratorError
from orchestrator.sweep import lease
from orchestrator.sweep.cells import Cell
from orchestrator.sweep.lease import HEARTBEAT_TAG, RELEASED_TAG, TOKEN_TAG, Timing
from orchestrator.sweep.tracking import SweepTracker

REPO = Path(__file__).resolve().parents[2]
FAST = Timing(heartbeat_s=0.2, stale_s=1.5)
CELL = Cell("bb", "digits", "linear", 0)


@pytest.fixture
def uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(lease, "SETTLE_S", 0.05)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def sweep(uri: str, takeover: bool = False, experiment: str = "leased") -> SweepTracker:
    """A sweep's tracker (it has a config, so start() takes the lease)."""
    return SweepTracker(uri, experiment, {"name": experiment}, takeover=takeover, timing=FAST)


def running_run(tracker: SweepTracker) -> str:
    """A cell run the tracker is writing: created, not yet terminated (as a driver killed mid-log leaves it)."""
    return tracker._create(CELL, tracker._cell_tags(CELL, {"status": "ok"}))


def wait_stale(tracker: SweepTracker) -> None:
    tags = tracker.client.get_run(tracker.parent_id).data.tags
    time.sleep(max(0.0, float(tags[HEARTBEAT_TAG]) + FAST.stale_s + 0.3 - time.time()))


def test_a_second_sweep_is_refused_naming_the_holder_and_cannot_touch_its_record(uri: str, tmp_path: Path) -> None:
    first = sweep(uri)
    first.start({CELL.cell_id: "fingerprint-of-first"})
    second = sweep(uri)
    with pytest.raises(OrchestratorError) as refused:
        second.start({CELL.cell_id: "fingerprint-of-second"})
    message = str(refused.value)
    for part in (socket.gethostname(), f"pid {os.getpid()}", first.lease.token, "since", "heartbeat", "--takeover"):
        assert part in message
    with pytest.raises(OrchestratorError, match="is being swept by"):
        sweep(uri).check_lease()   # what `seabench run` asks before it starts Ray
    second.finish("FAILED")   # the refused sweep's clean-up leaves the holder's parent run alone
    client = first.client
    assert client.get_run(first.parent_id).info.status == "RUNNING"
    cells = json.loads(Path(client.download_artifacts(first.parent_id, "cells.json", str(tmp_path))).read_text())
    assert cells == {CELL.cell_id: "fingerprint-of-first"}   # written by the lease holder only

    holding = first.lease
    first.finish()
    assert not holding._thread.is_alive()
    assert client.get_run(first.parent_id).data.tags[RELEASED_TAG] == holding.token
    third = sweep(uri)
    third.start()   # a released lease is free: the next sweep claims the next epoch on the same parent run
    params = client.get_run(third.parent_id).data.params
    assert third.parent_id == first.parent_id and {"seabench.lease.1", "seabench.lease.2"} <= set(params)
    third.finish()


def test_the_holder_refreshes_its_heartbeat_and_its_tracker_still_pickles(uri: str) -> None:
    holder = sweep(uri)
    holder.start()
    pickle.dumps(holder)   # Tune pickles its callbacks, which hold the tracker
    beat = float(holder.client.get_run(holder.parent_id).data.tags[HEARTBEAT_TAG])
    time.sleep(4 * FAST.heartbeat_s)
    assert float(holder.client.get_run(holder.parent_id).data.tags[HEARTBEAT_TAG]) > beat
    holder.finish()


def test_takeover_is_refused_while_fresh_allowed_once_stale_and_fences_the_old_holder(uri: str) -> None:
    first = sweep(uri)
    first.start()
    left = running_run(first)
    with pytest.raises(OrchestratorError, match=r"--takeover refused: .* so it is alive"):
        sweep(uri, takeover=True).start()
    first.lease.stop()   # the holder freezes: its heartbeat stops while its process lives on
    wait_stale(first)
    with pytest.raises(OrchestratorError, match=r"stale after 1.5 s\): if that sweep no longer runs, rerun with "
                                                "--takeover"):
        sweep(uri).start()
    taker = sweep(uri, takeover=True)
    taker.start()
    # the stale holder's unfinished run is discarded; the new holder's own runs carry its token
    assert taker.discard_unfinished([CELL.cell_id]) == 1
    assert taker.client.get_run(left).info.lifecycle_stage == "deleted"
    assert taker.client.get_run(running_run(taker)).data.tags[TOKEN_TAG] == taker.lease.token
    # the old holder wakes up: it may write no further cell run, nor end the parent run or release the lease
    with pytest.raises(OrchestratorError, match="taken over by .*" + taker.lease.token):
        running_run(first)
    first.finish("FAILED")
    run = taker.client.get_run(taker.parent_id)
    assert run.info.status == "RUNNING" and RELEASED_TAG not in run.data.tags
    taker.finish()


def test_clean_up_never_discards_a_live_holders_runs(uri: str) -> None:
    holder = sweep(uri)
    holder.start()
    writing = running_run(holder)
    reader = SweepTracker(uri, "leased", timing=FAST)   # no config: opens the experiment, takes no lease
    reader.start()
    legacy = running_run(reader)   # untagged, as a driver from before leases (or a killed one) left it
    assert reader.discard_unfinished([CELL.cell_id]) == 1
    assert reader.client.get_run(legacy).info.lifecycle_stage == "deleted"
    run = reader.client.get_run(writing)
    assert (run.info.lifecycle_stage, run.info.status) == ("active", "RUNNING")
    holder.finish()


HOLD = """
import sys, time
from orchestrator.sweep.tracking import SweepTracker
SweepTracker(sys.argv[1], "leased", {"name": "leased"}).start()
print("held", flush=True)
time.sleep(120)
"""


def test_a_killed_holders_lease_is_reclaimed_without_takeover(uri: str, caplog: pytest.LogCaptureFixture) -> None:
    """Same host, same pid namespace, process gone: provably dead, whatever its heartbeat says."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, uri], stdout=subprocess.PIPE, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout.readline().strip() == "held", "the holder process did not take the lease"
        with pytest.raises(OrchestratorError, match=f"pid {child.pid} "):
            sweep(uri).start()   # alive: refused
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    with caplog.at_level("WARNING", logger="orchestrator.sweep.lease"):
        tracker = sweep(uri)
        tracker.start()
    assert f"reclaimed the lease of host {socket.gethostname()} pid {child.pid}" in caplog.text
    tracker.finish()


def race_to_open(uri: str, name: str, drivers: int = 8, config: dict | None = None) -> tuple[list, list]:
    """`drivers` threads released at once by a barrier, each calling start() on the experiment `name`
    (with `config`: as sweeps, which take the lease); returns the (experiment, parent, tracker) opened."""
    barrier, opened, errors = threading.Barrier(drivers), [], []

    def open_it() -> None:
        tracker = SweepTracker(uri, name, config, timing=FAST)
        barrier.wait(timeout=30)
        try:
            tracker.start()
            opened.append((tracker.experiment_id, tracker.parent_id, tracker))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(drivers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return opened, errors


def test_drivers_racing_to_create_the_experiment_all_open_the_same_one(
        uri: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Round after round until the race has really happened (a create_experiment lost and retried): every
    start() succeeds, and all of a round's drivers open one experiment and one parent run."""
    monkeypatch.setattr(lease, "SETTLE_S", 0.5)
    raced = False
    with caplog.at_level("INFO", logger="orchestrator.sweep.lease"):
        for round_ in range(6):
            opened, errors = race_to_open(uri, f"raced-{round_}")
            assert not errors and len(opened) == 8, errors
            ids = {(experiment, parent) for experiment, parent, _ in opened}
            assert len(ids) == 1, f"round {round_}: the drivers opened {ids}"
            client = SweepTracker(uri, "any").client
            parents = client.search_runs([opened[0][0]], "tags.`seabench.role` = 'sweep'")
            assert [p.info.run_id for p in parents] == [opened[0][1]]
            raced = "created at the same moment" in caplog.text
            if raced:
                break
    assert raced, "no create_experiment was ever lost in 6 rounds: the test proves nothing"


def test_of_sweeps_racing_for_one_lease_exactly_one_wins_and_the_rest_name_it(uri: str) -> None:
    first = sweep(uri)
    first.start()
    first.finish()   # the experiment and its parent run exist: the race is for the claim alone
    opened, errors = race_to_open(uri, "leased", config={"name": "leased"})
    assert len(opened) == 1, f"{len(opened)} sweeps hold the lease at once"
    winner = opened[0][2]
    assert len(errors) == 7 and all(isinstance(e, OrchestratorError) and winner.lease.token in str(e) for e in errors)
    winner.finish()


@pytest.mark.parametrize(("env", "value", "expected"), [
    (lease.STALE_ENV, "soon", r"\$SEABENCH_LEASE_STALE_S='soon' is not a positive number"),
    (lease.HEARTBEAT_ENV, "-1", r"\$SEABENCH_LEASE_HEARTBEAT_S='-1' is not a positive number"),
    (lease.HEARTBEAT_ENV, "90", r"\$SEABENCH_LEASE_STALE_S=60 must exceed \$SEABENCH_LEASE_HEARTBEAT_S=90"),
])
def test_bad_lease_timings_name_the_variable(monkeypatch: pytest.MonkeyPatch, env: str, value: str,
                                             expected: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(OrchestratorError, match=expected):
        Timing.from_env()
