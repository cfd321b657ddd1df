"""Soak tests (minutes; `pytest --soak -m soak`): `seabench run` SIGKILLed at 10 random moments, and a
sweep of 200 tiny cells with its memory measured. Both print their figures (README, Reliability)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fakedata import make_fake_imagefolder
from faultkit import REPO, finished_cells, seabench, shard_files, store_digests
from synthstore import write_task

from orchestrator.sweep.tracking import SweepTracker

pytestmark = pytest.mark.soak
BACKBONE = "random:resnet10t@32"
KILLS = 10
EXTRACTION_KILLS = 4


def _config(root: Path, tasks: list[str], name: str) -> Path:
    """2 tasks × 1 backbone × 4 methods × 3 seeds = 24 cells; 18 shards of 4 rows to extract."""
    config = {
        "name": "soak", "backbones": [BACKBONE], "tasks": tasks, "methods": ["linear", "sea", "fgsm", "logreg"],
        "seeds": [0, 1, 2], "store": str(root / f"{name}-store"), "tracking_uri": f"sqlite:///{root / f'{name}.db'}",
        "trainer": {"epochs": 20, "batch_size": 8},
        "grid": {"lr": [0.8, 1.6], "weight_decay": [1e-6], "lamda": [0.1], "eta": [0.2], "alpha": [0.05],
                 "c": [0.1, 10.0]},
        "extraction": {"shard_size": 4, "batch_size": 4, "dtype": "float32", "num_actors": 1},
        "resources": {"cpu": 1}, "max_failures": 0, "report": {"out": str(root / f"{name}-report")},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _comparable(results_csv: Path) -> pd.DataFrame:
    frame = pd.read_csv(results_csv).drop(columns=["run_id"])
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def _check_invariants(store: Path, db: Path) -> None:
    """What must hold after any kill: every recorded shard is whole, every pointer names a complete unit,
    and no cell has two finished runs."""
    for path, digest in store_digests(store).items():
        assert hashlib.sha256((store / path).read_bytes()).hexdigest() == digest, f"{path} is not what was recorded"
    for pointer in (store / "index").glob("*.json") if (store / "index").exists() else ():
        manifest = json.loads((store / json.loads(pointer.read_text())["path"] / "_manifest.json").read_text())
        assert manifest["complete"], f"{pointer.name} points at an incomplete unit"
    if db.exists() and finished_cells(db, "soak"):
        tracker = SweepTracker(f"sqlite:///{db}", "soak")
        tracker.start()
        ok = [r.data.tags["cell_id"] for r in tracker.cell_runs()
              if r.info.status == "FINISHED" and r.data.tags.get("status") == "ok"]
        assert len(ok) == len(set(ok)), "a cell was finished twice"


def _wait(child: subprocess.Popen, until, deadline: float) -> bool:
    """Poll `until()`; False when the child finished on its own first."""
    while not until():
        if child.poll() is not None:
            return False
        assert time.monotonic() < deadline, "no progress within the deadline"
        time.sleep(0.01)
    return True


def test_ten_random_sigkills_of_seabench_run_end_with_the_uninterrupted_results(ray_cluster, tmp_path):
    import ray

    tasks = []
    for name in ("ta", "tb"):
        make_fake_imagefolder(tmp_path / name, classes=3, n_train=8, n_test=4, size=16)
        tasks.append(f"imagefolder:{tmp_path / name}")
    address = ray.get_runtime_context().gcs_address
    clean = _config(tmp_path, tasks, "clean")
    started = time.monotonic()
    done = seabench("run", "--config", str(clean), "--address", address, "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    uninterrupted = time.monotonic() - started

    config, store, db, log = _config(tmp_path, tasks, "killed"), tmp_path / "killed-store", tmp_path / "killed.db", \
        tmp_path / "killed.log"
    argv = [sys.executable, "-m", "orchestrator.commands.cli", "run", "--config", str(config), "--address", address,
            "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    rng = np.random.default_rng(20261201)
    moments = []
    for i in range(KILLS):
        offset = log.stat().st_size if log.exists() else 0

        def swept(offset: int = offset) -> bool:
            return b"extract:" in log.read_bytes()[offset:]   # printed by this run once extraction is done

        with open(log, "ab") as out:
            child = subprocess.Popen(argv, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        t0, deadline = time.monotonic(), time.monotonic() + 300
        try:
            if i < EXTRACTION_KILLS:
                target = shard_files(store) + int(rng.integers(1, 4))
                alive = _wait(child, lambda t=target, swept=swept: shard_files(store) >= t or swept(), deadline)
                delay, phase = float(rng.uniform(0, 0.3)), "extraction"
            else:
                target = finished_cells(db, "soak") + int(rng.choice([0, 1, 1, 2]))
                alive = _wait(child, lambda t=target, swept=swept: swept() and finished_cells(db, "soak") >= t,
                              deadline)
                delay, phase = float(rng.uniform(0, 1.5)), "sweep"
            assert alive, f"kill {i + 1}: the run finished before it could be killed; give it more work"
            time.sleep(delay)
            phase = phase if child.poll() is None else "after the end"
        finally:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=60)
        moments.append((phase, round(time.monotonic() - t0, 1)))
        _check_invariants(store, db)

    final = seabench("run", "--config", str(config), "--address", address, "--no-progress", cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    print(f"\nsoak: {KILLS} SIGKILLs of `seabench run` (phase, seconds after start): {moments}; "
          f"uninterrupted run {uninterrupted:.0f} s")
    assert sum(phase == "extraction" for phase, _ in moments) >= 3
    assert sum(phase == "sweep" for phase, _ in moments) >= 5

    pd.testing.assert_frame_equal(_comparable(tmp_path / "killed-report" / "results.csv"),
                                  _comparable(tmp_path / "clean-report" / "results.csv"))
    assert store_digests(store) == store_digests(tmp_path / "clean-store")
    tracker = SweepTracker(f"sqlite:///{db}", "soak")
    tracker.start()
    runs = tracker.cell_runs()   # active (not deleted) runs only
    assert len(runs) == 24 and len({r.data.tags["cell_id"] for r in runs}) == 24
    assert all(r.info.status == "FINISHED" and r.data.tags["status"] == "ok" for r in runs)


_SWEEP_200 = """
import json, resource, sys, time
from pathlib import Path
from ray import tune
from orchestrator.config import load_config
from orchestrator.raycluster import init_ray
from orchestrator.sweep.driver import run_sweep

