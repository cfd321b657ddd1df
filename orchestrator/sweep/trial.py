"""One cell's computation, free of Ray (it only reads which node it ran on): load features, select on validation, refit, test once.

`run_cell` is what a Tune trial executes (orchestrator.sweep.driver wraps it); it is also callable in-process,
which is how the test-isolation tests poison the test split. Test features are read through a
loader that `sea.select_and_refit` calls only after the configuration has been chosen.
Features are read through `orchestrator.sweep.features`; the outcome (metrics, the candidate table,
the cost of each phase) goes back to the driver as JSON, which logs it to MLflow.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchestrator.sweep.cells import Cell, candidate_rows, reference_config
from orchestrator.sweep.features import (
    LoadedSplit,
    SplitLoader,
    load_features,
    phase_indices,
    phase_rows,
    unit_id,
)
from sea.methods import get_method

EpochReport = Callable[[int, list[dict]], Any]
PROTOCOL_EPOCHS = 100   # benchmark-protocol.md: a head cell trained for fewer is flagged reduced_budget


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
    candidates: list[dict[str, Any]] = field(default_factory=list)  # one row per candidate configuration
    started: float = 0.0                        # epoch seconds: the cell's real start and end
    ended: float = 0.0
    # the test split's row index, label and each head's prediction (pred, pred_selected, pred_refit_<i>)
    predictions: dict[str, list[int]] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)   # per-epoch values (finetune: curve/<run>/<metric>)
    artifacts: dict[str, str] = field(default_factory=dict)   # name -> a file on the driver's node, logged and deleted

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
    keys: dict[str, str] = field(default_factory=dict)    # unit_id -> the feature key the trials must read
    protocol: dict[str, Any] = field(default_factory=dict)   # select_on, k, refits (config's protocol section)
    halving: dict[str, Any] | None = None                 # search.halving (grid mode): factor, min_epochs; None: off
    plugins: tuple[str, ...] = ()                         # what registers the config's own methods (sea.methods)

    def device(self) -> str:
        import torch

        return "cuda" if self.gpus > 0 and torch.cuda.is_available() else "cpu"


def prepare_worker(ctx: TrialContext) -> None:
    """Thread count and working directory of a trial's process.

    A trial owns ctx.cpus cores (more intra-op threads would oversubscribe the node), and Tune starts it
    in its own trial folder: going back to the driver's folder keeps relative paths (the store, an
    `imagefolder:` task, a plugin file) meaning what they meant on the command line, where that folder exists.
    """
    import torch

    from sea.methods import import_plugins

    torch.set_num_threads(max(1, math.floor(ctx.cpus)))
    if ctx.workdir and os.path.isdir(ctx.workdir):
        os.chdir(ctx.workdir)
    import_plugins(ctx.plugins)   # a worker process registers the config's own methods before training one


def store_loader(store_uri: str, keys: Mapping[str, str] | None = None) -> SplitLoader:
    """Loads stored units by the exact feature keys in `keys` (unit_id -> key, as the sweep's extraction
    returned them); a unit missing from `keys` is read through the store's current pointer."""
    from orchestrator.extract import FeatureStore, UnitCache

    store = FeatureStore(store_uri)
    keys = dict(keys or {})
    cache = UnitCache()   # node-local: the cells of a node decode each unit from the store once

    def load(backbone: str, task: str, split: str) -> LoadedSplit:
        key = keys.get(unit_id(backbone, task, split))
        unit = cache.read(store, backbone, task, split, key)
        return LoadedSplit(unit.features, unit.labels, unit.key, unit.skipped_rows)

    return load


def settings_for(ctx: TrialContext, seed: int) -> Any:
    from sea import TrainSettings

    numbers = {k: v for k, v in ctx.trainer.items() if k != "checkpoint_every"}   # when to save is not training
    return TrainSettings(**numbers, seed=seed, device=ctx.device())


def head_configs(method: str, candidates: list[dict[str, Any]]) -> list:
    from sea import HeadConfig

    return [HeadConfig(method=method, **c) for c in candidates]


@dataclass
class Computed:
    """What a protocol (select or reference) computed for one cell."""

    params: dict[str, Any]
    metrics: dict[str, float]
    curve: list[float]                  # validation top-1 per candidate
    per_epoch: list[float]              # best validation top-1 per epoch
    candidates: list[dict[str, Any]]    # the candidate table
    phases: dict[str, float]            # wall and CPU seconds of select / refit / test
    predictions: dict[str, list[int]] = field(default_factory=dict)   # label and each head's test predictions
    tags: dict[str, str] = field(default_factory=dict)                # select_on, …
    unstable: bool = False              # the refit and the selected head disagree on test (refit_unstable)


def run_cell(cell: Cell, ctx: TrialContext, load: SplitLoader | None = None,
             on_epoch: EpochReport | None = None, checkpoint: Mapping[str, Any] | None = None) -> CellOutcome:
    """The cell's result: select mode (grid of ctx.candidates) or reference mode (fixed defaults).
    `checkpoint` (head cells in select mode): checkpoint_every, on_checkpoint, resume for sea.select_and_refit."""
    from orchestrator.sweep.units import phase_costs  # units -> fingerprint -> trial: imported at call time
    from tasks import get_task

    started, began, cpu0 = time.time(), time.perf_counter(), time.process_time()
    load = load or store_loader(ctx.store, ctx.keys)
    spec = get_task(cell.task)
    non_test = [s for s in spec.stored_splits if s != "test"]
    stored = {s: load_features(load, cell.backbone, cell.task, s) for s in non_test}
    loaded = time.perf_counter()

    test_unit: list[LoadedSplit] = []

    def test_loader() -> tuple[np.ndarray, np.ndarray]:
        test_unit.append(load_features(load, cell.backbone, cell.task, "test"))
        return phase_rows(cell.task, "test", {"test": test_unit[0]})

    runner = _reference if ctx.mode == "reference" else _select
    done = runner(cell, ctx, spec, stored, test_loader, on_epoch, checkpoint)
    used = [*stored.values(), *test_unit]
    tags = {"feature_key": stored["train"].key, "test_feature_key": test_unit[0].key if test_unit else "",
            "primary_metric": spec.metric, "mode": ctx.mode,
            "skipped_images": str(sum(len(unit.skipped) for unit in used)), "ray_node": _node(),
            **done.tags, "flags": ";".join(_flags(cell, ctx, done))}
    if "val" in stored:
        tags["val_feature_key"] = stored["val"].key
    wall = time.perf_counter() - began
    metrics = {**done.metrics, **phase_costs(done.phases, wall, loaded - began, time.process_time() - cpu0, ctx.gpus if ctx.device() == "cuda" else 0.0)}
    predictions = {"index": np.concatenate([i for _, i in phase_indices(cell.task, "test", {"test": test_unit[0]})]).tolist(),
                   **done.predictions} if done.predictions else {}
    return CellOutcome(cell.cell_id, done.params, metrics, tags, done.curve, done.per_epoch, wall,
                       done.candidates, started, time.time(), predictions)


def _flags(cell: Cell, ctx: TrialContext, done: Computed) -> list[str]:
    """What makes this cell's number weaker than the protocol's: refit_unstable (see
    sea.selection.is_refit_unstable), reduced_budget (a head trained for fewer than PROTOCOL_EPOCHS)."""
    flags = ["refit_unstable"] if done.unstable else []
    if cell.method != "logreg" and int(ctx.trainer.get("epochs", PROTOCOL_EPOCHS)) < PROTOCOL_EPOCHS:
        flags.append("reduced_budget")
    return flags


def _node() -> str:
    """The Ray node this cell ran on ("" in-process, where Ray is not even imported)."""
    import sys

    if "ray" not in sys.modules:
        return ""
    from orchestrator.raycluster import node_id
    return node_id()


def _config_params(method: str, best: Any, ctx: TrialContext, n_candidates: int) -> dict[str, Any]:
    """The selected configuration: the method's own knobs only (e.g. no η for linear), plus the schedule."""
    chosen = dict(best) if isinstance(best, dict) else best.as_dict()
    params = {k: chosen[k] for k in get_method(method).axes}
    if method != "logreg":
        params.update(delta=chosen["delta"], epochs=ctx.trainer.get("epochs"),
                      batch_size=ctx.trainer.get("batch_size"))
    params["n_candidates"] = n_candidates
    return params


