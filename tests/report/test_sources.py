"""One leaderboard from several experiments: conflicts refused, then decided by --prefer; every number's source."""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from report_sweeps import log_sweep, values_for

from orchestrator.commands import report as report_command
from orchestrator.errors import OrchestratorError
from orchestrator.report import build_report

PRIMARY = {"toy-a": "top1", "toy-b": "mean_per_class"}
OLD, NEW = "sea-old", "sea-new"
CONFLICT = ("bb-old", "toy-a", "sea", 0)  # run again in the newer sweep
FAILED_THEN_DONE = ("bb-new", "toy-b", "linear", 1)  # failed in the old sweep, finished in the new one


def _cells(backbone):
    return list(itertools.product((backbone,), PRIMARY, ("linear", "sea"), (0, 1, 2)))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(11)
    old = log_sweep(root, OLD, values_for(rng, _cells("bb-old")), PRIMARY)
    new_values = values_for(rng, _cells("bb-new"))
    new_values[CONFLICT] = {k: v + 7.5 for k, v in old.values[CONFLICT].items()}  # clearly different
    new = log_sweep(root, NEW, new_values, PRIMARY, t0=1_800_000_000_000)  # weeks later
    log_sweep(root, "unrelated", values_for(rng, _cells("bb-x")), PRIMARY)
    client = MlflowClient(tracking_uri=old.tracking_uri)
    exp = client.get_experiment_by_name(OLD).experiment_id
    b, t, m, s = FAILED_THEN_DONE
    failed = client.create_run(exp, tags={"mlflow.parentRunId": old.parent_run_id, "seabench.role": "cell",
                                          "backbone": b, "task": t, "method": m, "seed": str(s),
                                          "cell_id": f"{b}|{t}|{m}|{s}", "status": "failed", "error": "OOM"})
    client.set_terminated(failed.info.run_id, "FAILED")
    return old, new


def test_a_cell_in_two_experiments_is_refused_naming_both(store, tmp_path):
    old, new = store
    with pytest.raises(OrchestratorError) as error:
        build_report([OLD, NEW], tmp_path / "out", tracking_uri=old.tracking_uri)
    message = str(error.value)
    assert "1 cell(s) have results in more than one experiment" in message
    assert (f"cell bb-old|toy-a|sea|0: results in experiment {OLD!r} (run {old.run_ids[CONFLICT]}) and "
            f"experiment {NEW!r} (run {new.run_ids[CONFLICT]})") in message
    assert f"--prefer {NEW} or --prefer {OLD}" in message and "--prefer newest" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("prefer", "winner", "rule"), [([NEW], NEW, f"--prefer {NEW}"), ([OLD], OLD, f"--prefer {OLD}"),
                                                         (["newest"], NEW, "newest")])
def test_the_chosen_winner_is_used_and_every_number_names_its_source(store, tmp_path, prefer, winner, rule):
    old, new = store
    paths = build_report([OLD, NEW], tmp_path / "out", tracking_uri=old.tracking_uri, prefer=prefer)
    assert paths.experiments == (OLD, NEW) and paths.conflicts == 1
    results = pd.read_csv(paths.results_csv)
    by_cell = results.groupby(["backbone", "task", "method", "seed"])
    assert set(by_cell["source"].nunique()) == {1}  # one source per cell
    chosen = results[(results.backbone == CONFLICT[0]) & (results.task == CONFLICT[1]) & (results.method == CONFLICT[2])
                     & (results.seed == CONFLICT[3])]
    logged = (old if winner == OLD else new)
    assert set(chosen["source"]) == {winner} and set(chosen["run_id"]) == {logged.run_ids[CONFLICT]}
    for row in chosen.itertuples():
        assert row.value == pytest.approx(logged.values[CONFLICT][f"{row.split}_{row.metric}"])
    others = results[~results["run_id"].isin([old.run_ids[CONFLICT], new.run_ids[CONFLICT]])]
    assert (others["source"] == others["backbone"].map({"bb-old": OLD, "bb-new": NEW})).all()
    assert len(results) == 4 * (len(_cells("bb-old")) + len(_cells("bb-new")))
    # the leaderboard's number for the conflicting cell's column is the mean over the chosen seeds
    sea = results[(results.primary) & (results.backbone == "bb-old") & (results.task == "toy-a") & (results.method == "sea")]
    md = paths.leaderboard_md.read_text()
    assert f"{sea['value'].mean():.2f} ± {sea['value'].std(ddof=1):.2f}" in md
    loser = OLD if winner == NEW else NEW
    assert f"| bb-old | toy-a | sea | 0 | {winner} | {logged.run_ids[CONFLICT]} | {loser} | {rule} |" in md
    assert f"| {OLD} | {old.parent_run_id} | bb-old | linear, sea | 2 | {12 - (winner == NEW)} |" in md
    assert f"| {NEW} | {new.parent_run_id} | bb-new | linear, sea | 2 | 12 |" in md


