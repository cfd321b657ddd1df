"""Synthetic features written straight into a FeatureStore (no images, no backbone): for sweep tests and
benchmarks/bench_sweep.py. Classes are Gaussian blobs around random unit means, so a linear head learns them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.extract.manifest import FeatureKey
from orchestrator.extract.store import FeatureStore


def write_arrays(store: FeatureStore, backbone: str, task: str, split: str, x: np.ndarray, y: np.ndarray,
                 shard_size: int = 100_000) -> str:
    """Store (x, y) as the current unit of (backbone, task, split); returns its feature key."""
    fkey = FeatureKey(backbone=backbone, weights_sha256="synthetic", timm_version="-", preprocessing={},
                      feature="pooled", task=task, split=split,
                      split_hash=f"synthetic-{len(y)}-{int(np.asarray(y).sum())}", dtype="float32")
    manifest, _ = store.open_unit(fkey, len(y), x.shape[1], shard_size)
    for shard in manifest.missing():
        start, stop = manifest.shard_range(shard)
        store.write_shard(fkey, manifest, shard, np.arange(start, stop), y[start:stop], x[start:stop])
    return fkey.key


def blobs(n: int, num_classes: int, dim: int, seed: int, spread: float = 0.8, means_seed: int = 1234,
          label_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n rows, labels cycling over the classes in an order fixed by label_seed (so that two backbones'
    features of one split match row by row); class means are shared by all calls with one means_seed."""
    means = np.random.default_rng(means_seed).normal(size=(num_classes, dim))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    y = np.random.default_rng(label_seed).permutation(np.arange(n) % num_classes)
    rng = np.random.default_rng(seed)
    x = means[y] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim)
    return x.astype(np.float32), y.astype(np.int64)


def write_task(store_uri: str | Path, backbone: str, task: str, sizes: dict[str, int], num_classes: int,
               dim: int = 16, seed: int = 0) -> dict[str, str]:
    """Synthetic features for every split in `sizes` (e.g. {"train": 60, "test": 30}); split -> key."""
    store = FeatureStore(str(store_uri))
    keys = {}
    for i, (split, n) in enumerate(sorted(sizes.items())):
        x, y = blobs(n, num_classes, dim, seed=seed * 100 + i, means_seed=1234 + seed, label_seed=i)
        keys[split] = write_arrays(store, backbone, task, split, x, y)
    return keys
