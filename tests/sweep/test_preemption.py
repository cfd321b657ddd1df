"""Preemption within a cell (orchestrator.sweep.search): a head trial checkpoints through Tune every
trainer.checkpoint_every epochs; a trial whose worker dies mid-cell is restarted by Tune (max_failures),
resumes from its latest checkpoint and logs what an uninterrupted run computes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import mlflow
import pytest
from sweepkit import make_config, runs_by_cell

from orchestrator.sweep.cells import Cell, candidates_csv
from orchestrator.sweep.driver import run_sweep, store_uri, trial_context
from orchestrator.sweep.fingerprint import current_keys
from orchestrator.sweep.search import resumed_epochs
from orchestrator.sweep.tracking import CANDIDATES_ARTIFACT
from orchestrator.sweep.trial import run_cell

CELL = Cell("bb", "digits", "sea", 0)


def _killer():
    from ray import tune

    class KillAtFirstCheckpoint(tune.Callback):
        """SIGKILLs the trial's worker process once its first checkpoint is in Tune's hands (the worker waits
        in tune.report then): a preemption, as a lost node's, for the trial."""

        def __init__(self) -> None:
            self.killed: list[int] = []

        def on_trial_save(self, iteration, trials, trial, **info):
            if not self.killed:
                self.killed.append(trial.last_result["checkpoint_epoch"])
                os.kill(trial.last_result["pid"], signal.SIGKILL)

    return KillAtFirstCheckpoint()


@pytest.mark.usefixtures("one_torch_thread")
def test_a_trial_killed_mid_cell_resumes_from_its_checkpoint_and_logs_the_uninterrupted_result(
        ray_cluster: None, store: str, tmp_path: Path) -> None:
    trainer = {"epochs": 8, "batch_size": 32, "checkpoint_every": 3}
    cfg = make_config(tmp_path, store, methods=["sea"], max_failures=1, trainer=trainer,
                      search={"halving": {"factor": 2, "min_epochs": 2}})
    killer = _killer()
    summary = run_sweep(cfg, cfg.all_tasks, progress=False, extra_callbacks=[killer])
    assert killer.killed == [3] and summary.completed == 1 and summary.failed == []
    (run,) = runs_by_cell(cfg)[CELL.cell_id]
    assert run.data.tags["attempts"] == "2"
    assert run.data.metrics["resumed_from_epoch"] == 3 and run.data.tags["resumed_phase"] == "select"

    # the same cell never interrupted, in this process (one torch thread, as in a 1-CPU trial)
    fresh = run_cell(CELL, trial_context(cfg, current_keys(store_uri(cfg), [CELL])))
    for name in ("val_top1", "test_top1", "test_selected_top1", "refit_train_top1", "val_spread", "head_epochs"):
        assert run.data.metrics[name] == fresh.metrics[name], name
    assert {k: run.data.params[k] for k in fresh.params} == {k: str(v) for k, v in fresh.params.items()}
    logged = mlflow.MlflowClient(cfg.tracking_uri).download_artifacts(run.info.run_id, CANDIDATES_ARTIFACT, str(tmp_path))
    assert Path(logged).read_text() == candidates_csv(fresh.candidates)


def test_an_uninterrupted_trial_records_no_resume_and_checkpoint_every_0_saves_nothing(
        ray_cluster: None, store: str, tmp_path: Path) -> None:
    killer = _killer()
    cfg = make_config(tmp_path, store, methods=["linear"], trainer={"epochs": 3, "batch_size": 32, "checkpoint_every": 0})
    assert run_sweep(cfg, cfg.all_tasks, progress=False, extra_callbacks=[killer]).completed == 1
    (run,) = runs_by_cell(cfg)["bb|digits|linear|0"]
    assert killer.killed == [] and run.data.metrics["resumed_from_epoch"] == 0 and run.data.tags["resumed_phase"] == ""


def test_resumed_epochs_count_the_grid_and_the_refits_a_resume_does_not_redo() -> None:
    assert resumed_epochs(None) == 0
    assert resumed_epochs({"phase": "select", "train": {"epoch": 20}}) == 20
    selected = {"stopped_epoch": 100}
    assert resumed_epochs({"phase": "refit", "selection": selected, "refits": []}) == 100
    assert resumed_epochs({"phase": "refit", "selection": selected, "refits": [0], "train": {"epoch": 30}}) == 230
