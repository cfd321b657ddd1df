"""Scale from zero: a cluster with no worker node, where nodes declaring {"CPU": 1, "GPU": 1} join only after
`seabench run --autoscaling` has started (added by the test, as an autoscaler would). The first run
extracts on actors that hold the GPU resource (on CPU, since these nodes have no CUDA, and it says so);
a resumed sweep with new cells and resources.gpu > 0 starts with zero workers and finishes once they join."""

from __future__ import annotations

import pytest
from clusterkit import (
    BUCKET,
    Sweep,
    add_worker,
    cell_runs,
    driver_env,
    manifests,
    ray_cluster,
    start_seabench,
    wait_until,
    worker_ids,
    write_config,
)
from fakedata import make_fake_imagefolder

pytestmark = pytest.mark.slow
RUN_TIMEOUT_S = 600


def _run_until_nodes_join(cluster, args, env, cwd, log, wait_for: str) -> str:
    """Start the driver; once its output says `wait_for` (it is waiting for resources), add two GPU nodes."""
    driver = start_seabench(args, env, cwd, log)
    try:
        wait_until(lambda: wait_for in log.read_text() or driver.poll() is not None, RUN_TIMEOUT_S,
                   f"driver saying {wait_for!r}")
        assert driver.poll() is None, log.read_text()
        assert not cluster.worker_nodes, "nodes joined before the driver asked for them"
        for _ in range(2):
            add_worker(cluster, num_gpus=1)
        driver.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
    text = log.read_text()
    assert driver.returncode == 0, text
    return text


def test_first_run_and_a_resumed_gpu_sweep_start_with_zero_workers(tmp_path, s3_env, tracking):
    make_fake_imagefolder(tmp_path / "task", classes=3, n_train=6, n_test=3, size=16)
    store = f"s3://{BUCKET}/zero/features"
    env = s3_env
    with ray_cluster(env, workers=0) as cluster:
        driver = driver_env(env, tmp_path)
        common = ["--address", cluster.address, "--store", store, "--tracking-uri", tracking, "--autoscaling",
                  "--no-progress", "--out", str(tmp_path / "report")]
        sweep = Sweep(f"imagefolder:{tmp_path / 'task'}", seeds=(0,))
        gpu = {"extraction": {"shard_size": 4, "dtype": "float32", "batch_size": 4, "num_gpus_per_actor": 1},
               "resources": {"cpu": 1, "gpu": 0.5}}   # as cluster.yaml's GPU workers would be used
        first = write_config(tmp_path / "first.yaml", sweep.config("zero", store, **gpu))
        text = _run_until_nodes_join(cluster, ["run", "--config", str(first), *common], driver, tmp_path,
                                     tmp_path / "first.log", "waiting for nodes to join")
        assert "the actor holds a GPU but CUDA is not available there; computing on CPU" in text
        gpu_nodes = worker_ids(cluster)
        units = manifests(env, "zero/features/")
        assert units and all(m["complete"] for m in units.values())
        assert {m["metadata"]["compute"] for m in units.values()} == {"bf16-autocast"}
        assert {s["node"] for m in units.values() for s in m["shards"]} <= gpu_nodes
        assert len(cell_runs(tracking, "zero")) == 2

        for node in list(cluster.worker_nodes):    # scaled back to zero between sweeps
            cluster.remove_node(node)
        resumed = write_config(tmp_path / "resumed.yaml", Sweep(sweep.task, seeds=(0, 1)).config("zero", store, **gpu))
        text = _run_until_nodes_join(cluster, ["run", "--config", str(resumed), *common], driver, tmp_path,
                                     tmp_path / "resumed.log", "asked the autoscaler, trials start as nodes join")
        assert "2 already complete, 2 computed, 0 failed" in text
        runs = [r for r in cell_runs(tracking, "zero") if r.data.tags.get("seed") == "1"]
        assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
        assert {r.data.tags["ray_node"] for r in runs} <= worker_ids(cluster)
