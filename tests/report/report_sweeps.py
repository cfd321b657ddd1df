"""Sweeps logged straight into a real SQLite MLflow store in the record's schema, with what issue #12 adds:
each cell run's `candidates.csv` artifact (one row per candidate configuration) and its cost metrics.

`log_sweep` writes exactly what it is given, so a test knows every number and computes the expected
report from these inputs on its own (numpy / pandas), never from the report code.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

GRIDS = {
    "linear": {"lr": (0.4, 1.6), "weight_decay": (1e-6, 1e-4), "lamda": (0.1,)},
    "sea": {"lr": (0.4, 1.6), "weight_decay": (1e-6, 1e-4), "lamda": (0.1,), "eta": (0.1, 0.4, 0.8),
            "alpha": (0.01, 0.1)},
    "fgsm": {"lr": (0.4, 1.6), "weight_decay": (1e-6,), "lamda": (0.1,), "eta": (0.2, 0.8)},
    "logreg": {"c": (0.1, 1.0, 10.0)},
}
COSTS = ("select_wall_s", "refit_wall_s", "test_wall_s", "cell_wall_s", "cell_cpu_s", "cell_gpu_s")


@dataclass
class LoggedSweep:
    tracking_uri: str
    experiment: str
    parent_run_id: str
    values: dict  # (backbone, task, method, seed) -> {metric: value}
    run_ids: dict  # cell -> run id
    candidates: dict = field(default_factory=dict)  # cell -> the DataFrame logged as candidates.csv
    costs: dict = field(default_factory=dict)  # cell -> {cost metric: seconds} logged


def store_uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


def candidate_table(rng: np.random.Generator, method: str, primary: str) -> pd.DataFrame:
    grid = GRIDS[method]
    rows = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    frame = pd.DataFrame(rows)
    frame.insert(0, "candidate", range(len(frame)))
    frame["val_top1"] = np.round(rng.uniform(50, 90, len(frame)), 3)
    frame["val_mean_per_class"] = np.round(frame["val_top1"] - rng.uniform(0, 3, len(frame)), 3)
    frame["epochs_run"] = rng.integers(5, 50, len(frame))
    frame["selected"] = 0
    frame.loc[frame[f"val_{primary}"].idxmax(), "selected"] = 1
    return frame


def values_for(rng: np.random.Generator, cells) -> dict:
    out = {}
    for cell in cells:
        v = float(rng.uniform(55, 85))
        out[cell] = {"test_top1": round(v, 4), "test_mean_per_class": round(v - 1.3, 4),
                     "val_top1": round(v + 1.0, 4), "val_mean_per_class": round(v - 0.2, 4)}
    return out


def log_sweep(root: Path, experiment: str, values: dict, primary: dict, *, candidates: dict | None = None,
              costs: dict | None = None, t0: int = 1_700_000_000_000) -> LoggedSweep:
    """One parent run and one FINISHED status=ok child run per cell of `values`, started at t0 + i s."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    uri = store_uri(root)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(experiment, artifact_location=(root / f"artifacts-{experiment}").as_uri())
    parent = client.create_run(exp, run_name="sweep", start_time=t0, tags={"seabench.role": "sweep"}).info.run_id
    run_ids = {}
    for i, (cell, metrics) in enumerate(sorted(values.items())):
        backbone, task, method, seed = cell
        tags = {"mlflow.parentRunId": parent, "seabench.role": "cell", "backbone": backbone, "task": task,
                "method": method, "seed": str(seed), "cell_id": f"{backbone}|{task}|{method}|{seed}",
                "primary_metric": primary[task], "mode": "select", "status": "ok"}
        run = client.create_run(exp, start_time=t0 + 1000 * (i + 1), tags=tags).info.run_id
        logged = {**metrics, **(costs or {}).get(cell, {})}
        client.log_batch(run, metrics=[Metric(k, float(v), t0, 0) for k, v in logged.items()])
        if candidates and cell in candidates:
            client.log_text(run, candidates[cell].to_csv(index=False), "candidates.csv")
        client.set_terminated(run, "FINISHED")
        run_ids[cell] = run
    client.set_terminated(parent, "FINISHED")
    return LoggedSweep(uri, experiment, parent, values, run_ids, dict(candidates or {}), dict(costs or {}))


def enrich(tracking_uri: str, experiment: str, rng: np.random.Generator) -> int:
    """Give every finished cell run of an existing experiment a candidates.csv and cost metrics (as #12 logs
    them); returns how many runs were enriched."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment).experiment_id
    runs = [r for r in client.search_runs([exp], "tags.`seabench.role` = 'cell'") if r.data.tags.get("status") == "ok"]
    for run in runs:
        tags = run.data.tags
        method = tags["method"] if tags["method"] in GRIDS else "linear"
        table = candidate_table(rng, method, tags.get("primary_metric", "top1"))
        client.log_text(run.info.run_id, table.to_csv(index=False), "candidates.csv")
        costs = {m: float(rng.uniform(1, 60)) for m in COSTS} | {"extract_s": 120.0}
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in costs.items()])
    return len(runs)
