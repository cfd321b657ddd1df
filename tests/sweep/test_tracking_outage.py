"""The sweep's tracker through a store's outage (a real SQLite store; the outage injected at MLflow's client
the way it reaches seabench from a server that is down): no cell record is lost, none is written twice,
and a store that stays down ends the sweep with an error naming the cells not logged."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from orchestrator.runs import is_complete
from orchestrator.sweep.cells import Cell
from orchestrator.sweep.tracking import WRITE_TAG, SweepTracker
from orchestrator.sweep.trial import CellOutcome
from orchestrator.tracking_retry import RetryPolicy, TrackingUnavailable

CELLS = [Cell("bb", "digits", "sea", seed) for seed in range(3)]


def _outcome(cell: Cell, top1: float) -> CellOutcome:
    return CellOutcome(cell.cell_id, {"lr": 0.8}, {"test_top1": top1, "val_top1": top1 - 1})


class Outage:
    """MLflow's client as seabench sees a server that is down: every call raises what MLflow raises once its
    own HTTP retries are spent. `down` switches it; `probe` is the backlog's /health check."""

    def __init__(self, tracker: SweepTracker, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down, self.refused = False, 0
        for name in ("create_run", "log_batch", "set_terminated", "log_text", "search_runs"):
            monkeypatch.setattr(tracker.client, name, self._guard(getattr(tracker.client, name)))
        tracker.backlog.probe = lambda uri: not self.down

    def _guard(self, call):
        from mlflow.exceptions import MlflowException

        def guarded(*args, **kwargs):
            if self.down:
                self.refused += 1
                raise MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/create failed "
                                      "with exception HTTPConnectionPool: Max retries exceeded (Connection refused)")
            return call(*args, **kwargs)

        return guarded


@pytest.fixture
def tracker(tmp_path: Path) -> SweepTracker:
    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "outage", {"name": "outage"},
                           retry=RetryPolicy(retry_s=0.3, wait_s=30))
    tracker.start()
    yield tracker
    if tracker.lease:
        tracker.lease.stop()


def _cell_runs(tracker: SweepTracker) -> dict[str, list]:
    found: dict[str, list] = {}
    for run in tracker.cell_runs():
        found.setdefault(run.data.tags["cell_id"], []).append(run)
    return found


def test_cells_finished_while_the_store_is_down_are_logged_once_it_answers(tracker, monkeypatch):
    outage = Outage(tracker, monkeypatch)
    assert tracker.log_cell(CELLS[0], _outcome(CELLS[0], 90.0))
    outage.down = True
    assert tracker.log_cell(CELLS[1], _outcome(CELLS[1], 91.0)) == ""   # retried 0.3 s, then kept
    assert tracker.log_failed(CELLS[2], "Traceback: worker died") == ""
    assert tracker.backlog.labels() == [f"cell {CELLS[1].cell_id}", f"failed cell {CELLS[2].cell_id}"]
    outage.down = False
    tracker.finish()
    runs = _cell_runs(tracker)
    assert sorted(runs) == sorted(c.cell_id for c in CELLS) and all(len(r) == 1 for r in runs.values())
    (kept,) = runs[CELLS[1].cell_id]
    assert is_complete(kept) and kept.data.metrics["test_top1"] == 91.0 and kept.data.params["lr"] == "0.8"
    (failed,) = runs[CELLS[2].cell_id]
    assert failed.info.status == "FAILED" and failed.data.tags["error"] == "Traceback: worker died"
    assert outage.refused and len(tracker.backlog) == 0
    assert tracker.client.get_run(tracker.parent_id).info.status == "FINISHED"


def test_the_sweeps_end_waits_for_the_store_to_come_back(tracker, monkeypatch):
    outage = Outage(tracker, monkeypatch)
    outage.down = True
    tracker.log_cell(CELLS[0], _outcome(CELLS[0], 90.0))
    assert len(tracker.backlog) == 1
    back = threading.Timer(2.0, lambda: setattr(outage, "down", False))
    back.start()
    tracker.finish()
    back.join()
    (run,) = _cell_runs(tracker)[CELLS[0].cell_id]
    assert is_complete(run) and run.data.metrics["test_top1"] == 90.0


def test_a_store_down_past_the_wait_fails_the_sweep_naming_the_store_and_the_cells(tracker, monkeypatch):
    tracker.retry = tracker.backlog.policy = RetryPolicy(retry_s=0.2, wait_s=1.0)
    outage = Outage(tracker, monkeypatch)
    outage.down = True
    lease = tracker.lease
    for cell in CELLS[:2]:
        tracker.log_cell(cell, _outcome(cell, 90.0))
    with pytest.raises(TrackingUnavailable) as caught:
        tracker.finish()
    message = str(caught.value)
    assert tracker.tracking_uri in message and "did not answer within 1 s at the sweep's end" in message
    assert all(cell.cell_id in message for cell in CELLS[:2]) and "rerun the same command" in message
    assert tracker.lease is None and lease._stop.is_set()   # the heartbeat stopped; no call to a store that is down
    outage.down = False
    assert _cell_runs(tracker) == {}   # nothing half-logged counts as done


def test_a_create_whose_answer_was_lost_is_found_again_not_created_twice(tracker, monkeypatch):
    from mlflow.exceptions import MlflowException

    create, lost = tracker.client.create_run, []

    def create_then_lose_the_answer(*args, **kwargs):
        run = create(*args, **kwargs)
        if not lost:
            lost.append(run.info.run_id)
            raise MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/create failed with "
                                  "exception ('Connection aborted.', RemoteDisconnected('Remote end closed'))")
        return run

    monkeypatch.setattr(tracker.client, "create_run", create_then_lose_the_answer)
    run_id = tracker.log_cell(CELLS[0], _outcome(CELLS[0], 90.0))
    (run,) = _cell_runs(tracker)[CELLS[0].cell_id]
    assert run_id == lost[0] == run.info.run_id and is_complete(run) and run.data.tags[WRITE_TAG]


def test_every_cell_run_carries_its_own_write_id(tracker):
    for cell in CELLS:
        tracker.log_cell(cell, _outcome(cell, 90.0))
    ids = {run.data.tags[WRITE_TAG] for runs in _cell_runs(tracker).values() for run in runs}
    assert len(ids) == len(CELLS)
