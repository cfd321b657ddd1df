"""Feature extraction on Ray: (backbone, task, stored split) units cut into shards, run by actors, stored as Parquet.

Before Ray starts, a preflight lists every missing dataset and weights file at once. The driver then
plans the units, checks the store (complete units and verified shards are skipped), and per backbone
starts actors (extract/nodes.py: their number and shape) that each build the model once, check its
weights' sha256 against the key, and pull shards through `pool.run_jobs`. Each actor writes its shard
files to the store itself and returns only their records; the driver is the single writer of manifests
and pointers. An in-process store (`memory://`) cannot be reached by actors: there the actors return
the arrays and the driver writes the shards. On a cluster of several nodes the store must be an object
store or a shared mount (a relative path is refused), and every node's view of the inputs is checked.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import ray

import tasks
from orchestrator.capacity import check_shape, requested
from orchestrator.errors import OrchestratorError
from orchestrator.extract.actor import ShardExtractor, ShardResult
from orchestrator.extract.manifest import DTYPES, Manifest, ShardRecord
from orchestrator.extract.nodes import ActorPlan, check_nodes, plan_actors
from orchestrator.extract.plan import Unit, backbone_parts, compute_of, data_name, plan_units
from orchestrator.extract.pool import JobFailed, run_jobs
from orchestrator.extract.progress import ExtractSummary, Progress
from orchestrator.extract.store import FeatureStore
from orchestrator.raycluster import alive_nodes, check_address, init_ray

log = logging.getLogger(__name__)

DEFAULT_STORE = "features"
DEFAULT_DATA_ROOT = "data"
MAX_ACTOR_RESTARTS = 3
START_GRACE_S = 10.0   # once one actor is ready, jobs wait this long for the others (spread over nodes)


def preflight_inputs(backbones: Sequence[str], task_names: Sequence[str], data_root: str | None,
                     download: bool = False) -> None:
    """Every missing dataset and weights file, listed at once, before Ray starts (or nothing)."""
    missing = tasks.preflight(backbones, task_names, data_root, download=download)
    if missing:
        raise OrchestratorError(f"{len(missing)} input(s) missing; nothing was started:\n  - "
                                + "\n  - ".join(str(m) for m in missing))


def _actors_write(store: FeatureStore) -> bool:
    """Whether actors (other processes) can reach the store: not for an in-process `memory://` one."""
    from fsspec.implementations.memory import MemoryFileSystem

    return not isinstance(store.fs, MemoryFileSystem)


def _check_store_for_cluster(store: FeatureStore, given: str) -> str | None:
    """On a cluster of several nodes: refuse a relative local store; return a local store's folder (to be
    probed from the other nodes), None for object stores."""
    if not store.local or len(alive_nodes()) < 2:
        return None
    if not tasks.is_uri(given) and not os.path.isabs(os.path.expanduser(given)):
        raise OrchestratorError(
            f"feature store {given!r} is a relative path, but this Ray cluster has {len(alive_nodes())} nodes: each "
            "would write to and read from its own disk. Use a URI every node reaches, e.g. --store "
            "s3://BUCKET/seabench/features (pip install 'seabench[cloud]'), or an absolute path on a shared mount")
    return store.root


@dataclass(frozen=True)
class ActorSettings:
    num_gpus_per_actor: float = 0.0     # as extraction.num_gpus_per_actor; fractions share one GPU
    cpus_per_actor: float = 1.0
    num_actors: int | None = None       # default: from the plan and the nodes (extract/nodes.py)
    num_workers: int | None = None      # DataLoader workers per actor; None: default_num_workers()
    batch_size: int = 64
    skip_bad_images: bool = False       # an unreadable image: zero features, row recorded as skipped
    plugins: tuple[str, ...] = ()       # what registers the config's own tasks (a config's `plugins`)

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
    plan = plan_actors(len(jobs), settings.num_gpus_per_actor, settings.cpus_per_actor, settings.num_actors)
    if plan.note:
        print(f"extract: {plan.note}", flush=True)
    check_shape(plan.bundle, "an extraction actor", "Lower extraction.num_gpus_per_actor (--num-gpus-per-actor) "
                "or --cpus-per-actor to what a node type holds, or add such a type")
    # asked of the autoscaler while this backbone extracts, withdrawn however it ends: no paid node left up
    with requested([plan.bundle] * plan.count, "extract", one="extraction actor"):
        return _extract(units, spec, store, data_root, settings, progress, plan, jobs)


def _extract(units: list[Unit], spec: tasks.BackboneSpec, store: FeatureStore, data_root: str | None,
             settings: ActorSettings, progress: Progress, plan: ActorPlan, jobs: list[tuple[int, int]]) -> int:
    """`jobs` (unit, shard) on the plan's actors; returns how many jobs were re-submitted."""
    options = {"num_cpus": plan.num_cpus, "num_gpus": plan.num_gpus,
               "max_restarts": MAX_ACTOR_RESTARTS, "max_task_retries": 0}
    actor_cls = ray.remote(ShardExtractor)
    dtype, weights = units[0].key.dtype, units[0].key.weights_sha256
    writes = _actors_write(store)
    where = (store.root if store.local else store.uri) if writes else None
    # named, so that `ray list actors` (and a fault-injection test) can tell which extraction they serve
    run_id = uuid.uuid4().hex[:8]
    actors = [actor_cls.options(name=f"seabench-extract-{run_id}-{i}", **options).remote(
        spec, data_root, "cuda" if plan.num_gpus > 0 else "cpu", dtype, settings.batch_size, settings.num_workers,
        int(plan.num_cpus), settings.skip_bad_images, weights, where, units[0].key.compute,
        sorted({data_name(u.task) for u in units}), settings.plugins)
        for i in range(plan.count)]
    remaining = {u: len(unit.manifest.missing()) for u, unit in enumerate(units)}
    plain = [Manifest(u.manifest.key, u.manifest.metadata, u.manifest.num_rows, u.manifest.dim, u.manifest.dtype,
                      u.manifest.shard_size) for u in units]   # what an actor needs of a manifest: its plan

    def submit(actor, job):
        unit, shard = units[job[0]], job[1]
        if writes:
            return actor.write.remote(data_name(unit.task), unit.key, plain[job[0]], shard)
        return actor.extract.remote(data_name(unit.task), unit.split, *unit.manifest.shard_range(shard))

    def on_result(job, value: ShardRecord | ShardResult) -> None:
        unit = units[job[0]]
        if isinstance(value, ShardResult):
            if not np.isfinite(value.features).all():
                raise OrchestratorError(
                    f"backbone {unit.backbone} gave NaN/Inf features on {unit.task}/{unit.split} rows "
                    f"{unit.manifest.shard_range(job[1])} (in {unit.key.dtype}); check its weights, or store float32"
                )
            record = store.write_shard_file(unit.key, unit.manifest, job[1], value.index, value.labels,
                                            value.features, value.skipped)
            value = replace(record, seconds=value.seconds, node=value.node)
        store.record_shard(unit.key, unit.manifest, job[1], value)
        progress.shard_done(unit.backbone, value.rows, len(value.skipped))
        remaining[job[0]] -= 1
        if remaining[job[0]] == 0:
            progress.unit_done()

    started: list[float] = []
    notes: set[str] = set()

    def on_ready(actor, description: str) -> None:
        started.append(time.perf_counter())
        if "CUDA is not available" in description and description not in notes:
            notes.add(description)
            print(f"extract: {description}", flush=True)

    start = time.perf_counter()
    try:
        return run_jobs(actors, jobs, submit, on_result, on_ready=on_ready, start_grace_s=START_GRACE_S)
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
        startup = (started[0] - start) if started else 0.0
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
    if data_root is not None and not tasks.is_uri(data_root):
        data_root = str(Path(data_root).expanduser().resolve())  # actors may run in another folder
    check_address(address)
    preflight_inputs(backbone_names, task_list, data_root, download)
    local_store = None
    if address or ray.is_initialized():   # a cluster: refuse a store its nodes cannot share before touching it
        init_ray(address, num_cpus)
        local_store = _check_store_for_cluster(store, store.uri)
    summary = ExtractSummary()
    plans = []
    for name in backbone_names:
        # Built once on the driver: its weights digest, preprocessing and dimension define the keys.
        backbone = tasks.build_backbone(name)
        units = plan_units(store, backbone, task_list, splits, data_root, dtype, shard_size, download, summary,
                           compute_of(settings.num_gpus_per_actor))
        plans.append((backbone.spec, units))
        del backbone
    todo = [u for _, units in plans for u in units if not u.manifest.complete]
    images = sum(u.manifest.shard_range(s)[1] - u.manifest.shard_range(s)[0] for u in todo for s in u.manifest.missing())
    bar = Progress(summary, images, len(todo), enabled=progress)
    try:
        if todo:
            init_ray(address, num_cpus)
            if len(alive_nodes()) > 1:
                bundle = {"CPU": settings.cpus_per_actor}
                check_nodes([spec for spec, _ in plans], [data_name(t) for t in task_list], data_root, local_store,
                            bundle)
        for spec, units in plans:
            pending = [u for u in units if not u.manifest.complete]
            summary.actor_restarts += _run_backbone(pending, spec, store, data_root, settings, bar)
    finally:
        bar.close()
    return summary
