"""The pieces of the cluster path that a single node can check: object-store writes are one PUT, the
actor's half and the driver's half of a shard write, actors that never start hold no job, actor plans and
trial resources from the configuration, the weights check on the actor, and the preflight."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import ray
import torch
import yaml
from fakedata import make_fake_imagefolder
from fsspec.implementations.memory import MemoryFileSystem
from test_store import data, fill, make_key  # noqa: F401  (the `data` fixture)

import tasks
from orchestrator.capacity import NODE_TYPES_ENV, WAIT_ENV
from orchestrator.commands.cli import main
from orchestrator.config import load_config
from orchestrator.errors import OrchestratorError
from orchestrator.extract import ActorSettings, extract_features
from orchestrator.extract.actor import ShardExtractor
from orchestrator.extract.nodes import plan_actors
from orchestrator.extract.pool import run_jobs
from orchestrator.extract.store import FeatureStore
from orchestrator.raycluster import AUTOSCALING_ENV
from orchestrator.sweep.driver import _check_resources


class PutOnlyFileSystem(MemoryFileSystem):
    """A real (in-memory) object store that refuses what an object store cannot do atomically."""

    protocol = ("putonly",)

    def mv(self, *args, **kwargs):
        raise AssertionError("an object-store write must be one PUT, not a temporary key and a move")

    copy = cp_file = rename = mv


def test_an_object_store_shard_is_one_put_without_temporaries(data):  # noqa: F811
    fsspec.register_implementation("putonly", PutOnlyFileSystem, clobber=True)
    store, key = FeatureStore(f"putonly://s-{uuid.uuid4().hex[:8]}"), make_key()
    fill(store, key, *data)
    names = [p.rsplit("/", 1)[-1] for p in store.fs.find(store.root)]
    assert not [n for n in names if n.startswith(".tmp-")] and "_manifest.json" in names
    np.testing.assert_array_equal(store.load(key.backbone, key.task, key.split)[0], data[0])


def test_the_driver_records_only_the_file_the_actor_wrote(tmp_path: Path, data):  # noqa: F811
    store, key = FeatureStore(tmp_path / "store"), make_key()
    features, labels = data
    manifest, _ = store.open_unit(key, len(labels), features.shape[1], 4)
    record = store.write_shard_file(key, manifest, 0, np.arange(4), labels[:4], features[:4])
    assert manifest.shards == {} and store.read_manifest(key) is None   # the actor's half records nothing
    shard = tmp_path / "store" / key.unit_path() / record.file
    shard.write_bytes(shard.read_bytes()[:-1] + b"\0")    # replaced meanwhile by another writer
    with pytest.raises(OrchestratorError, match=r"shard-00000\.parquet is not the file its extraction actor wrote"):
        store.record_shard(key, manifest, 0, record)
    record = store.write_shard_file(key, manifest, 0, np.arange(4), labels[:4], features[:4])
    store.record_shard(key, manifest, 0, record)
    assert store.read_manifest(key).shards[0].sha256 == record.sha256
    second = store.write_shard_file(key, manifest, 1, np.arange(4, 8), labels[4:8], features[4:8])
    (tmp_path / "store" / key.unit_path() / second.file).unlink()
    with pytest.raises(OrchestratorError, match="missing although its extraction actor wrote it"):
        store.record_shard(key, manifest, 1, second)


def test_actors_that_never_start_hold_no_job(ray_cluster):
    class Worker:
        def ready(self) -> str:
            return "up"

        def work(self, job: int) -> int:
            return job + 1

    placed = ray.remote(Worker).options(num_cpus=0).remote()
    unplaceable = ray.remote(Worker).options(num_cpus=0, resources={"no-such-node": 1}).remote()
    results: dict[int, int] = {}
    run_jobs([unplaceable, placed], list(range(5)), lambda a, j: a.work.remote(j), results.__setitem__,
             start_grace_s=0.5)
    assert results == {j: j + 1 for j in range(5)}
    for actor in (placed, unplaceable):
        ray.kill(actor)


def test_actor_plans_follow_the_settings_not_the_free_resources(ray_cluster, monkeypatch):
    monkeypatch.delenv(AUTOSCALING_ENV, raising=False)
    plan = plan_actors(jobs=7, num_gpus=1.0, num_cpus=1.0, num_actors=None)
    assert (plan.count, plan.num_gpus, plan.placeable) == (2, 0.0, 2) and "no GPU" in plan.note
    assert plan_actors(jobs=1, num_gpus=0, num_cpus=1.0, num_actors=None).count == 1
    with pytest.raises(OrchestratorError, match="no node of the Ray cluster can hold an extraction actor of 64 CPU"):
        plan_actors(jobs=3, num_gpus=0, num_cpus=64, num_actors=None)
    monkeypatch.setenv(AUTOSCALING_ENV, "1")   # the cluster may grow: ask for what the plan needs
    plan = plan_actors(jobs=7, num_gpus=1.0, num_cpus=1.0, num_actors=None)
    assert (plan.count, plan.num_gpus, plan.placeable, plan.note) == (4, 1.0, 0, "")
    assert plan_actors(jobs=7, num_gpus=1.0, num_cpus=1.0, num_actors=3).count == 3


def _enter(cfg) -> None:
    with _check_resources(cfg):
        pytest.fail("the sweep's trials would have started without a node to hold them")


def test_trial_resources_no_node_holds_are_an_error_on_a_fixed_cluster_and_a_request_when_it_grows(
        ray_cluster, monkeypatch, capsys, tmp_path):
    monkeypatch.delenv(AUTOSCALING_ENV, raising=False)
    monkeypatch.delenv(NODE_TYPES_ENV, raising=False)
    cfg = load_config(data={"name": "r", "backbones": ["random:resnet10t@16"], "tasks": ["digits"],
                            "resources": {"cpu": 1, "gpu": 0.5}})
    with pytest.raises(OrchestratorError, match=r"resources.gpu=0.5 but the Ray cluster has no GPU.*--autoscaling"):
        _enter(cfg)
    big = load_config(data={"name": "r", "backbones": ["random:resnet10t@16"], "tasks": ["digits"],
                            "resources": {"cpu": 16}})
    with pytest.raises(OrchestratorError, match=r"resources\.cpu=16"), _check_resources(big):
        pass
    # growing: asked for, waited for up to the deadline, then an error naming the shape; the request withdrawn
    monkeypatch.setenv(AUTOSCALING_ENV, "1")
    monkeypatch.setenv(WAIT_ENV, "2s")
    began = time.monotonic()
    with pytest.raises(OrchestratorError, match=r"no node holding 1 CPU, 0.5 GPU \(one sweep trial\) joined within 2 s"):
        _enter(cfg)
    assert time.monotonic() - began < 30
    err = capsys.readouterr().err
    assert "sweep: no node holds one sweep trial of {1 CPU, 0.5 GPU} yet; waiting for nodes to join (up to 2 s" in err
    assert "sweep: asked the autoscaler for 1 × {1 CPU, 0.5 GPU}" in err and "sweep: withdrew its request" in err
    # a shape no node type of the autoscaler holds is refused at once, naming the types
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump({
        "head_node_type": "head", "max_workers": 2,
        "available_node_types": {"head": {"resources": {"CPU": 0}, "max_workers": 0},
                                 "gpu": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 2},
                                 "big": {"resources": {"CPU": 8, "GPU": 4}, "max_workers": 0}}}))
    monkeypatch.setenv(NODE_TYPES_ENV, str(tmp_path / "cluster.yaml"))
    two = load_config(data={"name": "r", "backbones": ["random:resnet10t@16"], "tasks": ["digits"],
                            "resources": {"cpu": 1, "gpu": 2}})
    with pytest.raises(OrchestratorError, match=r"needs 1 CPU, 2 GPU, but no node type of the autoscaler holds it "
                                                r"\(gpu: 8 CPU, 1 GPU; head: nothing; from .*cluster.yaml\)"):
        _enter(two)


def test_an_extraction_whose_nodes_never_come_stops_at_the_deadline_naming_the_shape(
        ray_cluster, monkeypatch, capsys, tmp_path):
    make_fake_imagefolder(tmp_path / "task", classes=2, n_train=4, n_test=2, size=16)
    monkeypatch.setenv(AUTOSCALING_ENV, "1")
    monkeypatch.setenv(WAIT_ENV, "2")
    monkeypatch.delenv(NODE_TYPES_ENV, raising=False)
    began = time.monotonic()
    with pytest.raises(OrchestratorError, match=r"no node holding 1 CPU, 1 GPU \(one extraction actor\) joined "
                                                r"within 2 s \(--wait-for-nodes\); nodes now: 2 CPU\. Check `ray status`"):
        extract_features("random:resnet10t@16", f"imagefolder:{tmp_path / 'task'}", store=str(tmp_path / "store"),
                         settings=ActorSettings(num_gpus_per_actor=1.0, batch_size=4), progress=False)
    assert time.monotonic() - began < 60
    err = capsys.readouterr().err
    assert "extract: asked the autoscaler for 1 × {1 CPU, 1 GPU}" in err
    assert "extract: no node holds one extraction actor of {1 CPU, 1 GPU} yet; waiting for nodes to join (up to 2 s" in err
    assert "extract: withdrew its request from the autoscaler" in err   # a stage that stops withdraws
    assert not list((tmp_path / "store").rglob("*.parquet"))


def test_an_actor_refuses_weights_whose_sha256_differs_from_the_key(tmp_path: Path):
    import timm

    torch.manual_seed(0)
    torch.save(timm.create_model("resnet10t").state_dict(), tmp_path / "w.pt")
    spec = tasks.BackboneSpec("wcheck", "resnet10t", f"file:{tmp_path / 'w.pt'}", input_size=16)
    with pytest.raises(OrchestratorError, match=rf"{tmp_path / 'w.pt'}\) have sha256 [0-9a-f]{{64}}, but the feature "
                                                rf"key .* has {'0' * 64}"):
        ShardExtractor(spec, None, "cpu", "float32", 4, 0, 1, weights_sha256="0" * 64)
    ShardExtractor(spec, None, "cpu", "float32", 4, 0, 1, weights_sha256=tasks.build_backbone(spec).weights_sha256)


def test_an_actor_on_a_node_that_joined_late_checks_the_data_and_the_store_before_any_work(tmp_path: Path):
    """The driver's preflight sees only the nodes alive when it runs; an actor started later (on a node an
    autoscaler or a replacement brought) checks on its own node the data it will read and writes, reads
    back and removes a file in the store, and refuses to start otherwise, naming the node and the input."""
    spec = tasks.BackboneSpec("random:resnet10t@16", "resnet10t", "random", input_size=16)
    make_fake_imagefolder(tmp_path / "task", classes=2, n_train=2, n_test=1, size=16)
    store = tmp_path / "store"
    store.mkdir()
    ShardExtractor(spec, None, "cpu", "float32", 4, 0, 1, store=str(store), task_names=[f"imagefolder:{tmp_path / 'task'}"])
    assert not [p for p in store.iterdir()]                 # the probe left nothing behind
    with pytest.raises(OrchestratorError, match=r"node .* cannot take part in this extraction: .*"
                                                rf"{tmp_path / 'absent'}.*a shared mount at the same path"):
        ShardExtractor(spec, None, "cpu", "float32", 4, 0, 1, task_names=[f"imagefolder:{tmp_path / 'absent'}"])
    (tmp_path / "blocker").write_text("a file where the store's folder would be: nothing can be written below it")
    with pytest.raises(OrchestratorError, match=rf"the feature store {tmp_path / 'blocker' / 'store'} failed a test "
                                                r"write and read \(\w+Error"):
        ShardExtractor(spec, None, "cpu", "float32", 4, 0, 1, store=str(tmp_path / "blocker" / "store"))


def test_preflight_lists_every_missing_input_before_ray_starts(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("SEABENCH_WEIGHTS", str(tmp_path / "weights"))
    config = tmp_path / "missing.yaml"
    config.write_text(f"name: missing\nbackbones: [mocov3-vit-b16]\ntasks: [cub200, dtd]\ndata_root: {tmp_path}\n")
    assert main(["run", "--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "3 input(s) missing; nothing was started" in err
    assert err.count("- weights for") == 1 and err.count("- dataset for") == 2
    assert str(tmp_path / "cub200") in err and str(tmp_path / "dtd") in err
