"""The node-local cache of decoded units: equal to the store's read, read from the store once, verified
against the current manifest, memory-mapped, rebuilt when damaged, bounded (least recently used go)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthstore import write_arrays

from orchestrator.errors import OrchestratorError
from orchestrator.extract import FeatureStore, UnitCache

BACKBONE, TASK = "bench-net", "blobs"


def _unit(store: FeatureStore, split: str = "train", n: int = 40, seed: int = 0) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    return write_arrays(store, BACKBONE, TASK, split, x, np.arange(n) % 3, shard_size=16), x


def test_cached_read_equals_the_store_and_is_memory_mapped(tmp_path: Path):
    store = FeatureStore(tmp_path / "store")
    key, _ = _unit(store)
    cache = UnitCache(tmp_path / "cache", max_bytes=1 << 30)
    first = cache.read(store, BACKBONE, TASK, "train")
    second = cache.read(store, BACKBONE, TASK, "train", key)
    plain = store.read(BACKBONE, TASK, "train")
    for unit in (first, second):
        np.testing.assert_array_equal(unit.features, plain.features)
        np.testing.assert_array_equal(unit.labels, plain.labels)
        assert unit.key == key and isinstance(unit.features, np.memmap)
    assert not second.features.flags.writeable
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 1


def test_a_node_reads_the_shards_once(tmp_path: Path):
    store = FeatureStore(tmp_path / "store")
    _, x = _unit(store)
    cache = UnitCache(tmp_path / "cache", max_bytes=1 << 30)
    cache.read(store, BACKBONE, TASK, "train")
    for shard in (tmp_path / "store").rglob("shard-*.parquet"):
        shard.unlink()     # a second read that touched the shards would now fail
    np.testing.assert_array_equal(cache.read(store, BACKBONE, TASK, "train").features, x)
    with pytest.raises(OrchestratorError, match="missing"):
        UnitCache(tmp_path / "other-cache").read(store, BACKBONE, TASK, "train")


def test_a_changed_manifest_or_a_damaged_entry_is_never_served(tmp_path: Path):
    store = FeatureStore(tmp_path / "store")
    _unit(store)
    cache = UnitCache(tmp_path / "cache", max_bytes=1 << 30)
    cache.read(store, BACKBONE, TASK, "train")
    key, x = _unit(store, n=41, seed=1)   # re-extracted under another key: the pointer moves
    np.testing.assert_array_equal(cache.read(store, BACKBONE, TASK, "train").features, x)
    entry = next(p for p in (tmp_path / "cache").iterdir() if p.name.startswith(key))
    features = entry / "features.npy"
    features.write_bytes(features.read_bytes()[:-64])   # truncated by a crash or a full disk
    np.testing.assert_array_equal(cache.read(store, BACKBONE, TASK, "train").features, x)
    assert features.stat().st_size > 0 and not list((tmp_path / "cache").glob(".tmp-*"))


def test_the_cache_is_bounded_and_drops_the_least_recently_used(tmp_path: Path):
    store = FeatureStore(tmp_path / "store")
    for split in ("a", "b", "c"):
        _unit(store, split=split, n=400)
    entry_bytes = 400 * 8 * 4 + 400 * 8 + 2 * 128 + 200
    cache = UnitCache(tmp_path / "cache", max_bytes=int(2.5 * entry_bytes))
    cache.read(store, BACKBONE, TASK, "a")
    cache.read(store, BACKBONE, TASK, "b")
    cache.read(store, BACKBONE, TASK, "a")      # a is now more recent than b
    cache.read(store, BACKBONE, TASK, "c")      # over the bound: b goes
    kept = {p.name.split("-")[0] for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")}
    keys = {s: store.key_for(BACKBONE, TASK, s) for s in "abc"}
    assert kept == {keys["a"], keys["c"]}
    total = sum(f.stat().st_size for f in (tmp_path / "cache").rglob("*") if f.is_file() and ".lock" not in f.name)
    assert total <= 2.5 * entry_bytes


def test_size_zero_turns_the_cache_off_and_a_bad_bound_is_named(tmp_path: Path, monkeypatch):
    store = FeatureStore(tmp_path / "store")
    _, x = _unit(store)
    monkeypatch.setenv("SEABENCH_CACHE_GB", "0")
    unit = UnitCache(tmp_path / "cache").read(store, BACKBONE, TASK, "train")
    np.testing.assert_array_equal(unit.features, x)
    assert not isinstance(unit.features, np.memmap) and not (tmp_path / "cache").exists()
    monkeypatch.setenv("SEABENCH_CACHE_GB", "lots")
    with pytest.raises(OrchestratorError, match="SEABENCH_CACHE_GB"):
        UnitCache(tmp_path / "cache")