root, address = Path(sys.argv[1]), sys.argv[2]

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

samples = []

class Sample(tune.Callback):
    def on_trial_complete(self, iteration, trials, trial, **info):
        samples.append(rss_mb())

cfg = load_config(data={
    "name": "load", "backbones": [f"bb{i}" for i in range(5)], "tasks": ["digits", "dtd"],
    "methods": ["linear", "sea", "mixup", "logreg"], "seeds": [0, 1, 2, 3, 4], "store": str(root / "store"),
    "tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "trainer": {"epochs": 2, "batch_size": 64},
    "grid": {"lr": [0.8], "weight_decay": [1e-6], "lamda": [0.1], "eta": [0.2], "alpha": [0.05], "c": [1.0]},
    "resources": {"cpu": 1}, "max_failures": 0, "address": address})
init_ray(address)
started = time.perf_counter()
summary = run_sweep(cfg, cfg.all_tasks, progress=False, extra_callbacks=[Sample()])
print(json.dumps({"cells": summary.cells, "completed": summary.completed, "failed": len(summary.failed),
                  "seconds": time.perf_counter() - started, "rss_samples_mb": samples,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def test_a_sweep_of_200_cells_completes_with_bounded_driver_memory(ray_cluster, tmp_path):
    import ray

    for i in range(5):
        write_task(tmp_path / "store", f"bb{i}", "digits", {"train": 200, "test": 100}, 10, dim=32, seed=i)
        write_task(tmp_path / "store", f"bb{i}", "dtd", {"train": 94, "val": 47, "test": 47}, 47, dim=32, seed=i)
    done = subprocess.run([sys.executable, "-c", _SWEEP_200, str(tmp_path), ray.get_runtime_context().gcs_address],
                          capture_output=True, text=True, timeout=1800, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    samples = out["rss_samples_mb"]
    assert (out["cells"], out["completed"], out["failed"]) == (200, 200, 0)
    early, late = float(np.median(samples[40:60])), float(np.median(samples[-20:]))
    print(f"\n200-cell sweep: {out['seconds']:.0f} s ({200 / out['seconds'] * 60:.0f} cells/min); driver RSS "
          f"{early:.0f} MB after ~50 cells, {late:.0f} MB at the end, peak {out['peak_rss_mb']:.0f} MB")
    assert out["peak_rss_mb"] < 2048
    assert late - early < 150, "the driver's memory grows with the number of cells"
