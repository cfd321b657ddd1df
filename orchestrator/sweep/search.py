"""Search mode of a sweep: a Tune search algorithm (random or Optuna) over one cell's space, optionally
with ASHA early stopping on the per-epoch validation score; then one refit + test of the best configuration.

Each trial trains one sampled configuration on the fit rows and reports its validation score (the
task's primary metric) every epoch; the test split is read only by the final refit (trial.run_cell).
Cells are searched concurrently (`search.max_concurrent_cells` Tuners at once, each in a Ray task on
the driver's node, so their trials fill the cluster together); the driver logs each finished cell. A
search that did not run all its trials (interrupted) is never refit nor logged: rerunning searches
it again.

Tune's side of every head trial lives here too: its RunConfig, and preemption within a cell. Every `trainer.checkpoint_every` epochs (0: never) `sea.select_and_refit` hands the cell's training state
to `on_checkpoint`: the grid's K heads while it selects (weights, momentum, every random stream, the
validation curve, halving's record), then the selection's result and the refit under way. The trial writes
it with `torch.save` into a fresh folder and reports it to Tune (`tune.report(..., checkpoint=...)`), which
copies it to the sweep's storage; Tune keeps the latest only. A trial that Tune restarts after a failure
(`max_failures`; a lost node, a killed worker) finds it with `tune.get_checkpoint()`, loads it with
`torch.load(weights_only=True)` (plain tensors and containers, no pickled code) and resumes there: it redoes
at most `checkpoint_every` epochs and ends bitwise equal to an uninterrupted run. The cell's run records
`resumed_from_epoch` (epochs of the cell's training the last attempt did not redo, 0 for a fresh start)
and the tag `resumed_phase` (select | refit, "" for a fresh start).

The intermediate reports carry progress only (`checkpoint_phase`, `checkpoint_epoch`); the outcome is in
the final report alone, which is what the driver's CellLogger reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from orchestrator.config import SweepConfig
from orchestrator.errors import OrchestratorError
from orchestrator.names import ray_run_name
from orchestrator.sweep.cells import Cell, search_space
from orchestrator.sweep.features import SplitLoader, load_features, phase_rows
from orchestrator.sweep.trial import (
    CellOutcome,
    EpochReport,
    TrialContext,
    head_configs,
    prepare_worker,
    run_cell,
    settings_for,
    store_loader,
)
from sea.methods import get_method

CHECKPOINT_FILE = "cell.pt"   # a head trial's checkpoint: the cell state sea.select_and_refit handed over
SCORE = "val_score"   # the trial's validation score on the task's primary metric


class SearchIncomplete(OrchestratorError):
    """A cell's search stopped before all its trials ran: nothing of it may be logged as finished."""


def tune_run_config(cfg: SweepConfig, storage: str, label: str, callbacks: Sequence[Any] = ()) -> Any:
    """Tune's RunConfig of one Tuner of the sweep (its folder named after the sweep, `label` and the time)."""
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig

    from orchestrator.raycluster import storage_args

    name = ray_run_name(f"{cfg.name}-{label}-{time.strftime('%Y%m%d-%H%M%S')}")
    path, filesystem = storage_args(storage)   # a URI through the store's fsspec filesystem
    return RunConfig(name=name, storage_path=path, storage_filesystem=filesystem, verbose=0, callbacks=list(callbacks),
                     failure_config=FailureConfig(max_failures=cfg.max_failures),
                     checkpoint_config=CheckpointConfig(num_to_keep=1))   # a cell resumes from its latest only


def load_checkpoint() -> dict | None:
    """The trial's latest checkpoint from Tune (this attempt's restart point), or None for a first attempt."""
    import torch
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return torch.load(os.path.join(folder, CHECKPOINT_FILE), weights_only=True, map_location="cpu")


