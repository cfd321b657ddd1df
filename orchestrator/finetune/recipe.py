"""The fine-tuning recipe: what one training run of the `finetune` method does, and where it comes from.

Default recipe (the `finetune:` section's defaults, `orchestrator.config.FinetuneConfig`), after the
fine-tuning protocol of ssl-transfer — Ericsson, Gouk, Hospedales, "How Well Do Self-Supervised Models
Transfer?", CVPR 2021 (github.com/linusericsson/ssl-transfer, `finetune.py`). Taken from it: the whole
backbone plus a linear head trained with cross-entropy; SGD with Nesterov momentum 0.9; a cosine learning
rate annealed to 0 over 5000 optimiser steps of batch 64; train-time RandomResizedCrop + horizontal flip,
evaluation by the resize + centre-crop transform; the learning rates {1e-1, 1e-2, 1e-3, 1e-4} and the
weight-decay values {0, 1e-6, 1e-5, 1e-4, 1e-3} as the candidate grid, chosen on validation, refit on
train + validation and tested once. What differs, on purpose:

- weight decay is the optimiser's coefficient (PyTorch's convention); ssl-transfer passes wd / lr to SGD;
- the preprocessing (resolution, crop ratio, interpolation, mean/std) is the backbone's own, the one its
  features were extracted with (ssl-transfer uses 224 px and ImageNet statistics for every model);
- tasks whose labels change under a mirror (digits) are never flipped (`tasks.TaskSpec.hflip`);
- selection uses the task's primary metric and the sweep's validation split (the protocol), not
  ssl-transfer's own splits; with `epochs` set, training runs that many epochs instead of `steps`.

`batch_size` is the global batch: each of `num_workers` Ray Train workers takes an equal share, and
BatchNorm normalises over a worker's share (DDP without SyncBatchNorm, as ssl-transfer on one GPU with
the per-GPU batch). The demo recipe (configs/demo.yaml) shrinks epochs, images and resolution to fit
2 CPU cores; configs/paper.yaml uses the default recipe.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from orchestrator.errors import OrchestratorError

CITATION = ('Ericsson, Gouk, Hospedales, "How Well Do Self-Supervised Models Transfer?", CVPR 2021 '
            "(ssl-transfer finetune.py)")
# the recipe's published training budget: a run of fewer optimiser steps is flagged under_trained
BUDGET_STEPS = 5000


@dataclass(frozen=True)
class Recipe:
    """One training run: the `finetune:` section resolved for one candidate (lr, weight decay) and seed."""

    lr: float
    weight_decay: float
    seed: int
    epochs: int | None = None         # set: train by epochs
    steps: int = 5000                 # otherwise: this many optimiser steps
    batch_size: int = 64              # global
    optimizer: str = "sgd-nesterov"   # sgd-nesterov | sgd | adamw
    momentum: float = 0.9
    schedule: str = "cosine"          # cosine | constant
    image_size: int | None = None     # None: the backbone's own input size
    precision: str = "fp32"           # fp32 | bf16 (autocast, CUDA only)
    loader_workers: int = 0           # DataLoader processes per worker (the cluster's CPUs are the Train workers')

    @classmethod
    def from_config(cls, section: Any, lr: float, weight_decay: float, seed: int) -> Recipe:
        fields = {k: getattr(section, k) for k in ("epochs", "steps", "batch_size", "optimizer", "momentum",
                                                    "schedule", "image_size", "precision")}
        return cls(lr=float(lr), weight_decay=float(weight_decay), seed=int(seed), **fields)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def steps_per_epoch(self, n_images: int, world_size: int) -> int:
        """Optimiser steps in one pass over `n_images`: every worker takes ceil(n / world) of them (the
        sampler pads by repeating) in batches of batch_size / world, an incomplete last batch dropped."""
        per_worker = self.batch_size // world_size
        steps = math.ceil(n_images / world_size) // per_worker
        if steps < 1:
            raise OrchestratorError(f"finetune.batch_size={self.batch_size} is larger than the {n_images} training "
                                    "images of this phase; lower finetune.batch_size")
        return steps

    def total_steps(self, n_images: int, world_size: int) -> int:
        per_epoch = self.steps_per_epoch(n_images, world_size)
        return self.epochs * per_epoch if self.epochs is not None else self.steps

    def epochs_for(self, n_images: int, world_size: int) -> int:
        per_epoch = self.steps_per_epoch(n_images, world_size)
        return self.epochs if self.epochs is not None else math.ceil(self.steps / per_epoch)


def build_optimizer(recipe: Recipe, params: Any) -> torch.optim.Optimizer:
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                           nesterov=recipe.optimizer == "sgd-nesterov" and recipe.momentum > 0)


def build_schedule(recipe: Recipe, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """Stepped once per optimiser step: cosine to 0 over the run, or constant."""
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, index, …): the same parts give the same seed anywhere."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = ((value ^ (int(part) + 0x632BE59BD9B4E019)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF
