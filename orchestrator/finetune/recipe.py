"""Fine-tuning recipes, one per backbone family, each after a published protocol — and what one run does.

A backbone runs the recipe of its timm family (the timm module that defines its registry entry's `arch`):
`timm.models.resnet` → ssl-transfer, `timm.models.vision_transformer` → mae, any other → default. The config may
name a recipe (`finetune.recipe`, or `recipe:` under `finetune.recipes.<backbone>`) and override any of its keys
(orchestrator/finetune_config.py); a key the recipe has not (layer_decay for ssl-transfer) is an error naming it.

**ssl-transfer** (ResNets) — Ericsson, Gouk, Hospedales, "How Well Do Self-Supervised Models Transfer?", CVPR
2021 (github.com/linusericsson/ssl-transfer, finetune.py). Taken: the whole backbone + a linear head,
cross-entropy; SGD with Nesterov momentum 0.9 over every parameter (BatchNorm and biases decayed too); cosine to
0 over 5000 steps of batch 64; the candidates lr {1e-1, 1e-2, 1e-3, 1e-4} × wd {0, 1e-6, 1e-5, 1e-4, 1e-3},
chosen on validation, refit on train + validation, tested once; and its weight-decay semantics, faithfully: the
script builds its grid as (lr, wd / lr) and hands the second to SGD, so SGD's coefficient is wd / lr (up to 1e-3
/ 1e-4 = 10) and a step decays the weights by lr_t · wd / lr — wd itself at the start, following the cosine
(`weight_decay_over_lr`); BatchNorm over the 64 images of a step: one worker sees the global batch, several GPU
workers share it through SyncBatchNorm (`sync_batchnorm`). PyTorch has no SyncBatchNorm on CPU: there each worker
normalises over its own share, as `precision: bf16` is fp32 there (a config that sets sync_batchnorm itself for
several CPU workers is refused).

**mae** (ViTs) — He, Chen, Xie, Li, Dollár, Girshick, "Masked Autoencoders Are Scalable Vision Learners", CVPR
2022 (github.com/facebookresearch/mae, main_finetune.py and FINETUNE.md, the ViT-B values); MoCo v3's ViT (Chen,
Xie, He, ICCV 2021) runs it too: its authors fine-tune end to end with DeiT's AdamW, warm-up + cosine and label
smoothing, which MAE's recipe extends with layer-wise decay — one recipe keeps the two ViT backbones comparable.
Taken: AdamW, β (0.9, 0.999), weight decay 0.05 except on biases, norms, pos_embed and cls_token; lr = base lr ×
batch / 256 (`scale_lr`) with MAE's base lr 5e-4 among the candidates; a linear warm-up from 0 over 5 % of the
run (MAE's 5 of 100 epochs: 250 of 5000 steps), then cosine; layer-wise lr decay 0.65 through timm's
`param_groups_layer_decay` (patch embedding, cls and position at 0.65^(depth+1), block i at 0.65^(depth−i), the
head at 1; the final norm with the last block, timm's grouping, where MAE puts it with the head); label smoothing
0.1; drop-path 0.1 (timm's drop_path_rate, rising over the blocks); bf16 autocast on CUDA with finetune.precision
(MAE: fp16 AMP). What differs: the budget is ssl-transfer's 5000 steps of batch 64, the protocol's transfer
budget for every family (MAE: 100 ImageNet epochs of batch 1024); the candidates are base lr {2e-3, 1e-3, 5e-4,
2.5e-4} (MAE's 5e-4 and its neighbours ×2, ÷2) at weight decay 0.05, selected on validation as for every method;
no mixup (0.8), cutmix (1.0), RandAugment (9, 0.5) or random erasing (0.25), which seabench does not implement:
the train transform is every family's RandomResizedCrop + flip; the feature is the CLS token after the final
norm, the one its features were extracted from (MAE's fine-tuning pools the patch tokens through a new fc_norm);
cosine to 0 (MAE: to 1e-6).

**default** (every other family: EfficientNet, ConvNeXt, …) — ssl-transfer's optimiser, schedule, budget and
grid with PyTorch's convention, weight decay as SGD's coefficient, and BatchNorm over each worker's share: the
recipe seabench ran for every backbone before there were families, kept so that the demo (EfficientNet-Lite0)
stays what it was.

For every recipe, what differs on purpose: the preprocessing (resolution, crop, interpolation, mean/std) is the
backbone's own, its features' (ssl-transfer: 224 px bicubic, ImageNet statistics); tasks whose labels change under
a mirror (digits) are never flipped; selection uses the task's primary metric on the protocol's validation split;
`epochs`, when set, trains that many epochs instead of `steps`. `batch_size` is the global batch: each of
`num_workers` Ray Train workers takes an equal share. The demo (configs/demo.yaml) shrinks steps, images and
resolution to fit 2 CPU cores.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.finetune_config import RECIPE_KEYS, RECIPE_NAMES, FinetuneConfig

_SSL = ('Ericsson, Gouk, Hospedales, "How Well Do Self-Supervised Models Transfer?", CVPR 2021 '
        "(ssl-transfer finetune.py)")
_BUDGET = {"epochs": None, "steps": 5000, "batch_size": 64}   # ssl-transfer's: every recipe's training budget
_SGD = {"optimizer": "sgd-nesterov", "momentum": 0.9, "schedule": "cosine", "warmup_steps": 0,
        "label_smoothing": 0.0, "drop_path": 0.0, "lr": (0.1, 0.01, 0.001, 0.0001),
        "weight_decay": (0.0, 1e-6, 1e-5, 1e-4, 1e-3)}


@dataclass(frozen=True)
class RecipeSpec:
    """A registry entry: a recipe's source and every key it has, with its value (a key not here does not apply)."""

    name: str
    citation: str
    values: tuple[tuple[str, Any], ...]
    optimizers: tuple[str, ...]

    @property
    def budget_steps(self) -> int:   # the source's training budget: a run of fewer steps is flagged under_trained
        return int(dict(self.values)["steps"])


