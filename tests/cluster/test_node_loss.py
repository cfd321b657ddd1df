"""Node loss (soak): a worker node removed mid-extraction and another mid-sweep, each replaced by a fresh
node (as a spot replacement or an autoscaler would): the run finishes, every shard verifies, the results
equal an uninterrupted single-node run's, and MLflow holds exactly one FINISHED run per cell."""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter

import pytest
from clusterkit import (
    BUCKET,
    Sweep,
    add_worker,
    cell_runs,
    driver_env,
    manifests,
    ray_cluster,
    results,
    s3_client,
    s3_objects,
    seabench,
    start_seabench,
    wait_until,
    write_config,
)
from fakedata import make_fake_imagefolder

pytestmark = pytest.mark.soak
RUN_TIMEOUT_S = 900


def _lose_a_node(cluster, removed: list) -> None:
    node = sorted(cluster.worker_nodes, key=lambda n: n.node_id)[0]
    cluster.remove_node(node, allow_graceful=False)
    removed.append(node.node_id)
    add_worker(cluster)   # its replacement


def test_node_lost_mid_extraction_and_mid_sweep(tmp_path, s3_env, tracking):
    make_fake_imagefolder(tmp_path / "task", classes=3, n_train=30, n_test=6, size=32)
    sweep = Sweep(f"imagefolder:{tmp_path / 'task'}", seeds=(0, 1, 2))
    store, prefix = f"s3://{BUCKET}/loss/features", "loss/features/"
    extra = {"trainer": {"epochs": 15, "batch_size": 8}}
    env = s3_env
    with ray_cluster(env, workers=2) as cluster:
        driver = driver_env(env, tmp_path)
        config = write_config(tmp_path / "loss.yaml", sweep.config("loss", store, **extra))
        log = tmp_path / "driver.log"
        began = time.monotonic()
        run = start_seabench(["run", "--config", str(config), "--address", cluster.address, "--store", store,
                              "--tracking-uri", tracking, "--out", str(tmp_path / "report"), "--no-progress"],
                             driver, tmp_path, log)
        removed: list[str] = []
        try:
            def some_shards_written() -> bool:
                return any(k.endswith(".parquet") for k in s3_objects(env, prefix)) or run.poll() is not None

            wait_until(some_shards_written, RUN_TIMEOUT_S, "a first shard on S3", every=0.1)
            units = manifests(env, prefix)
            assert run.poll() is None and not (units and all(m["complete"] for m in units.values())), \
                "extraction ended before a node could be removed mid-way: give it more images"
            _lose_a_node(cluster, removed)
            lost_extracting = time.monotonic() - began

            def some_cell_finished() -> bool:
                return any(r.info.status == "FINISHED" for r in cell_runs(tracking, "loss")) or run.poll() is not None

            wait_until(some_cell_finished, RUN_TIMEOUT_S, "a first finished cell", every=0.2)
            assert run.poll() is None and len(cell_runs(tracking, "loss")) < 6, "the sweep ended before a node loss"
            _lose_a_node(cluster, removed)
            lost_sweeping = time.monotonic() - began
            run.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait(timeout=30)
        total = time.monotonic() - began
        assert run.returncode == 0, log.read_text()
        # the shard job its actor was computing went to another actor (the run says how many)
        assert re.search(r"extract: .*; [1-9]\d* shard job\(s\) re-submitted after their actor was lost", log.read_text())
        print(f"node lost at {lost_extracting:.1f} s (extraction) and {lost_sweeping:.1f} s (sweep); run {total:.1f} s")

        units = manifests(env, prefix)
        assert len(units) == 2 and all(m["complete"] for m in units.values())
        client = s3_client(env)
        for key, manifest in units.items():
            folder = key.rsplit("/", 1)[0]
            for shard in manifest["shards"]:
                body = client.get_object(Bucket=BUCKET, Key=f"{folder}/{shard['file']}")["Body"].read()
                assert len(body) == shard["bytes"] and hashlib.sha256(body).hexdigest() == shard["sha256"]
        runs = cell_runs(tracking, "loss")
        finished = Counter(r.data.tags["cell_id"] for r in runs if r.info.status == "FINISHED")
        assert len(finished) == 6 and set(finished.values()) == {1}, finished

        local = tmp_path / "single"
        local.mkdir()
        config = write_config(local / "local.yaml", sweep.config("single", str(local / "features"), num_cpus=2,
                                                                 **extra))
        alone = seabench(["run", "--config", str(config), "--tracking-uri", f"sqlite:///{local / 'mlflow.db'}",
                          "--out", str(local / "report"), "--no-progress"], driver_env(env, local, local=True), local,
                         timeout=RUN_TIMEOUT_S)
        assert alone.returncode == 0, alone.stdout + alone.stderr
        interrupted, uninterrupted = results(tmp_path / "report"), results(local / "report")
        assert interrupted.keys() == uninterrupted.keys()
        for key, value in interrupted.items():
            assert value == pytest.approx(uninterrupted[key], rel=1e-6, abs=1e-9), key
