"""One `finetune` cell on Ray Train, under the protocol of every other method.

Candidates (the backbone's recipe's lr × weight decay) are trials of one Ray Tune Tuner; each trial launches a
`ray.train.torch.TorchTrainer` (Ray Train V2's pattern for tuning distributed runs: the Tune trial is only
the Train driver, so it holds no CPU of its own) that trains on the fit images and scores validation. The
best candidate on the task's primary validation metric (ties: the earlier candidate) is retrained by one
more TorchTrainer on train + validation, which evaluates the test split once. Every run has
`ScalingConfig(num_workers, use_gpu, resources_per_worker)` from the `finetune:` section, a
`FailureConfig(max_failures)` that restarts lost workers from the last epoch's checkpoint, and checkpoint
storage that every worker reaches (`checkpoint_storage`): Ray Train needs a URI or a shared mount as soon as
the cluster has more than one node. The candidates and every run's settings are the backbone's recipe
(`backbone_recipe`). Each `fit()` gives the process its SIGINT handler back (`own_signals`): Ray Train and Tune
install theirs in a main-thread caller and leave them behind, Train's holding its TrainController alive and
turning the next Ctrl-C into a request to abort a run long finished.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.finetune.loop import STATE_FILE, train_loop_per_worker
from orchestrator.finetune.recipe import backbone_recipe
from orchestrator.finetune.storage import checkpoint_storage, export_weights, release, run_folders, run_name
from orchestrator.names import ray_run_name

WALL_METRICS = ("train_wall_s", "eval_wall_s")
CURVE = ("train_loss", "lr", "images_per_s", "val_top1", "val_mean_per_class")   # an epoch's point of a run's curve
ASHA_REDUCTION = 3           # finetune.asha: keep the best third at each rung…
ASHA_MAX_EPOCHS = 10 ** 6    # …with rungs at 1, 3, 9, … epochs; no cap of its own (the recipe's budget ends a run)
# the handlers Ray Train / Tune install for a fit() in the main thread (SIGUSR1: Tune's, where it exists)
OWN_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGUSR1") if hasattr(signal, name))


@contextlib.contextmanager
def own_signals() -> Iterator[None]:
    """Restore this process's handlers of OWN_SIGNALS when the block ends, however it ends (signal handlers
    belong to the main thread: elsewhere there is nothing to restore)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in OWN_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None and signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)


def scaling_config(ft: Any) -> Any:
    from ray.train import ScalingConfig

    resources = {"CPU": ft.cpus_per_worker, **({"GPU": ft.gpus_per_worker} if ft.gpus_per_worker > 0 else {})}
    return ScalingConfig(num_workers=ft.num_workers, use_gpu=ft.gpus_per_worker > 0, resources_per_worker=resources)


def run_training(job: dict[str, Any], ft: Any, storage: str, name: str,
                 callbacks: tuple[Any, ...] = ()) -> tuple[dict[str, Any], Any]:
    """One TorchTrainer run of `job`, checkpoints under `storage` (a path or a URI); returns (worker 0's final
    metrics, the Result)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from orchestrator.raycluster import storage_args

    path, filesystem = storage_args(storage)
    # a worker group waits for CPUs the heads' trials hold: Ray Train's 60 s start-up timeout would count
    # each wait as a controller error and retry, printing a traceback every minute (read by its controller)
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "900")
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=job, scaling_config=scaling_config(ft),
        run_config=ray.train.RunConfig(name=ray_run_name(name), storage_path=path, storage_filesystem=filesystem,
                                       callbacks=list(callbacks),
                                       failure_config=ray.train.FailureConfig(max_failures=ft.max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)))
    with own_signals():
        result = trainer.fit()
    if not isinstance(result.return_value, dict):
        raise OrchestratorError(f"finetune run {name}: Ray Train returned no metrics ({result.error or 'no error'})")
    return dict(result.return_value), result


def candidate_trial(config: dict[str, Any], base: dict[str, Any]) -> None:
    """Tune function trainable: one candidate's TorchTrainer on fit → val. Each epoch's report (its point of the
    curve, validation included) reaches Tune through Ray Train's TuneReportCallback, where ASHA may stop the
    candidate; then its final metrics."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    candidate = config["candidate"]
    job = {**base["job"], "recipe": {**base["job"]["recipe"], "lr": candidate["lr"],
                                     "weight_decay": candidate["weight_decay"]}}
    metrics, _ = run_training(job, base["ft"], base["checkpoints"], f"{base['name']}-c{candidate['index']}",
                              callbacks=(TuneReportCallback(),))
    tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})


