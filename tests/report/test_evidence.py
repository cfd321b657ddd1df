"""Issue #19 on the reading side: flags and test_selected rows in results.csv, the Stability section, the
claims' flagged counts and verdicts without them, the under-trained label, the bootstrap intervals, and
reports of runs recorded before any of it. Expected numbers are recomputed here from the fixture's inputs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from report_fixture import (
    BACKBONES,
    PREDICTED_BACKBONE,
    STEPS_BUDGET,
    STEPS_RUN,
    TASK_PLAIN,
    TASKS,
    UNSTABLE_CELL,
    UNSTABLE_GAP,
    make_sweep,
)
from scipy import stats

from orchestrator.report import build_report, compute_leaderboard, render_markdown


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("mlflow19"), contract19=True)


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    return build_report(sweep.experiment, tmp_path_factory.mktemp("report19"), tracking_uri=sweep.tracking_uri)


@pytest.fixture(scope="module")
def md(report) -> str:
    return report.leaderboard_md.read_text()


def _section(md: str, heading: str) -> str:
    return md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def _diffs(sweep, drop=()) -> dict:
    """(task, backbone) -> per-seed SeA − linear of the primary metric, the seeds in `drop` unpaired."""
    out = {}
    for task, metric in TASKS.items():
        for backbone in BACKBONES:
            seeds = [s for s in (0, 1, 2) if (backbone, task, "sea", s) not in drop]
            out[(task, backbone)] = np.array([sweep.values[(backbone, task, "sea", s)][f"test_{metric}"]
                                              - sweep.values[(backbone, task, "linear", s)][f"test_{metric}"] for s in seeds])
    return out


def _t(x: np.ndarray) -> str:
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return f"[{x.mean() - half:+.2f}, {x.mean() + half:+.2f}]"


def test_results_csv_has_flags_and_test_selected_rows(sweep, report):
    results = pd.read_csv(report.results_csv, keep_default_na=False)
    flags = results.drop_duplicates("run_id").set_index(["backbone", "task", "method", "seed"])["flags"]
    assert flags[UNSTABLE_CELL] == "refit_unstable;reduced_budget"
    assert set(flags.xs("logreg", level="method")) == {""}
    assert set(flags.xs("finetune", level="method")) == {"under_trained"}
    assert set(flags.xs("linear", level="method")) == {"reduced_budget"}
    selected = results[results["split"] == "test_selected"]
    assert set(selected["method"]) == {"linear", "sea"} and set(selected["metric"]) == {"top1", "mean_per_class"}
    row = selected[(selected[["backbone", "task", "method", "seed"]].apply(tuple, axis=1) == UNSTABLE_CELL)
                   & (selected["metric"] == TASKS[UNSTABLE_CELL[1]])]
    assert row["value"].item() == pytest.approx(sweep.values[UNSTABLE_CELL][f"test_{TASKS[UNSTABLE_CELL[1]]}"] + UNSTABLE_GAP)
    assert set(results.loc[results["primary"], "split"]) == {"test"}


def test_stability_lists_the_flagged_runs_with_both_test_numbers(sweep, md):
    text = _section(md, "Stability")
    refit = sweep.values[UNSTABLE_CELL][f"test_{TASKS[UNSTABLE_CELL[1]]}"]
    _, _, method, seed = UNSTABLE_CELL
    assert (f"| {method} | {seed} | refit_unstable, reduced_budget | mean_per_class | {refit:.2f} | "
            f"{refit + UNSTABLE_GAP:.2f} | {-UNSTABLE_GAP:+.2f} | 1.50 | 50 of 100 epochs |") in text
    assert text.count("| finetune |") == 3 and f"{STEPS_RUN} of {STEPS_BUDGET:,} steps".replace(",", " ") in text
    assert "23 more cell run(s) are flagged reduced_budget only (50 of 100 epochs)" in text


def test_the_headline_counts_its_flagged_cells_and_states_the_verdict_without_them(sweep, md):
    claims = _section(md, "Claims")
    assert "Flagged cells: 1 of 4 (a SeA or linear run flagged refit_unstable or under_trained; 1 run(s)" in claims
    kept = np.array([d.mean() for d in _diffs(sweep, drop={UNSTABLE_CELL}).values()])
    assert f"{kept.mean():+.2f} points over 4 cells, 95 % t-interval {_t(kept)}".replace("[", "\\[").replace("]", "\\]") in claims
    assert "the verdict holds" in claims or "the verdict does not hold (without them:" in claims
    # one budget line, not one per cell: 2 tasks × 2 backbones × (linear, sea) × 3 seeds head runs
    assert "Budget: All 24 head cell runs ran a reduced budget (50 of 100 epochs)" in claims
    assert claims.count("reduced budget") == 1


def test_the_under_trained_fine_tuning_claim_is_labelled(md):
    claims = _section(md, "Claims")
    assert "Fine-tuning — under-trained (20 of 5 000 steps): a check of the machinery, not a verdict: SeA" in claims
    assert "without them no comparable pair is left, so there is no verdict" in claims
    assert "Under-trained (20 of 5 000 steps): a check of the machinery, not a verdict." in _section(md, "SeA vs fine-tuning")


def test_the_leaderboard_marks_the_unstable_cell_and_not_the_uniform_budget(sweep, md):
    board = _section(md, "Leaderboard")
    assert board.count("†") == 2  # the cell's mark and its legend
    assert "°" not in board and "†: refit_unstable in at least one seed (its refit and selected head disagree" in board
    x = np.array([sweep.values[(UNSTABLE_CELL[0], UNSTABLE_CELL[1], "sea", s)]["test_mean_per_class"] for s in (0, 1, 2)])
    assert f"{x.mean():.2f} ± {x.std(ddof=1):.2f} †" in board
    assert "ddof = 1" in board and "its ± 0.00 says the carve is fixed" in board


def _mean_per_class(frame: pd.DataFrame) -> float:
    return float((frame["pred"] == frame["label"]).groupby(frame["label"]).mean().mean() * 100)


def test_the_paired_bootstrap_reads_predictions_and_uses_the_primary_metric(sweep, md):
    section = _section(md, "SeA − linear (paired over seeds)")
    assert "1 000 resamples" in section
    for task, metric in TASKS.items():
        score = (lambda f: float((f["pred"] == f["label"]).mean() * 100)) if metric == "top1" else _mean_per_class
        point = np.mean([score(sweep.predictions[(PREDICTED_BACKBONE, task, "sea", s)])
                         - score(sweep.predictions[(PREDICTED_BACKBONE, task, "linear", s)]) for s in (0, 1, 2)])
        row = next(line for line in section.splitlines() if f"| {PREDICTED_BACKBONE} | {metric} | 3 | 360 |" in line
                   and (task == TASK_PLAIN) == line.startswith(f"| {TASK_PLAIN}"))
        assert f"| {point:+.2f} | \\[" in row
        low, high = (float(v) for v in row.split("\\[")[1].split("\\]")[0].split(", "))
        assert low < point < high
    assert section.count("no predictions.parquet (recorded before predictions were logged): t-interval only") == 2


def test_the_headline_names_its_intervals_and_the_seeds_for_one_point(sweep, md):
    claims = _section(md, "Claims")
    diffs = list(_diffs(sweep).values())
    assert "95 % t-interval over the 4 cells' mean paired differences" in claims
    assert "95 % hierarchical bootstrap (the cells resampled with replacement, then each one's seeds; 1 000 resamples" in claims
    sd = math.sqrt(sum(2 * d.var(ddof=1) for d in diffs) / (2 * len(diffs)))
    n = next(n for n in range(2, 10_000) if stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) <= 1)
    assert f"of {sd:.2f} points; a 95 % t-interval of ± 1 point on one cell needs n = {n} seeds" in claims


def test_the_report_is_the_same_twice(sweep, report, tmp_path):
    again = build_report(sweep.experiment, tmp_path, tracking_uri=sweep.tracking_uri)
    assert again.leaderboard_md.read_text() == report.leaderboard_md.read_text()


def test_runs_recorded_before_issue_19_still_report(tmp_path):
    old = make_sweep(tmp_path, experiment="old-runs")
    paths = build_report(old.experiment, tmp_path / "out", tracking_uri=old.tracking_uri)
    results = pd.read_csv(paths.results_csv, keep_default_na=False)
    assert set(results["flags"]) == {""} and "test_selected" not in set(results["split"])
    md = paths.leaderboard_md.read_text()
    assert "No cell run recorded its selected head's test score" in _section(md, "Stability")
    assert "Flagged: none of the 4 cells" in md and "Budget:" not in md
    assert "paired bootstrap over test examples" not in md  # no predictions: the t-interval only
    assert "No SeA or linear run has a predictions.parquet" in md
    assert "hierarchical bootstrap" in md  # over cells and seeds, from the metrics alone


def test_an_ensemble_among_the_cells_is_said_not_independent():
    rows = [{"backbone": b, "task": "t", "method": m, "seed": s, "metric": "top1", "split": "test",
             "value": 60.0 + (1.0 if m == "sea" else 0.0) + s * 0.3 + len(b) % 3, "run_id": f"{b}{m}{s}", "primary": True}
            for b in ("a", "b", "ensemble:a+b") for m in ("linear", "sea") for s in (0, 1, 2)]
    md = render_markdown(compute_leaderboard(pd.DataFrame(rows), experiment="e"))
    assert "Ensemble cells: 1 of the 3; an ensemble reuses its parts' features" in md
