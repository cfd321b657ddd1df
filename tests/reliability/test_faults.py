"""Faults cost time, never results: a killed actor, a SIGKILLed driver, a trial that raises.

The strongest form — `seabench run` SIGKILLed at 10 random moments — is in test_soak.py (marked `soak`).
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from fakedata import make_fake_imagefolder
from faultkit import SHARD, extract, seabench_background, shard_digests, shard_files, store_digests
from synthstore import write_task

from orchestrator.errors import OrchestratorError
from orchestrator.extract import ActorSettings, extract_features
from orchestrator.store import FeatureStore

SLOW_BACKBONE = "random:resnet50@64"   # ≈ 0.3 s per shard of 8 on one core: long enough to die inside one


def _kill_first_extraction_actor_mid_shard(store: Path, killed: list[str]) -> None:
    import ray

    deadline = time.monotonic() + 120
    while shard_files(store) < 1:           # the actor has finished one shard and is busy with the next
        if time.monotonic() > deadline:
            return
        time.sleep(0.02)
    time.sleep(0.15)
    name = next(n for n in ray.util.list_named_actors() if n.startswith("seabench-extract-"))
    ray.kill(ray.get_actor(name), no_restart=False)   # the actor dies and Ray restarts it
    killed.append(name)


def test_an_extraction_actor_killed_mid_shard_is_restarted_and_its_shard_redone_identically(
        ray_cluster, tmp_path):
    make_fake_imagefolder(tmp_path / "task", classes=2, n_train=12, n_test=2, size=16)
    task = f"imagefolder:{tmp_path / 'task'}"
    settings = ActorSettings(num_actors=1, batch_size=8)

    def run(store: Path):
        return extract_features(SLOW_BACKBONE, task, splits=["train"], store=str(store), shard_size=8,
                                progress=False, settings=settings)

    clean = tmp_path / "clean"
    run(clean)
    interrupted, killed = tmp_path / "interrupted", []
    killer = threading.Thread(target=_kill_first_extraction_actor_mid_shard, args=(interrupted, killed))
    killer.start()
    summary = run(interrupted)
    killer.join()
    assert killed, "the actor was never killed"
    assert summary.actor_restarts >= 1 and summary.shards_extracted == 3
    assert shard_digests(interrupted, task, "train", SLOW_BACKBONE) == shard_digests(clean, task, "train",
                                                                                     SLOW_BACKBONE)


def test_a_sigkilled_extraction_leaves_nothing_readable_as_complete_and_a_rerun_finishes_it(
        ray_cluster, make_fake_task, tmp_path):
    import ray

    task = make_fake_task(n_train=12)   # 36 train rows: 9 shards
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    extract(task.name, clean)
    argv = ["extract", "--backbone", "random:resnet10t@32", "--task", task.name, "--store", str(killed),
            "--shard-size", str(SHARD), "--num-actors", "1", "--batch-size", str(SHARD), "--no-progress",
            "--address", ray.get_runtime_context().gcs_address]
    child = seabench_background(*argv)
    try:
        deadline = time.monotonic() + 180
        while shard_files(killed) < 3:
            assert child.poll() is None, "extraction finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    store = FeatureStore(killed)
    with pytest.raises(OrchestratorError, match=r"no features|incomplete"):
        store.load("random:resnet10t@32", task.name, "train")
    recorded = store_digests(killed)   # whatever a manifest records is a whole, verified shard
    assert recorded and all(hashlib.sha256((killed / path).read_bytes()).hexdigest() == digest
                            for path, digest in recorded.items())

    summary = extract(task.name, killed)   # the rerun: what was recorded is kept, the rest is done
    assert summary.shards_skipped == len(recorded) and summary.shards_extracted == len(store_digests(clean)) - len(recorded)
    for split in ("train", "test"):
        assert shard_digests(killed, task.name, split) == shard_digests(clean, task.name, split)


# ---------------------------------------------------------------- a trial that raises


def _corrupt(store: Path, backbone: str) -> tuple[Path, bytes]:
    shard = next((store / backbone / "digits" / "train").glob("*/shard-00000.parquet"))
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])
    return shard, good


def test_a_raising_trial_is_retried_and_one_that_keeps_failing_is_reported_failed(ray_cluster, tmp_path):
    from ray import tune

    from orchestrator.config import load_config
    from orchestrator.report import build_report
    from orchestrator.sweep import run_sweep
    from orchestrator.tracking import SweepTracker

    store = tmp_path / "store"
    for seed, backbone in enumerate(("flaky", "broken")):
        write_task(store, backbone, "digits", {"train": 120, "test": 60}, 10, dim=8, seed=seed)
    flaky_shard, flaky_bytes = _corrupt(store, "flaky")
    broken_shard, _ = _corrupt(store, "broken")

    class RepairAfterFirstFailure(tune.Callback):
        """The flaky cell's first attempt fails; the fault is gone before Tune retries it."""

        def on_trial_recover(self, iteration, trials, trial, **info):
            if trial.config["cell"]["backbone"] == "flaky":
                flaky_shard.write_bytes(flaky_bytes)

    cfg = load_config(data={
        "name": "retry", "backbones": ["flaky", "broken"], "tasks": ["digits"], "methods": ["linear"], "seeds": [0],
        "store": str(store), "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "max_failures": 1,
        "trainer": {"epochs": 2, "batch_size": 32}, "grid": {"lr": [0.8], "weight_decay": [1e-6], "lamda": [0.1]},
        "resources": {"cpu": 1}, "search": {"max_concurrent": 1}, "tune_dir": str(tmp_path / "tune")})
    summary = run_sweep(cfg, cfg.all_tasks, progress=False, extra_callbacks=[RepairAfterFirstFailure()])
    assert summary.completed == 1 and summary.failed == ["broken|digits|linear|0"]

    tracker = SweepTracker(cfg.tracking_uri, cfg.name)
    tracker.start()
    runs = {r.data.tags["cell_id"]: r for r in tracker.cell_runs()}
    flaky, broken = runs["flaky|digits|linear|0"], runs["broken|digits|linear|0"]
    assert flaky.info.status == "FINISHED" and flaky.data.tags["attempts"] == "2"
    assert broken.info.status == "FAILED" and broken.data.tags["attempts"] == "2"
    assert broken_shard.name in broken.data.tags["error"] and "checksum mismatch" in broken.data.tags["error"]

    report = build_report(cfg.name, tmp_path / "report", cfg.tracking_uri)
    assert report.n_failed == 1
    md = (tmp_path / "report" / "leaderboard.md").read_text()
    failed_section = md[md.index("Failed cells"):]
    assert "broken" in failed_section and "checksum mismatch" in failed_section and "| 2 |" in failed_section
