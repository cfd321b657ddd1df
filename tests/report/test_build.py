"""`seabench report`: MLflow experiment → results.csv, leaderboard.md/.html, plots, claims, artifacts."""

from __future__ import annotations

import argparse
import base64
import io
import math
import re

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image
from report_fixture import (
    BACKBONES,
    FAILED_CELL,
    METRICS,
    RETRIED_CELL,
    TASK_PLAIN,
    TASK_XSS,
    TASKS,
    make_sweep,
)
from scipy import stats

from orchestrator.commands import report as report_command
from orchestrator.errors import OrchestratorError
from orchestrator.report import (
    build_report,
    compute_leaderboard,
    paired_differences,
    render_html,
    render_markdown,
    summarise,
)
from orchestrator.report.stats import OverallDifference


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return make_sweep(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    return build_report(sweep.experiment, tmp_path_factory.mktemp("report"), tracking_uri=sweep.tracking_uri)


def _primary(sweep, backbone, task, method):
    """Independent of the report code: the test primary metric over seeds, straight from the fixture."""
    key = f"test_{TASKS[task]}"
    return np.array([v[key] for (b, t, m, _), v in sorted(sweep.values.items()) if (b, t, m) == (backbone, task, method)])


def _cells():
    return [(t, b) for t in TASKS for b in BACKBONES]


def _mean_std(x):
    return f"{x.mean():.2f} ± {x.std(ddof=1):.2f}"


def test_results_csv_holds_every_mlflow_metric_of_finished_cells(sweep, report):
    results = pd.read_csv(report.results_csv, keep_default_na=False)
    assert list(results.columns) == ["backbone", "task", "method", "seed", "metric", "split", "value", "run_id", "primary",
                                     "flags", "source"]
    assert set(results["source"]) == {sweep.experiment}  # every number names the experiment it came from
    client = MlflowClient(tracking_uri=sweep.tracking_uri)
    assert len(results) == len(sweep.values) * len(METRICS)
    for run_id, rows in results.groupby("run_id"):
        logged = client.get_run(run_id).data.metrics
        for row in rows.itertuples():
            assert row.value == pytest.approx(logged[f"{row.split}_{row.metric}"], abs=1e-9)
            assert row.value == pytest.approx(sweep.values[(row.backbone, row.task, row.method, row.seed)][f"{row.split}_{row.metric}"])
    assert not (results["metric"].str.contains("candidate")).any()  # curves are not results


def test_primary_flag_marks_the_test_value_of_each_tasks_primary_metric(report):
    results = pd.read_csv(report.results_csv, keep_default_na=False)
    primary = results[results["primary"]]
    assert set(primary["split"]) == {"test"}
    assert dict(primary.groupby("task")["metric"].first()) == TASKS


def test_retried_cell_counts_as_finished_and_failed_cell_is_listed(report):
    results = pd.read_csv(report.results_csv, keep_default_na=False)
    backbone, task, method, seed = RETRIED_CELL
    retried = results[(results.backbone == backbone) & (results.task == task) & (results.method == method) & (results.seed == seed)]
    assert len(retried) == len(METRICS)
    assert report.n_failed == 1
    md = report.leaderboard_md.read_text()
    assert "## Failed cells" in md and "CUDA out of memory" in md and "first attempt" not in md
    assert f"| {FAILED_CELL[0]} | {FAILED_CELL[1]} | {FAILED_CELL[2]} | {FAILED_CELL[3]} |" in md


def test_mean_and_std_over_seeds_match_numpy(sweep, report):
    md = report.leaderboard_md.read_text()
    html = report.leaderboard_html.read_text()
    for task, backbone in _cells():
        for method in ("linear", "sea", "logreg"):
            text = _mean_std(_primary(sweep, backbone, task, method))
            assert text in md and text in html


def test_paired_ci_per_cell_matches_scipy(sweep, report):
    md = report.leaderboard_md.read_text()
    for task, backbone in _cells():
        d = _primary(sweep, backbone, task, "sea") - _primary(sweep, backbone, task, "linear")
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        assert f"{d.mean():+.2f} \\[{d.mean() - half:+.2f}, {d.mean() + half:+.2f}\\] (n=3)" in md


def test_best_method_per_cell_is_highlighted_in_md_and_html(sweep, report):
    md = report.leaderboard_md.read_text()
    html = report.leaderboard_html.read_text()
    winners = set()
    for task, backbone in _cells():
        means = {m: _primary(sweep, backbone, task, m) for m in ("linear", "sea", "logreg")}
        best = max(means, key=lambda m: means[m].mean())
        winners.add(best)
        for method, x in means.items():
            text = _mean_std(x)
            assert (f"**{text}**" in md) == (method == best)
            assert (f'<td class="best">{text}</td>' in html) == (method == best)
            assert (f"<td>{text}</td>" in html) == (method != best)
    assert winners == {"sea", "logreg"}  # the fixture makes logreg win one cell


def test_claims_numbers_are_the_t_interval_over_cell_mean_differences(sweep, report):
    cell_means = np.array([(_primary(sweep, b, t, "sea") - _primary(sweep, b, t, "linear")).mean() for t, b in _cells()])
    half = stats.t.ppf(0.975, len(cell_means) - 1) * cell_means.std(ddof=1) / math.sqrt(len(cell_means))
    assert report.n_cells == 4
    assert report.mean_difference == pytest.approx(cell_means.mean())
    assert (report.ci_low, report.ci_high) == pytest.approx((cell_means.mean() - half, cell_means.mean() + half))
    assert report.supports_paper is True and report.verdict.startswith("Supports the claim")
    md = report.leaderboard_md.read_text()
    assert f"{cell_means.mean():+.2f} points" in md and "≈ +2 points" in md
    assert "no reference supplied" in md


@pytest.mark.parametrize(
    ("overall", "supports", "start"),
    [
        (OverallDifference(4, 2.1, 0.5, 3.7), True, "Supports the claim"),
        (OverallDifference(4, 3.5, 2.5, 4.5), True, "Supports the claim"),
        (OverallDifference(4, 0.8, 0.2, 1.4), False, "Partly"),
        (OverallDifference(4, 1.0, -0.5, 2.5), False, "Inconclusive"),
        (OverallDifference(4, 0.2, -0.5, 0.9), False, "Does not support"),
        (OverallDifference(4, -3.0, -4.0, -2.0), False, "Does not support"),
        (OverallDifference(1, 2.0, math.nan, math.nan), None, "Only 1 cell"),
    ],
)
def test_verdict_says_plainly_whether_the_paper_gain_is_supported(overall, supports, start):
    assert overall.supports_paper is supports
    assert overall.verdict.startswith(start)


def _sea_task_mean(sweep, task, metric="test_top1"):
    return np.mean([np.mean([v[metric] for (b, t, m, _), v in sweep.values.items() if (b, t, m) == (bb, task, "sea")])
                    for bb in BACKBONES])


def test_finetune_reference_counts_tasks_within_one_point(sweep, tmp_path):
    ref = tmp_path / "ft.csv"
    # within 0.5 points on one task, 3 points short on the other
    pd.DataFrame({"task": [TASK_PLAIN, TASK_XSS],
                  "top1": [_sea_task_mean(sweep, TASK_PLAIN) + 0.5, _sea_task_mean(sweep, TASK_XSS) + 3.0]}).to_csv(ref, index=False)
    paths = build_report(sweep.experiment, tmp_path / "out", tracking_uri=sweep.tracking_uri, reference_csv=str(ref))
    assert (paths.finetune_within, paths.finetune_compared) == (1, 2)
    md = paths.leaderboard_md.read_text()
    assert "within 1 point of (or above) fine-tuning on 1 of 2 tasks compared (paper: 6 of 11)" in md
    assert "| toy-top1 | mean over backbones | top1 |" in md and "| -0.50 | **yes** |" in md


def test_finetune_reference_per_backbone_compares_the_primary_value(sweep, tmp_path):
    ref = tmp_path / "ft.csv"
    sea_large = np.mean(_primary(sweep, "bb-large", TASK_XSS, "sea"))
    ref.write_text(f"task,backbone,value\n{TASK_XSS},bb-large,{sea_large - 4:.4f}\n")
    paths = build_report(sweep.experiment, tmp_path / "out", tracking_uri=sweep.tracking_uri, reference_csv=str(ref))
    assert (paths.finetune_within, paths.finetune_compared) == (1, 1)
    assert "| bb-large | value |" in paths.leaderboard_md.read_text()


@pytest.mark.parametrize(
    ("content", "column"),
    [
        ("name,top1\ncifar10,90\n", "'task'"),
        ("task,accuracy\ntoy-top1,90\n", "'top1' or 'value'"),
        ("task,top1\nno-such-task,90\n", "'task'"),
        ("task,top1\ntoy-top1,ninety\n", "'top1'"),
    ],
)
def test_invalid_finetune_reference_names_file_and_column(sweep, tmp_path, content, column):
    ref = tmp_path / "bad-ft.csv"
    ref.write_text(content)
    with pytest.raises(OrchestratorError, match=r"bad-ft\.csv") as error:
        build_report(sweep.experiment, tmp_path / "out", tracking_uri=sweep.tracking_uri, reference_csv=str(ref))
    assert column in str(error.value)
    assert not (tmp_path / "out").exists()  # validated before anything is written


def test_script_task_name_renders_as_text_everywhere(report):
    html = report.leaderboard_html.read_text()
    md = report.leaderboard_md.read_text()
    assert "<script" not in html.lower() and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in md and "&lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert all("<" not in p.name and ">" not in p.name for p in report.plots)


def test_plots_are_valid_pngs_and_embedded_in_html(report):
    assert {p.name for p in report.plots} >= {"sea_minus_linear.png"}
    assert sum(p.name.startswith("bars_") for p in report.plots) == len(TASKS)
    html = report.leaderboard_html.read_text()
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == len(report.plots)
    for blob in [p.read_bytes() for p in report.plots] + [base64.b64decode(e) for e in embedded]:
        image = Image.open(io.BytesIO(blob))
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        image.verify()
    assert "http://" not in html and "https://" not in html and "<link" not in html  # self-contained


def test_report_is_logged_to_the_parent_run(sweep, report):
    client = MlflowClient(tracking_uri=sweep.tracking_uri)
    assert report.parent_run_id == sweep.parent_run_id
    logged = {a.path.split("/", 1)[1] for a in client.list_artifacts(sweep.parent_run_id, "report")}
    assert logged == {p.name for p in report.files}


def test_experiment_without_parent_run_still_reports_but_logs_nothing(tmp_path):
    sweep = make_sweep(tmp_path, experiment="orphan-cells", parent_run=False, seeds=(0, 1))
    paths = build_report(sweep.experiment, tmp_path / "out", tracking_uri=sweep.tracking_uri)
    assert paths.parent_run_id is None and paths.leaderboard_html.exists()


def test_no_temporary_files_are_left_behind(report):
    assert sorted(p.name for p in report.out_dir.iterdir()) == sorted(p.name for p in report.files)


def test_unknown_experiment_lists_existing_names(sweep, tmp_path):
    with pytest.raises(OrchestratorError, match=r"does not exist; existing experiments: .*synthetic-sweep"):
        build_report("no-such-sweep", tmp_path, tracking_uri=sweep.tracking_uri)


def test_experiment_without_finished_cells_says_how_to_produce_them(sweep, tmp_path):
    client = MlflowClient(tracking_uri=sweep.tracking_uri)
    exp = client.create_experiment("empty-sweep", artifact_location=(tmp_path / "a").as_uri())
    client.create_run(exp, run_name="sweep", tags={"seabench.role": "sweep"})
    with pytest.raises(OrchestratorError, match=r"no finished cells.*seabench run --config"):
        build_report("empty-sweep", tmp_path / "out", tracking_uri=sweep.tracking_uri)


def test_missing_sqlite_store_is_an_error_not_a_new_store(tmp_path):
    with pytest.raises(OrchestratorError, match="no MLflow store"):
        build_report("x", tmp_path / "out", tracking_uri=f"sqlite:///{tmp_path / 'absent.db'}")
    assert not (tmp_path / "absent.db").exists()


def _long(rows):
    return pd.DataFrame(
        [{"backbone": b, "task": t, "method": m, "seed": s, "metric": "top1", "split": "test", "value": v,
          "run_id": f"r{i}", "primary": True} for i, (b, t, m, s, v) in enumerate(rows)]
    )


def test_summarise_and_paired_differences_on_a_frame():
    df = _long([("b", "t", "linear", 0, 50.0), ("b", "t", "linear", 1, 52.0), ("b", "t", "sea", 0, 53.0),
                ("b", "t", "sea", 1, 54.0), ("b", "t", "sea", 2, 99.0)])  # seed 2 has no linear partner
    summary = summarise(df).set_index("method")
    assert summary.loc["sea", "mean"] == pytest.approx(np.mean([53, 54, 99]))
    assert summary.loc["linear", "std"] == pytest.approx(np.std([50, 52], ddof=1))
    assert bool(summary.loc["sea", "best"]) and not bool(summary.loc["linear", "best"])
    diff = paired_differences(df).iloc[0]
    half = stats.t.ppf(0.975, 1) * np.std([3, 2], ddof=1) / math.sqrt(2)
    assert diff["n"] == 2 and diff["mean"] == pytest.approx(2.5)
    assert (diff["ci_low"], diff["ci_high"]) == pytest.approx((2.5 - half, 2.5 + half))


def test_single_seed_shows_ci_as_na():
    df = _long([("b", "t", "linear", 0, 50.0), ("b", "t", "sea", 0, 51.0)])
    board = compute_leaderboard(df, experiment="one-seed")
    assert math.isnan(paired_differences(df).iloc[0]["ci_low"])
    md = render_markdown(board)
    assert "+1.00 n/a (n=1)" in md and "51.00 ± n/a" in md
    assert "Only 1 cell" in md
    assert "<td>+1.00 n/a (n=1)</td>" in render_html(board)


def test_without_sea_results_the_gain_claim_is_not_checked():
    df = _long([("b", "t", "linear", 0, 50.0), ("b", "t", "logreg", 0, 52.0)])
    board = compute_leaderboard(df, experiment="no-sea")
    assert board.overall.n_cells == 0 and board.overall.supports_paper is None
    md = render_markdown(board)
    assert "cannot be checked" in md and "Not available" in md and "**52.00 ± n/a**" in md


def test_cli_report_verb_writes_the_report_and_prints_the_verdict(sweep, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    report_command.add_arguments(parser)
    args = parser.parse_args(["--experiment", sweep.experiment, "--out", str(tmp_path), "--tracking-uri", sweep.tracking_uri])
    assert report_command.run(args) == 0
    out = capsys.readouterr().out
    assert "leaderboard.html" in out and "Supports the claim" in out and "1 failed cell" in out
    assert (tmp_path / "leaderboard.html").exists()


def test_a_report_opens_one_mlflow_client_and_fetches_the_cell_runs_once(sweep, tmp_path, monkeypatch):
    """Every reader (experiments, runs, candidate tables, predictions, the final upload) shares the report's
    client, and the cell runs are fetched once, not again per reader."""
    import os
    import sys

    import orchestrator.report.data as data_module
    import orchestrator.report.sources as sources_module
    from orchestrator.runs import CELL_ROLE, role_filter, search_runs

    opened, fetched = [], []
    init = MlflowClient.__init__

    def counting_init(self, *args, **kwargs):   # ours only: MLflow's artifact download builds one of its own
        caller = sys._getframe(1).f_code.co_filename
        if f"{os.sep}orchestrator{os.sep}" in caller:
            opened.append(caller)
        init(self, *args, **kwargs)

    def counting_search(client, experiment_id, filter_string):
        fetched.append(filter_string)
        return search_runs(client, experiment_id, filter_string)

    monkeypatch.setattr(MlflowClient, "__init__", counting_init)
    for module in (data_module, sources_module):
        monkeypatch.setattr(module, "search_runs", counting_search)
    build_report(sweep.experiment, tmp_path, tracking_uri=sweep.tracking_uri)
    assert len(opened) == 1, opened
    assert fetched.count(role_filter(CELL_ROLE)) == 1