def _check_cluster(ft: Any) -> int:
    """How many candidates can train at once; OrchestratorError when no worker group fits the cluster."""
    import ray

    from orchestrator.raycluster import autoscaling

    total = ray.cluster_resources()
    need = {"CPU": ft.num_workers * ft.cpus_per_worker, "GPU": ft.num_workers * ft.gpus_per_worker}
    if any(need[k] > total.get(k, 0.0) for k in need) and autoscaling():
        from orchestrator.capacity import check_shape

        check_shape({"CPU": ft.cpus_per_worker, "GPU": ft.gpus_per_worker}, "a fine-tuning worker",
                    "Lower finetune.cpus_per_worker / finetune.gpus_per_worker to what a node type holds")
        return 1   # the worker group's placement group is the autoscaler's demand: its nodes come for it
    if any(need[k] > total.get(k, 0.0) for k in need):
        raise OrchestratorError(
            f"finetune: {ft.num_workers} worker(s) × (CPU {ft.cpus_per_worker:g}, GPU {ft.gpus_per_worker:g}) do not fit "
            f"the Ray cluster (CPU {total.get('CPU', 0):g}, GPU {total.get('GPU', 0):g}); lower finetune.num_workers, "
            "finetune.cpus_per_worker or finetune.gpus_per_worker")
    fits = [math.floor(total.get(k, 0.0) / v) for k, v in need.items() if v > 0]
    return max(1, min(fits)) if fits else 1


