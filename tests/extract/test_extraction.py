"""Feature extraction on Ray into the store: correctness against an in-process forward, resume, keys, faults."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
import torch

import tasks
from orchestrator.commands.cli import main as cli_main
from orchestrator.errors import OrchestratorError
from orchestrator.extract.extraction import ActorSettings, extract_features
from orchestrator.extract.pool import run_jobs
from orchestrator.extract.store import FeatureStore

BACKBONE = "random:resnet10t@32"
SHARD = 4
ONE_ACTOR = ActorSettings(num_actors=1, batch_size=8)


def in_process_features(backbone: str, task: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference: a plain forward pass over the same images in this process, no Ray, no store."""
    model = tasks.build_backbone(backbone)
    data = tasks.build_task(task, None, split, model.transform)
    images = torch.stack([data[i][0] for i in range(len(data))])
    return model.features(images).numpy(), np.asarray(data.targets)


@pytest.fixture(scope="module")
def extracted(ray_cluster, fake_task, tmp_path_factory):
    """One extraction of the fake task (shards of 4 rows), shared read-only by the tests below."""
    store = tmp_path_factory.mktemp("extract") / "store"
    summary = extract_features(BACKBONE, fake_task.name, store=str(store), shard_size=SHARD, progress=False,
                               settings=ActorSettings(batch_size=3))
    return store, summary


def test_features_match_an_in_process_forward_pass(extracted, fake_task):
    store, summary = extracted
    assert summary.units == 2 and summary.shards_extracted == 4 + 2 and summary.images == 21
    for split, n in fake_task.sizes.items():
        features, labels = FeatureStore(store).load(BACKBONE, fake_task.name, split)
        expected, expected_labels = in_process_features(BACKBONE, fake_task.name, split)
        assert features.shape == (n, 512) and features.dtype == np.float32
        np.testing.assert_array_equal(labels, expected_labels)
        np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)


def test_shard_files_read_with_pandas(extracted, fake_task):
    store, summary = extracted
    folder = store / FeatureStore(store).feature_key(BACKBONE, fake_task.name, "train").unit_path()
    frame = pd.read_parquet(folder).sort_values("index")
    features, labels = FeatureStore(store).load(BACKBONE, fake_task.name, "train")
    np.testing.assert_array_equal(frame["label"].to_numpy(), labels)
    np.testing.assert_array_equal(np.stack(frame["feature"].to_numpy()), features)
    assert summary.keys[f"{BACKBONE}|{fake_task.name}|train"] == folder.name


def test_second_run_does_no_work(extracted, fake_task):
    store, _ = extracted
    summary = extract_features(BACKBONE, fake_task.name, store=str(store), shard_size=SHARD, progress=False)
    assert summary.shards_extracted == 0 and summary.images == 0
    assert summary.units_skipped == 2 and summary.shards_skipped == 6


def test_ensemble_extracts_each_part_once(extracted, fake_task):
    store, _ = extracted
    summary = extract_features(f"ensemble:{BACKBONE}+{BACKBONE}", fake_task.name, store=str(store),
                               shard_size=SHARD, progress=False)
    assert set(summary.keys) == {f"{BACKBONE}|{fake_task.name}|{s}" for s in ("train", "test")}
    assert summary.shards_extracted == 0


def test_relative_image_folder_and_data_root_work_from_actors(ray_cluster, fake_task, monkeypatch):
    monkeypatch.chdir(fake_task.path.parent)  # actors run in another folder: relative paths must not reach them
    task = f"imagefolder:{fake_task.path.name}"
    summary = extract_features(BACKBONE, task, splits=["test"], store="memory://relative", data_root=".",
                               shard_size=SHARD, progress=False, settings=ONE_ACTOR)
    features, _ = FeatureStore("memory://relative").load(BACKBONE, task, "test")
    assert summary.shards_extracted == 2 and features.shape == (6, 512)


