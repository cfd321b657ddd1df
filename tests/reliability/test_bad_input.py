"""Bad input gets one clear error that names the offending file, key or value, and loses nothing.

Corrupt images (and --skip-bad-images), non-finite or inconsistent stored features, labels out of
range, empty splits, unknown names, malformed configs, and a store that cannot be written.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from fakedata import make_fake_imagefolder, write_corrupt_image
from faultkit import BACKBONE, SHARD, extract, shard_digests, unit_folder
from fsspec.implementations.memory import MemoryFileSystem
from synthstore import write_arrays

from orchestrator.commands.cli import main
from orchestrator.errors import OrchestratorError
from orchestrator.extract.manifest import MANIFEST
from orchestrator.extract.shards import shard_table
from orchestrator.extract.store import FeatureStore
from sea.errors import SeaError

# ---------------------------------------------------------------- corrupt images


def test_corrupt_image_stops_extraction_naming_the_file_and_the_way_out(ray_cluster, make_fake_task, tmp_path):
    task = make_fake_task(n_train=3)
    bad = write_corrupt_image(task.path / "train" / "class1" / "0001.jpg")
    with pytest.raises(OrchestratorError) as err:
        extract(task.name, tmp_path / "store")
    message = str(err.value)
    assert str(bad) in message and "--skip-bad-images" in message and "rows [" in message
    # nothing of the failing unit is marked complete
    with pytest.raises(OrchestratorError, match=r"no features|incomplete"):
        FeatureStore(tmp_path / "store").load(BACKBONE, task.name, "train")


def test_skip_bad_images_records_them_in_the_manifest_and_the_cli_summary(
        ray_cluster, make_fake_task, tmp_path, capsys):
    import ray

    task = make_fake_task(n_train=3)
    bad = [write_corrupt_image(task.path / "train" / "class1" / "0001.jpg"),
           write_corrupt_image(task.path / "train" / "class2" / "0000.jpg")]
    store = tmp_path / "store"
    address = ray.get_runtime_context().gcs_address
    argv = ["extract", "--backbone", BACKBONE, "--task", task.name, "--store", str(store), "--shard-size", "4",
            "--num-actors", "1", "--address", address, "--no-progress", "--skip-bad-images"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "unreadable images skipped: 2 in this run" in printed

    unit = FeatureStore(store).read(BACKBONE, task.name, "train")
    assert len(unit.skipped) == 2 and all(str(b) in " ".join(unit.skipped.values()) for b in bad)
    assert np.all(unit.features[unit.skipped_rows] == 0) and np.abs(unit.features).sum() > 0
    assert len(unit.labels) == 9 and list(unit.skipped_rows) == [4, 6] and list(unit.labels[[4, 6]]) == [1, 2]
    recorded = json.loads((unit_folder(store, task.name, "train") / MANIFEST).read_text())["shards"]
    assert [row for shard in recorded for row, _ in shard["skipped"]] == [4, 6]

    # a rerun reuses the shards and still reports what they left out
    assert main(argv) == 0
    assert "0 in this run, 2 in reused shards" in capsys.readouterr().out


# ---------------------------------------------------------------- stored features that are wrong


def _synthetic_unit(tmp_path: Path, rows: int = 8, dim: int = 4, shard_size: int = 4) -> tuple[FeatureStore, str]:
    store = FeatureStore(tmp_path / "store")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(rows, dim)).astype(np.float32), np.arange(rows) % 2
    write_arrays(store, "bb", "digits", "train", x, y, shard_size=shard_size)
    return store, (tmp_path / "store" / store.feature_key("bb", "digits", "train").unit_path()).as_posix()


def _rewrite_shard(store: FeatureStore, folder: str, shard: int, table) -> Path:
    """Replace one shard's file and make its manifest record match the new bytes (so only deeper checks can
    catch what is wrong with it)."""
    import hashlib
    import zlib

    path = Path(folder) / f"shard-{shard:05d}.parquet"
    pq.write_table(table, path, compression="zstd")
    data = path.read_bytes()
    manifest_path = Path(folder) / MANIFEST
    body = json.loads(manifest_path.read_text())
    for record in body["shards"]:
        if record["shard"] == shard:
            record.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), crc32=zlib.crc32(data))
    manifest_path.write_text(json.dumps(body))
    return path


def test_shards_with_inconsistent_feature_dimensions_are_refused(tmp_path):
    store, folder = _synthetic_unit(tmp_path)
    meta = json.loads(pq.read_schema(Path(folder) / "shard-00000.parquet").metadata[b"seabench"])
    wider = shard_table(np.arange(4, 8), np.zeros(4), np.ones((4, 5), np.float32), meta)
    path = _rewrite_shard(store, folder, 1, wider)
    with pytest.raises(OrchestratorError, match=rf"{path.name}: 4 rows of dim 5, manifest says 4 of dim 4"):
        store.load("bb", "digits", "train")


def test_non_finite_stored_features_are_refused_naming_file_and_rows(tmp_path):
    store, folder = _synthetic_unit(tmp_path)
    meta = json.loads(pq.read_schema(Path(folder) / "shard-00000.parquet").metadata[b"seabench"])
    x = np.ones((4, 4), np.float32)
    x[2, 1], x[3, 0] = np.inf, np.nan
    path = _rewrite_shard(store, folder, 1, shard_table(np.arange(4, 8), np.zeros(4), x, meta))
    with pytest.raises(OrchestratorError, match=rf"{path.name}: features contain NaN/Inf \(rows \[6, 7\]"):
        store.load("bb", "digits", "train")


def test_stored_labels_out_of_the_tasks_range_stop_the_cell_naming_the_row(tmp_path):
    from orchestrator.config import load_config
    from orchestrator.sweep.cells import Cell
    from orchestrator.sweep.driver import trial_context
    from orchestrator.sweep.trial import run_cell

    store = FeatureStore(tmp_path / "store")
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 20)):
        y = np.arange(n) % 10
        if split == "train":
            y[7] = 12  # digits has 10 classes
        write_arrays(store, "bb", "digits", split, rng.normal(size=(n, 4)).astype(np.float32), y)
    cfg = load_config(data={"name": "labels", "backbones": ["bb"], "tasks": ["digits"], "methods": ["linear"],
                            "store": str(tmp_path / "store"), "trainer": {"epochs": 1},
                            "grid": {"lr": [0.8], "weight_decay": [1e-6], "lamda": [0.1]}})
    with pytest.raises(SeaError, match=r"label 12 at row \d+ is >= num_classes=10"):
        run_cell(Cell("bb", "digits", "linear", 0), trial_context(cfg))


# ---------------------------------------------------------------- names, splits and configs


def test_an_empty_split_is_an_error_naming_its_folder(tmp_path, capsys):
    make_fake_imagefolder(tmp_path / "t", classes=2, n_train=2, n_test=1, size=8)
    for image in (tmp_path / "t" / "test").glob("*/*.jpg"):
        image.unlink()
    code = main(["extract", "--backbone", BACKBONE, "--task", f"imagefolder:{tmp_path / 't'}",
                 "--store", str(tmp_path / "store"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "test" in err and str(tmp_path / "t") in err and "holds no images" in err
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.parquet"))


@pytest.mark.parametrize(("argv", "expected"), [
    (["extract", "--backbone", "efficientnet-lite", "--task", "digits"], "did you mean ['efficientnet-lite"),
    (["extract", "--backbone", "random:resnet10@32", "--task", "digits"], "unknown timm architecture 'resnet10'"),
    (["extract", "--backbone", BACKBONE, "--task", "cifar-10"], "did you mean cifar10"),
    (["extract", "--backbone", BACKBONE, "--task", "digits", "--split", "val"], "extract 'train' instead"),
])
def test_unknown_names_are_errors_with_close_suggestions(argv, expected, tmp_path, capsys):
    assert main([*argv, "--store", str(tmp_path / "store"), "--no-progress"]) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize(("text", "expected"), [
    ("name: t\nbackbones: [a]\ntasks: [digits\n", "not valid YAML"),
    ("name: t\nbackbones: [a]\ntasks: [digits]\nmethods: [seaa]\n", "'sea'"),
    ("name: t\nbackbones: [a]\ntasks: [digits]\ntrainer: {epochs: ten}\n", "trainer.epochs"),
    ("name: t\nbackbones: [a]\ntasks: [digits]\ntrainer: {epocs: 3}\n", "did you mean 'epochs'"),
    ("name: t\nbackbones: [a]\ntasks: [digits]\nseeds: [zero]\n", "seeds"),
    ("name: t\nbackbones: [resnet50]\ntasks: [digits]\n", "backbones: unknown backbone 'resnet50'"),
    ("name: t\nbackbones: [random:resnet10t@32]\ntasks: [digit]\n", "tasks: unknown task 'digit'"),
    ("name: ../../t\nbackbones: [a]\ntasks: [digits]\n", "'name' '../../t' must be"),
    ("name: t\nbackbones: [a]\ntasks: [digits]\nextraction: {skip_bad_images: maybe}\n",
     "extraction.skip_bad_images"),
    ("- just\n- a list\n", "expected a mapping"),
])
def test_malformed_or_mistyped_configs_name_the_file_and_the_key(text, expected, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and expected in err


# ---------------------------------------------------------------- a store that cannot be written


class QuotaFileSystem(MemoryFileSystem):
    """An in-memory filesystem that runs out of space: a write that would pass `quota` bytes in all writes
    what fits, then fails with ENOSPC, as a full disk does."""

    protocol = ("quotamem",)
    quota: int = 0
    used: int = 0

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        room = type(self).quota - type(self).used
        if len(value) > room:
            super().pipe_file(path, value[:max(room, 0)], **kwargs)
            type(self).used = type(self).quota
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        type(self).used += len(value)
        return super().pipe_file(path, value, **kwargs)


def test_a_full_store_stops_with_the_file_named_keeps_finished_shards_and_resumes(ray_cluster, make_fake_task):
    fsspec.register_implementation("quotamem", QuotaFileSystem, clobber=True)
    task = make_fake_task(n_train=4)   # train: 12 rows = 3 shards of 4
    uri = f"quotamem://full-{uuid.uuid4().hex[:8]}"
    probe = FeatureStore(f"memory://probe-{uuid.uuid4().hex[:8]}")
    extract(task.name, probe, splits=["train"])
    sizes = sorted(f["size"] for f in probe.fs.find(probe.root, detail=True).values() if "shard-" in f["name"])
    QuotaFileSystem.used, QuotaFileSystem.quota = 0, 2 * max(sizes) + 6000  # two shards and their manifests

    with pytest.raises(OrchestratorError, match=r"cannot write .*shard-0000\d\.parquet.*No space left on device"):
        extract(task.name, uri, splits=["train"])
    store = FeatureStore(uri)
    files = [p.rsplit("/", 1)[-1] for p in store.fs.find(store.root)]
    assert not [f for f in files if f.startswith(".tmp-")], "a half-written temporary was left behind"
    with pytest.raises(OrchestratorError, match="no features"):   # never visible as a complete unit
        store.load(BACKBONE, task.name, "train")

    QuotaFileSystem.quota = 1 << 30   # space freed: the rerun keeps what was finished and does the rest
    summary = extract(task.name, uri, splits=["train"])
    assert summary.shards_skipped >= 1 and summary.shards_extracted == 3 - summary.shards_skipped
    np.testing.assert_array_equal(store.load(BACKBONE, task.name, "train")[0],
                                  probe.load(BACKBONE, task.name, "train")[0])


def test_a_store_under_a_file_is_an_error_naming_the_path(tmp_path, capsys, fake_task):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    code = main(["extract", "--backbone", BACKBONE, "--task", fake_task.name, "--store", str(blocker / "store"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and str(blocker) in err and ("Not a directory" in err or "cannot" in err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_read_only_store_is_an_error_naming_the_path(ray_cluster, tmp_path, fake_task):
    store = tmp_path / "store"
    store.mkdir()
    store.chmod(0o555)
    try:
        with pytest.raises(OrchestratorError, match=rf"cannot (write|create) .*{store}"):
            extract(fake_task.name, store)
    finally:
        store.chmod(0o755)


@pytest.mark.soak
def test_a_driver_that_may_not_grow_files_fails_cleanly_and_a_rerun_completes(ray_cluster, make_fake_task, tmp_path):
    """An injected write error on real local disk: the driver runs under RLIMIT_FSIZE, so writing a shard
    fails with EFBIG mid-file (as on a full disk); the shard's temporary is removed, nothing is complete."""
    import ray

    task = make_fake_task(n_train=2)
    store = tmp_path / "store"
    address = ray.get_runtime_context().gcs_address
    argv = ["extract", "--backbone", BACKBONE, "--task", task.name, "--store", str(store), "--shard-size",
            str(SHARD), "--num-actors", "1", "--address", address, "--no-progress"]
    limited = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000)); "
               "from orchestrator.commands.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", limited, *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "cannot write" in done.stderr and "File too large" in done.stderr and str(store) in done.stderr
    assert not list(store.rglob(".tmp-*")) and not list((store / "index").glob("*.json"))

    extract(task.name, store)   # the same extraction without the limit completes
    for split in ("train", "test"):
        assert set(shard_digests(store, task.name, split))  # complete and verifiable
        FeatureStore(store).load(BACKBONE, task.name, split)
