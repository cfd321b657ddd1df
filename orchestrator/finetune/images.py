"""The images a fine-tuning run reads: a protocol phase of a task, its transforms, deterministic augmentation.

A phase (fit / val / trainval / test) holds exactly the examples the feature-based methods use for it
(`tasks.protocol_split`); the test split is built only by the run that evaluates it. Augmentation is
seeded per (seed, epoch, example), so an example gets the same crop and flip whichever worker reads it,
however many workers there are, and after a resume from a checkpoint.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from orchestrator.errors import OrchestratorError
from orchestrator.finetune.recipe import mix_seed

TRAIN_PHASES = ("fit", "trainval")


class PhaseImages(Dataset):
    """A protocol phase of a task as `dataset[i] -> (image tensor, label)`; `epoch` seeds the augmentation."""

    def __init__(self, parts: list[Any], transform: Callable[[Any], torch.Tensor], seed: int = 0,
                 augment: bool = False) -> None:
        self.parts = [p.with_transform(None) for p in parts]
        self.offsets = list(np.cumsum([0, *(len(p) for p in self.parts)]))
        self.targets = np.concatenate([p.targets for p in self.parts]).astype(np.int64)
        self.transform, self.seed, self.augment, self.epoch = transform, seed, augment, 0

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        part = bisect.bisect_right(self.offsets, index) - 1
        image = self.parts[part].image(index - self.offsets[part])
        if not self.augment:
            return self.transform(image), int(self.targets[index])
        with torch.random.fork_rng(devices=[]):   # torchvision's random transforms draw from torch's RNG
            torch.manual_seed(mix_seed(self.seed, self.epoch, index))
            return self.transform(image), int(self.targets[index])


def phase_parts(task: str, root: str | None, phase: str) -> list[Any]:
    """The TaskData parts of a phase, read from the stored splits it needs (never test, unless phase is test)."""
    from tasks import build_task, get_task, protocol_split

    spec = get_task(task)
    needed = ["test"] if phase == "test" else [s for s in spec.stored_splits if s != "test"]
    data = {split: build_task(task, root, split) for split in needed}
    parts = protocol_split(task, phase, {split: d.targets for split, d in data.items()})
    out = [data[split].subset(idx) for split, idx in parts if len(idx)]
    if not out:
        raise OrchestratorError(f"finetune: {task} has no images in its {phase} phase")
    return out


def _interpolation(name: str) -> Any:
    from timm.data.transforms import str_to_interp_mode

    return str_to_interp_mode(name)


def transforms_for(backbone: Any, image_size: int | None, hflip: bool) -> tuple[Callable, Callable]:
    """(train, eval) transforms from the backbone's own preprocessing: RandomResizedCrop (+ a horizontal flip
    where the task allows it) for training; the backbone's eval transform, at `image_size` when set."""
    import timm
    from torchvision import transforms as T

    pre = backbone.preprocessing
    native = int(pre["input_size"][-1])
    size = image_size or native
    normalise = [T.ToTensor(), T.Normalize(pre["mean"], pre["std"])]
    flip = [T.RandomHorizontalFlip()] if hflip else []
    train = T.Compose([T.RandomResizedCrop(size, interpolation=_interpolation(pre.get("interpolation", "bilinear"))),
                       *flip, *normalise])
    if size == native:
        return train, backbone.transform
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in pre.items() if k != "input_size"}
    return train, timm.data.create_transform(input_size=(3, size, size), is_training=False, **kwargs)


def build_phase(task: str, root: str | None, phase: str, backbone: Any, image_size: int | None,
                seed: int) -> PhaseImages:
    from tasks import get_task

    train_tf, eval_tf = transforms_for(backbone, image_size, get_task(task).hflip)
    training = phase in TRAIN_PHASES
    return PhaseImages(phase_parts(task, root, phase), train_tf if training else eval_tf, seed, augment=training)
