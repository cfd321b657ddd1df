"""The extraction actor: one backbone built once per actor, turning rows of a task split into features.

`ShardExtractor` runs inside a Ray actor (extraction.py starts them); it is plain Python, so a test
can call it in-process. Images go through the backbone's own preprocessing, channels-last, in bf16
under CUDA autocast on a GPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

import tasks


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
