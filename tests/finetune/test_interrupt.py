"""Ctrl-C while a fine-tuning cell trains beside the heads: the driver stops at once (it does not wait for the
cell), its Ray Train workers go with it, nothing half-trained is logged as finished, and a rerun finishes
every cell exactly once."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweep_finetune import BACKBONE, cell_runs, sweep_config

from orchestrator.sweep import run_sweep

pytestmark = [pytest.mark.slow, pytest.mark.soak]   # 90 s: `pytest --soak -m soak`

DRIVER = """
import sys
import ray
from orchestrator.config import load_config
from orchestrator.sweep import run_sweep
ray.init(address=sys.argv[1])
cfg = load_config(data={data!r})
run_sweep(cfg, cfg.all_tasks, progress=False)
"""


def _train_workers() -> dict[str, str]:
    """Alive Ray Train actors (id -> class), from the GCS (the state API needs the dashboard, which tests do
    not start)."""
    from ray._private.state import actors

    return {i: a["ActorClassName"] for i, a in actors().items() if a["State"] == "ALIVE"
            and any(name in a["ActorClassName"] for name in ("RayTrainWorker", "TrainController"))}


def test_ctrl_c_during_fine_tuning_stops_the_driver_and_a_rerun_finishes_every_cell_once(
        ray_cluster: None, tmp_path: Path) -> None:
    import ray
    from fakedata import fake_task

    task = fake_task(tmp_path / "task", classes=3, n_train=8, n_test=3, size=16)
    # 40 epochs of 24 images: long enough to be interrupted after the first checkpoints
    cfg = sweep_config(tmp_path, task, epochs=40, weight_decay=[0.0])
    before = _train_workers()   # other tests' in this session's cluster
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                         os.environ.get("PYTHONPATH", "")])}
    log = open(tmp_path / "driver.log", "w")   # noqa: SIM115 (closed below)
    child = subprocess.Popen([sys.executable, "-c", DRIVER.format(data=cfg.to_dict()),
                              ray.get_runtime_context().gcs_address], cwd=tmp_path, env=env,
                             stdout=log, stderr=subprocess.STDOUT)
    tail = lambda: (tmp_path / "driver.log").read_text()[-3000:]   # noqa: E731
    try:
        deadline = time.monotonic() + 300
        while not any((tmp_path / "store-checkpoints").rglob("state.pt")):   # a fine-tuning epoch's checkpoint
            assert child.poll() is None, f"the driver exited early with {child.returncode}"
            assert time.monotonic() < deadline, "fine-tuning never checkpointed"
            time.sleep(0.2)
        interrupted = time.monotonic()
        child.send_signal(signal.SIGINT)
        try:
            child.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the driver did not stop within 90 s of Ctrl-C:\n{tail()}")
        stopped = time.monotonic() - interrupted
    finally:
        if child.poll() is None:
            child.kill()
        log.close()
    assert child.returncode != 0
    deadline = time.monotonic() + 60
    while left := {i: c for i, c in _train_workers().items() if i not in before}:   # die with the cell's task
        assert time.monotonic() < deadline, f"Ray Train actors outlived the driver: {left}"
        time.sleep(0.5)
    runs = cell_runs(cfg)
    ft_cell = f"{BACKBONE}|{task.name}|finetune|0"
    assert not any(r.info.status == "FINISHED" for r in runs.get(ft_cell, [])), "a half-trained cell was logged"

    short = type(cfg).from_dict({**cfg.to_dict(), "finetune": {**cfg.to_dict()["finetune"], "epochs": 2}})
    with contextlib.chdir(tmp_path):
        summary = run_sweep(short, short.all_tasks, progress=False)
    assert summary.failed == [] and summary.completed + summary.skipped == 2
    after = cell_runs(short)
    assert len(after) == 2 and all([r.info.status for r in v] == ["FINISHED"] for v in after.values())
    print(f"driver stopped {stopped:.1f} s after Ctrl-C; Ray Train actors alive before it: {len(before)}")
