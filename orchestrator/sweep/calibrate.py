"""`seabench plan --calibrate`: a few timed batches of each stage on this machine, scaled to the sweep's budget.

- extraction: a random-init timm model of each stored backbone (no weights loaded) forwards CAL_BATCHES
  batches of random images at its resolution (extraction.batch_size, at most CAL_IMAGES) after a warm-up
  image: seconds per image × the images to extract;
- heads: `sea.train_heads` trains min(K, CAL_HEADS) heads of a method's real grid for CAL_EPOCHS epochs on
  random features of each backbone's dimension (one batch of rows, CAL_CLASSES classes at most, a quarter
  as many validation rows): seconds per head·epoch·row·class × each cell's head-epochs × its rows × its
  classes; logreg: `sea.fit_logreg`'s path over the real Cs on CAL_LOGREG_ROWS rows, per row·class ×
  (fit + train+validation rows) × classes;
- fine-tuning: CAL_STEPS optimiser steps (after a warm-up step) of the random-init backbone + a linear
  head on random images at the recipe's resolution (a batch of at most the recipe's, as many pixels as
  CAL_PIXELS), with the recipe's optimiser: seconds per image-step × the runs' training images, their
  evaluation images at a third of that.

Stages are summed as if run one after the other on this machine (a cluster divides them by its
parallelism); image decoding, preprocessing, I/O and Ray / MLflow overheads are not timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from orchestrator.config import SweepConfig
from orchestrator.sweep.budget import TaskSize, feature_dim, head_plan, input_size
from orchestrator.sweep.cells import Cell, candidate_configs

CAL_IMAGES, CAL_BATCHES, CAL_STEPS, CAL_PIXELS = 8, 2, 2, 2 * 224 * 224
CAL_EPOCHS, CAL_HEADS, CAL_CLASSES, CAL_LOGREG_ROWS = 2, 16, 100, 128


def _device(cfg: SweepConfig) -> str:
    import torch

    return "cuda" if torch.cuda.is_available() and (cfg.resources.gpu > 0 or cfg.extraction.num_gpus_per_actor > 0) else "cpu"


def _timed(fn: Callable[[], Any], device: str) -> float:
    import torch

    began = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - began


def _model(backbone: str, device: str) -> tuple[Any, Any]:
    """The backbone's spec and its timm architecture, random-init (nothing is loaded or downloaded)."""
    import timm

    from tasks import get_backbone

    spec = get_backbone(backbone)
    return spec, timm.create_model(spec.arch, pretrained=False, **dict(spec.model_kwargs)).to(device)


def extraction_rate(backbone: str, size: int, batch: int, device: str) -> float:
    """Seconds per image of the backbone's feature at `size` px, in batches of `batch`."""
    import torch

    from tasks.backbones import FEATURES

    spec, model = _model(backbone, device)
    images = torch.randn(batch, 3, size, size, device=device)
    with torch.inference_mode():
        FEATURES[spec.feature](model.eval(), images[:1])   # warm-up: first-call allocations
        seconds = _timed(lambda: [FEATURES[spec.feature](model, images) for _ in range(CAL_BATCHES)], device)
    return seconds / (CAL_BATCHES * batch)


