"""What a sweep costs before anything runs (`seabench plan`): its cells, heads and head-epochs, the images to
extract and the feature store's bytes, the fine-tuning runs and optimiser steps, and the MLflow runs.

The counts follow the code that runs them: cells are `plan_cells`' (the finetune.backbones / finetune.tasks
filters included), grids `candidate_configs`'. A select cell trains its K candidates for trainer.epochs in
one pass, then protocol.refits refits of the winner (`sea.select_and_refit`; with `search.halving`, the
halved grid's head-epochs of `sea.halving`); a search cell runs num_samples trials, then its refit cell
trains the chosen configuration once more before its refits (`orchestrator.sweep.search`); a reference
cell trains one head; logreg is an L-BFGS path over its Cs plus one refit, without epochs. A fine-tuning
cell trains each candidate on the fit rows and refits the winner on train + validation. Split sizes are
counted from the data where it is on disk, else taken from `tasks.OFFICIAL_SIZES` (source "registry",
where a carved validation split is estimated as VAL_FRACTION of train).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.config import SweepConfig
from orchestrator.sweep.cells import Cell, candidate_configs, halving_settings

PHASES = ("fit", "val", "trainval", "test")


@dataclass(frozen=True)
class TaskSize:
    task: str
    classes: int
    splits: dict[str, int]     # stored split -> images (what extraction reads)
    phases: dict[str, int]     # protocol phase (fit, val, trainval, test) -> rows
    source: str                # "data": counted on disk; "registry": tasks.OFFICIAL_SIZES
    exact: bool                # False where the carved validation split is an estimate

    @property
    def images(self) -> int:
        return sum(self.splits.values())


def task_size(task: str, data_root: str) -> TaskSize:
    """The task's split sizes from its data on disk, else from the registry (TaskError if it has neither)."""
    import tasks

    spec = tasks.get_task(task)
    try:
        data = {split: tasks.build_task(task, data_root, split) for split in spec.stored_splits}
    except (tasks.TaskError, OSError):
        splits = tasks.official_sizes(task)
        if spec.val_rule == "official":
            phases = {"fit": splits["train"], "val": splits["val"], "trainval": splits["train"] + splits["val"]}
        else:
            val = round(tasks.VAL_FRACTION * splits["train"])
            phases = {"fit": splits["train"] - val, "val": val, "trainval": splits["train"]}
        return TaskSize(task, spec.num_classes, splits, {**phases, "test": splits["test"]}, "registry",
                        spec.val_rule == "official")
    labels = {split: d.targets for split, d in data.items()}
    phases = {p: sum(len(i) for _, i in tasks.protocol_split(task, p, labels)) for p in PHASES}
    return TaskSize(task, spec.num_classes, {s: len(d) for s, d in data.items()}, phases, "data", True)


@dataclass(frozen=True)
class HeadPlan:
    """What one cell of a head method trains."""

    method: str
    heads: int              # heads trained per cell, refits included
    head_epochs: int        # their epochs (0 for logreg's L-BFGS)
    selection: int          # heads trained to select (the grid, or the search's trials)
    selection_epochs: int   # their head-epochs (halved grids: fewer than selection × epochs)
    refits: int             # heads trained on train + validation
    epochs: int             # trainer.epochs (0 for logreg)
    how: str


def halved_head_epochs(heads: int, epochs: int, factor: int, min_epochs: int | None) -> int:
    """The one place a halved grid is sized: successive halving's own count (sea.halving)."""
    from sea.halving import head_epochs

    return head_epochs(heads, epochs, factor, min_epochs)


