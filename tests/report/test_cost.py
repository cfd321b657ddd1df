"""Cost section: compute per cell by method and per extraction unit, from each cell run's cost metrics."""

from __future__ import annotations

import base64
import io
import itertools

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from report_sweeps import COSTS, log_sweep, values_for

from orchestrator.report import build_report

PRIMARY = {"toy-a": "top1", "toy-b": "top1"}
CELLS = list(itertools.product(("bb-a", "bb-b"), PRIMARY, ("linear", "sea", "finetune"), (0, 1, 2)))
EXTRACT = {("bb-a", "toy-a"): 30.0, ("bb-a", "toy-b"): 240.0, ("bb-b", "toy-a"): 12.0, ("bb-b", "toy-b"): 6.0}
NOT_RECORDED = "cell_gpu_s"  # a CPU-only sweep: no GPU seconds at all
PARTIAL = ("bb-a", "toy-a", "sea", 1)  # one cell lacks its refit time


def _costs(rng):
    costs = {}
    for cell in CELLS:
        logged = {m: float(np.round(rng.uniform(0.5, 150), 3)) for m in COSTS if m != NOT_RECORDED}
        logged["extract_s"] = EXTRACT[cell[:2]]
        if cell == PARTIAL:
            del logged["refit_wall_s"]
        costs[cell] = logged
    return costs


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    rng = np.random.default_rng(3)
    return log_sweep(tmp_path_factory.mktemp("cost"), "cost", values_for(rng, CELLS), PRIMARY, costs=_costs(rng))


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    return build_report(sweep.experiment, tmp_path_factory.mktemp("out"), tracking_uri=sweep.tracking_uri)


def _readers(unit) -> int:
    return sum(1 for c in CELLS if c[:2] == unit and c[2] != "finetune")  # finetune reads images, not features


def _expected(sweep) -> pd.DataFrame:
    """Per cell, from the logged metrics alone: share = extract_s / the head cells of the same (backbone, task);
    finetune cells read no unit and get none."""
    frame = pd.DataFrame([{"backbone": b, "task": t, "method": m, "seed": s, **c} for (b, t, m, s), c in sweep.costs.items()])
    frame["share"] = [0.0 if m == "finetune" else EXTRACT[(b, t)] / _readers((b, t))
                      for b, t, m in zip(frame["backbone"], frame["task"], frame["method"])]
    frame["total"] = frame["cell_wall_s"] + frame["share"]
    return frame