def finetune_batch(cfg: SweepConfig, backbone: str, size: int) -> int:
    """Images per timed fine-tuning step: the backbone's recipe's batch, at most CAL_PIXELS pixels of them (≥ 2)."""
    from orchestrator.finetune import backbone_recipe

    batch = dict(backbone_recipe(cfg.finetune, backbone).keys)["batch_size"]
    return max(2, min(batch, CAL_PIXELS // (size * size)))


def finetune_rate(cfg: SweepConfig, backbone: str, size: int, classes: int, device: str) -> float:
    """Seconds per image-step (forward, backward, optimiser step) of backbone + linear head at `size` px, with
    the optimiser and loss of the backbone's recipe."""
    import torch

    from orchestrator.finetune import FinetuneNet, backbone_recipe, build_optimizer, training_loss
    from tasks.backbones import FEATURES

    spec, model = _model(backbone, device)
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(0)
    batch = finetune_batch(cfg, backbone, size)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(classes, (batch,), device=device)
    with torch.no_grad():
        dim = FEATURES[spec.feature](model.eval(), images[:1]).shape[1]
    net = FinetuneNet(model.train(), spec.feature, torch.nn.Linear(dim, classes).to(device))
    recipes = backbone_recipe(cfg.finetune, backbone)
    first = recipes.candidates()[0]
    recipe = recipes.run(first["lr"], first["weight_decay"], 0)
    optimizer = build_optimizer(recipe, net)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        training_loss(recipe, net(images).float(), labels).backward()
        optimizer.step()

    step()
    return _timed(lambda: [step() for _ in range(CAL_STEPS)], device) / (CAL_STEPS * batch)


def _features(dim: int, classes: int, rows: int, device: str) -> tuple[Any, ...]:
    import torch

    gen = torch.Generator().manual_seed(0)
    val = max(classes, rows // 4)
    x, xv = torch.randn(rows, dim, generator=gen), torch.randn(val, dim, generator=gen)
    y, yv = torch.arange(rows) % classes, torch.arange(val) % classes
    return x.to(device), y.to(device), xv.to(device), yv.to(device)


def head_rate(cfg: SweepConfig, method: str, dim: int, classes: int, device: str) -> tuple[float, int]:
    """Seconds per head·epoch·row·class of `method`'s heads (CAL_HEADS of its grid), and the heads timed."""
    from sea import HeadConfig, TrainSettings, train_heads

    grid = [{}] if cfg.mode == "reference" else candidate_configs(cfg, method)
    configs = [HeadConfig(method=method, **c) for c in grid[:CAL_HEADS]]
    rows = cfg.trainer.batch_size
    x, y, xv, yv = _features(dim, classes, rows, device)
    t = cfg.trainer
    settings = TrainSettings(epochs=CAL_EPOCHS, batch_size=t.batch_size, momentum=t.momentum, schedule=t.schedule,
                             device=device, bf16=t.bf16)
    seconds = _timed(lambda: train_heads(x, y, configs, settings, classes, val=(xv, yv)), device)
    return seconds / (len(configs) * CAL_EPOCHS * rows * classes), len(configs)


def logreg_rate(cfg: SweepConfig, dim: int, classes: int, device: str) -> float:
    """Seconds per row·class of logreg's whole L-BFGS path over its Cs."""
    from sea import fit_logreg

    cs = [1.0] if cfg.mode == "reference" else [c["c"] for c in candidate_configs(cfg, "logreg")]
    x, y, xv, yv = _features(dim, classes, CAL_LOGREG_ROWS, device)
    return _timed(lambda: fit_logreg(x, y, xv, yv, classes, cs=cs, device=device), device) / (CAL_LOGREG_ROWS * classes)


def _rate(skipped: dict[str, str], what: str, timing: Callable[..., float], *args: Any) -> float | None:
    """`timing(*args)`, or None (why, in `skipped`) where the model does not run as configured here (e.g. a
    ViT asked for another resolution than its own)."""
    try:
        return timing(*args)
    except (RuntimeError, AssertionError, ValueError) as exc:
        skipped[what] = f"{type(exc).__name__}: {exc}"
        return None


def _arch(backbone: str) -> tuple[Any, ...]:
    from tasks import get_backbone

    spec = get_backbone(backbone)
    return spec.arch, spec.model_kwargs, spec.feature


def _warm_up(device: str) -> None:
    """torch's first-call costs (thread pools, kernels), paid before anything is timed."""
    from sea import HeadConfig, TrainSettings, train_heads

    x, y, xv, yv = _features(8, 2, 64, device)
    train_heads(x, y, [HeadConfig(method="sea")], TrainSettings(epochs=1, batch_size=32, device=device), 2, val=(xv, yv))


def _extraction(cfg: SweepConfig, budget: Mapping[str, Any], device: str, timed: dict, skipped: dict) -> dict:
    out = {}
    for backbone, images in budget["images"]["per_backbone"].items():
        if not images:
            continue   # an ensemble extracts nothing
        size, batch = input_size(backbone) or 224, min(cfg.extraction.batch_size, CAL_IMAGES)
        key = ("extract", _arch(backbone), size)
        if key not in timed:
            timed[key] = _rate(skipped, f"extract {key[1][0]}", extraction_rate, backbone, size, batch, device)
        if timed[key] is not None:
            out[backbone] = {"s_per_image": timed[key], "images": images, "seconds": timed[key] * images,
                             "timed": f"{CAL_BATCHES} batches of {batch} random images at {size} px, random-init weights"}
    return out


def _heads(cfg: SweepConfig, cells: Sequence[Cell], sizes: Mapping[str, TaskSize], device: str,
           skipped: dict) -> dict:
    classes = min(CAL_CLASSES, max(s.classes for s in sizes.values()))
    out: dict[str, dict[str, Any]] = {}
    for cell in (c for c in cells if c.method != "finetune"):
        dim, size, plan = feature_dim(cell.backbone), sizes[cell.task], head_plan(cfg, cell.method)
        if dim is None:
            skipped.setdefault(f"heads {cell.backbone}", "its feature dim is unknown")
            continue
        key = f"{cell.method}|{dim}"
        if key not in out:
            logreg = cell.method == "logreg"
            rate, timed = (logreg_rate(cfg, dim, classes, device), 0) if logreg else \
                head_rate(cfg, cell.method, dim, classes, device)
            out[key] = {"rate": rate, "seconds": 0.0, "cells": 0, "timed": (
                f"logreg's path over its Cs on {CAL_LOGREG_ROWS} random {dim}-d rows, {classes} classes" if logreg
                else f"{timed} {cell.method} heads × {CAL_EPOCHS} epochs on {cfg.trainer.batch_size} random "
                     f"{dim}-d rows, {classes} classes")}
        per_row = out[key]["rate"] * size.classes
        if cell.method == "logreg":
            seconds = per_row * (size.phases["fit"] + size.phases["trainval"])
        else:
            rows = size.phases["trainval"] if cfg.mode == "reference" else size.phases["fit"]
            seconds = per_row * (plan.selection_epochs * rows + plan.refits * plan.epochs * size.phases["trainval"])
        out[key]["seconds"] += seconds
        out[key]["cells"] += 1
    return out


def _finetuning(cfg: SweepConfig, cells: Sequence[Cell], sizes: Mapping[str, TaskSize], budget: Mapping[str, Any],
                device: str, timed: dict, skipped: dict) -> dict:
    out = {}
    for entry in budget["finetune"]:
        backbone = entry["backbone"]
        size = entry["image_size"] or input_size(backbone) or 224
        classes = max(sizes[c.task].classes for c in cells if c.method == "finetune" and c.backbone == backbone)
        key = ("finetune", _arch(backbone), size, classes, entry["recipe"])
        if key not in timed:
            timed[key] = _rate(skipped, f"finetune {key[1][0]}", finetune_rate, cfg, backbone, size, classes, device)
        if timed[key] is not None:
            out[backbone] = {"s_per_image_step": timed[key], "train_images": entry["train_images"],
                             "eval_images": entry["eval_images"],
                             "seconds": timed[key] * (entry["train_images"] + entry["eval_images"] / 3),
                             "timed": f"{CAL_STEPS} steps of {finetune_batch(cfg, backbone, size)} random images at {size} px "
                                      "(after a warm-up step); evaluation at a third of a step's cost"}
    return out


def estimate_seconds(cfg: SweepConfig, cells: Sequence[Cell], sizes: Mapping[str, TaskSize],
                     budget: Mapping[str, Any]) -> dict[str, Any]:
    """estimate_s of `seabench plan --calibrate`: seconds per stage and in all, each with what was timed."""
    began, device = time.perf_counter(), _device(cfg)
    _warm_up(device)
    timed: dict[tuple, float | None] = {}   # one timing per architecture and resolution (two ViT-B/16s share one)
    skipped: dict[str, str] = {}            # what could not be timed here, and why: left out of the estimate
    basis = {"extract": _extraction(cfg, budget, device, timed, skipped),
             "heads": _heads(cfg, cells, sizes, device, skipped),
             "finetune": _finetuning(cfg, cells, sizes, budget, device, timed, skipped)}
    stages = {stage: sum(e["seconds"] for e in entries.values()) for stage, entries in basis.items()}
    return {**stages, "total": sum(stages.values()), "device": device, "calibration_s": time.perf_counter() - began,
            "basis": basis, "not_estimated": skipped,
            "scaling": "per stage: the timed rate × the plan's images / head-epochs × rows × classes / image-steps, "
                       "stages one after the other on this machine; decoding, I/O, Ray and MLflow not timed"}