def head_plan(cfg: SweepConfig, method: str) -> HeadPlan:
    epochs, refits = cfg.trainer.epochs, cfg.protocol.refits
    if cfg.mode == "reference":   # the authors' script: fixed defaults, one head on train + validation
        e = 0 if method == "logreg" else epochs
        return HeadPlan(method, 1, e, 0, 0, 1, e, "reference: the authors' defaults, one head, no selection")
    if method == "logreg":        # grid in every mode (orchestrator.sweep.driver); refit once, no epochs
        n = len(candidate_configs(cfg, method))
        return HeadPlan(method, n + 1, 0, n, 0, 1, 0, f"L-BFGS path of {n} C + 1 refit (no epochs)")
    if cfg.search.algorithm != "grid":
        n = cfg.search.num_samples + 1   # its trials, then the chosen one trained again by the refit cell
        early = ", ASHA may stop trials early: an upper bound" if cfg.search.asha else ""
        return HeadPlan(method, n + refits, (n + refits) * epochs, n, n * epochs, refits, epochs,
                        f"{cfg.search.algorithm}: {cfg.search.num_samples} trials + 1 re-selection + "
                        f"{refits} refit × {epochs} epochs{early}")
    k = len(candidate_configs(cfg, method))
    halving = halving_settings(cfg.search)
    selection = k * epochs if halving is None else halved_head_epochs(k, epochs, halving["factor"], halving["min_epochs"])
    how = f"grid {k} × {epochs} epochs + {refits} refit × {epochs}"
    if halving is not None:
        from sea.halving import default_min_epochs, rungs

        first = halving["min_epochs"] or default_min_epochs(k, epochs, halving["factor"])
        how = (f"grid {k} halved by {halving['factor']} at epochs "
               f"{', '.join(map(str, rungs(epochs, halving['factor'], first)))}: "
               f"{selection} head-epochs + {refits} refit × {epochs}")
    return HeadPlan(method, k + refits, selection + refits * epochs, k, selection, refits, epochs, how)


def recipe_for(cfg: SweepConfig, backbone: str) -> dict[str, Any]:
    """The fine-tuning recipe `backbone` runs (orchestrator/finetune/recipe.py): its name, source and keys."""
    from orchestrator.finetune import backbone_recipe

    recipe = backbone_recipe(cfg.finetune, backbone)
    keys = recipe.as_dict()
    return {"backbone": backbone, "layer_decay": None, **keys, "family": recipe.family,
            "candidates": len(recipe.candidates()), "image_size": recipe.image_size, "precision": recipe.precision, "workers": cfg.finetune.num_workers,
            "source": recipe.citation}


def finetune_plan(cfg: SweepConfig, cells: Sequence[Cell], sizes: Mapping[str, TaskSize]) -> list[dict[str, Any]]:
    """One entry per fine-tuned backbone: its recipe, cells, Ray Train runs, optimiser steps, images."""
    from orchestrator.finetune import backbone_recipe

    workers = cfg.finetune.num_workers
    out = []
    for backbone in dict.fromkeys(c.backbone for c in cells if c.method == "finetune"):
        entry, recipe = recipe_for(cfg, backbone), backbone_recipe(cfg.finetune, backbone)
        mine = [c for c in cells if c.method == "finetune" and c.backbone == backbone]
        n, steps, evals = entry["candidates"], 0, 0
        for cell in mine:
            grid = recipe.candidates()[0]
            run, size = recipe.run(grid["lr"], grid["weight_decay"], cell.seed), sizes[cell.task]
            steps += n * run.total_steps(size.phases["fit"], workers)
            steps += run.total_steps(size.phases["trainval"], workers)
            evals += n * size.phases["val"] + size.phases["test"]
        out.append({**entry, "cells": len(mine), "runs": len(mine) * (n + 1), "refits": len(mine),
                    "optimizer_steps": steps, "train_images": steps * entry["batch_size"], "eval_images": evals})
    return out


def input_size(backbone: str) -> int | None:
    """The square resolution a stored backbone runs at (the spec's, else timm's config), None if unknown."""
    model = _meta_model(backbone)
    if model is None:
        return None
    from timm.data import resolve_model_data_config

    from tasks import get_backbone

    spec = get_backbone(backbone)
    return int(spec.input_size or resolve_model_data_config(model)["input_size"][-1])