RECIPES: dict[str, RecipeSpec] = {spec.name: spec for spec in (
    RecipeSpec("ssl-transfer", _SSL, tuple({**_BUDGET, **_SGD, "weight_decay_over_lr": True,
                                            "sync_batchnorm": True}.items()), ("sgd-nesterov", "sgd")),
    RecipeSpec("mae", 'He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (mae main_finetune.py, '
                      "ViT-B); MoCo v3 ViTs alike (Chen, Xie, He, ICCV 2021)",
               tuple({**_BUDGET, "optimizer": "adamw", "betas": (0.9, 0.999), "schedule": "cosine",
                      "warmup_steps": 250, "layer_decay": 0.65, "label_smoothing": 0.1, "drop_path": 0.1,
                      "scale_lr": True, "lr": (2e-3, 1e-3, 5e-4, 2.5e-4), "weight_decay": (0.05,)}.items()),
               ("adamw",)),
    RecipeSpec("default", f"ssl-transfer's optimiser and grid, weight decay as SGD's coefficient: {_SSL}",
               tuple({**_BUDGET, **_SGD, "weight_decay_over_lr": False, "sync_batchnorm": False}.items()),
               ("sgd-nesterov", "sgd")),
)}
FAMILY_RECIPES = {"resnet": "ssl-transfer", "vision_transformer": "mae"}   # timm module -> recipe; else default
assert tuple(RECIPES) == RECIPE_NAMES, "orchestrator/finetune_config.py lists the recipes' names for validation"


@dataclass(frozen=True)
class Recipe:
    """One training run: a backbone's recipe resolved for one candidate (lr, weight decay) and seed. The defaults
    are the `default` recipe's."""

    lr: float
    weight_decay: float
    seed: int
    name: str = "default"
    epochs: int | None = None         # set: train by epochs
    steps: int = 5000                 # otherwise: this many optimiser steps
    batch_size: int = 64              # global
    optimizer: str = "sgd-nesterov"   # sgd-nesterov | sgd | adamw
    momentum: float = 0.9
    betas: tuple[float, ...] = (0.9, 0.999)
    schedule: str = "cosine"          # cosine | constant, after warmup_steps of linear warm-up from 0
    warmup_steps: int = 0
    layer_decay: float | None = None  # per-layer lr scale d^(layers above), timm's param groups
    label_smoothing: float = 0.0
    drop_path: float = 0.0            # timm's drop_path_rate
    scale_lr: bool = False            # the optimiser's lr is lr × batch_size / 256
    weight_decay_over_lr: bool = False   # SGD's weight decay is weight_decay / lr
    sync_batchnorm: bool = False      # SyncBatchNorm across the workers, where they are CUDA devices
    image_size: int | None = None     # None: the backbone's own input size
    precision: str = "fp32"           # fp32 | bf16 (autocast, CUDA only)
    loader_workers: int = 0           # DataLoader processes per worker (the cluster's CPUs are the Train workers')

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def optimizer_lr(self) -> float:
        return self.lr * self.batch_size / 256 if self.scale_lr else self.lr

    @property
    def optimizer_weight_decay(self) -> float:
        """The coefficient the optimiser is given (AdamW's is decoupled: p ← p − lr_t · wd · p)."""
        return self.weight_decay / self.optimizer_lr if self.weight_decay_over_lr else self.weight_decay

    @property
    def budget_steps(self) -> int:
        return RECIPES[self.name].budget_steps

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


