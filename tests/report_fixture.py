"""A synthetic sweep in a throw-away SQLite MLflow store, written in the contract's schema.

2 tasks × 2 backbones × methods linear/sea/logreg × 3 seeds, one failed cell, and one cell whose
first attempt failed before a successful retry (it must count as finished, not failed). One task
is named `<script>alert(1)</script>` so every output has to escape it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXPERIMENT = "synthetic-sweep"
TASK_PLAIN = "toy-top1"  # ranked by top1
TASK_XSS = "<script>alert(1)</script>"  # ranked by mean_per_class
TASKS = {TASK_PLAIN: "top1", TASK_XSS: "mean_per_class"}
BACKBONES = ("bb-large", "bb-small")
METHODS = ("linear", "sea", "logreg")
SEEDS = (0, 1, 2)
METRICS = ("val_top1", "val_mean_per_class", "test_top1", "test_mean_per_class")
# SeA − linear per (task, backbone), points: mean ≈ +1.8 (+2 inside the CI); logreg (+0.8) wins one cell
GAIN = {(TASK_PLAIN, "bb-large"): 2.5, (TASK_PLAIN, "bb-small"): 1.5,
        (TASK_XSS, "bb-large"): 3.0, (TASK_XSS, "bb-small"): 0.3}
FAILED_CELL = ("bb-small", TASK_PLAIN, "fgsm", 0)
RETRIED_CELL = ("bb-large", TASK_PLAIN, "sea", 1)


@dataclass(frozen=True)
class SyntheticSweep:
    tracking_uri: str
    experiment: str
    parent_run_id: str
    values: dict  # (backbone, task, method, seed) -> {metric key: value}


def _values(rng: np.random.Generator, seeds: tuple[int, ...]) -> dict:
    values = {}
    for t_index, task in enumerate(TASKS):
        for b_index, backbone in enumerate(BACKBONES):
            base = 60.0 + 10 * t_index + 5 * b_index
            for seed in seeds:
                noise = rng.normal(0, 0.4)
                offsets = {"linear": 0.0, "sea": GAIN[(task, backbone)], "logreg": 0.8}
                for method in METHODS:
                    v = base + offsets[method] + noise + rng.normal(0, 0.3)
                    values[(backbone, task, method, seed)] = {
                        "test_top1": round(v, 4), "test_mean_per_class": round(v - 1.7, 4),
                        "val_top1": round(v + 2.1, 4), "val_mean_per_class": round(v + 0.4, 4)}
    return values


def _tags(backbone: str, task: str, method: str, seed: int, parent: str, status: str) -> dict:
    return {**({"mlflow.parentRunId": parent} if parent else {}), "seabench.role": "cell", "backbone": backbone, "task": task,
            "method": method, "seed": str(seed), "cell_id": f"{backbone}|{task}|{method}|{seed}",
            "feature_key": f"{backbone}-{task}-train", "code_version": "test", "mode": "select",
            "primary_metric": TASKS.get(task, "top1"), "status": status}


def make_sweep(
    root: Path, experiment: str = EXPERIMENT, seed: int = 0, parent_run: bool = True, seeds: tuple[int, ...] = SEEDS
) -> SyntheticSweep:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(experiment, artifact_location=(root / "artifacts").as_uri())
    parent = ""
    if parent_run:
        parent = client.create_run(exp_id, run_name="sweep", tags={"seabench.role": "sweep"}).info.run_id
    values = _values(np.random.default_rng(seed), seeds)
    t0 = 1_700_000_000_000
    retried = client.create_run(exp_id, start_time=t0, tags=_tags(*RETRIED_CELL, parent, "failed"))
    client.set_tag(retried.info.run_id, "error", "worker died (first attempt)")
    client.set_terminated(retried.info.run_id, "FAILED")
    for i, (cell, metrics) in enumerate(sorted(values.items())):
        run = client.create_run(exp_id, start_time=t0 + 1000 * (i + 1), tags=_tags(*cell, parent, "ok"))
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, v, t0, 0) for k, v in metrics.items()]
            + [Metric("candidate_val_top1", 50.0 + j, t0, j) for j in range(3)],
            params=[Param("lr", "1.6"), Param("n_candidates", "3")],
        )
        client.set_terminated(run.info.run_id, "FINISHED")
    failed = client.create_run(exp_id, start_time=t0 + 10**6, tags=_tags(*FAILED_CELL, parent, "failed"))
    client.set_tag(failed.info.run_id, "error", "CUDA out of memory <b>not bold</b>")
    client.set_terminated(failed.info.run_id, "FAILED")
    if parent_run:
        client.set_terminated(parent, "FINISHED")
    return SyntheticSweep(uri, experiment, parent, values)
