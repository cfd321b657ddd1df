"""Against Ray's own autoscaler (its monitor and the fake multi-node provider launching and removing real
raylets by node type): `seabench run --autoscaling` on a cluster scaled to zero (a head of 0 CPUs and a
`gpu` type of {1 CPU, 1 GPU}, 0-2 nodes, idle timeout 15 s), features on the session's S3 server and tracking
on its MLflow server (on PostgreSQL). It replaces a test that added nodes by hand, as an autoscaler would.

- A trial shape no node type holds (resources.gpu=2) is refused up front, naming the types; nothing launched.
- A first run asks for GPU nodes for extraction (the actors hold the GPU resource and compute on CPU,
  since these nodes have no CUDA, and say so), the nodes come, every cell finishes, and once the run ends
  the nodes go after the idle timeout.
- A run started at once, while those nodes go idle and are removed, extracts a second task and finishes.
- A resumed sweep (features stored, new cells) asks only for the sweep's trials, finishes, withdraws its
  request, and its nodes go too: a request left in place would keep them up."""

from __future__ import annotations

import time

import pytest
from autoscalekit import AUTH_ENV, autoscaling_head
from clusterkit import BUCKET, Sweep, cell_runs, driver_env, manifests, seabench, wait_until, write_config
from fakedata import make_fake_imagefolder

pytestmark = pytest.mark.slow
RUN_TIMEOUT_S = 600
IDLE_TIMEOUT_S = 15.0
GPU_TYPE = {"gpu": {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": 200 * 1024 ** 2}, "node_config": {},
                    "min_workers": 0, "max_workers": 2}}


def _ok(result, what: str) -> str:
    text = result.stdout + result.stderr
    assert result.returncode == 0, f"{what} failed:\n{text}"
    return text


def test_autoscaled_runs_from_zero_release_their_nodes_and_impossible_shapes_are_refused(tmp_path, s3_env, tracking):
    make_fake_imagefolder(tmp_path / "task", classes=3, n_train=6, n_test=3, size=16)
    make_fake_imagefolder(tmp_path / "task2", classes=2, n_train=6, n_test=3, size=16)
    # the session's S3 (moto) and MLflow (on PostgreSQL) servers; the launched nodes inherit the S3 endpoint
    with autoscaling_head(GPU_TYPE, idle_timeout_s=IDLE_TIMEOUT_S, env=s3_env) as head:
        env = driver_env({**s3_env, **AUTH_ENV}, tmp_path)
        store = f"s3://{BUCKET}/autoscaled/features"
        common = ["--address", head.address, "--store", store, "--tracking-uri", tracking,
                  "--autoscaling", "--wait-for-nodes", "5m", "--no-progress", "--out", str(tmp_path / "report")]
        sweep = Sweep(f"imagefolder:{tmp_path / 'task'}", seeds=(0,))
        gpu = {"extraction": {"shard_size": 4, "dtype": "float32", "batch_size": 4, "num_gpus_per_actor": 1},
               "resources": {"cpu": 1, "gpu": 0.5}}   # as cluster.yaml's GPU workers would be used
        first = write_config(tmp_path / "first.yaml", sweep.config("autoscaled", store, **gpu))

        began = time.monotonic()
        refused = seabench(["run", "--config", str(first), *common, "--set", "resources.gpu=2"], env, tmp_path,
                           timeout=RUN_TIMEOUT_S)
        assert refused.returncode != 0
        assert ("a sweep trial (resources.cpu, resources.gpu) needs 1 CPU, 2 GPU, but no node type of the autoscaler "
                "holds it (ray.head.default: nothing; gpu: 1 CPU, 1 GPU; from") in refused.stderr, refused.stderr
        assert str(head.config) in refused.stderr            # read from the running monitor's own config
        assert time.monotonic() - began < 120 and head.worker_raylets() == 0
        assert "Adding" not in head.monitor_log()

        text = _ok(seabench(["run", "--config", str(first), *common], env, tmp_path, timeout=RUN_TIMEOUT_S), "first run")
        assert "extract: asked the autoscaler for" in text and "waiting for nodes to join" in text
        assert "extract: withdrew its request from the autoscaler" in text
        assert "the actor holds a GPU but CUDA is not available there; computing on CPU" in text
        assert "node(s) of type gpu" in head.monitor_log()    # the autoscaler launched them, by type
        units = manifests(s3_env, "autoscaled/features/")
        assert len(units) == 2 and all(m["complete"] for m in units.values())
        assert {m["metadata"]["compute"] for m in units.values()} == {"bf16-autocast"}   # as on a GPU node
        assert [r.info.status for r in cell_runs(tracking, "autoscaled")] == ["FINISHED"] * 2

        # started at once, while the first run's nodes go idle and the autoscaler removes them: a second task
        # to extract (its per-node check and its actors meet nodes that are leaving) and cells to train
        grown = dict(sweep.config("autoscaled", store, **gpu), tasks=[sweep.task, f"imagefolder:{tmp_path / 'task2'}"])
        text = _ok(seabench(["run", "--config", str(write_config(tmp_path / "grown.yaml", grown)), *common], env,
                            tmp_path, timeout=RUN_TIMEOUT_S), "a run started while nodes were being removed")
        assert "2 already complete, 2 computed, 0 failed" in text
        wait_until(lambda: head.worker_raylets() == 0, IDLE_TIMEOUT_S + 90, "the nodes released")
        assert "(idle)" in head.monitor_log()                  # removed by the autoscaler for being idle

        resumed = write_config(tmp_path / "resumed.yaml", dict(grown, seeds=[0, 1]))
        text = _ok(seabench(["run", "--config", str(resumed), *common], env, tmp_path, timeout=RUN_TIMEOUT_S), "resumed")
        assert "extract: 4 units (4 cached)" in text          # only the sweep asked for nodes
        assert "sweep: asked the autoscaler for 1 × {1 CPU, 0.5 GPU}" in text
        assert "sweep: withdrew its request from the autoscaler" in text
        assert "4 already complete, 4 computed, 0 failed" in text
        runs = [r for r in cell_runs(tracking, "autoscaled") if r.data.tags.get("seed") == "1"]
        assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
        removals = head.monitor_log().count("(idle)")
        wait_until(lambda: head.worker_raylets() == 0, IDLE_TIMEOUT_S + 90, "the resumed sweep's nodes released")
        assert head.monitor_log().count("(idle)") > removals
