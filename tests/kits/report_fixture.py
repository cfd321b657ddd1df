"""A synthetic sweep in a throw-away SQLite MLflow store, written in the contract's schema.

2 tasks × 2 backbones × methods linear/sea/logreg × 3 seeds, one failed cell, and one cell whose
first attempt failed before a successful retry (it must count as finished, not failed). One task
is named `<script>alert(1)</script>` so every output has to escape it.

With `contract19=True` the cells also carry issue #19's fields: every head cell the `flags` tag
(`reduced_budget`: 50 of 100 epochs; UNSTABLE_CELL also `refit_unstable`), `test_selected_*`, `val_spread`
and an `epochs` param; logreg cells an empty `flags`; the bb-large cells of linear and sea a
`predictions.parquet` (their test metrics are computed from it); and FINETUNE_TASK × bb-large gets
`finetune` cells, under_trained at 20 of 5 000 steps. bb-small's cells have no predictions (older runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

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
UNSTABLE_CELL = ("bb-small", TASK_XSS, "sea", 2)  # contract19: refit 9 points below its selected head
UNSTABLE_GAP = 9.0
FINETUNE_TASK = TASK_PLAIN
EPOCHS, STEPS_RUN, STEPS_BUDGET = 50, 20, 5000
N_TEST, N_CLASSES = 360, 4
PREDICTED_BACKBONE = "bb-large"


@dataclass(frozen=True)
class SyntheticSweep:
    tracking_uri: str
    experiment: str
    parent_run_id: str
    values: dict  # (backbone, task, method, seed) -> {metric key: value}
    predictions: dict | None = None  # contract19: cell -> the DataFrame logged as predictions.parquet


def _predictions(rng: np.random.Generator, accuracy: float) -> pd.DataFrame:
    """Test predictions right with probability `accuracy` (%), over imbalanced classes (labels shared by every
    cell of a (backbone, task): the same rng seed draws them)."""
    labels = np.random.default_rng(7).choice(N_CLASSES, N_TEST, p=[0.55, 0.25, 0.15, 0.05]).astype(np.int32)
    right = rng.random(N_TEST) < accuracy / 100
    pred = np.where(right, labels, (labels + 1 + rng.integers(0, N_CLASSES - 1, N_TEST)) % N_CLASSES).astype(np.int32)
    return pd.DataFrame({"index": np.arange(N_TEST, dtype=np.int64), "label": labels, "pred": pred,
                         "pred_selected": pred})


def _scores(frame: pd.DataFrame) -> tuple[float, float]:
    right = frame["pred"] == frame["label"]
    return float(right.mean() * 100), float(right.groupby(frame["label"]).mean().mean() * 100)


def _contract19(rng: np.random.Generator, values: dict) -> tuple[dict, dict, dict, dict]:
    """Extra metrics, tags, params and predictions per cell (see the module docstring); adds finetune cells."""
    metrics, tags, params, predictions = {}, {}, {}, {}
    for seed in sorted({c[3] for c in values}):
        base = values[("bb-large", FINETUNE_TASK, "linear", seed)]
        values[("bb-large", FINETUNE_TASK, "finetune", seed)] = {k: round(v - 30.0, 4) for k, v in base.items()}
    for cell, logged in values.items():
        backbone, _, method, seed = cell
        if method in ("linear", "sea") and backbone == PREDICTED_BACKBONE:
            predictions[cell] = _predictions(rng, logged["test_top1"])
            logged["test_top1"], logged["test_mean_per_class"] = _scores(predictions[cell])
        if method == "finetune":
            metrics[cell], tags[cell] = {"steps_run": STEPS_RUN, "steps_budget": STEPS_BUDGET}, "under_trained"
        elif method == "logreg":
            tags[cell] = ""
        else:
            gap = UNSTABLE_GAP if cell == UNSTABLE_CELL else 0.4
            metrics[cell] = {"test_selected_top1": logged["test_top1"] + gap,
                             "test_selected_mean_per_class": logged["test_mean_per_class"] + gap, "val_spread": 1.5}
            tags[cell] = "refit_unstable;reduced_budget" if cell == UNSTABLE_CELL else "reduced_budget"
            params[cell] = EPOCHS
    return metrics, tags, params, predictions


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
    root: Path, experiment: str = EXPERIMENT, seed: int = 0, parent_run: bool = True, seeds: tuple[int, ...] = SEEDS,
    contract19: bool = False,
) -> SyntheticSweep:
    import tempfile

    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(experiment, artifact_location=(root / "artifacts").as_uri())
    parent = ""
    if parent_run:
        parent = client.create_run(exp_id, run_name="sweep", tags={"seabench.role": "sweep"}).info.run_id
    values = _values(np.random.default_rng(seed), seeds)
    extra, flags, epochs, predictions = _contract19(np.random.default_rng(seed + 1), values) if contract19 else ({}, {}, {}, {})
    t0 = 1_700_000_000_000
    retried = client.create_run(exp_id, start_time=t0, tags=_tags(*RETRIED_CELL, parent, "failed"))
    client.set_tag(retried.info.run_id, "error", "worker died (first attempt)")
    client.set_terminated(retried.info.run_id, "FAILED")
    for i, (cell, metrics) in enumerate(sorted(values.items())):
        tags = _tags(*cell, parent, "ok") | ({"flags": flags[cell]} if cell in flags else {})
        run = client.create_run(exp_id, start_time=t0 + 1000 * (i + 1), tags=tags)
        client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, v, t0, 0) for k, v in {**metrics, **extra.get(cell, {})}.items()]
            + [Metric("candidate_val_top1", 50.0 + j, t0, j) for j in range(3)],
            params=[Param("lr", "1.6"), Param("n_candidates", "3")]
            + ([Param("epochs", str(epochs[cell]))] if cell in epochs else []),
        )
        if cell in predictions:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "predictions.parquet"
                predictions[cell].to_parquet(path, index=False)
                client.log_artifact(run.info.run_id, str(path))
        client.set_terminated(run.info.run_id, "FINISHED")
    failed = client.create_run(exp_id, start_time=t0 + 10**6, tags=_tags(*FAILED_CELL, parent, "failed"))
    client.set_tag(failed.info.run_id, "error", "CUDA out of memory <b>not bold</b>")
    client.set_terminated(failed.info.run_id, "FAILED")
    if parent_run:
        client.set_terminated(parent, "FINISHED")
    return SyntheticSweep(uri, experiment, parent, values, predictions if contract19 else None)
