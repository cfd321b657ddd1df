"""Sweeps on Ray Tune, tracked in MLflow from the driver.

Grid mode (default) and reference mode: one Tuner over all pending cells, one trial per cell; the
trial trains the cell's whole grid in one batched pass, selects on validation, refits on
train+validation and tests once (orchestrator.sweep.trial.run_cell). Search mode (random / Optuna, optional
ASHA): one Tuner per cell whose trials each train one sampled configuration and report validation
every epoch; the best trial's configuration is then refit and tested once in a Ray task. logreg
always runs its C path as a grid (its warm-started sweep is already one cheap trial).

Trials read their features from the feature store themselves (shared storage on a cluster): a sweep's
features may exceed the driver's memory, and the test split must stay unread until selection. Only the
small TrialContext travels through the object store, once (tune.with_parameters). Trials are coarse
(a whole cell) and actors are reused across trials, so Ray's per-trial overhead stays small.

A driver-side Tune callback logs every finished cell to MLflow at once, so an interrupted sweep keeps
what it finished; resume = skip the cells MLflow holds as complete.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator.config import SweepConfig
from orchestrator.errors import OrchestratorError
from orchestrator.sweep.cells import Cell, candidate_configs, expand_backbones, halving_settings, plan_cells
from orchestrator.sweep.finetuning import FinetuneCells
from orchestrator.sweep.fingerprint import cell_fingerprints, current_keys, parts_tag
from orchestrator.sweep.search import checkpointed_cell, search_cells, tune_run_config
from orchestrator.sweep.tracking import SweepTracker
from orchestrator.sweep.trial import CellOutcome, TrialContext
from orchestrator.sweep.units import UnitCost, cell_extract_metrics, csv_table, unit_costs, unit_metrics
from tasks import absolute


@dataclass
class SweepSummary:
    cells: int                      # cells in the plan
    skipped: int                    # already complete in MLflow before this run
    completed: int = 0              # finished (status ok) in this run
    failed: list[str] = field(default_factory=list)   # cell ids logged as failed in this run
    seconds: float = 0.0            # wall time of this run's Tune phase
    trial_seconds: float = 0.0      # sum of compute time inside the finished trials
    not_run: int = 0                # pending cells neither finished nor failed (the sweep was stopped)


def store_uri(cfg: SweepConfig) -> str:
    # Tune runs each trial in its own working directory: a relative local store path must be made absolute
    return absolute(cfg.store)


def trial_context(cfg: SweepConfig, keys: Mapping[str, str] | None = None) -> TrialContext:
    """What every trial of the sweep shares, including the exact feature keys its units must have."""
    trainer = {k: v for k, v in cfg.trainer.__dict__.items()}
    return TrialContext(store=store_uri(cfg), mode=cfg.mode, trainer=trainer,
                        candidates={m: candidate_configs(cfg, m) for m in cfg.methods},
                        cpus=cfg.resources.cpu, gpus=cfg.resources.gpu, workdir=os.getcwd(), keys=dict(keys or {}),
                        protocol=dict(cfg.protocol.__dict__), halving=halving_settings(cfg.search),
                        plugins=cfg.plugins)


def grid_trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable: one cell, checkpointed (sweep.search); the last report alone has the outcome."""
    from ray import tune

    outcome = checkpointed_cell(config, ctx)
    tune.report({"outcome": outcome.to_json(), "trial_seconds": outcome.seconds})


class CellLogger:
    """Driver-side Tune callback: logs each finished or failed cell trial to MLflow immediately."""

    def __init__(self, tracker: SweepTracker, summary: SweepSummary, on_cell: Callable[[str], None],
                 fingerprints: Mapping[str, str] | None = None, costs: Mapping[str, UnitCost] | None = None) -> None:
        self.tracker, self.summary, self.on_cell = tracker, summary, on_cell
        self.fingerprints = dict(fingerprints or {})   # cell_id -> fingerprint, tagged on every run
        self.costs = dict(costs or {})                 # unit id -> extraction cost, summed per cell
        self.retries: Counter[str] = Counter()   # trial id -> failures Tune retried (max_failures)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.retries[trial.trial_id] += 1

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        cell = Cell(**trial.config["cell"])
        text = (trial.last_result or {}).get("outcome")
        if text is None:
            self.on_trial_error(iteration, trials, trial, **info)
            return
        self.log_outcome(cell, CellOutcome.from_json(text), 1 + self.retries[trial.trial_id])

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        cell = Cell(**trial.config["cell"])
        self.log_failure(cell, trial_error_text(trial), 1 + self.retries[trial.trial_id])

    def log_outcome(self, cell: Cell, outcome: CellOutcome, attempts: int = 1) -> None:
        outcome.tags["attempts"] = str(attempts)
        fingerprint = outcome.tags["fingerprint"] = self.fingerprints.get(cell.cell_id, "")
        outcome.tags["fingerprint_parts"] = parts_tag(fingerprint)   # what a later plan diffs
        outcome.metrics.update(cell_extract_metrics(cell, self.costs))
        self.tracker.log_cell(cell, outcome)
        self.summary.completed += 1
        self.summary.trial_seconds += outcome.seconds
        self.on_cell(cell.cell_id)

    def log_failure(self, cell: Cell, error: str, attempts: int = 1) -> None:
        fingerprint = self.fingerprints.get(cell.cell_id, "")   # its parts too: a later plan diffs them
        self.tracker.log_failed(cell, error, {"attempts": str(attempts), "fingerprint": fingerprint, "fingerprint_parts": parts_tag(fingerprint)})
        self.summary.failed.append(cell.cell_id)
        self.on_cell(cell.cell_id)