def _s(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 100 else f"{value:,.1f}"


def test_per_method_table_is_the_mean_over_cells_of_the_logged_seconds(sweep, report):
    expected = _expected(sweep)
    md = report.leaderboard_md.read_text()
    assert ("| method | cells | selection | refit | test | cell (wall) | cell (CPU) | cell (GPU) | extraction share "
            "| total |") in md
    for method in ("linear", "sea", "finetune"):
        part = expected[expected["method"] == method]
        cells = [str(len(part)), *(_s(part[m].mean()) for m in ("select_wall_s", "refit_wall_s", "test_wall_s",
                 "cell_wall_s", "cell_cpu_s")), "–", _s(part["share"].mean()), _s(part["total"].mean())]
        assert f"| {method} | " + " | ".join(cells) + " |" in md
    # the refit mean of sea is over the 11 cells that recorded it
    sea = expected[(expected["method"] == "sea")]
    assert sea["refit_wall_s"].count() == 11


def test_missing_and_partial_metrics_are_named(report):
    md = report.leaderboard_md.read_text()
    assert f"{NOT_RECORDED} was not recorded by any cell (shown as –)" in md
    assert "sea: refit_wall_s recorded by 11 of 12 cells (mean over those)" in md


def test_extraction_per_unit_is_shared_by_the_cells_that_read_it(report):
    md = report.leaderboard_md.read_text()
    for (backbone, task), seconds in EXTRACT.items():
        n = _readers((backbone, task))
        assert f"| {backbone} | {task} | {_s(seconds)} | {n} | {_s(seconds / n)} |" in md


def test_cost_csv_holds_every_cell_and_its_share(sweep, report):
    table = pd.read_csv(report.out_dir / "cost.csv").set_index(["backbone", "task", "method", "seed"]).sort_index()
    expected = _expected(sweep).set_index(["backbone", "task", "method", "seed"]).sort_index()
    assert len(table) == len(CELLS)
    for column in ("select_wall_s", "refit_wall_s", "cell_wall_s", "extract_s"):
        pd.testing.assert_series_equal(table[column], expected[column], check_names=False)
    np.testing.assert_allclose(table["extract_share_s"], expected["share"])
    assert table[NOT_RECORDED].isna().all()
    assert table.loc[PARTIAL, "refit_wall_s"] != table.loc[PARTIAL, "refit_wall_s"]  # NaN: not recorded


def test_cost_plot_is_a_png_in_the_page(report):
    (plot,) = [p for p in report.plots if p.name == "cost_per_cell.png"]
    image = Image.open(io.BytesIO(plot.read_bytes()))
    assert image.format == "PNG" and image.width > 300
    encoded = base64.b64encode(plot.read_bytes()).decode("ascii")
    assert encoded in report.leaderboard_html.read_text()


def test_sweeps_without_cost_metrics_say_so(tmp_path):
    rng = np.random.default_rng(4)
    cells = [("bb", "toy-a", m, s) for m in ("linear", "sea") for s in (0, 1)]
    sweep = log_sweep(tmp_path, "old", values_for(rng, cells), PRIMARY)
    paths = build_report(sweep.experiment, tmp_path / "out", tracking_uri=sweep.tracking_uri)
    assert "No cell run recorded cost metrics" in paths.leaderboard_md.read_text()
    assert not (tmp_path / "out" / "cost.csv").exists()
    assert "cost_per_cell.png" not in {p.name for p in paths.plots}


ENSEMBLE = "ensemble:bb-a+bb-b"
PART_SECONDS = {"bb-a": 241.0, "bb-b": 157.0}  # the demo: the ensemble's 398 s are these two again


def test_each_unit_is_charged_once_over_every_cell_reading_it(tmp_path):
    rng = np.random.default_rng(6)
    cells = [(b, "toy-a", m, s) for b in ("bb-a", "bb-b", ENSEMBLE) for m in ("linear", "sea") for s in (0, 1)]
    cells += [("bb-a", "toy-a", "finetune", s) for s in (0, 1)]
    costs = {c: {"cell_wall_s": 10.0, "extract_s": PART_SECONDS["bb-a"] + PART_SECONDS["bb-b"] if c[0] == ENSEMBLE
                 else PART_SECONDS[c[0]]} for c in cells}
    sweep = log_sweep(tmp_path, "ensemble", values_for(rng, cells), PRIMARY, costs=costs)
    paths = build_report(sweep.experiment, tmp_path / "out", tracking_uri=sweep.tracking_uri)
    table = pd.read_csv(paths.out_dir / "cost.csv").set_index(["backbone", "task", "method", "seed"])
    # bb-a's unit is read by its 4 head cells and the ensemble's 4 (never by the 2 finetune cells): 241 / 8
    per_a, per_b = 241.0 / 8, 157.0 / 8
    assert table.loc[("bb-a", "toy-a", "sea", 0), "extract_share_s"] == pytest.approx(per_a)
    assert table.loc[("bb-b", "toy-a", "linear", 1), "extract_share_s"] == pytest.approx(per_b)
    assert table.loc[(ENSEMBLE, "toy-a", "sea", 1), "extract_share_s"] == pytest.approx(per_a + per_b)
    assert table.loc[("bb-a", "toy-a", "finetune", 0), "extract_share_s"] == 0.0
    # every second of extraction is charged exactly once: 241 + 157, not 241 + 157 + 398
    assert table["extract_share_s"].sum() == pytest.approx(241.0 + 157.0)
    md = paths.leaderboard_md.read_text()
    assert "| bb-a | toy-a | 241.0 | 8 | 30.12 |" in md and "| bb-b | toy-a | 157.0 | 8 | 19.62 |" in md
    assert ENSEMBLE not in md.split("extraction per unit")[1].split("\n\n")[1]  # no unit of its own
    assert "charged once" in md and "finetune cells train on the images and get no share" in md