def report_checkpoint(state: dict) -> None:
    """Saves a cell state as a Tune checkpoint (Tune copies the folder to the sweep's storage)."""
    import torch
    from ray import tune

    with tempfile.TemporaryDirectory(prefix="seabench-cell-") as folder:
        torch.save(state, os.path.join(folder, CHECKPOINT_FILE))
        tune.report({"checkpoint_phase": state["phase"], "checkpoint_epoch": state.get("train", {}).get("epoch", 0)},
                    checkpoint=tune.Checkpoint.from_directory(folder))


def resumed_epochs(state: dict | None) -> int:
    """Epochs of the cell's training (the grid, then each refit) that a resume from `state` does not redo."""
    if state is None:
        return 0
    within = state.get("train", {}).get("epoch", 0)
    if state["phase"] == "select":
        return within
    return state["selection"]["stopped_epoch"] * (1 + len(state["refits"])) + within


def checkpointed_cell(config: dict[str, Any], ctx: TrialContext) -> CellOutcome:
    """One cell in a Tune trial, checkpointed every trainer.checkpoint_every epochs and resumed from Tune's
    latest checkpoint (reference and logreg cells: no checkpoints, a restart starts afresh)."""
    prepare_worker(ctx)
    cell = Cell(**config["cell"])
    every = int(ctx.trainer.get("checkpoint_every", 0))
    resume = load_checkpoint() if every else None
    checkpoint = {"checkpoint_every": every, "resume": resume,
                  "on_checkpoint": report_checkpoint} if every else None
    outcome = run_cell(cell, ctx, checkpoint=checkpoint)
    outcome.metrics["resumed_from_epoch"] = resumed_epochs(resume)
    outcome.tags["resumed_phase"] = "" if resume is None else str(resume["phase"])
    return outcome


def selection_window(ctx: TrialContext) -> int:
    """Epochs the selection statistic averages under the sweep's protocol section (1 for select_on=last)."""
    from sea.curves import resolve_k

    return resolve_k(ctx.protocol.get("select_on", "last_k"), ctx.protocol.get("k"), int(ctx.trainer["epochs"]))


