"""A fixed cluster of three simulated nodes (a head of 0 CPUs, two workers of 1 CPU), features on S3 (moto's
server), tracking on an MLflow server, `seabench run` as a separate driver process: extraction actors and
trials run on both workers, the results equal a single-node run's; bad inputs are clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from clusterkit import (
    BUCKET,
    Sweep,
    cell_runs,
    driver_env,
    manifests,
    node_cache,
    ray_cluster,
    results,
    s3_objects,
    seabench,
    worker_ids,
    write_config,
)
from fakedata import make_fake_imagefolder

from orchestrator.commands.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory, s3_env, tracking):
    """The session's S3 and MLflow servers and a cluster whose worker nodes have their own $SEABENCH_WEIGHTS folder."""
    root = tmp_path_factory.mktemp("fixed-cluster")
    make_fake_imagefolder(root / "task", classes=3, n_train=6, n_test=3, size=16)
    (root / "weights-workers").mkdir()
    workers = {"SEABENCH_WEIGHTS": str(root / "weights-workers")}
    with ray_cluster({**s3_env, **workers}, 2) as cluster:
        yield {"root": root, "env": s3_env, "tracking": tracking, "cluster": cluster, "address": cluster.address,
               "driver": driver_env(s3_env, root)}


def test_run_uses_both_workers_and_equals_a_single_node_run(site):
    root, sweep = site["root"], Sweep(f"imagefolder:{site['root'] / 'task'}")
    store = f"s3://{BUCKET}/fixed/features"
    config = write_config(root / "cluster.yaml", sweep.config("fixed", store))
    done = seabench(["run", "--config", str(config), "--address", site["address"], "--store", store,
                     "--tracking-uri", site["tracking"], "--out", str(root / "report"), "--no-progress"],
                    site["driver"], root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 computed, 0 failed" in done.stdout

    workers = worker_ids(site["cluster"])
    units = manifests(site["env"], "fixed/features/")
    assert len(units) == 2 and all(m["complete"] for m in units.values())
    shard_nodes = {s["node"] for m in units.values() for s in m["shards"]}
    assert shard_nodes == workers, f"shards were computed on {shard_nodes}, workers are {workers}"
    runs = cell_runs(site["tracking"], "fixed")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    trial_nodes = {r.data.tags["ray_node"] for r in runs}
    assert trial_nodes == workers, f"trials ran on {trial_nodes}, workers are {workers}"
    # each node decoded the units its cells read into its own cache, once: one entry per unit, none elsewhere
    keys = {path.rsplit("/", 2)[-2] for path in units}   # <prefix>/…/<key>/_manifest.json
    for node in workers:
        entries = [p.name for p in node_cache(node).iterdir() if p.is_dir() and not p.name.startswith(".")]
        assert sorted(e.rsplit("-", 1)[0] for e in entries) == sorted(keys), (node, entries, keys)

    # the same sweep on one local node, local disk and SQLite gives the same numbers
    local = root / "single"
    local.mkdir()
    config = write_config(local / "local.yaml", sweep.config("single", str(local / "features"), num_cpus=2))
    alone = seabench(["run", "--config", str(config), "--tracking-uri", f"sqlite:///{local / 'mlflow.db'}",
                      "--out", str(local / "report"), "--no-progress"], driver_env(site["env"], local, local=True),
                     local)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    cluster_results, local_results = results(root / "report"), results(local / "report")
    assert len(cluster_results) >= 16 and cluster_results.keys() == local_results.keys()
    for key, value in cluster_results.items():
        assert value == pytest.approx(local_results[key], rel=1e-6, abs=1e-9), key


def test_finetune_runs_ddp_across_both_workers_with_checkpoints_on_s3(site):
    """A finetune cell on the cluster: its 2 Ray Train workers (gloo) sit on the two worker nodes, and their
    epoch checkpoints go beside the S3 feature store (a local folder would not be shared between nodes); once
    the cell has its results, its runs there are deleted but the refit's (finetune.keep: last)."""
    root, store = site["root"], f"s3://{BUCKET}/ft/features"
    sweep = Sweep(f"imagefolder:{root / 'task'}", seeds=(0,), methods=("finetune",))
    finetune = {"epochs": 2, "batch_size": 4, "image_size": 16, "lr": [0.05], "weight_decay": [0.0],
                "num_workers": 2, "cpus_per_worker": 1, "max_failures": 0, "keep": "last"}
    config = write_config(root / "ft.yaml", sweep.config("ft-cluster", store, finetune=finetune))
    done = seabench(["run", "--config", str(config), "--address", site["address"], "--tracking-uri", site["tracking"],
                     "--out", str(root / "ft-report"), "--no-progress"], site["driver"], root)
    assert done.returncode == 0, done.stdout + done.stderr
    (run,) = cell_runs(site["tracking"], "ft-cluster")
    assert run.info.status == "FINISHED" and run.data.tags["method"] == "finetune"
    assert set(run.data.tags["ray_nodes"].split(",")) == worker_ids(site["cluster"])
    left = s3_objects(site["env"], "ft/features-checkpoints/")
    checkpoints = [k for k in left if k.endswith("/state.pt")]
    # the refit's last epoch's checkpoint (num_to_keep=1) is all that is left: the candidate's run and the Tune
    # experiment that selected it are deleted from S3
    assert len(checkpoints) == 1 and "-refit/" in checkpoints[0], left
    assert not [k for k in left if "-c0/" in k or "-select/" in k], left


def test_relative_store_on_a_multi_node_cluster_is_refused(site):
    task = f"imagefolder:{site['root'] / 'task'}"
    done = seabench(["extract", "--backbone", "random:resnet10t@16", "--task", task, "--store", "rel-store",
                     "--address", site["address"], "--no-progress"], site["driver"], site["root"])
    assert done.returncode == 2
    assert "'rel-store' is a relative path" in done.stderr and "3 nodes" in done.stderr
    assert "s3://" in done.stderr and not (site["root"] / "rel-store").exists()


def test_data_path_that_workers_cannot_see_is_named_before_extraction(site, tmp_path):
    """The driver runs in its own mount namespace, where the image folder is mounted at `hidden`;
    on the real filesystem, which the workers see, `hidden` is an empty folder."""
    if subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode:
        pytest.skip("needs `unshare -m` (root, or user namespaces) to give the driver a view of its own")
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    store = f"s3://{BUCKET}/hidden/features"
    done = seabench(["extract", "--backbone", "random:resnet10t@16", "--task", f"imagefolder:{hidden}", "--store",
                     store, "--address", site["address"], "--no-progress"], site["driver"], site["root"],
                    prefix=("unshare", "-m", "--propagation", "private", "sh", "-c",
                            f'mount --bind "{site["root"] / "task"}" "{hidden}" && exec "$0" "$@"'))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "cannot see" in done.stderr and str(hidden) in done.stderr
    assert sum(f"node {n}" in done.stderr for n in worker_ids(site["cluster"])) == 2
    assert not manifests(site["env"], "hidden/"), "extraction started although workers cannot see the data"


def test_weights_whose_sha256_differs_on_a_worker_stop_the_extraction(site, tmp_path):
    """Relative weights live in each node's $SEABENCH_WEIGHTS: the driver's file and the workers' differ."""
    import timm

    for folder, seed in ((tmp_path / "weights-driver", 0), (site["root"] / "weights-workers", 1)):
        folder.mkdir(exist_ok=True)
        torch.manual_seed(seed)
        torch.save(timm.create_model("resnet10t").state_dict(), folder / "wtest.pt")
    register = ("import sys, tasks; tasks.register_backbone(tasks.BackboneSpec('wtest', 'resnet10t', 'file:wtest.pt', "
                "input_size=16)); from orchestrator.commands.cli import main; sys.exit(main(sys.argv[1:]))")
    store = f"s3://{BUCKET}/weights/features"
    env = {**site["driver"], "SEABENCH_WEIGHTS": str(tmp_path / "weights-driver")}
    done = subprocess.run([sys.executable, "-c", register, "extract", "--backbone", "wtest",
                           "--task", f"imagefolder:{site['root'] / 'task'}", "--store", store, "--address",
                           site["address"], "--no-progress"], cwd=site["root"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "sha256" in done.stderr and str(site["root"] / "weights-workers" / "wtest.pt") in done.stderr
    assert any(f"node {n}" in done.stderr for n in worker_ids(site["cluster"]))
    assert not [k for k in manifests(site["env"], "weights/")], "a shard was recorded with the wrong weights"


def test_ray_client_address_is_refused_pointing_to_job_submission(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", Sweep("digits").config("client", str(tmp_path / "features")))
    assert main(["run", "--config", str(config), "--address", "ray://127.0.0.1:10001", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "ray://127.0.0.1:10001" in err and "ray job submit" in err
