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