def trial_error_text(trial: Any) -> str:
    """The failed trial's error trace. Tune writes it to the trial's local folder first and syncs it
    to storage later, so `trial.get_error()` (which reads storage) can still be empty in a callback."""
    local = getattr(trial, "error_file", None)
    if local and os.path.isfile(local):
        with open(local, encoding="utf-8", errors="replace") as handle:
            text = handle.read().strip()
        if text:
            return text
    error = trial.get_error() if hasattr(trial, "get_error") else None
    return str(error or "trial failed without an error message (see the Tune logs of this sweep)")


def _as_tune_callback(logger: CellLogger) -> Any:
    from ray import tune

    class _Callback(tune.Callback):
        def on_trial_complete(self, *args: Any, **kwargs: Any) -> None:
            logger.on_trial_complete(*args, **kwargs)

        def on_trial_error(self, *args: Any, **kwargs: Any) -> None:
            logger.on_trial_error(*args, **kwargs)

        def on_trial_recover(self, *args: Any, **kwargs: Any) -> None:
            logger.on_trial_recover(*args, **kwargs)

    return _Callback()


@contextlib.contextmanager
def _tune_storage(cfg: SweepConfig) -> Iterator[str]:
    """Tune's own trial folders and the head trials' checkpoints (raycluster.run_storage; MLflow is the record)."""
    from orchestrator.raycluster import alive_nodes, run_storage

    with run_storage(cfg.tune_dir, cfg.store, cfg.name, len(alive_nodes())) as folder:
        yield folder


def _resources(cfg: SweepConfig) -> dict[str, float]:
    return {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu}


def _run_grid(cfg: SweepConfig, cells: list[Cell], ctx: TrialContext, logger: CellLogger, storage: str,
              extra_callbacks: Sequence[Any]) -> None:
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(grid_trainable, ctx=ctx), _resources(cfg))
    tuner = tune.Tuner(
        trainable,
        param_space={"cell": tune.grid_search([c.as_dict() for c in cells])},
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=cfg.search.max_concurrent,
                                    trial_dirname_creator=lambda trial: trial.trial_id),
        run_config=tune_run_config(cfg, storage, "cells", [_as_tune_callback(logger), *extra_callbacks]),
    )
    with _sigint_restored():
        tuner.fit()


