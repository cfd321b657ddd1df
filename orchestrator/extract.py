"""Feature extraction on Ray: (backbone, task, stored split) units cut into shards, run by actors, stored as Parquet.

The driver plans the units, checks the store (complete units and verified shards are skipped),
then per backbone starts actors that each build the model once and pull shards through
`shardpool.run_jobs`. Actors return (index, label, feature) arrays; the driver writes the shards,
so the store may be any fsspec filesystem the driver can reach (even `memory://`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import timm
import torch
from torch.utils.data import DataLoader, Dataset, Subset

import tasks
from orchestrator.cells import backbone_parts
from orchestrator.errors import OrchestratorError
from orchestrator.manifest import DTYPES, FeatureKey, Manifest
from orchestrator.progress import ExtractSummary, Progress
from orchestrator.raycluster import cluster_cpus, cluster_gpus, init_ray
from orchestrator.shardpool import JobFailed, run_jobs, wait_until_ready
from orchestrator.store import FeatureStore

log = logging.getLogger(__name__)

DEFAULT_STORE = "features"
DEFAULT_DATA_ROOT = "data"
MAX_ACTOR_RESTARTS = 3


def default_num_workers() -> int:
    """DataLoader workers per actor: none on tiny machines (they would only compete with the model)."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores // 2)