def feature_dim(backbone: str) -> int | None:
    """A stored backbone's feature dim: the registry's, else its timm architecture's built on the meta device
    (no weights, no memory, nothing downloaded); an ensemble's is the sum of its parts'. None if unknown."""
    from orchestrator.extract import backbone_parts
    from tasks import get_backbone

    parts = backbone_parts(backbone)
    if len(parts) > 1:
        dims = [feature_dim(p) for p in parts]
        return None if None in dims else sum(d for d in dims if d is not None)
    spec = get_backbone(backbone)
    if spec.feature_dim:
        return spec.feature_dim
    model = _meta_model(backbone)
    if model is None:
        return None
    pooled = getattr(model, "head_hidden_size", None) or model.num_features
    return int(pooled if spec.feature == "pooled" else getattr(model, "embed_dim", model.num_features))


@functools.cache
def _meta_model(backbone: str) -> Any:
    import timm
    import torch

    from tasks import get_backbone

    spec = get_backbone(backbone)
    try:
        with torch.device("meta"):
            return timm.create_model(spec.arch, pretrained=False, **dict(spec.model_kwargs))
    except (RuntimeError, TypeError, ValueError, NotImplementedError, AssertionError):
        return None   # an architecture that cannot be built on the meta device: its numbers are unknown


def _per(cells: Iterable[Cell], field: str) -> dict[str, int]:
    return dict(Counter(getattr(c, field) for c in cells))


def sweep_budget(cfg: SweepConfig, cells: Sequence[Cell], sizes: Mapping[str, TaskSize]) -> dict[str, Any]:
    """The plan's numbers as one JSON-ready mapping (see the module docstring for what each counts)."""
    import numpy as np

    from orchestrator.extract import backbone_parts

    by_method = _per(cells, "method")
    plans = {m: head_plan(cfg, m) for m in cfg.methods if m != "finetune" and m in by_method}
    heads = {m: p.heads * by_method[m] for m, p in plans.items()}
    epochs = {m: p.head_epochs * by_method[m] for m, p in plans.items()}
    stored = list(dict.fromkeys(p for b in cfg.backbones for p in backbone_parts(b)))
    extracted = sum(s.images for s in sizes.values())
    images = {b: extracted if b in stored else 0 for b in dict.fromkeys([*cfg.backbones, *stored])}
    dims = {b: feature_dim(b) for b in images}
    itemsize = np.dtype(cfg.extraction.dtype).itemsize
    nbytes = {b: (images[b] * dims[b] * itemsize if dims[b] is not None else None) for b in images}
    return {
        "tasks": [asdict(s) | {"images": s.images} for s in sizes.values()],
        "cells": {"total": len(cells), "per_method": by_method, "per_backbone": _per(cells, "backbone"),
                  "per_task": _per(cells, "task")},
        "method_plans": {m: asdict(p) | {"cells": by_method[m]} for m, p in plans.items()},
        "heads": {"total": sum(heads.values()), "per_method": heads},
        "head_epochs": {"total": sum(epochs.values()), "per_method": epochs},
        "images": {"total": sum(images.values()), "per_backbone": images,
                   "sources": {t: s.source for t, s in sizes.items()},
                   "note": "stored splits of every task, once per stored backbone; an ensemble reuses its parts'"},
        "feature_dims": dims,
        "feature_bytes": {"total": sum(v for v in nbytes.values() if v is not None), "per_backbone": nbytes,
                          "dtype": cfg.extraction.dtype, "unknown": [b for b, v in nbytes.items() if v is None],
                          "note": "images × feature dim × dtype bytes, before Parquet's compression"},
        "finetune": finetune_plan(cfg, cells, sizes),
        "mlflow_runs": {"parent": 1, "cells": len(cells), "total": 1 + len(cells)},
    }