@dataclass(frozen=True)
class BackboneRecipe:
    """The recipe one backbone runs: its name, its family, its candidate grid and every other key resolved."""

    backbone: str
    name: str
    family: str                              # the timm module of its architecture
    keys: tuple[tuple[str, Any], ...]        # every key of the recipe, lr and weight_decay the candidate grids
    image_size: int | None = None
    precision: str = "fp32"

    @property
    def citation(self) -> str:
        return RECIPES[self.name].citation

    def candidates(self) -> list[dict[str, float]]:
        keys = dict(self.keys)
        return [{"lr": lr, "weight_decay": wd} for lr in keys["lr"] for wd in keys["weight_decay"]]

    def run(self, lr: float, weight_decay: float, seed: int) -> Recipe:
        settings = {k: v for k, v in self.keys if k not in ("lr", "weight_decay")}
        return Recipe(lr=float(lr), weight_decay=float(weight_decay), seed=int(seed), name=self.name,
                      image_size=self.image_size, precision=self.precision, **settings)

    def as_dict(self) -> dict[str, Any]:
        """What enters a fine-tuning cell's fingerprint and the plan: the recipe's name and its resolved keys."""
        return {"recipe": self.name, **{k: list(v) if isinstance(v, tuple) else v for k, v in self.keys}}


def timm_family(arch: str) -> str:
    """The timm module that defines `arch` ("resnet", "vision_transformer", "efficientnet", …)."""
    import timm.models

    name = timm.models.get_arch_name(arch)
    if not timm.models.is_model(name):
        return "unknown"
    return timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]


@functools.lru_cache(maxsize=256)
def backbone_recipe(ft: FinetuneConfig, backbone: str) -> BackboneRecipe:
    """The recipe `backbone` runs under the `finetune:` section `ft`: chosen by name or by the backbone's timm
    family, its keys overridden by the section's, then by finetune.recipes.<backbone>'s. OrchestratorError
    naming the key when a key does not apply to the recipe or the workers cannot run it."""
    from tasks import TaskError, get_backbone

    try:
        family = timm_family(get_backbone(backbone).arch)
    except TaskError as exc:
        raise OrchestratorError(f"finetune: backbone {backbone!r}: {exc}") from exc
    layers = ft.recipe_layers(backbone)
    chosen = next((k.recipe for _, k in reversed(layers) if k.recipe not in (None, "auto")), "auto")
    name = FAMILY_RECIPES.get(family, "default") if chosen == "auto" else chosen
    spec = RECIPES[name]
    values = dict(spec.values)
    how = f"the {name} recipe" + (f" of its family ({family})" if chosen == "auto" else "")
    for where, keys in layers:
        for key, value in keys.set_keys().items():
            if key == "recipe":
                continue
            if key not in values:
                others = [r for r, s in RECIPES.items() if key in dict(s.values)]
                raise OrchestratorError(
                    f"config: '{where}.{key}' does not apply to backbone {backbone!r}: {how} has no {key} "
                    f"(its keys: {', '.join(k for k in RECIPE_KEYS if k in values)}); {key} belongs to "
                    f"{', '.join(others)}: set it under finetune.recipes.<backbone> for backbones running that")
            values[key] = value
    _check_runnable(ft, backbone, name, spec, values, layers)
    return BackboneRecipe(backbone, name, family, tuple(values.items()), ft.image_size, ft.precision)


def _where(layers: list[tuple[str, Any]], key: str) -> str:
    """The config path that set `key` last ('finetune.<key>' where the recipe's own value stands)."""
    return next((f"{w}.{key}" for w, k in reversed(layers) if getattr(k, key) is not None), f"finetune.{key}")


def _check_runnable(ft: FinetuneConfig, backbone: str, name: str, spec: RecipeSpec, values: dict[str, Any],
                    layers: list[tuple[str, Any]]) -> None:
    if values["optimizer"] not in spec.optimizers:
        raise OrchestratorError(f"config: '{_where(layers, 'optimizer')}'={values['optimizer']} for backbone "
                                f"{backbone!r}: the {name} recipe trains with {' or '.join(spec.optimizers)}; "
                                f"choose the recipe that trains with {values['optimizer']} (finetune.recipes."
                                f"{backbone}.recipe)")
    if values["batch_size"] % ft.num_workers:   # each worker takes an equal share
        raise OrchestratorError(f"config: '{_where(layers, 'batch_size')}'={values['batch_size']} for backbone "
                                f"{backbone!r} must be a multiple of finetune.num_workers={ft.num_workers}")
    explicit = any(getattr(k, "sync_batchnorm", None) for _, k in layers)   # the recipe's own applies on GPUs only
    if explicit and ft.num_workers > 1 and ft.gpus_per_worker <= 0:
        raise OrchestratorError(
            f"config: '{_where(layers, 'sync_batchnorm')}' is true for backbone {backbone!r} (the {name} recipe's "
            f"BatchNorm over the global batch), but PyTorch's SyncBatchNorm runs on GPUs only and the "
            f"{ft.num_workers} workers have none (finetune.gpus_per_worker=0): set finetune.recipes.{backbone}."
            "sync_batchnorm: false (BatchNorm over each worker's share) or finetune.num_workers: 1")


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, index, …): the same parts give the same seed anywhere."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = ((value ^ (int(part) + 0x632BE59BD9B4E019)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF
