"""orchestrator.sweep.trial: one cell's computation without Ray — test isolation, reference mode, records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sweepkit import TINY_GRID, make_config

from orchestrator.sweep.cells import Cell
from orchestrator.sweep.driver import trial_context
from orchestrator.sweep.trial import run_cell, store_loader


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


def test_reference_mode_uses_the_authors_defaults_without_validation(store: str, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, store, mode="reference")
    out = run_cell(Cell("bb", "digits", "sea", 1), trial_context(cfg))
    assert out.params == {"lr": 1.6, "weight_decay": 1e-6, "lamda": 0.1, "eta": 0.8, "alpha": 0.01,
                          "delta": 0.0, "epochs": 3, "batch_size": 32, "n_candidates": 1}
    results = {m for m in out.metrics if not m.endswith("_s")}   # the rest are cost metrics (seconds)
    assert results == {"test_top1", "test_mean_per_class"} and out.tags["mode"] == "reference"
    assert {"refit_wall_s", "test_wall_s", "cell_wall_s"} <= set(out.metrics) and "select_wall_s" not in out.metrics
    assert out.candidates == []


def test_a_head_cell_records_the_selected_head_flags_and_its_test_predictions(store: str, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, store, methods=["linear", "sea", "logreg"], protocol={"k": 2, "refits": 2})
    ctx = trial_context(cfg)
    outs = {m: run_cell(Cell("bb", "digits", m, 0), ctx) for m in ("linear", "sea", "logreg")}
    sea = outs["sea"]
    assert {"test_selected_top1", "test_selected_mean_per_class", "refit_train_top1", "val_spread",
            "refit_noise", "test_refit_std_top1"} <= set(sea.metrics)
    assert sea.metrics["select_k"] == 2 and sea.metrics["refits"] == 2 and sea.tags["select_on"] == "last_k"
    assert "reduced_budget" in sea.tags["flags"].split(";")   # 3 epochs of the protocol's 100
    assert set(sea.predictions) == {"index", "label", "pred", "pred_selected", "pred_refit_1"}
    pred, label = np.asarray(sea.predictions["pred_selected"]), np.asarray(sea.predictions["label"])
    assert 100 * float((pred == label).mean()) == pytest.approx(sea.metrics["test_selected_top1"])
    # every method of a (backbone, task) lists the same test rows in the same order: they pair by index
    assert outs["linear"].predictions["index"] == sea.predictions["index"] == outs["logreg"].predictions["index"]
    assert sea.predictions["index"] == list(range(60))
    logreg = outs["logreg"]
    assert logreg.tags["flags"] == "" and "test_selected_top1" not in logreg.metrics
    assert set(logreg.predictions) == {"index", "label", "pred"}
    rows = {row["candidate"]: row for row in sea.candidates}
    assert {"val_last_top1", "val_spread"} <= set(rows[0])


def test_a_full_budget_cell_has_no_budget_flag(store: str, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, store, methods=["linear"], trainer={"epochs": 100, "batch_size": 128})
    out = run_cell(Cell("bb", "digits", "linear", 0), trial_context(cfg))
    assert "reduced_budget" not in out.tags["flags"]


def test_predictions_are_logged_as_a_parquet_artifact(store: str, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from orchestrator.runs import PREDICTIONS_ARTIFACT
    from orchestrator.sweep.tracking import SweepTracker

    cfg = make_config(tmp_path, store)
    cell = Cell("bb", "digits", "sea", 0)
    out = run_cell(cell, trial_context(cfg))
    tracker = SweepTracker(cfg.tracking_uri, cfg.name, cfg.to_dict())
    tracker.start()
    run_id = tracker.log_cell(cell, out)
    path = tracker.client.download_artifacts(run_id, PREDICTIONS_ARTIFACT, str(tmp_path / "dl"))
    table = pq.read_table(path)
    assert table.column_names == list(out.predictions)
    assert table.column("pred_selected").to_pylist() == out.predictions["pred_selected"]
    assert str(table.schema.field("index").type) == "int64" and str(table.schema.field("pred").type) == "int32"
    assert tracker.client.get_run(run_id).data.tags["flags"] == out.tags["flags"]


HALVING_GRID = {**TINY_GRID, "lr": [0.001, 0.01, 0.1, 0.4, 0.8, 1.6]}


def test_a_halved_grid_cell_records_where_each_candidate_stopped_and_logs(store: str, tmp_path: Path) -> None:
    from orchestrator.sweep.cells import candidates_csv
    from orchestrator.sweep.tracking import SweepTracker
    from sea import head_epochs

    cfg = make_config(tmp_path, store, methods=["linear"], grid=HALVING_GRID, trainer={"epochs": 4, "batch_size": 32},
                      search={"halving": {"factor": 3, "min_epochs": 1}})
    ctx = trial_context(cfg)
    assert ctx.halving == {"factor": 3, "min_epochs": 1}
    cell = Cell("bb", "digits", "linear", 0)
    out = run_cell(cell, ctx)
    ran = [row["epochs_run"] for row in out.candidates]
    assert sorted(ran) == [1, 1, 1, 1, 3, 4]     # rungs 1 and 3: 6 heads -> 2 -> 1
    (selected,) = [row for row in out.candidates if row["selected"]]
    assert selected["epochs_run"] == 4 and out.tags["halving_rungs"] == "1,3"
    assert out.metrics["head_epochs"] == head_epochs(6, 4, 3, 1) == 11
    # every row has its own last scored epoch and spread; the logged curve is the best head still training
    assert all(np.isfinite(row["val_last_top1"]) and np.isfinite(row["val_spread"]) for row in out.candidates)
    assert len(out.val_best_top1) == 4 and all(np.isfinite(out.val_best_top1))
    assert out.params["lr"] == HALVING_GRID["lr"][selected["candidate"]]
    assert "epochs_run" in candidates_csv(out.candidates).splitlines()[0]
    tracker = SweepTracker(cfg.tracking_uri, cfg.name, cfg.to_dict())
    tracker.start()
    run = tracker.client.get_run(tracker.log_cell(cell, out))
    assert run.data.tags["halving_rungs"] == "1,3" and run.data.metrics["head_epochs"] == 11


def test_a_halved_cell_selects_what_the_full_grid_selects_when_one_lr_leads(store: str, tmp_path: Path) -> None:
    grid = {**TINY_GRID, "lr": [1e-4, 1e-3, 1.6]}
    full = make_config(tmp_path, store, methods=["sea"], grid=grid, trainer={"epochs": 4, "batch_size": 32})
    halved = make_config(tmp_path, store, methods=["sea"], grid=grid, trainer={"epochs": 4, "batch_size": 32},
                         search={"halving": {"factor": 3}})
    cell = Cell("bb", "digits", "sea", 0)
    a, b = run_cell(cell, trial_context(full)), run_cell(cell, trial_context(halved))
    assert a.params == b.params and a.metrics["test_top1"] == b.metrics["test_top1"]
    # default first rung 4 // 3 = 1: rungs 1 and 3 (one head left there: nothing to drop)
    assert [row["epochs_run"] for row in b.candidates] == [1, 1, 4] and b.tags["halving_rungs"] == "1,3"


def test_the_driver_hands_search_halving_to_the_trials(store: str, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, store, search={"halving": {"factor": 3, "min_epochs": 1}})
    assert trial_context(cfg).halving == {"factor": 3, "min_epochs": 1}


@pytest.mark.parametrize("search, match", [
    ({"halving": {"factor": 1}}, "'search.halving.factor' must be ≥ 2"),
    ({"halving": {"min_epochs": 0}}, "'search.halving.min_epochs' must be ≥ 1"),
    ({"halving": {"min_epochs": 3}}, "'search.halving.min_epochs'=3 leaves no rung before the last of trainer.epochs=3"),
    ({"halving": {"factor": 3}, "algorithm": "random"}, "'search.halving' halves a grid cell's heads"),
    ({"halving": {"fator": 3}}, "did you mean 'factor'"),
])
def test_bad_halving_settings_are_config_errors_naming_the_key(store: str, tmp_path: Path, search, match) -> None:
    from orchestrator.errors import OrchestratorError

    with pytest.raises(OrchestratorError, match=match):
        make_config(tmp_path, store, search=search)