@contextlib.contextmanager
def _sigint_restored() -> Iterator[None]:
    """Tune installs a SIGINT handler that stops its run gracefully and leaves it installed after `fit()`
    returns, swallowing a later Ctrl-C (during the searches or the fine-tuning cells): put ours back."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_search(cfg: SweepConfig, cells: list[Cell], ctx: TrialContext, logger: CellLogger, storage: str,
                extra_callbacks: Sequence[Any]) -> None:
    grid_cells = [c for c in cells if c.method == "logreg"]
    if grid_cells:
        _run_grid(cfg, grid_cells, ctx, logger, storage, extra_callbacks)
    searched = [c for c in cells if c.method != "logreg"]
    search_cells(cfg, searched, ctx, storage, logger.log_outcome, logger.log_failure)   # incomplete: not run


def run_sweep(cfg: SweepConfig, tasks: Sequence[str], tracker: SweepTracker | None = None, *,
              keys: Mapping[str, str] | None = None, progress: bool = True,
              extra_callbacks: Sequence[Any] = (), takeover: bool = False) -> SweepSummary:
    """Run every cell of `cfg` over `tasks` that MLflow does not hold with its current fingerprint.

    `keys` (unit id "backbone|task|split" -> feature key) are the units the trials must read, as the
    sweep's extraction returned them; without them, the keys the store's pointers name now.
    `extra_callbacks` are further Tune callbacks on the driver (called after the MLflow logger).
    `takeover`: take over a stale lease on the experiment (orchestrator.sweep.lease).
    """
    from orchestrator.raycluster import init_ray

    cfg = replace(cfg, backbones=expand_backbones(cfg.backbones))
    cells = plan_cells(cfg, tasks)
    keys = dict(keys) if keys is not None else current_keys(store_uri(cfg), cells)
    fingerprints = cell_fingerprints(cfg, cells, keys)
    tracker = tracker or SweepTracker(cfg.tracking_uri, cfg.name, cfg.to_dict(), takeover=takeover)
    with tracker.finish_on_error():   # start() takes the experiment's lease, finish() releases it
        done = tracker.start(fingerprints)
        tracker.log_units(unit_metrics(costs := unit_costs(store_uri(cfg), keys)), csv_table(costs, keys))
        pending = [c for c in cells if fingerprints[c.cell_id] not in done.get(c.cell_id, ())]
        summary = SweepSummary(cells=len(cells), skipped=len(cells) - len(pending))
        if not pending:
            tracker.finish("FINISHED")
            return summary
        tracker.discard_unfinished(c.cell_id for c in pending)
    bar = _progress_bar(len(cells), summary.skipped, enabled=progress)
    logger = CellLogger(tracker, summary, lambda cell_id: bar.update(1), fingerprints, costs)
    started = time.perf_counter()
    search = cfg.mode == "select" and cfg.search.algorithm != "grid"
    status = "FAILED"
    try:
        init_ray(cfg.address, cfg.num_cpus)
        with _check_resources(cfg), _tune_storage(cfg) as storage:
            runner = _run_search if search else _run_grid
            heads = [c for c in pending if c.method != "finetune"]
            # fine-tuning cells train beside the heads' Tuner, on the same cluster (orchestrator.sweep.finetuning)
            finetuning = FinetuneCells(cfg, [c for c in pending if c.method == "finetune"], fingerprints).start()
            try:
                if heads:
                    runner(cfg, heads, trial_context(cfg, keys), logger, storage, extra_callbacks)
                if summary.completed + len(summary.failed) < len(heads):   # Tune returned from a Ctrl-C
                    finetuning.stop()
                finetuning.log_all(logger.log_outcome, logger.log_failure)
            except BaseException:
                finetuning.stop()
                raise
        # Tune stops gracefully on Ctrl-C and returns normally: count what never ran
        summary.not_run = len(pending) - summary.completed - len(summary.failed)
        status = "KILLED" if summary.not_run else "FAILED" if summary.failed else "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        bar.close()
        summary.seconds = time.perf_counter() - started
        tracker.finish(status)
    return summary


@contextlib.contextmanager
def _check_resources(cfg: SweepConfig) -> Iterator[None]:
    """Fail fast where Tune would wait forever: a trial shape (resources.cpu, resources.gpu) that no node
    of a fixed cluster can hold. On an autoscaling cluster (--autoscaling) a shape that no node type of the
    autoscaler holds is refused; one that no node has *yet* is asked of the autoscaler while the block runs
    (withdrawn however it ends, so nodes go once idle) and waited for up to --wait-for-nodes."""

    from orchestrator.capacity import check_shape, requested
    from orchestrator.raycluster import alive_nodes, autoscaling, fits

    bundle = {"CPU": cfg.resources.cpu, "GPU": cfg.resources.gpu}
    nodes = alive_nodes()
    if any(fits(bundle, n["Resources"]) > 0 for n in nodes):
        yield
        return
    shapes = ", ".join(f"{n['Resources'].get('CPU', 0):g} CPU/{n['Resources'].get('GPU', 0):g} GPU" for n in nodes)
    if autoscaling():
        check_shape(bundle, "a sweep trial (resources.cpu, resources.gpu)",
                    "Lower resources.cpu / resources.gpu to what a node type holds, or add such a type")
        with requested([bundle] * (cfg.search.max_concurrent or 1), "sweep", one="sweep trial"):
            yield
        return
    if cfg.resources.gpu > 0 and not any(n["Resources"].get("GPU", 0) for n in nodes):
        raise OrchestratorError(f"resources.gpu={cfg.resources.gpu} but the Ray cluster has no GPU (nodes: {shapes}); "
                                "use --set resources.gpu=0 on a CPU-only cluster, or --autoscaling where the "
                                "cluster's autoscaler adds GPU nodes")
    most = max((n["Resources"].get("CPU", 0.0) for n in nodes), default=0.0)
    raise OrchestratorError(f"no node of the Ray cluster holds a trial of resources.cpu={cfg.resources.cpu:g}, "
                            f"resources.gpu={cfg.resources.gpu:g} (nodes: {shapes}); use --set "
                            f"resources.cpu={max(most, 1):g}, or --autoscaling where the autoscaler adds larger nodes")


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="cells", unit="cell", disable=not enabled, dynamic_ncols=True)