def test_deleted_or_truncated_shard_is_reextracted_alone(extracted, fake_task, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(extracted[0], store)
    before = {s: FeatureStore(store).load(BACKBONE, fake_task.name, s) for s in ("train", "test")}
    train = store / FeatureStore(store).feature_key(BACKBONE, fake_task.name, "train").unit_path()
    test = store / FeatureStore(store).feature_key(BACKBONE, fake_task.name, "test").unit_path()
    (train / "shard-00002.parquet").unlink()
    (test / "shard-00001.parquet").write_bytes((test / "shard-00001.parquet").read_bytes()[:100])
    untouched = (train / "shard-00000.parquet").stat().st_mtime_ns
    summary = extract_features(BACKBONE, fake_task.name, store=str(store), shard_size=SHARD, progress=False,
                               settings=ONE_ACTOR)
    assert summary.shards_extracted == 2 and summary.shards_repaired == 2 and summary.shards_skipped == 4
    assert (train / "shard-00000.parquet").stat().st_mtime_ns == untouched
    for split, (features, labels) in before.items():
        again, again_labels = FeatureStore(store).load(BACKBONE, fake_task.name, split)
        np.testing.assert_allclose(again, features, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(again_labels, labels)


def test_changed_preprocessing_gives_a_new_key_and_keeps_the_old_unit(ray_cluster, fake_task, tmp_path):
    spec = replace(tasks.get_backbone(BACKBONE), name="tiny-test-net", input_size=32)
    tasks.register_backbone(spec, replace=True)
    try:
        first = extract_features("tiny-test-net", fake_task.name, splits=["test"], store=str(tmp_path),
                                 shard_size=SHARD, progress=False, settings=ONE_ACTOR)
        tasks.register_backbone(replace(spec, data_config=(("interpolation", "bilinear"),)), replace=True)
        second = extract_features("tiny-test-net", fake_task.name, splits=["test"], store=str(tmp_path),
                                  shard_size=SHARD, progress=False, settings=ONE_ACTOR)
    finally:
        tasks.BACKBONES.pop("tiny-test-net", None)
    old, new = first.keys[f"tiny-test-net|{fake_task.name}|test"], second.keys[f"tiny-test-net|{fake_task.name}|test"]
    assert old != new and second.shards_extracted == 2
    store = FeatureStore(tmp_path)
    assert store.key_for("tiny-test-net", fake_task.name, "test") == new
    assert store.feature_key("tiny-test-net", fake_task.name, "test").preprocessing["interpolation"] == "bilinear"
    assert store.load_key(old)[0].shape == store.load_key(new)[0].shape == (6, 512)


def test_cli_extracts_float16_features(ray_cluster, fake_task, extracted, tmp_path, capsys):
    code = cli_main(["extract", "--backbone", BACKBONE, "--task", fake_task.name, "--split", "test",
                     "--store", str(tmp_path), "--dtype", "float16", "--shard-size", "3", "--no-progress"])
    assert code == 0 and "shards: 2 extracted" in capsys.readouterr().out
    store = FeatureStore(tmp_path)
    assert store.unit_info(BACKBONE, fake_task.name, "test")["dtype"] == "float16"
    half, _ = store.load(BACKBONE, fake_task.name, "test")
    full, _ = FeatureStore(extracted[0]).load(BACKBONE, fake_task.name, "test")
    np.testing.assert_allclose(half, full, rtol=2e-3, atol=2e-3)
    assert store.key_for(BACKBONE, fake_task.name, "test") != FeatureStore(extracted[0]).key_for(
        BACKBONE, fake_task.name, "test")


def test_bad_arguments_are_errors_before_any_work(fake_task, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OrchestratorError, match="is a file"):
        extract_features(BACKBONE, fake_task.name, store=str(tmp_path / "file"))
    with pytest.raises(OrchestratorError, match="carved validation split"):
        extract_features(BACKBONE, fake_task.name, splits=["val"], store=str(tmp_path / "s"))
    with pytest.raises(OrchestratorError, match="dtype"):
        extract_features(BACKBONE, fake_task.name, store=str(tmp_path / "s"), dtype="int8")
    with pytest.raises(OrchestratorError, match="batch_size"):
        ActorSettings(batch_size=0)
    assert cli_main(["extract", "--backbone", BACKBONE, "--task", fake_task.name, "--store",
                     str(tmp_path / "file")]) == 2


def test_actor_killed_mid_job_has_its_job_resubmitted(ray_cluster, tmp_path):
    marker = tmp_path / "died-once"

    class Worker:
        def ready(self) -> bool:
            return True

        def work(self, job: int) -> int:
            if job == 2 and not marker.exists():
                marker.write_text("x")
                time.sleep(0.2)
                os._exit(1)  # the process dies mid-job, as on a node loss or OOM kill
            return job * 10

    actors = [ray.remote(Worker).options(num_cpus=0, max_restarts=2, max_task_retries=0).remote() for _ in range(2)]
    results: dict[int, int] = {}
    resubmitted = run_jobs(actors, list(range(6)), lambda actor, job: actor.work.remote(job), results.__setitem__)
    assert results == {job: job * 10 for job in range(6)} and resubmitted == 1 and marker.exists()
    for actor in actors:
        ray.kill(actor)


def test_job_that_raises_stops_the_run(ray_cluster):
    class Failing:
        def ready(self) -> bool:
            return True

        def work(self, job: int) -> int:
            raise ValueError(f"bad job {job}")

    actor = ray.remote(Failing).options(num_cpus=0).remote()
    with pytest.raises(OrchestratorError, match="bad job 0"):
        run_jobs([actor], [0], lambda a, job: a.work.remote(job), lambda job, value: None)
    ray.kill(actor)


def test_memory_store_round_trip_through_extract_with_loader_workers(ray_cluster, fake_task):
    # The driver writes every shard, so a per-process memory:// store works through the Ray path too.
    summary = extract_features(BACKBONE, fake_task.name, splits=["test"], store="memory://extract-test",
                               shard_size=SHARD, progress=False, settings=replace(ONE_ACTOR, num_workers=1))
    features, labels = FeatureStore("memory://extract-test").load(BACKBONE, fake_task.name, "test")
    assert summary.shards_extracted == 2 and features.shape == (6, 512) and labels.tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.real
@pytest.mark.slow
def test_real_demo_backbone_through_ray_matches_in_process_probe(ray_cluster, tmp_path, demo_cifar_features):
    """The first 25 train and 10 test JPEGs of each class (350 real images) through the full Ray path give
    the in-process features of the same files (the session fixture computed them) and the same probe."""
    import sea

    source = Path(demo_cifar_features.task.split(":", 1)[1])
    per_split = {"train": 25, "test": 10}
    for split, count in per_split.items():
        for folder in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            (tmp_path / "subset" / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:count]:
                shutil.copy(image, tmp_path / "subset" / split / folder.name / image.name)

    def where(path: str) -> tuple[str, ...]:
        return Path(path).parts[-2:]   # (class, file): the data folder may be reached through a symlink

    task = f"imagefolder:{tmp_path / 'subset'}"
    summary = extract_features("efficientnet-lite0", task, store=str(tmp_path / "store"), shard_size=128,
                               progress=False, settings=ActorSettings(batch_size=50))
    assert summary.images == 350
    store = FeatureStore(tmp_path / "store")
    probes: dict[str, dict] = {"ray": {}, "in-process": {}}
    for split in per_split:
        full = tasks.build_task(demo_cifar_features.task, None, split)
        row_of = {where(full.source(i)): i for i in range(len(full))}
        subset = tasks.build_task(task, None, split)
        rows = [row_of[where(subset.source(i))] for i in range(len(subset))]
        x, y = demo_cifar_features.splits[split]
        probes["in-process"][split] = (x[rows], y[rows])
        probes["ray"][split] = store.load("efficientnet-lite0", task, split)
    top1 = {}
    for origin, arrays in probes.items():
        x, y = arrays["train"]
        fit, val = tasks.validation_indices(y)
        result = sea.fit_logreg(x[fit], y[fit], x[val], y[val], num_classes=10)
        top1[origin] = sea.top1_accuracy(result.predict(arrays["test"][0]), arrays["test"][1])
    for split in per_split:
        np.testing.assert_array_equal(probes["ray"][split][1], probes["in-process"][split][1])
        np.testing.assert_allclose(probes["ray"][split][0], probes["in-process"][split][0], rtol=1e-3, atol=1e-4)
    assert top1["ray"] > 40.0  # ImageNet features of 250 CIFAR-10 thumbnails: far above chance (10 %)
    assert abs(top1["ray"] - top1["in-process"]) <= 1.0