def _select(cell: Cell, ctx: TrialContext, spec: Any, stored: dict, test_loader: Callable,
            on_epoch: EpochReport | None, checkpoint: Mapping[str, Any] | None = None) -> Computed:
    import statistics

    from sea import select_and_refit

    x_fit, y_fit = phase_rows(cell.task, "fit", stored)
    x_val, y_val = phase_rows(cell.task, "val", stored)
    grid = ctx.candidates[cell.method]
    heads = cell.method != "logreg"
    configs: Any = head_configs(cell.method, grid) if heads else ("logreg", [c["c"] for c in grid])
    protocol = {"select_on": "last_k", "k": None, "refits": 1, **ctx.protocol}
    if ctx.halving:   # the per-epoch curve (val_best_top1) is logged: every epoch keeps its validation pass
        from sea import Halving

        protocol["halving"] = Halving(**ctx.halving, keys=("search.halving.factor", "search.halving.min_epochs"))
    # every method, logreg included, selects on the task's primary metric
    result = select_and_refit(x_fit, y_fit, x_val, y_val, test_loader, configs, settings_for(ctx, cell.seed),
                              metric=spec.metric, num_classes=spec.num_classes, on_epoch=on_epoch,
                              **({**protocol, **(checkpoint or {})} if heads else {}))
    best = result.val_metrics[result.best_index]
    metrics = {"val_top1": best["top1"], "val_mean_per_class": best["mean_per_class"],
               "test_top1": result.test_top1, "test_mean_per_class": result.test_mean_per_class,
               "refit_train_top1": result.refit_train_top1,
               "refit_train_mean_per_class": result.refit_train_mean_per_class}
    tags = {}
    if heads:
        metrics.update(test_selected_top1=result.selected_test_top1,
                       test_selected_mean_per_class=result.selected_test_mean_per_class,
                       val_spread=result.val_spread, refit_noise=result.refit_noise, select_k=result.select_k,
                       refits=len(result.refit_tests))
        if len(result.refit_tests) > 1:
            for name in ("top1", "mean_per_class"):
                metrics[f"test_refit_std_{name}"] = statistics.stdev(r[name] for r in result.refit_tests)
        tags["select_on"] = result.select_on
        if result.rungs:
            tags["halving_rungs"] = ",".join(map(str, result.rungs))
            metrics["head_epochs"] = sum(result.stopped_at)
    curve = [m["top1"] for m in result.val_metrics]
    # the best of the heads still training (halving drops heads; every epoch is scored here)
    per_epoch = [max((m["top1"] for m in epoch if m), default=math.nan) for epoch in result.val_history]
    rows = candidate_rows(cell.method, grid, result.val_metrics, result.stopped_at or result.stopped_epoch,
                          result.best_index, result.val_history, min(len(result.val_history), _window(ctx)), spec.metric)
    return Computed(_config_params(cell.method, result.best_config, ctx, len(grid)), metrics, curve, per_epoch,
                    rows, result.phase_seconds, {"label": result.test_labels.tolist(),
                    **{n: p.tolist() for n, p in result.test_predictions.items()}}, tags, result.refit_unstable)


def _window(ctx: TrialContext) -> int:
    from sea.curves import resolve_k

    return resolve_k("last_k", ctx.protocol.get("k"), int(ctx.trainer.get("epochs", PROTOCOL_EPOCHS)))


def _reference(cell: Cell, ctx: TrialContext, spec: Any, stored: dict, test_loader: Callable,
               on_epoch: EpochReport | None, checkpoint: Mapping[str, Any] | None = None) -> Computed:
    """The authors' protocol: fixed defaults, trained on all non-test data, last-epoch test accuracy."""
    from sea import mean_per_class_accuracy, predict, refit_logreg, top1_accuracy, train_heads

    began, cpu0 = time.perf_counter(), time.process_time()
    x_all, y_all = phase_rows(cell.task, "trainval", stored)
    fixed = reference_config(cell.method)
    if cell.method == "logreg":
        model = refit_logreg(x_all, y_all, fixed["c"], spec.num_classes, device=ctx.device())
        best: Any = {"c": fixed["c"]}
        trained, cpu1 = time.perf_counter(), time.process_time()
        x_test, y_test = test_loader()
        pred = model.predict(x_test).cpu()
    else:
        (best,) = head_configs(cell.method, [fixed])
        result = train_heads(x_all, y_all, [best], settings_for(ctx, cell.seed), spec.num_classes)
        trained, cpu1 = time.perf_counter(), time.process_time()
        x_test, y_test = test_loader()
        pred = predict(result.weights[0], x_test)
    metrics = {"test_top1": top1_accuracy(pred, y_test),
               "test_mean_per_class": mean_per_class_accuracy(pred, y_test, spec.num_classes)}
    # no selection in reference mode: the one training run is the "refit"
    phases = {"refit": trained - began, "refit_cpu": cpu1 - cpu0,
              "test": time.perf_counter() - trained, "test_cpu": time.process_time() - cpu1}
    predictions = {"label": np.asarray(y_test).tolist(), "pred": pred.tolist()}
    return Computed(_config_params(cell.method, best, ctx, 1), metrics, [], [], [], phases, predictions)
