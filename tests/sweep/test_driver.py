"""orchestrator.sweep.driver and tracking: Ray Tune sweeps on synthetic stored features, tracked in MLflow."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

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