class _TolerantItems(Dataset):
    """Items `indices` of a task split; an image that cannot be decoded becomes a blank input of the
    model's size, flagged with the reason, instead of an exception (for --skip-bad-images)."""

    def __init__(self, data: tasks.TaskData, indices: range, input_size: Sequence[int]) -> None:
        self.data, self.indices, self.input_size = data, indices, tuple(input_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        row = self.indices[i]
        try:
            image, label = self.data[row]
        except tasks.TaskError as exc:
            return torch.zeros(self.input_size), int(self.data.targets[row]), str(exc) or type(exc).__name__
        return image, label, ""


class ShardExtractor:
    """Ray actor body: one backbone built once; `extract(job)` returns one shard's arrays."""

    def __init__(self, spec: tasks.BackboneSpec, data_root: str | None, device: str, dtype: str,
                 batch_size: int, num_workers: int | None, num_threads: int, skip_bad_images: bool = False) -> None:
        if device == "cpu":
            torch.set_num_threads(max(1, num_threads))
        self.backbone = tasks.build_backbone(spec)
        self.device = torch.device(device)
        # Channels-last: tensor cores on CUDA, and oneDNN's faster (depthwise) convolutions on CPU.
        self.backbone.model.to(self.device, memory_format=torch.channels_last)
        self.data_root, self.dtype, self.skip_bad_images = data_root, dtype, skip_bad_images
        # Resolved here, on the actor's node, whose core count may differ from the driver's.
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self._datasets: dict[tuple[str, str], tasks.TaskData] = {}

    def ready(self) -> bool:
        return True

    def extract(self, task: str, split: str, start: int, stop: int) -> ShardResult:
        if (task, split) not in self._datasets:
            self._datasets[task, split] = tasks.build_task(task, self.data_root, split, self.backbone.transform)
        data, rows = self._datasets[task, split], range(start, stop)
        items = (_TolerantItems(data, rows, self.backbone.preprocessing["input_size"]) if self.skip_bad_images
                 else Subset(data, rows))
        cuda = self.device.type == "cuda"
        loader = DataLoader(items, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                            persistent_workers=False, pin_memory=cuda)
        feats, labels, errors = [], [], []
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            for batch in loader:
                images, targets = batch[0], batch[1]
                images = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                feats.append(self.backbone.features(images).float().cpu().numpy().astype(self.dtype, copy=False))
                labels.append(targets.numpy())
                errors.extend(batch[2] if self.skip_bad_images else [""] * len(targets))
        dim = self.backbone.feature_dim
        features = np.concatenate(feats) if feats else np.zeros((0, dim), self.dtype)
        label = np.concatenate(labels).astype(np.int32) if labels else np.zeros(0, np.int32)
        skipped = [(start + i, why) for i, why in enumerate(errors) if why]
        for row, _ in skipped:
            features[row - start] = 0  # a blank image's features mean nothing; zeros mark the row plainly
        return ShardResult(np.arange(start, stop, dtype=np.int64), label, features, skipped)


@dataclass(frozen=True)
class ShardResult:
    """What an actor returns for one shard."""

    index: np.ndarray                   # int64 rows [start, stop)
    labels: np.ndarray                  # int32
    features: np.ndarray                # rows × d in the storage dtype
    skipped: list[tuple[int, str]]      # (row, reason) of unreadable images (with skip_bad_images)


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


def stored_split_identity(task: str, split: str, labels: np.ndarray) -> str:
    """Hash of a whole stored split: its size and order (tasks.stored_split_hash) plus its labels."""
    digest = hashlib.sha256(tasks.stored_split_hash(task, split, len(labels)).encode())
    digest.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return digest.hexdigest()[:16]


def feature_key(backbone: tasks.Backbone, task: str, split: str, labels: np.ndarray, dtype: str) -> FeatureKey:
    """The key of the features `backbone` gives on `task`/`split` (whose labels, in order, are `labels`)."""
    return FeatureKey(
        backbone=backbone.spec.name, weights_sha256=backbone.weights_sha256, timm_version=timm.__version__,
        preprocessing=backbone.preprocessing, feature=backbone.spec.feature, task=task, split=split,
        split_hash=stored_split_identity(task, split, labels), dtype=dtype,
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
    if task.startswith(tasks.IMAGEFOLDER_PREFIX):
        return tasks.IMAGEFOLDER_PREFIX + str(Path(task[len(tasks.IMAGEFOLDER_PREFIX):]).expanduser().resolve())
    return task


def plan_units(store: FeatureStore, backbone: tasks.Backbone, task_names: Sequence[str],
               splits: Sequence[str] | None, data_root: str | None, dtype: str, shard_size: int,
               download: bool, summary: ExtractSummary) -> list[Unit]:
    """The units of one backbone, each with a manifest holding only its verified shards."""
    units = []
    for task in task_names:
        for split in _splits_of(task, splits):
            labels = np.asarray(tasks.build_task(task, data_root, split, download=download).targets)
            fkey = feature_key(backbone, task, split, labels, dtype)
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


def _actor_count(jobs: int, num_gpus_per_actor: float, cpus_per_actor: float, num_actors: int | None) -> int:
    if num_actors is not None:
        return max(1, min(num_actors, jobs))
    gpus = cluster_gpus()
    capacity = int(gpus / num_gpus_per_actor) if gpus and num_gpus_per_actor > 0 else int(cluster_cpus() / cpus_per_actor)
    return max(1, min(capacity, jobs))


@dataclass(frozen=True)
class ActorSettings:
    num_gpus_per_actor: float = 1.0     # used when the cluster has GPUs; fractions share one GPU
    cpus_per_actor: float = 1.0
    num_actors: int | None = None       # default: as many as the cluster holds, at most one per shard
    num_workers: int | None = None      # DataLoader workers per actor; None: default_num_workers()
    batch_size: int = 64
    skip_bad_images: bool = False       # an unreadable image: zero features, row recorded as skipped

    def __post_init__(self) -> None:
        if self.num_gpus_per_actor < 0 or self.cpus_per_actor <= 0:
            raise OrchestratorError(f"GPUs per actor must be ≥ 0 and CPUs per actor > 0, got "
                                    f"{self.num_gpus_per_actor} and {self.cpus_per_actor}")
        for name in ("num_actors", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise OrchestratorError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.num_workers is not None and self.num_workers < 0:
            raise OrchestratorError(f"num_workers must be ≥ 0, got {self.num_workers}")


def _run_backbone(units: list[Unit], spec: tasks.BackboneSpec, store: FeatureStore, data_root: str | None,
                  settings: ActorSettings, progress: Progress) -> int:
    """Extract every missing shard of one backbone's units; returns how many jobs were re-submitted."""
    jobs = [(u, shard) for u, unit in enumerate(units) for shard in unit.manifest.missing()]
    if not jobs:
        return 0
    use_gpu = cluster_gpus() > 0 and settings.num_gpus_per_actor > 0
    count = _actor_count(len(jobs), settings.num_gpus_per_actor, settings.cpus_per_actor, settings.num_actors)
    options = {"num_cpus": settings.cpus_per_actor, "num_gpus": settings.num_gpus_per_actor if use_gpu else 0,
               "max_restarts": MAX_ACTOR_RESTARTS, "max_task_retries": 0}
    actor_cls = ray.remote(ShardExtractor)
    dtype = units[0].key.dtype
    # named, so that `ray list actors` (and a fault-injection test) can tell which extraction they serve
    run_id = uuid.uuid4().hex[:8]
    actors = [actor_cls.options(name=f"seabench-extract-{run_id}-{i}", **options).remote(
        spec, data_root, "cuda" if use_gpu else "cpu", dtype, settings.batch_size, settings.num_workers,
        int(settings.cpus_per_actor), settings.skip_bad_images) for i in range(count)]
    remaining = {u: len(unit.manifest.missing()) for u, unit in enumerate(units)}

    def submit(actor, job):
        unit, shard = units[job[0]], job[1]
        return actor.extract.remote(data_name(unit.task), unit.split, *unit.manifest.shard_range(shard))

    def on_result(job, value: ShardResult) -> None:
        unit = units[job[0]]
        if not np.isfinite(value.features).all():
            raise OrchestratorError(
                f"backbone {unit.backbone} gave NaN/Inf features on {unit.task}/{unit.split} rows "
                f"{unit.manifest.shard_range(job[1])} (in {unit.key.dtype}); check its weights, or store float32"
            )
        store.write_shard(unit.key, unit.manifest, job[1], value.index, value.labels, value.features, value.skipped)
        progress.shard_done(unit.backbone, len(value.index), len(value.skipped))
        remaining[job[0]] -= 1
        if remaining[job[0]] == 0:
            progress.unit_done()

    start = time.perf_counter()
    startup = 0.0
    try:
        wait_until_ready(actors)
        startup = time.perf_counter() - start
        return run_jobs(actors, jobs, submit, on_result)
    except JobFailed as exc:
        if not isinstance(exc.cause, tasks.TaskError):
            raise
        unit = units[exc.job[0]]
        start_row, stop_row = unit.manifest.shard_range(exc.job[1])
        raise OrchestratorError(
            f"{unit.task} / {unit.split}, rows [{start_row}, {stop_row}): {exc.cause}. Fix or remove that file, "
            "or rerun with --skip-bad-images (config: extraction.skip_bad_images: true) to leave unreadable "
            "images out; they are then counted in the manifest and the report"
        ) from exc.cause
    finally:
        progress.backbone_seconds(spec.name, time.perf_counter() - start, startup)
        for actor in actors:
            ray.kill(actor, no_restart=True)


def extract_features(
    backbones: str | Sequence[str], task_names: str | Sequence[str], splits: Sequence[str] | None = None,
    store: str | FeatureStore = DEFAULT_STORE, data_root: str | None = DEFAULT_DATA_ROOT, shard_size: int = 4096,
    dtype: str = "float32", address: str | None = None, num_cpus: int | None = None,
    settings: ActorSettings = ActorSettings(), download: bool = False, progress: bool = True,
) -> ExtractSummary:
    """Extract the features of every (backbone, task, stored split) into `store`; resumable, idempotent.

    `address` joins a running Ray cluster; None starts (or reuses) a local one with `num_cpus`.
    """
    requested = [backbones] if isinstance(backbones, str) else list(backbones)
    # An ensemble trains on its parts' stored features: extract each part once.
    backbone_names = list(dict.fromkeys(part for name in requested for part in backbone_parts(name)))
    task_list = [task_names] if isinstance(task_names, str) else list(task_names)
    if dtype not in DTYPES:
        raise OrchestratorError(f"--dtype must be one of {DTYPES}, got {dtype!r}")
    if shard_size < 1:
        raise OrchestratorError(f"--shard-size must be ≥ 1, got {shard_size}")
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    if data_root is not None:
        data_root = str(Path(data_root).expanduser().resolve())  # actors may run in another folder
    summary = ExtractSummary()
    plans = []
    for name in backbone_names:
        # Built once on the driver: its weights digest, preprocessing and dimension define the keys.
        backbone = tasks.build_backbone(name)
        units = plan_units(store, backbone, task_list, splits, data_root, dtype, shard_size, download, summary)
        plans.append((backbone.spec, units))
        del backbone
    todo = [u for _, units in plans for u in units if not u.manifest.complete]
    images = sum(u.manifest.shard_range(s)[1] - u.manifest.shard_range(s)[0] for u in todo for s in u.manifest.missing())
    bar = Progress(summary, images, len(todo), enabled=progress)
    try:
        if todo:
            init_ray(address, num_cpus)
        for spec, units in plans:
            pending = [u for u in units if not u.manifest.complete]
            summary.actor_restarts += _run_backbone(pending, spec, store, data_root, settings, bar)
    finally:
        bar.close()
    return summary
