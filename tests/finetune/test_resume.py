"""A fine-tuning cell whose driver is killed half-way resumes: its runs are named after the cell and kept beside
the store, so the rerun restores the candidates' Tune experiment and each Ray Train run from its last
checkpoint. It ends with the result of a run never interrupted, trains fewer steps, and a finished cell leaves
no checkpoint behind (finetune.keep: none; keep: last and save_weights in test_sweep_finetune.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweep_finetune import cell_runs, sweep_config

from orchestrator.config import SweepConfig
from orchestrator.sweep import run_sweep

pytestmark = pytest.mark.slow   # ≈ 2 min; the issue's own check (#21), so it runs in CI

DRIVER = """
import sys
import ray
from orchestrator.config import load_config
from orchestrator.sweep import run_sweep
ray.init(address=sys.argv[1])
cfg = load_config(data={data!r})
run_sweep(cfg, cfg.all_tasks, progress=False)
"""


def _config(tmp_path: Path, task, name: str, **finetune: object) -> SweepConfig:
    cfg = sweep_config(tmp_path, task, **{"epochs": 4, "weight_decay": [0.0, 1e-4], **finetune}).to_dict()
    return SweepConfig.from_dict({**cfg, "name": name, "methods": ["finetune"]})


def _checkpoints(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "store-checkpoints").glob("*/checkpoint_*"))


def _registered(tmp_path: Path) -> list[Path]:
    """Candidates' runs whose Ray Train controller has registered a checkpoint (what a rerun resumes from: a
    checkpoint folder written but not yet registered when the driver dies is not one)."""
    return sorted((tmp_path / "store-checkpoints").glob("*-c*/checkpoint_manager_snapshot.json"))


def _run(cfg: SweepConfig, where: Path):
    with contextlib.chdir(where):
        summary = run_sweep(cfg, cfg.all_tasks, progress=False)
    assert summary.failed == [] and summary.completed == 1
    (run,) = next(iter(cell_runs(cfg).values()))
    return run


def test_a_killed_driver_mid_cell_resumes_to_the_uninterrupted_result_with_fewer_steps(
        ray_cluster: None, tmp_path: Path) -> None:
    import ray
    from fakedata import fake_task

    task = fake_task(tmp_path / "task", classes=3, n_train=8, n_test=3, size=16)
    cfg = _config(tmp_path, task, "ft-resume")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                         os.environ.get("PYTHONPATH", "")])}
    with open(tmp_path / "driver.log", "w") as log:
        child = subprocess.Popen([sys.executable, "-c", DRIVER.format(data=cfg.to_dict()),
                                  ray.get_runtime_context().gcs_address], cwd=tmp_path, env=env,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not _registered(tmp_path):   # a candidate's epoch trained, checkpointed and registered
                assert child.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "fine-tuning never checkpointed"
                time.sleep(0.1)
            os.killpg(child.pid, signal.SIGKILL)   # the driver dies at once: no clean-up of its own
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
    assert not cell_runs(cfg) or all(r.info.status != "FINISHED" for v in cell_runs(cfg).values() for r in v)
    assert _checkpoints(tmp_path), "the killed cell's checkpoints are what the rerun resumes from"

    resumed = _run(cfg, tmp_path)
    fresh = _run(_config(tmp_path, task, "ft-fresh"), tmp_path)   # another sweep: other run names, from scratch
    for key in ("val_top1", "val_mean_per_class", "test_top1", "test_mean_per_class", "steps_run"):
        assert resumed.data.metrics[key] == fresh.data.metrics[key], key
    assert resumed.data.params["weight_decay"] == fresh.data.params["weight_decay"]
    full = fresh.data.metrics["steps_trained"]                    # two candidates and the refit, all trained
    assert full > fresh.data.metrics["steps_run"]                   # more than the refit's own steps
    assert 0 < resumed.data.metrics["steps_trained"] < full          # the rerun trained only what was left
    assert not _checkpoints(tmp_path) and not list((tmp_path / "store-checkpoints").iterdir())   # keep: none