def _select(base: dict[str, Any], grid: list[dict[str, Any]], metric: str,
            concurrent: int) -> tuple[list[dict[str, Any]], list[list[dict[str, float]]]]:
    """Every candidate's validation metrics and per-epoch curve (Tune trials, grid order), OrchestratorError if
    any failed. With `finetune.asha`, Tune's ASHA stops the candidates whose validation metric falls behind at
    epochs 1, 3, 9, … (grace 1 epoch, reduction factor 3); a stopped candidate is scored on its last epoch."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from orchestrator.raycluster import storage_args

    # the trial only drives its TorchTrainer: it holds no CPU (a byte of logical memory: Tune refuses an empty bundle)
    trainable = tune.with_resources(tune.with_parameters(candidate_trial, base=base), {"cpu": 0, "memory": 1})
    path, filesystem = storage_args(base["checkpoints"])
    experiment = f"{path.rstrip('/')}/{run_folders(base['name'], 0)['select']}"
    if tune.Tuner.can_restore(experiment, storage_filesystem=filesystem):   # a rerun: its finished candidates stay
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=filesystem)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"candidate": tune.grid_search([{"index": i, **c} for i, c in enumerate(grid)])},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=concurrent, trial_dirname_creator=lambda t: t.trial_id,
                scheduler=ASHAScheduler(time_attr="epoch", metric=f"val_{metric}", mode="max", grace_period=1,
                                        reduction_factor=ASHA_REDUCTION, max_t=ASHA_MAX_EPOCHS) if base["ft"].asha else None),
            run_config=tune.RunConfig(name=run_folders(base["name"], 0)["select"], storage_path=path,
                                      storage_filesystem=filesystem, verbose=0))
    with own_signals():
        results = tuner.fit()
    if base["ft"].asha:   # a stopped candidate's worker group is left holding its resources: free them
        from orchestrator.raycluster import remove_orphaned_placement_groups

        remove_orphaned_placement_groups()
    scores: dict[int, dict[str, Any]] = {}
    curves: dict[int, list[dict[str, float]]] = {}
    errors = []
    for result in results:
        index = result.config["candidate"]["index"]
        if result.error is not None or f"val_{metric}" not in (result.metrics or {}):
            errors.append(f"candidate {index} {grid[index]}: {result.error or 'reported no validation metrics'}")
            continue
        # a candidate that ASHA stopped ends on an epoch's report, not on the run's final metrics (n_train)
        scores[index] = {**result.metrics, "stopped_early": int("n_train" not in result.metrics)}
        frame = result.metrics_dataframe   # every report of the trial: the epochs' (curve_point) and the final one
        points = [] if frame is None or "curve_point" not in frame else frame[frame["curve_point"] == 1].to_dict("records")
        curves[index] = [{k: float(row[k]) for k in CURVE if k in row} for row in points]
    if errors:
        raise OrchestratorError("finetune: candidate run(s) failed: " + "; ".join(errors))
    return [scores[i] for i in range(len(grid))], [curves[i] for i in range(len(grid))]


def finetune_cell(cfg: Any, backbone: str, task: str, seed: int, key: str = "") -> dict[str, Any]:
    """The cell (backbone, task, finetune, seed) under `cfg` (a SweepConfig): select on validation, refit on
    train + validation, test once. `key` (the cell's fingerprint) names its runs, so that a rerun resumes them
    (finetune/storage.py). Returns the fields of the sweep's CellOutcome, less the cell id."""
    from orchestrator.extract import backbone_parts
    from orchestrator.raycluster import alive_nodes
    from tasks import absolute, get_task

    if len(backbone_parts(backbone)) > 1:
        raise OrchestratorError(f"finetune: {backbone!r} is a virtual ensemble of stored features; only a real "
                                "backbone can be fine-tuned (drop finetune for ensembles)")
    started, began, cpu0 = time.time(), time.perf_counter(), time.process_time()
    ft, spec = cfg.finetune, get_task(task)
    checkpoints = checkpoint_storage(ft, cfg.store, len(alive_nodes()))
    root = absolute(cfg.data_root)
    recipe = backbone_recipe(ft, backbone)
    grid = recipe.candidates()
    run = recipe.run(grid[0]["lr"], grid[0]["weight_decay"], seed)
    job = {"backbone": backbone, "task": task, "root": root, "num_classes": spec.num_classes,
           "recipe": run.as_dict(), "threads": max(1, math.floor(ft.cpus_per_worker)), "workdir": os.getcwd(),
           "plugins": list(getattr(cfg, "plugins", ())), "train_phase": "fit", "eval_phase": "val", "validate_each_epoch": True,
           "invocation": uuid.uuid4().int % 2 ** 31}   # which runs this call trains (a rerun resumes the others)
    name = run_name(cfg.name, backbone, task, seed, key)
    base = {"job": job, "ft": ft, "checkpoints": checkpoints, "name": name}
    concurrent = _check_cluster(ft)
    scores, curves = _select(base, grid, spec.metric, min(concurrent, len(grid)))
    selected = time.perf_counter()
    best = max(range(len(grid)), key=lambda i: (scores[i][f"val_{spec.metric}"], -i))
    refit_job = {**job, "train_phase": "trainval", "eval_phase": "test", "validate_each_epoch": False,
                 "recipe": {**job["recipe"], **grid[best]}}
    final, result = run_training(refit_job, ft, checkpoints, f"{name}-refit")
    artifacts = {"finetuned.safetensors": export_weights(result, STATE_FILE)} if ft.save_weights else {}
    release(checkpoints, name, len(grid), best, ft.keep)   # the results are in hand: the rest goes
    ended = time.perf_counter()
    gpus = ft.num_workers * ft.gpus_per_worker
    runs = [*scores, final]
    metrics = {
        "val_top1": scores[best]["val_top1"], "val_mean_per_class": scores[best]["val_mean_per_class"],
        "test_top1": final["test_top1"], "test_mean_per_class": final["test_mean_per_class"],
        "select_wall_s": selected - began, "refit_wall_s": ended - selected - final["eval_wall_s"],
        "test_wall_s": final["eval_wall_s"], "cell_wall_s": ended - began,
        "cell_cpu_s": sum(r["cpu_s"] for r in runs) + time.process_time() - cpu0,
        "cell_gpu_s": sum(r[m] for r in runs for m in WALL_METRICS) * gpus,
        "images_per_s": final["images_per_s"],
        "steps_run": int(final["steps"]), "steps_budget": run.budget_steps,   # the refit's against the recipe's
        # optimiser steps this call trained: a resumed cell trains fewer (its finished runs none)
        "steps_trained": sum(int(r["steps"]) - int(r.get("resumed_from_step", 0)) for r in runs
                             if r.get("invocation") == job["invocation"]),
    }
    chosen = recipe.run(grid[best]["lr"], grid[best]["weight_decay"], seed)
    params = {**grid[best], "recipe": recipe.name, "epochs": int(final["epochs_run"]), "steps": int(final["steps"]),
              "batch_size": run.batch_size, "image_size": ft.image_size or "backbone", "optimizer": run.optimizer,
              "optimizer_lr": chosen.optimizer_lr, "optimizer_weight_decay": chosen.optimizer_weight_decay,
              "schedule": run.schedule, "warmup_steps": run.warmup_steps, "layer_decay": run.layer_decay or "none",
              "label_smoothing": run.label_smoothing, "drop_path": run.drop_path,
              "sync_batchnorm": run.sync_batchnorm and ft.num_workers > 1 and ft.gpus_per_worker > 0,   # as applied
              "num_workers": ft.num_workers, "precision": ft.precision, "n_candidates": len(grid)}
    candidates = [{"candidate": i, **c, "val_top1": s["val_top1"], "val_mean_per_class": s["val_mean_per_class"],
                   "epochs_run": int(s["epochs_run"]), "stopped_early": s["stopped_early"], "selected": int(i == best)}
                  for i, (c, s) in enumerate(zip(grid, scores))]
    tags = {"primary_metric": spec.metric, "mode": "select", "skipped_images": "0", "recipe": recipe.citation,
            "precision_used": ft.precision if ft.gpus_per_worker > 0 else "fp32",
            "n_train": str(int(final["n_train"])), "n_test": str(int(final["n_eval"])),
            "ray_nodes": ",".join(final["nodes"]),   # where the refit's workers ran
            "flags": "under_trained" if int(final["steps"]) < run.budget_steps else ""}
    # each run's curve as MLflow metrics with the epoch as step: curve/c<i>/<metric>, curve/refit/<metric>
    runs_curves = [*((f"c{i}", points) for i, points in enumerate(curves)), ("refit", final.get("curve", []))]
    curve = {f"curve/{who}/{k}": [p.get(k, math.nan) for p in points]
             for who, points in runs_curves for k in CURVE if any(k in p for p in points)}
    return {"params": params, "metrics": metrics, "tags": tags, "candidate_val_top1": [s["val_top1"] for s in scores],
            "curves": curve,
            "seconds": ended - began, "candidates": candidates, "started": started, "ended": time.time(),
            "predictions": final.get("predictions", {}), "artifacts": artifacts}