def test_a_cell_that_failed_in_one_sweep_and_finished_in_another_is_not_failed(store, tmp_path):
    old, _ = store
    single = build_report(OLD, tmp_path / "one", tracking_uri=old.tracking_uri)
    assert single.n_failed == 1
    assert f"| {' | '.join(map(str, FAILED_THEN_DONE))} | 1 | OOM |" in single.leaderboard_md.read_text()
    both = build_report([OLD, NEW], tmp_path / "both", tracking_uri=old.tracking_uri, prefer=["newest"])
    assert both.n_failed == 0 and "## Failed cells" not in both.leaderboard_md.read_text()


def test_a_failed_cell_names_its_experiment(tmp_path):
    rng = np.random.default_rng(12)
    first = log_sweep(tmp_path, "first", values_for(rng, _cells("bb-1")), PRIMARY)
    log_sweep(tmp_path, "second", values_for(rng, _cells("bb-2")), PRIMARY)
    client = MlflowClient(tracking_uri=first.tracking_uri)
    tags = {"seabench.role": "cell", "backbone": "bb-2", "task": "toy-a", "method": "logreg", "seed": "0",
            "cell_id": "bb-2|toy-a|logreg|0", "status": "failed", "error": "disk full"}
    run = client.create_run(client.get_experiment_by_name("second").experiment_id, tags=tags).info.run_id
    client.set_terminated(run, "FAILED")
    paths = build_report(["first", "second"], tmp_path / "out", tracking_uri=first.tracking_uri)
    md = paths.leaderboard_md.read_text()
    assert paths.n_failed == 1
    assert "| backbone | task | method | seed | attempts | error | run | experiment |" in md
    assert f"| bb-2 | toy-a | logreg | 0 | 1 | disk full | {run} | second |" in md


def test_a_pattern_selects_experiments_by_name(store, tmp_path):
    old, _ = store
    paths = build_report([], tmp_path / "out", tracking_uri=old.tracking_uri, patterns=["sea-*"], prefer=[NEW])
    assert paths.experiments == (NEW, OLD)  # sorted matches; "unrelated" left out
    assert set(pd.read_csv(paths.results_csv)["source"]) == {NEW, OLD}
    with pytest.raises(OrchestratorError, match=r"'nope-\*' matches no MLflow experiment.*sea-new, sea-old, unrelated"):
        build_report([], tmp_path / "x", tracking_uri=old.tracking_uri, patterns=["nope-*"])


def test_prefer_must_name_a_reported_experiment(store, tmp_path):
    old, _ = store
    with pytest.raises(OrchestratorError, match=r"--prefer 'unrelated': not among the reported experiments"):
        build_report([OLD, NEW], tmp_path / "out", tracking_uri=old.tracking_uri, prefer=["unrelated"])


def test_a_combined_report_is_not_logged_to_either_sweep(store, tmp_path):
    old, new = store
    build_report([OLD, NEW], tmp_path / "out", tracking_uri=old.tracking_uri, prefer=[NEW])
    client = MlflowClient(tracking_uri=old.tracking_uri)
    assert client.list_artifacts(new.parent_run_id, "report") == []


def test_cli_combines_repeated_experiments_with_prefer(store, tmp_path, capsys):
    old, _ = store
    parser = argparse.ArgumentParser()
    report_command.add_arguments(parser)
    argv = ["--experiment", OLD, "--experiment", NEW, "--out", str(tmp_path), "--tracking-uri", old.tracking_uri]
    with pytest.raises(OrchestratorError, match="more than one experiment"):
        report_command.run(parser.parse_args(argv))
    assert report_command.run(parser.parse_args([*argv, "--prefer", "newest"])) == 0
    out = capsys.readouterr().out
    assert f"combined 2 experiments: {OLD}, {NEW} (1 cell(s) decided by --prefer)" in out
    assert "not logged to MLflow" in out and (tmp_path / "leaderboard.tex").exists()
