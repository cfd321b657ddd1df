"""The Parquet feature store: layout, schema, atomic writes, verification on read, resume, safe names."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.errors import OrchestratorError
from orchestrator.extract.manifest import MANIFEST, METADATA_KEY, FeatureKey
from orchestrator.extract.store import FeatureStore
from orchestrator.names import path_component

BACKBONE, TASK, SPLIT = "random:resnet10t@32", "imagefolder:/data/my folder", "train"


def make_key(**changes) -> FeatureKey:
    fields = dict(backbone=BACKBONE, weights_sha256="ab" * 32, timm_version="1.0.31",
                  preprocessing={"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                                 "interpolation": "bicubic", "crop_pct": 0.875},
                  feature="pooled", task=TASK, split=SPLIT, split_hash="0123456789abcdef", dtype="float32")
    return FeatureKey(**(fields | changes))


def fill(store: FeatureStore, key: FeatureKey, features: np.ndarray, labels: np.ndarray, shard_size: int = 4,
         shards: list[int] | None = None) -> None:
    manifest, _ = store.open_unit(key, len(labels), features.shape[1], shard_size)
    for shard in manifest.missing() if shards is None else shards:
        start, stop = manifest.shard_range(shard)
        store.write_shard(key, manifest, shard, np.arange(start, stop), labels[start:stop], features[start:stop])


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((10, 6)).astype(np.float32), rng.integers(0, 3, 10)


@pytest.fixture
def filled(tmp_path: Path, data) -> tuple[FeatureStore, FeatureKey, Path]:
    store, key = FeatureStore(tmp_path / "store"), make_key()
    fill(store, key, *data)
    return store, key, tmp_path / "store" / key.unit_path()


def test_round_trip_returns_float32_features_and_int64_labels_in_index_order(filled, data):
    store, key, _ = filled
    features, labels = store.load(BACKBONE, TASK, SPLIT)
    assert features.dtype == np.float32 and labels.dtype == np.int64
    np.testing.assert_array_equal(features, data[0])
    np.testing.assert_array_equal(labels, data[1])
    again, _ = store.load_key(key.key)
    np.testing.assert_array_equal(again, features)


def test_unit_folder_holds_shards_and_manifest_and_pandas_reads_it(filled, data):
    _, key, folder = filled
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        MANIFEST, "shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    frame = pd.read_parquet(folder)  # the manifest's leading "_" keeps it out of the dataset
    assert list(frame.columns) == ["index", "label", "feature"]
    frame = frame.sort_values("index")
    np.testing.assert_allclose(np.stack(frame["feature"].to_numpy()), data[0])
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["complete"] and manifest["key"] == key.key
    assert [(s["start"], s["stop"], s["rows"]) for s in manifest["shards"]] == [(0, 4, 4), (4, 8, 4), (8, 10, 2)]


def test_shard_schema_is_documented_one_with_key_metadata(filled):
    _, key, folder = filled
    schema = pq.read_schema(folder / "shard-00000.parquet")
    assert schema.field("index").type == pa.int64() and schema.field("label").type == pa.int32()
    assert schema.field("feature").type == pa.list_(pa.field("element", pa.float32(), nullable=False), 6)
    meta = json.loads(schema.metadata[METADATA_KEY])
    assert meta["key"] == key.key and meta["backbone"] == BACKBONE and meta["dtype"] == "float32"
    assert pq.ParquetFile(folder / "shard-00000.parquet").metadata.row_group(0).column(2).compression == "ZSTD"


def test_float16_storage_round_trips_within_half_precision(tmp_path, data):
    store, key = FeatureStore(tmp_path), make_key(dtype="float16")
    fill(store, key, *data)
    features, _ = store.load_key(key.key)
    assert features.dtype == np.float32
    np.testing.assert_allclose(features, data[0], rtol=1e-3, atol=1e-3)
    assert pq.read_schema(tmp_path / key.unit_path() / "shard-00000.parquet").field("feature").type == \
        pa.list_(pa.field("element", pa.float16(), nullable=False), 6)


def test_memory_filesystem_round_trip(data):
    store, key = FeatureStore("memory://seabench-test-store"), make_key()
    fill(store, key, *data)
    features, labels = FeatureStore("memory://seabench-test-store").load(BACKBONE, TASK, SPLIT)
    np.testing.assert_array_equal(features, data[0])
    np.testing.assert_array_equal(labels, data[1])
    assert store.unit_info(BACKBONE, TASK, SPLIT)["metadata"]["task"] == TASK
    assert store.feature_key(BACKBONE, TASK, SPLIT) == key and store.key_for(BACKBONE, TASK, SPLIT) == key.key


def test_incomplete_unit_is_refused_with_the_fix(tmp_path, data):
    store, key = FeatureStore(tmp_path), make_key()
    fill(store, key, *data, shards=[0, 2])
    with pytest.raises(OrchestratorError, match=r"incomplete .*\[1\].*seabench extract"):
        store.load_key(key.key)


def test_checksum_mismatch_is_refused_naming_the_file(filled):
    store, _, folder = filled
    shard = folder / "shard-00001.parquet"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(OrchestratorError, match=r"shard-00001\.parquet: checksum mismatch"):
        store.load(BACKBONE, TASK, SPLIT)


def test_shard_of_another_key_is_refused_even_with_a_matching_checksum(tmp_path, data):
    store, key, other = FeatureStore(tmp_path), make_key(), make_key(dtype="float16")
    fill(store, key, *data)
    fill(store, other, *data)
    folder, foreign = tmp_path / key.unit_path(), (tmp_path / other.unit_path() / "shard-00000.parquet").read_bytes()
    (folder / "shard-00000.parquet").write_bytes(foreign)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["shards"][0]["sha256"] = hashlib.sha256(foreign).hexdigest()
    manifest["shards"][0]["crc32"] = zlib.crc32(foreign)
    manifest["shards"][0]["bytes"] = len(foreign)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(OrchestratorError, match="belongs to feature key"):
        store.load_key(key.key)


def test_nan_features_are_refused(tmp_path, data):
    store, key = FeatureStore(tmp_path), make_key()
    features = data[0].copy()
    features[3, 2] = np.nan
    fill(store, key, features, data[1])
    with pytest.raises(OrchestratorError, match=r"NaN/Inf \(rows \[3\]"):
        store.load_key(key.key)


def test_open_unit_keeps_verified_shards_and_drops_missing_or_corrupt_ones(filled, data):
    store, key, folder = filled
    (folder / "shard-00000.parquet").unlink()
    (folder / "shard-00002.parquet").write_bytes(b"truncated")
    manifest, dropped = store.open_unit(key, 10, 6, shard_size=4)
    assert dropped == 2 and manifest.missing() == [0, 2] and not manifest.complete


def test_unit_keeps_its_shard_size_when_resumed_with_another(filled):
    store, key, _ = filled
    manifest, _ = store.open_unit(key, 10, 6, shard_size=1000)
    assert manifest.shard_size == 4 and manifest.complete


def test_write_shard_refuses_rows_that_do_not_match_the_plan(tmp_path, data):
    store, key = FeatureStore(tmp_path), make_key()
    manifest, _ = store.open_unit(key, 10, 6, 4)
    with pytest.raises(OrchestratorError, match="wrong rows"):
        store.write_shard(key, manifest, 0, np.arange(1, 5), data[1][:4], data[0][:4])


def test_key_changes_with_every_input_and_not_with_dict_order():
    base = make_key()
    for change in ({"preprocessing": {"input_size": (3, 40, 40)}}, {"dtype": "float16"}, {"split_hash": "f" * 16},
                   {"weights_sha256": "cd" * 32}, {"timm_version": "1.0.32"}, {"feature": "cls"}, {"split": "test"}):
        assert make_key(**change).key != base.key, change
    reordered = make_key(preprocessing=dict(reversed(list(base.preprocessing.items()))))
    assert reordered.key == base.key
    assert FeatureKey.from_metadata(base.metadata()) == base


def test_safe_names_refuse_paths_and_slug_scheme_names():
    assert path_component("efficientnet-lite0") == "efficientnet-lite0"
    slug = path_component("imagefolder:/data/../x y")
    assert "/" not in slug and ".." not in slug and slug.startswith("imagefolder_data_x_y-")
    assert path_component("imagefolder:/a") != path_component("imagefolder:/a/")  # the hash keeps distinct names apart
    for bad in ("../x", "/abs", "a/b", "", "..", "a\\b"):
        with pytest.raises(OrchestratorError, match="cannot name a store folder"):
            path_component(bad)


def test_bad_store_paths_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OrchestratorError, match="is a file, not a folder"):
        FeatureStore(tmp_path / "file")
    with pytest.raises(OrchestratorError, match="unsupported location"):
        FeatureStore("nosuchprotocol://bucket/x")
    with pytest.raises(OrchestratorError, match="cannot"):
        fill(FeatureStore(tmp_path / "file" / "below"), make_key(), np.zeros((2, 3), np.float32), np.zeros(2))


def test_missing_unit_error_says_how_to_extract(tmp_path):
    with pytest.raises(OrchestratorError, match="run `seabench extract --backbone b --task t"):
        FeatureStore(tmp_path).load("b", "t", "train")
    with pytest.raises(OrchestratorError, match="not in store"):
        FeatureStore(tmp_path).load_key("abc123")


def _write_all(root: str, seed: int) -> None:
    rng = np.random.default_rng(0)  # same features in both writers: they race on identical content
    features, labels = rng.standard_normal((40, 6)).astype(np.float32), rng.integers(0, 3, 40)
    store = FeatureStore(root)
    fill(store, make_key(), features, labels, shard_size=2, shards=list(np.random.default_rng(seed).permutation(20)))


def test_two_processes_writing_one_unit_leave_it_complete_and_valid(tmp_path):
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_write_all, args=(str(tmp_path), seed)) for seed in (1, 2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    features, _ = FeatureStore(tmp_path).load(BACKBONE, TASK, SPLIT)
    assert features.shape == (40, 6)
    assert not [p for p in (tmp_path / make_key().unit_path()).iterdir() if p.name.startswith(".tmp-")]
