"""orchestrator.sweep.search: search mode (random / Optuna, ASHA) of a sweep."""

from __future__ import annotations

from pathlib import Path

from sweepkit import TINY_GRID, make_config, runs_by_cell

from orchestrator.sweep.driver import run_sweep
from orchestrator.sweep.search import searcher


def test_random_search_uses_a_seeded_basic_variant_generator(tmp_path: Path) -> None:
    from ray.tune.search.basic_variant import BasicVariantGenerator

    cfg = make_config(tmp_path, "unused", search={"algorithm": "random"})
    assert isinstance(searcher(cfg, 0), BasicVariantGenerator)


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
