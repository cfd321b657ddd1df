"""The `finetune:` section of a sweep config: the `finetune` method's recipe keys and where its runs go.

A backbone runs the recipe of its timm family (orchestrator/finetune/recipe.py lists them with their sources);
`finetune.recipe` names one recipe for every backbone instead. Any recipe key set in the section applies to every
fine-tuned backbone, one set under `finetune.recipes.<backbone>` to that backbone only (over the section's); an
unset key (null) keeps the recipe's value. Which keys a recipe has is the recipe's: a key it lacks (layer_decay
for ResNets' ssl-transfer) is refused when the recipes are resolved (`seabench plan`, `run`, `status`), naming
the key. The other keys (image_size, workers, precision, storage, …) are the section's alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.schema import CUSTOM_BUILDERS, build, where_of

RECIPE_NAMES = ("ssl-transfer", "mae", "default")   # orchestrator/finetune/recipe.py's RECIPES, in this order
OPTIMIZERS = ("sgd-nesterov", "sgd", "adamw")
LR_SCHEDULES = ("cosine", "constant")


def _choices(*values: str) -> dict:
    return {"choices": values}


@dataclass(frozen=True)
class RecipeKeys:
    """The keys of a fine-tuning recipe; None: the recipe's own value."""

    recipe: str | None = field(default=None, metadata=_choices("auto", *RECIPE_NAMES))   # auto: by timm family
    lr: tuple[float, ...] | None = None               # candidates lr × weight_decay, selected on validation
    weight_decay: tuple[float, ...] | None = None
    epochs: int | None = field(default=None, metadata={"min": 1})   # set: train by epochs, steps ignored
    steps: int | None = field(default=None, metadata={"min": 1})    # optimiser steps when epochs is null
    batch_size: int | None = field(default=None, metadata={"min": 1})   # global, split over the workers
    optimizer: str | None = field(default=None, metadata=_choices(*OPTIMIZERS))
    momentum: float | None = field(default=None, metadata={"min": 0})    # SGD recipes
    betas: tuple[float, ...] | None = None            # AdamW recipes: (β1, β2)
    schedule: str | None = field(default=None, metadata=_choices(*LR_SCHEDULES))
    warmup_steps: int | None = field(default=None, metadata={"min": 0})   # linear from 0, then the schedule
    layer_decay: float | None = field(default=None, metadata={"min": 0.01, "max": 1.0})   # ViT: lr × d^depth
    label_smoothing: float | None = field(default=None, metadata={"min": 0.0, "max": 0.99})
    drop_path: float | None = field(default=None, metadata={"min": 0.0, "max": 0.99})    # timm drop_path_rate
    scale_lr: bool | None = None                      # lr = candidate × batch_size / 256 (MAE's base lr)
    weight_decay_over_lr: bool | None = None          # SGD's coefficient is wd / lr (ssl-transfer)
    sync_batchnorm: bool | None = None                # BatchNorm over the global batch (GPU workers)

    def set_keys(self) -> dict[str, Any]:
        """The keys set here (not None), `recipe` included."""
        return {f.name: getattr(self, f.name) for f in fields(RecipeKeys) if getattr(self, f.name) is not None}


RECIPE_KEYS = tuple(f.name for f in fields(RecipeKeys) if f.name != "recipe")


@dataclass(frozen=True)
class BackboneRecipes:
    """`finetune.recipes`: backbone name -> its recipe keys (over the section's)."""

    entries: tuple[tuple[str, RecipeKeys], ...] = ()

    def get(self, backbone: str) -> RecipeKeys | None:
        return dict(self.entries).get(backbone)

    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.entries)

    def to_plain(self) -> dict[str, dict[str, Any]]:
        return {name: {k: list(v) if isinstance(v, tuple) else v for k, v in keys.set_keys().items()}
                for name, keys in self.entries}


