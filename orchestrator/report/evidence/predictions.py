"""What the evidence reads beyond results.csv: each cell run's `predictions.parquet` (index, label, pred, …)
for the paired bootstrap, and its details (validation spread, steps, epochs) for the Stability section.

Predictions are fetched once per cell run and only for the methods a claim needs (SeA and linear); a run
recorded before predictions were logged has none, and its (task, backbone) gets the t-interval only.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.errors import OrchestratorError
from orchestrator.report.data import quiet_downloads, tracking_client
from orchestrator.report.evidence.bootstrap import RESAMPLES, Interval, key_seed, paired_bootstrap
from orchestrator.report.stats import CELL, primary_values
from orchestrator.runs import PREDICTIONS_ARTIFACT

REQUIRED = ("index", "label", "pred")
CLAIM_METHODS = ("sea", "linear")  # the SeA − linear claim is the one with a per-cell bootstrap
DETAIL_METRICS = ("val_spread", "steps_run", "steps_budget", "select_k", "refits")
BOOTSTRAP_COLUMNS = [*CELL, "metric", "seeds", "n_test", "point", "low", "high", "resamples", "note"]


def _validated(frame: pd.DataFrame, run_id: str) -> pd.DataFrame:
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise OrchestratorError(f"run {run_id}: its {PREDICTIONS_ARTIFACT} lacks column(s) {', '.join(missing)} "
                                f"(has: {', '.join(map(str, frame.columns))}); delete the artifact or rerun the cell")
    if frame["index"].duplicated().any():
        raise OrchestratorError(f"run {run_id}: its {PREDICTIONS_ARTIFACT} repeats test indices; rerun the cell")
    return frame.sort_values("index", ignore_index=True)


def load_predictions(tracking_uri: Any, results: pd.DataFrame,
                     methods: Iterable[str] = CLAIM_METHODS) -> dict[str, pd.DataFrame]:
    """run_id -> its predictions (sorted by index), for the runs of `methods` that have the artifact."""
    client = tracking_client(tracking_uri)
    wanted = results[results["method"].isin(list(methods))]["run_id"].drop_duplicates()
    out: dict[str, pd.DataFrame] = {}
    with tempfile.TemporaryDirectory(prefix="seabench-predictions-") as tmp, quiet_downloads():
        for run_id in wanted:
            if PREDICTIONS_ARTIFACT not in {Path(a.path).name for a in client.list_artifacts(run_id)}:
                continue  # recorded before predictions were logged
            local = client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, str(Path(tmp) / run_id))
            out[run_id] = _validated(pd.read_parquet(local), run_id)
    return out


def run_details(runs: Mapping[str, object], run_ids: Iterable[str]) -> pd.DataFrame:
    """Per run: DETAIL_METRICS and the `epochs` param (NaN where a run did not record them)."""
    rows = []
    for run_id in run_ids:
        run = runs.get(run_id)
        metrics = run.data.metrics if run is not None else {}
        params = run.data.params if run is not None else {}
        epochs = pd.to_numeric(params.get("epochs"), errors="coerce") if params.get("epochs") else math.nan
        rows.append({"run_id": run_id, **{m: float(metrics[m]) if m in metrics else math.nan for m in DETAIL_METRICS},
                     "epochs": float(epochs)})
    return pd.DataFrame(rows, columns=["run_id", *DETAIL_METRICS, "epochs"])


def _paired(values: pd.DataFrame, predictions: Mapping[str, pd.DataFrame]) -> tuple[list[int], list[int]]:
    """Seeds run by both methods, and those of them with predictions for both."""
    by_method = {m: values[values["method"] == m].set_index("seed")["run_id"] for m in CLAIM_METHODS}
    seeds = sorted(set(by_method["sea"].index) & set(by_method["linear"].index))
    usable = [s for s in seeds if all(by_method[m][s] in predictions for m in CLAIM_METHODS)]
    return seeds, usable


def _interval(values: pd.DataFrame, seeds: list[int], predictions: Mapping[str, pd.DataFrame],
              metric: str, resamples: int, key: tuple) -> tuple[Interval | None, str]:
    runs = {m: values[values["method"] == m].set_index("seed")["run_id"] for m in CLAIM_METHODS}
    frames = {(m, s): predictions[runs[m][s]] for m in CLAIM_METHODS for s in seeds}
    common = sorted(set.intersection(*(set(f["index"]) for f in frames.values())))
    if not common:
        return None, "predictions share no test index"
    aligned = {k: f.set_index("index").loc[common] for k, f in frames.items()}
    labels = aligned[("sea", seeds[0])]["label"].to_numpy()
    if any(not np.array_equal(f["label"].to_numpy(), labels) for f in aligned.values()):
        return None, "the cells' predictions disagree on the test labels"
    pred = {m: np.stack([aligned[(m, s)]["pred"].to_numpy() for s in seeds]) for m in CLAIM_METHODS}
    interval = paired_bootstrap(labels, pred["sea"], pred["linear"], metric, resamples, key_seed(*key))
    sizes = {len(f) for f in frames.values()}
    note = "" if sizes == {len(common)} else f"paired on the {len(common)} test indices every run has"
    return interval, note


def cell_bootstraps(results: pd.DataFrame, predictions: Mapping[str, pd.DataFrame],
                    resamples: int = RESAMPLES) -> pd.DataFrame:
    """Per (task, backbone) with paired SeA and linear seeds: the paired bootstrap over test examples of the
    mean over seeds of SeA − linear (the task's primary metric), or a note saying why there is none."""
    values = primary_values(results)
    values = values[values["method"].isin(CLAIM_METHODS)]
    rows = []
    for (task, backbone), part in values.groupby(CELL, sort=True):
        seeds, usable = _paired(part, predictions)
        if not seeds:
            continue
        metric = str(part["metric"].iloc[0])
        row = {"task": task, "backbone": backbone, "metric": metric, "seeds": len(usable), "n_test": 0,
               "point": math.nan, "low": math.nan, "high": math.nan, "resamples": 0, "note": ""}
        if not usable:
            row["note"] = "no predictions.parquet (recorded before predictions were logged): t-interval only"
        else:
            interval, note = _interval(part, usable, predictions, metric, resamples, (task, backbone))
            if interval is not None:
                row.update(n_test=interval.n, point=interval.point, low=interval.low, high=interval.high,
                           resamples=interval.resamples)
            missing = len(seeds) - len(usable)
            row["note"] = "; ".join(filter(None, [note, f"{missing} of {len(seeds)} paired seeds lack predictions"
                                                  if missing else ""]))
        rows.append(row)
    return pd.DataFrame(rows, columns=BOOTSTRAP_COLUMNS)
