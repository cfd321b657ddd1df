"""Planning an extraction: which (backbone, task, stored split) units exist, their keys, what is missing.

A unit's FeatureKey hashes everything that determines its features (extract/manifest.py); planning
opens each unit's manifest in the store, keeping only verified shards, so that extraction runs only
what is missing.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import timm

import tasks
from orchestrator.errors import OrchestratorError
from orchestrator.extract.manifest import COMPUTE_BF16, COMPUTE_FLOAT32, FeatureKey, Manifest
from orchestrator.extract.progress import ExtractSummary
from orchestrator.extract.store import FeatureStore

ENSEMBLE_PREFIX = "ensemble:"


def backbone_parts(backbone: str) -> tuple[str, ...]:
    """The stored backbones a (possibly virtual `ensemble:A+B`) backbone trains on."""
    if backbone.startswith(ENSEMBLE_PREFIX):
        return tuple(p for p in backbone[len(ENSEMBLE_PREFIX):].split("+") if p)
    return (backbone,)


@dataclass(frozen=True)
class Unit:
    backbone: str
    task: str
    split: str
    key: FeatureKey
    manifest: Manifest

    @property
    def name(self) -> str:
        return f"{self.backbone}|{self.task}|{self.split}"


def compute_of(num_gpus_per_actor: float) -> str:
    """How actors compute the features: bf16 autocast when they hold GPUs (on CUDA, or on the CPU
    where a node offers the GPU resource without CUDA), float32 otherwise. It is part of the key, so
    CPU and GPU features never share one."""
    return COMPUTE_BF16 if num_gpus_per_actor > 0 else COMPUTE_FLOAT32


# the code that turns an image into a feature: decoding and datasets, the backbone's build, adapters and
# feature choice, the actor's forward pass; and the libraries whose kernels and decoders compute it
EXTRACTION_MODULES = ("tasks/imagedata.py", "tasks/loaders.py", "tasks/offline.py", "tasks/datasets.py",
                      "tasks/backbones.py", "tasks/adapters.py", "orchestrator/extract/actor.py")
EXTRACTION_LIBRARIES = ("torch", "torchvision", "pillow", "numpy")


@functools.cache
def extraction_code() -> str:
    """A 16-hex digest of EXTRACTION_MODULES' source and EXTRACTION_LIBRARIES' versions: a change to how
    features are computed gives every unit a new key, so no cell ever reads features of older code."""
    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for name in EXTRACTION_MODULES:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    for lib in EXTRACTION_LIBRARIES:
        try:
            digest.update(f"{lib}=={version(lib)}\0".encode())
        except PackageNotFoundError:
            digest.update(f"{lib}==absent\0".encode())
    return digest.hexdigest()[:16]


def feature_key(backbone: tasks.Backbone, task: str, split: str, data: tasks.TaskData, dtype: str,
                compute: str = COMPUTE_FLOAT32) -> FeatureKey:
    """The key of the features `backbone` gives on `task`/`split` (built as `data`: its images' identity,
    index set and labels enter the split hash)."""
    return FeatureKey(
        backbone=backbone.spec.name, weights_sha256=backbone.weights_sha256, timm_version=timm.__version__,
        preprocessing=backbone.preprocessing, feature=backbone.spec.feature, task=task, split=split,
        split_hash=tasks.stored_split_hash(task, split, data), dtype=dtype, compute=compute,
        code=extraction_code(),
    )


def _splits_of(task: str, splits: Sequence[str] | None) -> tuple[str, ...]:
    stored = tasks.get_task(task).stored_splits
    if splits is None:
        return stored
    for split in splits:
        if split not in stored:
            raise OrchestratorError(
                f"task {task} stores splits {', '.join(stored)}, not {split!r}; a carved validation split is a "
                "set of train rows chosen at training time, so extract 'train' instead"
            )
    return tuple(s for s in stored if s in splits)


def data_name(task: str) -> str:
    """The task name actors open: `imagefolder:` paths made absolute, since actors run in other folders."""
    if task.startswith(tasks.IMAGEFOLDER_PREFIX) and not tasks.is_uri(task[len(tasks.IMAGEFOLDER_PREFIX):]):
        return tasks.IMAGEFOLDER_PREFIX + str(Path(task[len(tasks.IMAGEFOLDER_PREFIX):]).expanduser().resolve())
    return task


def plan_units(store: FeatureStore, backbone: tasks.Backbone, task_names: Sequence[str],
               splits: Sequence[str] | None, data_root: str | None, dtype: str, shard_size: int,
               download: bool, summary: ExtractSummary, compute: str = COMPUTE_FLOAT32) -> list[Unit]:
    """The units of one backbone, each with a manifest holding only its verified shards."""
    units = []
    for task in task_names:
        for split in _splits_of(task, splits):
            data = tasks.build_task(task, data_root, split, download=download)
            labels = np.asarray(data.targets)
            fkey = feature_key(backbone, task, split, data, dtype, compute)
            manifest, dropped = store.open_unit(fkey, len(labels), backbone.feature_dim, shard_size)
            summary.shards_repaired += dropped
            summary.shards_skipped += len(manifest.shards)
            summary.images_skipped_before += len(manifest.skipped())
            summary.keys[f"{backbone.spec.name}|{task}|{split}"] = fkey.key
            if manifest.complete:
                summary.units_skipped += 1
                store.set_current(fkey)
            units.append(Unit(backbone.spec.name, task, split, fkey, manifest))
    summary.units += len(units)
    return units
