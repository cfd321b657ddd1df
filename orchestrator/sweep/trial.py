"""One cell's computation, free of Ray: load features, select on validation, refit, test once.

`run_cell` is what a Tune trial executes (orchestrator.sweep.driver wraps it); it is also callable in-process,
which is how the test-isolation tests poison the test split. Test features are read through a
loader that `sea.select_and_refit` calls only after the configuration has been chosen.

Virtual backbones `ensemble:A+B[+…]` train on the concatenation of the stored features of the parts,
matched row by row (the store orders every unit by sample index; labels must agree). Each part is
L2-normalised before concatenation so that every backbone weighs equally whatever its feature scale;
the trainer L2-normalises the concatenation again.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from orchestrator.errors import OrchestratorError
from orchestrator.extract import backbone_parts
from orchestrator.sweep.cells import METHOD_AXES, Cell, reference_config


class LoadedSplit(NamedTuple):
    """A stored split as a trial sees it; rows in `skipped` (images unreadable at extraction) are
    left out of every protocol phase, after the phases are cut, so the split stays the official one."""

    x: np.ndarray                 # n×d float32
    y: np.ndarray                 # n int64
    key: str                      # feature key (comma-joined for an ensemble)
    skipped: np.ndarray = np.zeros(0, dtype=np.int64)   # sorted row indices


# (backbone, task, stored split) -> LoadedSplit
SplitLoader = Callable[[str, str, str], LoadedSplit]
EpochReport = Callable[[int, list[dict]], Any]


@dataclass
class CellOutcome:
    """What one finished cell logs: produced inside the trial, shipped to the driver as JSON."""

    cell_id: str
    params: dict[str, Any]                      # the selected configuration + epochs, batch_size, n_candidates
    metrics: dict[str, float]                   # val_/test_ top1 and mean_per_class (percent)
    tags: dict[str, str] = field(default_factory=dict)   # feature_key, primary_metric, mode, split hash, …
    candidate_val_top1: list[float] = field(default_factory=list)   # the selection curve
    val_best_top1: list[float] = field(default_factory=list)        # per-epoch best over the block
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> CellOutcome:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs besides its cell; small, shipped once via tune.with_parameters."""

    store: str
    mode: str = "select"                                  # select | reference
    trainer: dict[str, Any] = field(default_factory=dict)   # TrainSettings fields except seed/device
    candidates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)   # method -> grid
    cpus: float = 1.0
    gpus: float = 0.0
    workdir: str = ""                                     # the driver's working directory

    def device(self) -> str:
        import torch

        return "cuda" if self.gpus > 0 and torch.cuda.is_available() else "cpu"


def prepare_worker(ctx: TrialContext) -> None:
    """Thread count and working directory of a trial's process.

    A trial owns ctx.cpus cores (more intra-op threads would oversubscribe the node), and Tune starts it
    in its own trial folder: going back to the driver's folder keeps relative paths (the store, an
    `imagefolder:` task) meaning what they meant on the command line, where that folder exists.
    """
    import torch

    torch.set_num_threads(max(1, math.floor(ctx.cpus)))
    if ctx.workdir and os.path.isdir(ctx.workdir):
        os.chdir(ctx.workdir)


def store_loader(store_uri: str) -> SplitLoader:
    from orchestrator.extract import FeatureStore

    store = FeatureStore(store_uri)

    def load(backbone: str, task: str, split: str) -> LoadedSplit:
        unit = store.read(backbone, task, split)
        return LoadedSplit(unit.features, unit.labels, unit.key, unit.skipped_rows)

    return load


