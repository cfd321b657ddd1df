"""orchestrator.sweep.driver and tracking: Ray Tune sweeps on synthetic stored features, tracked in MLflow."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from sweepkit import SIZES, make_config, runs_by_cell
from synthstore import write_task

from orchestrator.sweep.cells import plan_cells
from orchestrator.sweep.driver import run_sweep
from orchestrator.sweep.tracking import SweepTracker


def test_grid_sweep_logs_one_finished_child_run_per_cell_and_rerun_trains_nothing(
        ray_cluster: None, store: str, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, store, backbones=["bb", "ensemble:bb+cc"], tasks=["digits", "dtd"],
                      methods=["linear", "sea", "logreg"])
    summary = run_sweep(cfg, cfg.all_tasks, progress=False)
    assert (summary.cells, summary.completed, summary.failed) == (12, 12, [])
    runs = runs_by_cell(cfg)
    assert sorted(runs) == sorted(c.cell_id for c in plan_cells(cfg, cfg.all_tasks))
    for cell_id, (run,) in runs.items():
        tags, data = run.data.tags, run.data
        assert run.info.status == "FINISHED" and tags["status"] == "ok" and tags["seabench.role"] == "cell"
        assert tags["mlflow.parentRunId"] and tags["code_version"].startswith("0.1.0")
        assert tags["primary_metric"] == "top1" and tags["mode"] == "select"
        assert [tags[k] for k in ("backbone", "task", "method", "seed")] == cell_id.split("|")
        assert ("," in tags["feature_key"]) == tags["backbone"].startswith("ensemble:")
        assert ("val_feature_key" in tags) == (tags["task"] == "dtd")
        assert {"val_top1", "val_mean_per_class", "test_top1", "test_mean_per_class",
                "candidate_val_top1"} <= set(data.metrics)
        expected = {"c"} if tags["method"] == "logreg" else {"lr", "weight_decay", "lamda", "epochs"}
        assert expected <= set(data.params) and data.params["n_candidates"] == "2"
    again = run_sweep(cfg, cfg.all_tasks, progress=False)
    assert (again.skipped, again.completed) == (12, 0)
    assert {k: v[0].info.run_id for k, v in runs_by_cell(cfg).items()} == \
           {k: v[0].info.run_id for k, v in runs.items()}


class StopAfter:
    """A Tune callback that interrupts the sweep once `n` cells are complete (after they are logged)."""

    def __init__(self, n: int) -> None:
        from ray import tune

        outer = self
        self.n = n

        class _Callback(tune.Callback):
            def on_trial_complete(self, iteration, trials, trial, **info) -> None:
                outer.n -= 1
                if outer.n == 0:
                    raise KeyboardInterrupt("injected interruption")

        self.callback = _Callback()


def test_interrupted_sweep_resumes_without_recomputing_or_duplicating(
        ray_cluster: None, store: str, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, store, seeds=[0, 1, 2], search={"max_concurrent": 1})
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, cfg.all_tasks, progress=False, extra_callbacks=[StopAfter(2).callback])
    first = runs_by_cell(cfg)
    assert len(first) == 2 and all(len(v) == 1 for v in first.values())
    # a driver killed while logging leaves a RUNNING child run: it must be discarded, never counted
    tracker = SweepTracker(cfg.tracking_uri, cfg.name)
    tracker.start()
    pending = next(c for c in plan_cells(cfg, cfg.all_tasks) if c.cell_id not in first)
    stale = tracker._create(pending, tracker._cell_tags(pending, {"status": "ok"}))
    summary = run_sweep(cfg, cfg.all_tasks, progress=False)
    assert (summary.skipped, summary.completed) == (2, 4)
    runs = runs_by_cell(cfg)
    assert len(runs) == 6 and all(len(v) == 1 and v[0].info.status == "FINISHED" for v in runs.values())
    assert stale not in {v[0].info.run_id for v in runs.values()}
    assert tracker.client.get_run(stale).info.lifecycle_stage == "deleted"
    assert all(runs[k][0].info.run_id == v[0].info.run_id for k, v in first.items())


def test_raising_cells_are_retried_reported_failed_and_replaced_once_they_succeed(
        ray_cluster: None, store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`missing` has no features (fails every attempt); `flaky`'s first attempt meets a truncated shard that is
    repaired before Tune retries it (max_failures=1)."""
    from ray import tune

    from orchestrator.report.build import build_report

    monkeypatch.chdir(tmp_path)  # and a relative store path must still reach the trials (Tune changes their cwd)
    write_task(store, "flaky", "digits", SIZES["digits"], 10, dim=4, seed=3)
    shard = next((Path(store) / "flaky" / "digits" / "train").glob("*/shard-00000.parquet"))
    good = shard.read_bytes()
    shard.write_bytes(good[: len(good) // 2])

    class RepairBeforeRetry(tune.Callback):
        def on_trial_recover(self, iteration, trials, trial, **info):
            if trial.config["cell"]["backbone"] == "flaky":
                shard.write_bytes(good)

    cfg = make_config(tmp_path, "store", backbones=["bb", "missing", "flaky"], methods=["linear"], max_failures=1,
                      search={"max_concurrent": 1})
    summary = run_sweep(cfg, cfg.all_tasks, progress=False, extra_callbacks=[RepairBeforeRetry()])
    assert summary.failed == ["missing|digits|linear|0"] and summary.completed == 2
    runs = runs_by_cell(cfg)
    (failed,), (flaky,), (plain,) = (runs[f"{b}|digits|linear|0"] for b in ("missing", "flaky", "bb"))
    assert failed.info.status == "FAILED" and failed.data.tags["status"] == "failed"
    assert "no features for backbone 'missing'" in failed.data.tags["error"]
    assert (failed.data.tags["attempts"], flaky.data.tags["attempts"], plain.data.tags["attempts"]) == ("2", "2", "1")
    assert flaky.info.status == "FINISHED" and flaky.data.tags["status"] == "ok"
    report = build_report(cfg.name, tmp_path / "report", cfg.tracking_uri)
    md = (tmp_path / "report" / "leaderboard.md").read_text()
    assert report.n_failed == 1 and "no features for backbone" in md[md.index("Failed cells"):]

    write_task(store, "missing", "digits", SIZES["digits"], 10, dim=4, seed=7)
    summary = run_sweep(cfg, cfg.all_tasks, progress=False)
    assert (summary.skipped, summary.completed, summary.failed) == (2, 1, [])
    (fixed,) = runs_by_cell(cfg)["missing|digits|linear|0"]
    assert fixed.data.tags["status"] == "ok" and fixed.info.run_id != failed.info.run_id


def test_gpu_request_on_a_cpu_cluster_fails_fast(ray_cluster: None, store: str, tmp_path: Path) -> None:
    from orchestrator.errors import OrchestratorError

    cfg = make_config(tmp_path, store, resources={"cpu": 1, "gpu": 0.5})
    with pytest.raises(OrchestratorError, match="no GPU"):
        run_sweep(replace(cfg), cfg.all_tasks, progress=False)


def _results(cfg, out: Path) -> pd.DataFrame:
    from orchestrator.report import build_report

    paths = build_report(cfg.name, out, cfg.tracking_uri)
    frame = pd.read_csv(paths.results_csv).drop(columns=["run_id", "source"], errors="ignore")   # run ids and experiment names differ
    return frame.sort_values(["backbone", "task", "method", "seed", "split", "metric"], ignore_index=True)


def test_changed_epochs_recompute_every_cell_and_equal_a_fresh_run(store: str, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, store)
    assert run_sweep(cfg, cfg.all_tasks, progress=False).completed == 2
    changed = replace(cfg, trainer=replace(cfg.trainer, epochs=2))
    summary = run_sweep(changed, changed.all_tasks, progress=False)
    assert (summary.skipped, summary.completed) == (0, 2)                 # every cell again
    assert run_sweep(changed, changed.all_tasks, progress=False).completed == 0   # nothing changed: nothing run
    runs = runs_by_cell(cfg)
    assert all(len(v) == 2 and len({r.data.tags["fingerprint"] for r in v}) == 2 for v in runs.values())
    fresh = replace(changed, name="sweep-fresh")
    run_sweep(fresh, fresh.all_tasks, progress=False)
    pd.testing.assert_frame_equal(_results(changed, tmp_path / "r1"), _results(fresh, tmp_path / "r2"))
    from orchestrator.report import load_experiment

    assert load_experiment(cfg.name, cfg.tracking_uri).superseded == 2    # the epochs=3 runs, left out
    page = (tmp_path / "r1" / "leaderboard.md").read_text()
    assert "2 finished run(s) of older configurations left out" in page   # and the report says so

    from mlflow import MlflowClient

    client = MlflowClient(cfg.tracking_uri)
    tracker = SweepTracker(cfg.tracking_uri, cfg.name)
    tracker.start()
    configs = sorted(a.path for a in client.list_artifacts(tracker.parent_id, "configs"))
    assert len(configs) == 2                                             # one per config, none overwritten
    texts = [json.loads(Path(client.download_artifacts(tracker.parent_id, c, str(tmp_path))).read_text())
             for c in configs]
    assert sorted(t["trainer"]["epochs"] for t in texts) == [2, 3] and changed.to_dict() in texts


def test_each_cell_records_its_candidates_cost_and_real_times(store: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    cfg = make_config(tmp_path, store, methods=["sea", "logreg"])
    run_sweep(cfg, cfg.all_tasks, progress=False)
    client = MlflowClient(cfg.tracking_uri)
    for cell_id, (run,) in runs_by_cell(cfg).items():
        table = pd.read_csv(client.download_artifacts(run.info.run_id, "candidates.csv", str(tmp_path / cell_id)))
        method = run.data.tags["method"]
        knobs = ["c"] if method == "logreg" else ["lr", "weight_decay", "lamda", "eta", "alpha"]
        curve = [] if method == "logreg" else ["val_last_top1", "val_last_mean_per_class", "val_spread"]
        assert list(table.columns) == ["candidate", *knobs, "val_top1", "val_mean_per_class", *curve, "epochs_run",
                                       "selected"]
        assert len(table) == 2 and table["selected"].sum() == 1
        chosen = table[table["selected"] == 1].iloc[0]
        assert chosen["val_top1"] == pytest.approx(run.data.metrics["val_top1"])
        assert table["val_top1"].tolist() == pytest.approx(
            [m.value for m in sorted(client.get_metric_history(run.info.run_id, "candidate_val_top1"),
                                     key=lambda m: m.step)])
        assert (table["epochs_run"] == (0 if method == "logreg" else 3)).all()
        metrics = run.data.metrics
        phases = ["select", "refit", "test"]
        assert all(metrics[f"{p}_wall_s"] > 0 and metrics[f"{p}_cpu_s"] >= 0 and metrics[f"{p}_gpu_s"] == 0
                   for p in phases)
        assert sum(metrics[f"{p}_wall_s"] for p in phases) <= metrics["cell_wall_s"]
        span = (run.info.end_time - run.info.start_time) / 1000
        assert span == pytest.approx(metrics["cell_wall_s"], abs=0.5)      # the run spans the real compute
