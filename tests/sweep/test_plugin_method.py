"""A method registered by a plugin (tests/plugins/toy_method.py) runs through a Ray Tune sweep, whose workers import
the plugin themselves, and appears in the report in the registry's order."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from sweepkit import make_config, runs_by_cell

from orchestrator.sweep.driver import run_sweep

TOY = Path(__file__).resolve().parents[1] / "plugins" / "toy_method.py"


def test_a_plugin_method_runs_through_a_sweep_and_the_report(ray_cluster: None, store: str, tmp_path: Path) -> None:
    from orchestrator.report import build_report

    cfg = make_config(tmp_path, store, methods=["dropout", "linear"], plugins=[str(TOY)],
                      grid={"lr": [0.8], "weight_decay": [1e-6], "lamda": [0.1], "dropout": {"eta": [0.1, 0.3]}})
    summary = run_sweep(cfg, cfg.all_tasks, progress=False)
    assert (summary.cells, summary.completed, summary.failed) == (2, 2, [])
    runs = {cell.split("|")[2]: run for cell, (run,) in runs_by_cell(cfg).items()}
    toy = runs["dropout"]
    assert toy.data.tags["status"] == "ok" and toy.data.params["n_candidates"] == "2"
    assert toy.data.params["eta"] in ("0.1", "0.3") and "alpha" not in toy.data.params   # its own axes only
    outcome = ("candidate_val_top1", "val_spread", "test_selected_top1", "refit_noise")   # the training, not timing
    assert [toy.data.metrics[k] for k in outcome] != [runs["linear"].data.metrics[k] for k in outcome]
    assert run_sweep(cfg, cfg.all_tasks, progress=False).completed == 0            # fingerprinted like any cell

    paths = build_report(cfg.name, tmp_path / "report", cfg.tracking_uri)
    results = pd.read_csv(paths.results_csv)
    assert set(results["method"]) == {"linear", "dropout"}
    page = (tmp_path / "report" / "leaderboard.md").read_text()
    assert "dropout" in page and page.index("linear") < page.index("dropout")     # registration order