def search_trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable: one sampled configuration; reports validation every epoch (for ASHA)."""
    from ray import tune

    from sea.curves import window_scores
    from tasks import get_task

    prepare_worker(ctx)
    cell = Cell(**config["cell"])
    metric = get_task(cell.task).metric
    hyper = {k: config[k] for k in get_method(cell.method).axes}
    window = selection_window(ctx)
    seen: list[list[dict]] = []

    def report(epoch: int, metrics: list[dict]) -> None:
        # the score Tune (and ASHA) ranks by is the sweep's selection statistic, as in grid mode
        seen.append(metrics)
        (score,) = window_scores(seen, window)
        tune.report({SCORE: score[metric], "val_top1": score["top1"], "val_mean_per_class": score["mean_per_class"],
                     "epoch": epoch})

    train_on_validation(cell, ctx, hyper, on_epoch=report)


def train_on_validation(cell: Cell, ctx: TrialContext, config: dict[str, Any], load: SplitLoader | None = None,
                        on_epoch: EpochReport | None = None) -> list[dict]:
    """Search mode: train one sampled configuration on the fit rows, scoring validation every epoch.

    Never touches the test split; returns the per-epoch validation metrics of that configuration.
    """
    from sea import train_heads
    from tasks import get_task

    load = load or store_loader(ctx.store, ctx.keys)
    spec = get_task(cell.task)
    stored = {s: load_features(load, cell.backbone, cell.task, s) for s in spec.stored_splits if s != "test"}
    x_fit, y_fit = phase_rows(cell.task, "fit", stored)
    x_val, y_val = phase_rows(cell.task, "val", stored)
    result = train_heads(x_fit, y_fit, head_configs(cell.method, [config]), settings_for(ctx, cell.seed),
                         spec.num_classes, val=(x_val, y_val), on_epoch=on_epoch)
    return [epoch[0] for epoch in result.val_history]


def searcher(cfg: SweepConfig, seed: int) -> Any:
    if cfg.search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric=SCORE, mode="max", seed=seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed)


def scheduler(cfg: SweepConfig) -> Any:
    if not cfg.search.asha:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", max_t=cfg.trainer.epochs,
                         grace_period=min(cfg.search.grace_period, cfg.trainer.epochs),
                         reduction_factor=cfg.search.reduction_factor)


def search_cell(cfg: SweepConfig, cell: Cell, ctx: TrialContext, run_config: Any) -> CellOutcome:
    """Search one cell's space with Tune, then refit the best configuration and test it once."""
    import ray
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(search_trainable, ctx=ctx),
                                   {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu})
    tuner = tune.Tuner(
        trainable,
        param_space={"cell": cell.as_dict(), **search_space(cfg, cell.method)},
        tune_config=tune.TuneConfig(metric=SCORE, mode="max", search_alg=searcher(cfg, cell.seed),
                                    scheduler=scheduler(cfg), num_samples=cfg.search.num_samples,
                                    reuse_actors=True, max_concurrent_trials=cfg.search.max_concurrent,
                                    trial_dirname_creator=lambda trial: trial.trial_id),
        run_config=run_config,
    )
    results = tuner.fit()
    ran = results.num_terminated + results.num_errors
    if ran < cfg.search.num_samples:
        raise SearchIncomplete(f"cell {cell.cell_id}: the search stopped after {ran} of {cfg.search.num_samples} "
                               "trials; nothing of it is logged — rerun to search it again")
    scored = [r for r in results if r.error is None and r.metrics and SCORE in r.metrics]
    if not scored:
        raise OrchestratorError(f"cell {cell.cell_id}: every search trial failed ({results.num_errors} errors)")
    best = max(scored, key=lambda r: r.metrics[SCORE])
    chosen = {k: best.config[k] for k in get_method(cell.method).axes}
    refit = ray.remote(run_cell).options(num_cpus=cfg.resources.cpu, num_gpus=cfg.resources.gpu,
                                         max_retries=cfg.max_failures)
    outcome: CellOutcome = ray.get(refit.remote(cell, replace(ctx, candidates={cell.method: [chosen]})))
    outcome.params["n_candidates"] = len(scored)
    outcome.candidate_val_top1 = [float(r.metrics["val_top1"]) for r in scored]
    outcome.candidates = [
        {"candidate": i, **{k: r.config[k] for k in get_method(cell.method).axes}, "val_top1": float(r.metrics["val_top1"]),
         "val_mean_per_class": float(r.metrics.get("val_mean_per_class", float("nan"))),
         "epochs_run": int(r.metrics.get("epoch", 0)), "selected": int(r is best)}
        for i, r in enumerate(scored)]
    outcome.tags["search"] = f"{cfg.search.algorithm}{'+asha' if cfg.search.asha else ''}"
    return outcome


def _search_task(cfg: SweepConfig, cell: Cell, ctx: TrialContext, storage: str) -> CellOutcome:
    label = f"search-{hashlib.sha256(cell.cell_id.encode()).hexdigest()[:8]}"
    return search_cell(cfg, cell, ctx, tune_run_config(cfg, storage, label))


def search_cells(cfg: SweepConfig, cells: Sequence[Cell], ctx: TrialContext, storage: str,
                 on_outcome: Callable[[Cell, CellOutcome], None], on_failure: Callable[[Cell, str], None]) -> int:
    """Search `cells` concurrently and hand each finished one to `on_outcome` (failed: `on_failure`) as
    it completes; returns how many stopped incomplete (not logged). Ctrl-C cancels every search."""
    from orchestrator.raycluster import on_driver_node, task_error

    incomplete = 0
    calls = [(cell, (cfg, cell, ctx, storage)) for cell in cells]
    with contextlib.closing(on_driver_node(_search_task, calls, cfg.search.max_concurrent_cells)) as finished:
        for cell, outcome, error in finished:
            if isinstance(error, SearchIncomplete):
                incomplete += 1
            elif error is not None:   # OrchestratorError, RayTaskError, …: the cell is logged as failed
                on_failure(cell, task_error(error))
            else:
                on_outcome(cell, outcome)
    return incomplete
