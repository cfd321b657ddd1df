"""Search mode of a sweep: a Tune search algorithm (random or Optuna) over one cell's space, optionally
with ASHA early stopping on the per-epoch validation score; then one refit + test of the best configuration.

Each trial trains one sampled configuration on the fit rows and reports its validation score (the
task's primary metric) every epoch; the test split is read only by the final refit (trial.run_cell).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from orchestrator.config import SweepConfig
from orchestrator.errors import OrchestratorError
from orchestrator.sweep.cells import METHOD_AXES, Cell, search_space
from orchestrator.sweep.trial import CellOutcome, TrialContext, prepare_worker, run_cell, train_on_validation

SCORE = "val_score"   # the trial's validation score on the task's primary metric


def search_trainable(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune function trainable: one sampled configuration; reports validation every epoch (for ASHA)."""
    from ray import tune

    from tasks import get_task

    prepare_worker(ctx)
    cell = Cell(**config["cell"])
    metric = get_task(cell.task).metric
    hyper = {k: config[k] for k in METHOD_AXES[cell.method]}

    def report(epoch: int, metrics: list[dict]) -> None:
        tune.report({SCORE: metrics[0][metric], "val_top1": metrics[0]["top1"], "epoch": epoch})

    train_on_validation(cell, ctx, hyper, on_epoch=report)


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
    scored = [r for r in results if r.error is None and r.metrics and SCORE in r.metrics]
    if not scored:
        raise OrchestratorError(f"cell {cell.cell_id}: every search trial failed ({results.num_errors} errors)")
    best = max(scored, key=lambda r: r.metrics[SCORE])
    chosen = {k: best.config[k] for k in METHOD_AXES[cell.method]}
    refit = ray.remote(run_cell).options(num_cpus=cfg.resources.cpu, num_gpus=cfg.resources.gpu,
                                         max_retries=cfg.max_failures)
    outcome: CellOutcome = ray.get(refit.remote(cell, replace(ctx, candidates={cell.method: [chosen]})))
    outcome.params["n_candidates"] = len(scored)
    outcome.candidate_val_top1 = [float(r.metrics["val_top1"]) for r in scored]
    outcome.tags["search"] = f"{cfg.search.algorithm}{'+asha' if cfg.search.asha else ''}"
    return outcome
