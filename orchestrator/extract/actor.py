"""The extraction actor: one backbone built once per actor, turning rows of a task split into features.

`ShardExtractor` runs inside a Ray actor (extraction.py starts them); it is plain Python, so a test
can call it in-process. Images go through the backbone's own preprocessing, channels-last, in bf16
under CUDA autocast on a GPU. With a store, the actor writes each shard file itself (where it is
made) and returns only its record; the driver records it in the manifest. An actor checks, on its
own node, that the weights it loaded are the ones the feature key names (their sha256).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

import tasks
from orchestrator.errors import OrchestratorError
from orchestrator.extract.manifest import FeatureKey, Manifest, ShardRecord
from orchestrator.raycluster import node_id


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


def probe_store(store) -> str:
    """A write, read back and removal of a small file at the store's root ("" when all three work, else
    what failed): the credentials and the endpoint this node has, tried before it writes a shard."""
    path = f"{store.root}/.seabench-probe-{node_id()[:12] or 'local'}-{uuid.uuid4().hex[:8]}"
    payload = b"seabench store probe\n"
    try:
        store.fs.makedirs(store.root, exist_ok=True)
        store.fs.pipe_file(path, payload)
        read = store.fs.cat_file(path)
        store.fs.rm(path)
    except Exception as exc:   # any backend's error (botocore, OSError, …): reported, with the store named
        return f"the feature store {store.uri} failed a test write and read ({type(exc).__name__}: {exc})"
    return "" if read == payload else f"the feature store {store.uri} returned other bytes than were written"


class ShardExtractor:
    """Ray actor body: one backbone built once; `extract(job)` returns one shard's arrays."""

    def __init__(self, spec: tasks.BackboneSpec, data_root: str | None, device: str, dtype: str,
                 batch_size: int, num_workers: int | None, num_threads: int, skip_bad_images: bool = False,
                 weights_sha256: str = "", store: str | None = None, compute: str = "float32",
                 task_names: Sequence[str] = (), plugins: Sequence[str] = ()) -> None:
        from sea.methods import import_plugins

        import_plugins(plugins)   # a task a plugin registers is known on this node too
        self.node = node_id()
        self.compute = compute
        self.note = ""
        if device == "cuda" and not torch.cuda.is_available():
            # The actor holds a GPU of the scheduler's, but this node has no usable CUDA (a node that
            # declares GPUs it lacks, or a CPU-only torch): the work still gets done, on CPU.
            self.note = f"node {self.node}: the actor holds a GPU but CUDA is not available there; computing on CPU"
            device = "cpu"
        if device == "cpu":
            torch.set_num_threads(max(1, num_threads))
        self.backbone = tasks.build_backbone(spec)
        if weights_sha256 and self.backbone.weights_sha256 != weights_sha256:
            raise OrchestratorError(
                f"node {self.node}: the weights of backbone {spec.name!r} loaded there "
                f"({self.backbone.weights_file or spec.weights}) have sha256 {self.backbone.weights_sha256}, but "
                f"the feature key (the driver's copy) has {weights_sha256}; put the same file on every node "
                "(or a URI every node reads, e.g. $SEABENCH_WEIGHTS=s3://…)")
        self.device = torch.device(device)
        self.store = None
        if store is not None:
            from orchestrator.extract.store import FeatureStore

            self.store = FeatureStore(store)
        # a node that joined after the driver's preflight (an autoscaler's, a replacement) is checked here,
        # on itself, before it gets work: the data it will read and a write-then-read of the store
        problems = [str(m) for m in tasks.preflight([], task_names, data_root)]
        problems += [p for p in [probe_store(self.store)] if p] if self.store is not None else []
        if problems:
            raise OrchestratorError(
                f"node {self.node} cannot take part in this extraction: " + "; ".join(problems) + ". Every node "
                "must see the data and the store as the driver does: a shared mount at the same path, or URIs "
                "(s3://…) with credentials on every node (an instance profile, a service account, $AWS_* in its env)")
        # Channels-last: tensor cores on CUDA, and oneDNN's faster (depthwise) convolutions on CPU.
        self.backbone.model.to(self.device, memory_format=torch.channels_last)
        self.data_root, self.dtype, self.skip_bad_images = data_root, dtype, skip_bad_images
        # Resolved here, on the actor's node, whose core count may differ from the driver's.
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self._datasets: dict[tuple[str, str], tasks.TaskData] = {}

    def ready(self) -> str:
        """Where and how this actor computes: "node <id>: cuda|cpu" (plus a note when a GPU is unusable)."""
        return self.note or f"node {self.node}: {self.device.type}"

    def write(self, task: str, fkey: FeatureKey, manifest: Manifest, shard: int) -> ShardRecord:
        """Extract one shard of `fkey`'s unit, write its file to the store, return only its record."""
        if self.store is None:
            raise OrchestratorError("this extraction actor was started without a store to write to")
        start, stop = manifest.shard_range(shard)
        result = self.extract(task, fkey.split, start, stop)
        if not np.isfinite(result.features).all():
            raise OrchestratorError(
                f"backbone {fkey.backbone} gave NaN/Inf features on {fkey.task}/{fkey.split} rows "
                f"[{start}, {stop}) (in {fkey.dtype}, node {self.node}); check its weights, or store float32")
        record = self.store.write_shard_file(fkey, manifest, shard, result.index, result.labels, result.features,
                                             result.skipped)
        return replace(record, seconds=result.seconds, node=self.node)

    def extract(self, task: str, split: str, start: int, stop: int) -> ShardResult:
        began = time.perf_counter()
        if (task, split) not in self._datasets:
            self._datasets[task, split] = tasks.build_task(task, self.data_root, split, self.backbone.transform)
        data, rows = self._datasets[task, split], range(start, stop)
        items = (_TolerantItems(data, rows, self.backbone.preprocessing["input_size"]) if self.skip_bad_images
                 else Subset(data, rows))
        cuda = self.device.type == "cuda"
        loader = DataLoader(items, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                            persistent_workers=False, pin_memory=cuda)
        feats, labels, errors = [], [], []
        # the key's `compute` says how: bf16 autocast on whatever device this actor has, or plain float32
        bf16 = self.compute == "bf16-autocast"
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext())
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
        return ShardResult(np.arange(start, stop, dtype=np.int64), label, features, skipped,
                           time.perf_counter() - began, self.node)



@dataclass(frozen=True)
class ShardResult:
    """What an actor returns for one shard."""

    index: np.ndarray                   # int64 rows [start, stop)
    labels: np.ndarray                  # int32
    features: np.ndarray                # rows × d in the storage dtype
    skipped: list[tuple[int, str]]      # (row, reason) of unreadable images (with skip_bad_images)
    seconds: float = 0.0                # compute time on the actor
    node: str = ""                      # the Ray node id that computed it
