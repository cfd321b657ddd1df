"""Sensitivity plots (η per α, lr) from each cell's candidates.csv: the plotted points are the candidate tables'."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from report_sweeps import candidate_table, log_sweep, values_for

from orchestrator.errors import OrchestratorError
from orchestrator.report import build_report
from orchestrator.report.data import load_experiment
from orchestrator.report.sections import sensitivity as sensitivity_module
from orchestrator.report.sections.sensitivity import load_candidates, sensitivity_data

PRIMARY = {"toy-a": "top1", "toy-b": "mean_per_class"}
BACKBONES = ("bb-a", "bb-b")
METHODS = ("linear", "sea", "fgsm", "logreg")
SEEDS = (0, 1, 2)
CELLS = list(itertools.product(BACKBONES, PRIMARY, METHODS, SEEDS))
# an older sweep's cells: no candidates.csv
WITHOUT = {c for c in CELLS if c[0] == "bb-b" and c[1] == "toy-b" and c[3] == 2}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sens")
    rng = np.random.default_rng(7)
    candidates = {c: candidate_table(rng, c[2], PRIMARY[c[1]]) for c in CELLS if c not in WITHOUT}
    return log_sweep(root, "sens", values_for(rng, CELLS), PRIMARY, candidates=candidates)


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    return build_report(sweep.experiment, tmp_path_factory.mktemp("out"), tracking_uri=sweep.tracking_uri)


def _value_column(task):
    return f"val_{PRIMARY[task]}"


def _expected_eta(sweep, task, backbone, alpha, eta):
    """Per seed the best candidate at (η, α) over lr and weight decay, then mean and std over seeds — by hand."""
    best = []
    for seed in SEEDS:
        table = sweep.candidates.get((backbone, task, "sea", seed))
        if table is None:
            continue
        rows = table[np.isclose(table["eta"], eta) & np.isclose(table["alpha"], alpha)]
        best.append(rows[_value_column(task)].to_numpy().max())
    return np.mean(best), (np.std(best, ddof=1) if len(best) > 1 else np.nan), len(best)


def _expected_lr(sweep, task, backbone, method, lr):
    best = [t[np.isclose(t["lr"], lr)][_value_column(task)].max() for seed in SEEDS
            if (t := sweep.candidates.get((backbone, task, method, seed))) is not None]
    return np.mean(best), np.std(best, ddof=1), len(best)


def test_sensitivity_csv_equals_the_candidate_tables(sweep, report):
    table = pd.read_csv(report.out_dir / "sensitivity.csv")
    assert report.out_dir / "sensitivity.csv" in report.tables
    eta = table[(table["axis"] == "eta") & (table["method"] == "sea")]
    # every (task, backbone) × 3 η × 2 α, nothing more
    assert len(eta) == len(PRIMARY) * len(BACKBONES) * 3 * 2
    for row in eta.itertuples():
        mean, std, n = _expected_eta(sweep, row.task, row.backbone, row.alpha, row.x)
        assert row.mean == pytest.approx(mean) and row.std == pytest.approx(std) and row.n == n
    lr = table[table["axis"] == "lr"]
    assert set(lr["method"]) == {"linear", "sea", "fgsm"}  # logreg has no learning rate
    for row in lr.itertuples():
        mean, std, n = _expected_lr(sweep, row.task, row.backbone, row.method, row.x)
        assert (row.mean, row.std, row.n) == (pytest.approx(mean), pytest.approx(std), n)
    fgsm = table[(table["axis"] == "eta") & (table["method"] == "fgsm")]
    assert len(fgsm) == len(PRIMARY) * len(BACKBONES) * 2 and fgsm["alpha"].isna().all()  # fgsm has no α
    base = table[table["axis"] == "baseline"].set_index(["task", "backbone"])
    for task, backbone in itertools.product(PRIMARY, BACKBONES):
        best = [sweep.candidates[(backbone, task, "linear", s)][_value_column(task)].max()
                for s in SEEDS if (backbone, task, "linear", s) in sweep.candidates]
        assert base.loc[(task, backbone), "mean"] == pytest.approx(np.mean(best))
        assert base.loc[(task, backbone), "n"] == len(best)


def test_plotted_lines_markers_and_baseline_are_the_candidates(sweep, monkeypatch):
    figures = []
    monkeypatch.setattr(sensitivity_module, "_png", lambda fig: figures.append(fig) or b"png")
    data = sensitivity_data(load_candidates(sweep.tracking_uri, load_experiment(sweep.experiment, sweep.tracking_uri).results))
    plots = sensitivity_module.sensitivity_plots(data)
    assert len(plots) == len(figures) == len(PRIMARY) * len(BACKBONES)
    by_name = dict(zip((p.filename for p in plots), figures))
    task, backbone = "toy-b", "bb-b"  # the cell with one seed left out
    fig = next(f for name, f in by_name.items() if "toy-b" in name and "bb-b" in name)
    left, right = fig.axes[:2]
    curves = {line.get_label(): line for line in left.get_lines()}
    for alpha in (0.01, 0.1):
        line = curves[f"α = {alpha:g}"]
        expected = [_expected_eta(sweep, task, backbone, alpha, eta)[0] for eta in line.get_xdata()]
        assert list(line.get_xdata()) == pytest.approx([0.1, 0.4, 0.8])
        assert list(line.get_ydata()) == pytest.approx(expected)
    best = [sweep.candidates[(backbone, task, "linear", s)]["val_mean_per_class"].max() for s in (0, 1)]
    assert curves["linear (best)"].get_ydata()[0] == pytest.approx(np.mean(best))
    (stars,) = [c.get_offsets() for c in left.collections if isinstance(c, PathCollection)]  # the selected configuration of each seed that has a table
    chosen = [sweep.candidates[(backbone, task, "sea", s)] for s in (0, 1)]
    expected = sorted((t.loc[t["selected"] == 1, "eta"].item(), t.loc[t["selected"] == 1, "val_mean_per_class"].item())
                      for t in chosen)
    np.testing.assert_allclose(sorted(map(tuple, np.asarray(stars))), expected)
    assert right.get_xscale() == "log" and {ln.get_label() for ln in right.get_lines()} >= {"linear", "sea", "fgsm"}
    for method in ("linear", "sea", "fgsm"):  # each lr curve at the table's best value per lr, its seeds' choices starred
        line = next(ln for ln in right.get_lines() if ln.get_label() == method)
        expected = [_expected_lr(sweep, task, backbone, method, lr)[0] for lr in line.get_xdata()]
        assert list(line.get_ydata()) == pytest.approx(expected)
    scatters = [c for c in right.collections if isinstance(c, PathCollection)]  # not the bands
    plotted = sorted(tuple(xy) for c in scatters for xy in np.asarray(c.get_offsets()))
    chosen = sorted((t.loc[t["selected"] == 1, "lr"].item(), t.loc[t["selected"] == 1, "val_mean_per_class"].item())
                    for m in ("linear", "sea", "fgsm") for s in (0, 1) for t in [sweep.candidates[(backbone, task, m, s)]])
    np.testing.assert_allclose(plotted, chosen)


def test_plots_are_embedded_and_cells_without_the_artifact_are_named(report):
    names = [p.name for p in report.plots if p.name.startswith("sensitivity_")]
    assert len(names) == len(PRIMARY) * len(BACKBONES)
    html, md = report.leaderboard_html.read_text(), report.leaderboard_md.read_text()
    assert html.count('<img src="data:image/png;base64,') == len(report.plots)
    for name in names:
        assert f"]({name})" in md
    note = f"{len(WITHOUT)} of {len(CELLS)} cell runs have no candidates.csv"
    assert note in md and note in html
    for backbone, task, method, seed in sorted(WITHOUT):
        assert f"{backbone}|{task}|{method}|{seed}" in html and f"{backbone}\\|{task}\\|{method}\\|{seed}" in md


def test_without_any_candidate_table_the_section_says_so(tmp_path):
    rng = np.random.default_rng(1)
    cells = [("bb", "toy-a", m, s) for m in ("linear", "sea") for s in (0, 1)]
    sweep = log_sweep(tmp_path, "old", values_for(rng, cells), PRIMARY)
    paths = build_report(sweep.experiment, tmp_path / "out", tracking_uri=sweep.tracking_uri)
    md = paths.leaderboard_md.read_text()
    assert "No cell run has a candidates.csv artifact" in md
    assert not any(p.name.startswith("sensitivity_") for p in paths.plots)
    assert not (tmp_path / "out" / "sensitivity.csv").exists()


@pytest.mark.parametrize(("mangle", "problem"), [
    (lambda t: t.drop(columns=["val_top1"]), "lacks column(s) val_top1"),
    (lambda t: t.assign(selected=2), "values other than 0 and 1 in column 'selected'"),
    (lambda t: t.assign(epochs_run="many"), "non-numeric or empty values in column 'epochs_run'"),
])
def test_malformed_candidate_table_is_an_error_naming_the_cell(tmp_path, mangle, problem):
    rng = np.random.default_rng(2)
    cells = [("bb", "toy-a", m, 0) for m in ("linear", "sea")]
    tables = {c: candidate_table(rng, c[2], "top1") for c in cells}
    tables[cells[1]] = mangle(tables[cells[1]])
    sweep = log_sweep(tmp_path, "broken", values_for(rng, cells), PRIMARY, candidates=tables)
    with pytest.raises(OrchestratorError) as error:
        build_report(sweep.experiment, tmp_path / "out", tracking_uri=sweep.tracking_uri)
    message = str(error.value)
    assert "cell bb|toy-a|sea|0 of experiment 'broken'" in message and sweep.run_ids[cells[1]] in message
    assert problem in message and "rerun the cell" in message
    assert not (tmp_path / "out").exists()  # refused before anything is written
