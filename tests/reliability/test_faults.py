"""Faults cost time, never results: an extraction actor killed mid-shard, a SIGKILLed extraction.

Both are `soak` tests (real processes, ~20 s each), like the strongest form in test_soak.py: `seabench run`
SIGKILLed at 10 random moments. In the default run: test_run_e2e.py SIGKILLs `seabench run` mid-sweep,
test_extract.py kills an actor mid-job, test_sweep.py retries a raising trial.
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

from orchestrator.errors import OrchestratorError
from orchestrator.extract.extraction import ActorSettings, extract_features
from orchestrator.extract.store import FeatureStore

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


@pytest.mark.soak
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


@pytest.mark.soak
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
