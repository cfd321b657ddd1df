"""orchestrator.sweep / trial / tracking: Ray Tune sweeps on synthetic stored features, tracked in MLflow."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from synthstore import write_task

from orchestrator.cells import Cell, plan_cells
from orchestrator.config import RunConfig, load_config
from orchestrator.search import searcher
from orchestrator.sweep import run_sweep, trial_context
from orchestrator.tracking import SweepTracker
from orchestrator.trial import load_features, run_cell, store_loader

TINY_GRID = {"lr": [0.8, 1.6], "weight_decay": [1e-6], "lamda": [0.1], "eta": [0.2], "alpha": [0.05],
             "c": [0.1, 10.0]}
SIZES = {"digits": {"train": 120, "test": 60}, "dtd": {"train": 90, "val": 45, "test": 60}}
CLASSES = {"digits": 10, "dtd": 47}


@pytest.fixture
def store(tmp_path: Path) -> str:
    """Synthetic features of backbones bb (16-d) and cc (8-d) on digits (carved val) and dtd (official val)."""
    uri = str(tmp_path / "store")
    for seed, (backbone, dim) in enumerate((("bb", 16), ("cc", 8))):
        for task, sizes in SIZES.items():
            write_task(uri, backbone, task, sizes, CLASSES[task], dim=dim, seed=seed)
    return uri


def make_config(tmp_path: Path, store: str, **overrides: object) -> RunConfig:
    data = {"name": "sweep-test", "backbones": ["bb"], "tasks": ["digits"], "methods": ["linear", "sea"],
            "seeds": [0], "store": store, "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "trainer": {"epochs": 3, "batch_size": 32}, "grid": TINY_GRID, "max_failures": 0,
            "resources": {"cpu": 1}, "tune_dir": str(tmp_path / "tune")}
    data.update(overrides)
    return load_config(data=data)


def runs_by_cell(cfg: RunConfig) -> dict[str, list]:
    tracker = SweepTracker(cfg.tracking_uri, cfg.name)
    tracker.start()
    out: dict[str, list] = {}
    for run in tracker.cell_runs():
        out.setdefault(run.data.tags["cell_id"], []).append(run)
    return out


# ---------------------------------------------------------------- without Ray


def test_test_split_is_loaded_once_and_only_after_training_data(store: str, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, store, tasks=["dtd"])
    calls: list[str] = []
    base = store_loader(store)

    def spy(backbone: str, task: str, split: str):
        calls.append(split)
        return base(backbone, task, split)

    run_cell(Cell("bb", "dtd", "sea", 0), trial_context(cfg), load=spy)
    assert calls == ["train", "val", "test"]


@pytest.mark.parametrize("method", ["sea", "logreg"])
def test_poisoned_test_split_cannot_change_the_selection(store: str, tmp_path: Path, method: str) -> None:
    cfg = make_config(tmp_path, store, methods=[method],
                      grid={**TINY_GRID, "lr": [0.1, 0.8, 3.2], "c": [1e-3, 1.0, 1e3]})
    ctx = trial_context(cfg)
    base = store_loader(store)
    rng = np.random.default_rng(0)

    def poisoned(backbone: str, task: str, split: str):
        unit = base(backbone, task, split)
        if split == "test":  # test labels shuffled and features replaced by noise
            return unit._replace(x=rng.normal(size=unit.x.shape).astype(np.float32), y=rng.permutation(unit.y))
        return unit

    cell = Cell("bb", "digits", method, 0)
    clean, dirty = run_cell(cell, ctx), run_cell(cell, ctx, load=poisoned)
    assert clean.params == dirty.params
    assert clean.candidate_val_top1 == dirty.candidate_val_top1
    assert {k: v for k, v in clean.metrics.items() if k.startswith("val_")} == \
           {k: v for k, v in dirty.metrics.items() if k.startswith("val_")}
    assert clean.metrics["test_top1"] > dirty.metrics["test_top1"]


def test_test_loader_failing_before_selection_is_never_reached(store: str, tmp_path: Path) -> None:
    """A test loader that raises proves selection finished first: the error comes after training."""
    cfg = make_config(tmp_path, store)
    base = store_loader(store)
    seen: list[str] = []

    def guarded(backbone: str, task: str, split: str):
        seen.append(split)
        if split == "test":
            raise RuntimeError("test split read")
        return base(backbone, task, split)

    with pytest.raises(RuntimeError, match="test split read"):
        run_cell(Cell("bb", "digits", "sea", 0), trial_context(cfg), load=guarded)
    assert seen == ["train", "test"]


def test_ensemble_concatenates_unit_normalised_parts(store: str) -> None:
    load = store_loader(store)
    x, y, key, skipped = load_features(load, "ensemble:bb+cc", "digits", "train")
    _, yb, kb, _ = load("bb", "digits", "train")
    assert len(skipped) == 0
    assert x.shape == (120, 16 + 8) and np.array_equal(y, yb) and key.split(",")[0] == kb
    np.testing.assert_allclose(np.linalg.norm(x[:, :16], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(x[:, 16:], axis=1), 1.0, rtol=1e-5)


def test_reference_mode_uses_the_authors_defaults_without_validation(store: str, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, store, mode="reference")
    out = run_cell(Cell("bb", "digits", "sea", 1), trial_context(cfg))
    assert out.params == {"lr": 1.6, "weight_decay": 1e-6, "lamda": 0.1, "eta": 0.8, "alpha": 0.01,
                          "delta": 0.0, "epochs": 3, "batch_size": 32, "n_candidates": 1}
    assert set(out.metrics) == {"test_top1", "test_mean_per_class"} and out.tags["mode"] == "reference"


def test_cells_are_planned_task_major() -> None:
    cfg = load_config(data={"name": "p", "backbones": ["a", "b"], "tasks": ["digits"], "seeds": [0, 1]})
    cells = plan_cells(cfg, ["digits", "dtd"])
    assert len(cells) == 2 * 2 * 2 * 2 and cells[0] == Cell("a", "digits", "linear", 0)
    assert Cell.from_id(cells[-1].cell_id) == cells[-1]


def test_random_search_uses_a_seeded_basic_variant_generator(tmp_path: Path) -> None:
    from ray.tune.search.basic_variant import BasicVariantGenerator

    cfg = make_config(tmp_path, "unused", search={"algorithm": "random"})
    assert isinstance(searcher(cfg, 0), BasicVariantGenerator)


# ---------------------------------------------------------------- on the session's Ray cluster


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

    from orchestrator.report import build_report

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


def test_optuna_search_with_asha_selects_on_validation_and_logs_the_cell(
        ray_cluster: None, store: str, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, store, methods=["sea", "logreg"],
                      search={"algorithm": "optuna", "num_samples": 3, "asha": True, "grace_period": 1},
                      grid={**TINY_GRID, "lr": [0.4, 3.2]})
    summary = run_sweep(cfg, cfg.all_tasks, progress=False)
    assert (summary.completed, summary.failed) == (2, [])
    (run,) = runs_by_cell(cfg)["bb|digits|sea|0"]
    assert run.data.tags["search"] == "optuna+asha" and 1 <= int(run.data.params["n_candidates"]) <= 3
    assert 0.4 <= float(run.data.params["lr"]) <= 3.2 and "test_top1" in run.data.metrics


def test_gpu_request_on_a_cpu_cluster_fails_fast(ray_cluster: None, store: str, tmp_path: Path) -> None:
    from orchestrator.errors import OrchestratorError

    cfg = make_config(tmp_path, store, resources={"cpu": 1, "gpu": 0.5})
    with pytest.raises(OrchestratorError, match="no GPU"):
        run_sweep(replace(cfg), cfg.all_tasks, progress=False)
