"""Feature extraction on Ray: (backbone, task, stored split) units cut into shards, run by actors, stored as Parquet.

The driver plans the units, checks the store (complete units and verified shards are skipped),
then per backbone starts actors that each build the model once and pull shards through
`pool.run_jobs`. Actors return (index, label, feature) arrays; the driver writes the shards,
so the store may be any fsspec filesystem the driver can reach (even `memory://`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

import tasks
from orchestrator.errors import OrchestratorError
from orchestrator.extract.actor import ShardExtractor, ShardResult
from orchestrator.extract.manifest import DTYPES
from orchestrator.extract.plan import Unit, backbone_parts, data_name, plan_units
from orchestrator.extract.pool import JobFailed, run_jobs, wait_until_ready
from orchestrator.extract.store import FeatureStore
from orchestrator.progress import ExtractSummary, Progress
from orchestrator.raycluster import cluster_cpus, cluster_gpus, init_ray

log = logging.getLogger(__name__)

DEFAULT_STORE = "features"
DEFAULT_DATA_ROOT = "data"
MAX_ACTOR_RESTARTS = 3


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
