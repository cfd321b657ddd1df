"""A run's optimiser, learning-rate schedule and loss, built from its `Recipe` (orchestrator/finetune/recipe.py).

SGD recipes take every parameter in one group, as ssl-transfer does, with the recipe's weight-decay coefficient
(`Recipe.optimizer_weight_decay`: wd, or ssl-transfer's wd / lr). AdamW recipes take timm's parameter groups for
the backbone — `param_groups_layer_decay` with a layer decay d, `param_groups_weight_decay` without: no decay on
biases, norms and the model's `no_weight_decay()` names (pos_embed, cls_token) — and the new head as the top
layer (lr scale 1, its bias undecayed). For a ViT of depth L that gives MAE's scales: patch embedding, cls token
and positions d^(L+1), block i d^(L−i), the head 1; the final norm goes with the last block (timm's grouping,
d; MAE's with the head, 1). A group's lr is the run's lr × its `lr_scale` (timm's schedulers apply
the scale themselves; the schedule here is PyTorch's LambdaLR, which scales each group's own starting lr).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from orchestrator.finetune.recipe import Recipe


def param_groups(recipe: Recipe, net: nn.Module) -> list[dict[str, Any]]:
    """AdamW's parameter groups of a FinetuneNet (backbone + head), each with its `lr_scale`."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    backbone, wd = net.backbone, recipe.optimizer_weight_decay
    skip = tuple(backbone.no_weight_decay()) if hasattr(backbone, "no_weight_decay") else ()
    if recipe.layer_decay is not None and recipe.layer_decay < 1.0:
        # the new head is the top layer, one above the backbone's last (as a timm ViT's own classifier would be)
        groups = [{**g, "lr_scale": g["lr_scale"] * recipe.layer_decay}
                  for g in param_groups_layer_decay(backbone, weight_decay=wd, no_weight_decay_list=skip,
                                                    layer_decay=recipe.layer_decay)]
    else:
        groups = [{**g, "lr_scale": 1.0} for g in param_groups_weight_decay(backbone, wd, no_weight_decay_list=skip)]
    head = [{"params": [p], "weight_decay": wd if p.ndim > 1 else 0.0, "lr_scale": 1.0}
            for p in net.head.parameters()]
    return [{**g, "lr": recipe.optimizer_lr * g["lr_scale"]} for g in (*groups, *head) if g["params"]]


def build_optimizer(recipe: Recipe, net: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimiser over `net` (a FinetuneNet, or any module for SGD)."""
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(param_groups(recipe, net), lr=recipe.optimizer_lr, betas=tuple(recipe.betas),
                                 weight_decay=recipe.optimizer_weight_decay)
    return torch.optim.SGD(net.parameters(), lr=recipe.optimizer_lr, momentum=recipe.momentum,
                           weight_decay=recipe.optimizer_weight_decay,
                           nesterov=recipe.optimizer == "sgd-nesterov" and recipe.momentum > 0)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The lr multiplier before optimiser step `step` (0-based) of `total`: a linear warm-up from 0 over the
    first `warmup` steps (MAE's, which starts at 0), then constant or a cosine from 1 to 0 over the rest."""
    warmup = min(warmup, total)
    if step < warmup:
        return step / warmup
    if schedule == "constant":
        return 1.0
    span = max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def build_schedule(recipe: Recipe, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """Stepped once per optimiser step; scales every group's starting lr alike (their layer-decay ratios stay)."""
    total = max(total_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, recipe.warmup_steps, recipe.schedule))


def training_loss(recipe: Recipe, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, labels, label_smoothing=recipe.label_smoothing)