def _build_recipes(data: object, path: str) -> BackboneRecipes:
    if not isinstance(data, Mapping):
        raise OrchestratorError(f"config: {path!r} expects a mapping of backbone -> recipe keys "
                                f"(e.g. mae-vit-b16: {{layer_decay: 0.75}})")
    return BackboneRecipes(tuple((str(name), build(RecipeKeys, data[name] or {}, where_of(path, str(name))))
                                 for name in sorted(data, key=str)))


CUSTOM_BUILDERS[BackboneRecipes] = _build_recipes


KEEP = ("none", "best", "last")   # nothing; the selected candidate's run; the refit's (the tested model)


@dataclass(frozen=True)
class FinetuneConfig(RecipeKeys):   # the recipe keys above (for every backbone), then the section's own
    recipes: BackboneRecipes = BackboneRecipes()   # per-backbone recipe keys
    image_size: int | None = field(default=None, metadata={"min": 8})   # None: the backbone's own
    num_workers: int = field(default=1, metadata={"min": 1})         # Ray Train workers per candidate
    cpus_per_worker: float = field(default=1.0, metadata={"min": 0})
    gpus_per_worker: float = field(default=0.0, metadata={"min": 0})
    precision: str = field(default="fp32", metadata=_choices("fp32", "bf16"))   # bf16: autocast, CUDA only
    max_failures: int = field(default=2, metadata={"min": 0})        # lost workers resumed from a checkpoint
    asha: bool = False                # Tune's ASHA stops candidates whose validation falls behind (finetune/trainer.py)
    storage: str | None = None        # runs and checkpoints (URI / shared mount); None: <store>-checkpoints
    keep: str = field(default="none", metadata=_choices(*KEEP))   # what a finished cell keeps: finetune/storage.py
    save_weights: bool = False        # log the refit's fine-tuned weights (safetensors) with the cell's run
    backbones: tuple[str, ...] = ()   # fine-tune only these of the sweep's backbones (empty: all but ensembles)
    tasks: tuple[str, ...] = ()       # only these of its tasks (empty: all)

    def recipe_layers(self, backbone: str) -> list[tuple[str, RecipeKeys]]:
        """(config path, keys) that set `backbone`'s recipe keys, later ones winning."""
        own = self.recipes.get(backbone)
        return [("finetune", self)] + ([(f"finetune.recipes.{backbone}", own)] if own is not None else [])


def check_recipe_keys(keys: RecipeKeys, where: str) -> None:
    """Values the schema cannot check alone: candidate grids, betas."""
    if keys.lr is not None and (not keys.lr or min(keys.lr) <= 0):
        raise OrchestratorError(f"config: {where_of(where, 'lr')!r} needs one or more values > 0, got {list(keys.lr)}")
    if keys.weight_decay is not None and (not keys.weight_decay or min(keys.weight_decay) < 0):
        raise OrchestratorError(f"config: {where_of(where, 'weight_decay')!r} needs one or more values ≥ 0, "
                                f"got {list(keys.weight_decay)}")
    if keys.betas is not None and (len(keys.betas) != 2 or not all(0 <= b < 1 for b in keys.betas)):
        raise OrchestratorError(f"config: {where_of(where, 'betas')!r} needs two values in [0, 1) (β1, β2), "
                                f"got {list(keys.betas)}")


def check_finetune(ft: FinetuneConfig, methods: tuple[str, ...], mode: str) -> None:
    for where, keys in [("finetune", ft), *((f"finetune.recipes.{b}", k) for b, k in ft.recipes.entries)]:
        check_recipe_keys(keys, where)
    if ft.batch_size is not None and ft.batch_size % ft.num_workers:   # each worker takes an equal share
        raise OrchestratorError(f"config: 'finetune.batch_size' must be a multiple of finetune.num_workers={ft.num_workers}")
    if "finetune" in methods and mode != "select":   # the authors' script does not fine-tune
        raise OrchestratorError("config: 'methods' lists finetune, which has no reference mode; use mode=select")