def _unit_normalised(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def load_features(load: SplitLoader, backbone: str, task: str, split: str) -> LoadedSplit:
    """Features of a stored or virtual (ensemble) backbone; the key is comma-joined for ensembles, and
    a row skipped in any part is skipped in the ensemble."""
    parts = backbone_parts(backbone)
    if len(parts) == 1:
        return LoadedSplit(*load(parts[0], task, split))
    loaded = [LoadedSplit(*load(part, task, split)) for part in parts]
    first_y = loaded[0].y
    for part, unit in zip(parts[1:], loaded[1:]):
        if unit.x.shape[0] != first_y.shape[0] or not np.array_equal(unit.y, first_y):
            raise OrchestratorError(
                f"ensemble {backbone!r}: {part} holds {unit.x.shape[0]} rows of {task}/{split} whose labels do not "
                f"match {parts[0]}'s {first_y.shape[0]}; re-extract both from the same data")
    x = np.concatenate([_unit_normalised(unit.x) for unit in loaded], axis=1).astype(np.float32)
    skipped = np.unique(np.concatenate([np.asarray(unit.skipped, dtype=np.int64) for unit in loaded]))
    return LoadedSplit(x, first_y, ",".join(unit.key for unit in loaded), skipped)


def _phase(task: str, phase: str, stored: dict[str, LoadedSplit]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a protocol phase (fit / val / trainval / test) gathered from the stored splits, less the
    rows whose image was unreadable at extraction."""
    from tasks import protocol_split

    parts = protocol_split(task, phase, {s: unit.y for s, unit in stored.items()})
    xs, ys = [], []
    for split, idx in parts:
        unit = stored[split]
        if len(unit.skipped):
            idx = idx[~np.isin(idx, unit.skipped)]
        xs.append(unit.x[idx])
        ys.append(unit.y[idx])
    x, y = np.concatenate(xs), np.concatenate(ys)
    if not len(y):
        raise OrchestratorError(f"{task}: the {phase} rows are empty once unreadable images are left out; "
                                "fix the images and re-extract")
    return x, y


def _settings(ctx: TrialContext, seed: int) -> Any:
    from sea import TrainSettings

    return TrainSettings(**ctx.trainer, seed=seed, device=ctx.device())


def _head_configs(method: str, candidates: list[dict[str, Any]]) -> list:
    from sea import HeadConfig

    return [HeadConfig(method=method, **c) for c in candidates]


def run_cell(cell: Cell, ctx: TrialContext, load: SplitLoader | None = None,
             on_epoch: EpochReport | None = None) -> CellOutcome:
    """The cell's result: select mode (grid of ctx.candidates) or reference mode (fixed defaults)."""
    from tasks import get_task

    started = time.perf_counter()
    load = load or store_loader(ctx.store)
    spec = get_task(cell.task)
    non_test = [s for s in spec.stored_splits if s != "test"]
    stored = {s: load_features(load, cell.backbone, cell.task, s) for s in non_test}

    test_unit: list[LoadedSplit] = []

    def test_loader() -> tuple[np.ndarray, np.ndarray]:
        test_unit.append(load_features(load, cell.backbone, cell.task, "test"))
        return _phase(cell.task, "test", {"test": test_unit[0]})

    runner = _reference if ctx.mode == "reference" else _select
    params, metrics, curve, epochs = runner(cell, ctx, spec, stored, test_loader, on_epoch)
    used = [*stored.values(), *test_unit]
    tags = {"feature_key": stored["train"].key, "test_feature_key": test_unit[0].key if test_unit else "",
            "primary_metric": spec.metric, "mode": ctx.mode,
            "skipped_images": str(sum(len(unit.skipped) for unit in used))}
    if "val" in stored:
        tags["val_feature_key"] = stored["val"].key
    return CellOutcome(cell.cell_id, params, metrics, tags, curve, epochs, time.perf_counter() - started)


def _config_params(method: str, best: Any, ctx: TrialContext, n_candidates: int) -> dict[str, Any]:
    """The selected configuration: the method's own knobs only (e.g. no η for linear), plus the schedule."""
    chosen = dict(best) if isinstance(best, dict) else best.as_dict()
    params = {k: chosen[k] for k in METHOD_AXES[method]}
    if method != "logreg":
        params.update(delta=chosen["delta"], epochs=ctx.trainer.get("epochs"),
                      batch_size=ctx.trainer.get("batch_size"))
    params["n_candidates"] = n_candidates
    return params


def _select(cell: Cell, ctx: TrialContext, spec: Any, stored: dict, test_loader: Callable,
            on_epoch: EpochReport | None) -> tuple[dict, dict, list[float], list[float]]:
    from sea import select_and_refit

    x_fit, y_fit = _phase(cell.task, "fit", stored)
    x_val, y_val = _phase(cell.task, "val", stored)
    grid = ctx.candidates[cell.method]
    configs: Any = ("logreg", [c["c"] for c in grid]) if cell.method == "logreg" else _head_configs(cell.method, grid)
    result = select_and_refit(x_fit, y_fit, x_val, y_val, test_loader, configs, _settings(ctx, cell.seed),
                              metric="top1" if cell.method == "logreg" else spec.metric,
                              num_classes=spec.num_classes, on_epoch=on_epoch)
    best = result.val_metrics[result.best_index]
    metrics = {"val_top1": best["top1"], "val_mean_per_class": best["mean_per_class"],
               "test_top1": result.test_top1, "test_mean_per_class": result.test_mean_per_class}
    curve = [m["top1"] for m in result.val_metrics]
    per_epoch = [max(m["top1"] for m in epoch) for epoch in result.val_history]
    return _config_params(cell.method, result.best_config, ctx, len(grid)), metrics, curve, per_epoch


def _reference(cell: Cell, ctx: TrialContext, spec: Any, stored: dict, test_loader: Callable,
               on_epoch: EpochReport | None) -> tuple[dict, dict, list[float], list[float]]:
    """The authors' protocol: fixed defaults, trained on all non-test data, last-epoch test accuracy."""
    from sea import mean_per_class_accuracy, predict, refit_logreg, top1_accuracy, train_heads

    x_all, y_all = _phase(cell.task, "trainval", stored)
    fixed = reference_config(cell.method)
    if cell.method == "logreg":
        model = refit_logreg(x_all, y_all, fixed["c"], spec.num_classes, device=ctx.device())
        best: Any = {"c": fixed["c"]}
        x_test, y_test = test_loader()
        pred = model.predict(x_test)
    else:
        (best,) = _head_configs(cell.method, [fixed])
        result = train_heads(x_all, y_all, [best], _settings(ctx, cell.seed), spec.num_classes)
        x_test, y_test = test_loader()
        pred = predict(result.weights[0], x_test)
    metrics = {"test_top1": top1_accuracy(pred, y_test),
               "test_mean_per_class": mean_per_class_accuracy(pred, y_test, spec.num_classes)}
    return _config_params(cell.method, best, ctx, 1), metrics, [], []


def train_on_validation(cell: Cell, ctx: TrialContext, config: dict[str, Any], load: SplitLoader | None = None,
                        on_epoch: EpochReport | None = None) -> list[dict]:
    """Search mode: train one sampled configuration on the fit rows, scoring validation every epoch.

    Never touches the test split; returns the per-epoch validation metrics of that configuration.
    """
    from sea import train_heads
    from tasks import get_task

    load = load or store_loader(ctx.store)
    spec = get_task(cell.task)
    stored = {s: load_features(load, cell.backbone, cell.task, s) for s in spec.stored_splits if s != "test"}
    x_fit, y_fit = _phase(cell.task, "fit", stored)
    x_val, y_val = _phase(cell.task, "val", stored)
    result = train_heads(x_fit, y_fit, _head_configs(cell.method, [config]), _settings(ctx, cell.seed),
                         spec.num_classes, val=(x_val, y_val), on_epoch=on_epoch)
    return [epoch[0] for epoch in result.val_history]
