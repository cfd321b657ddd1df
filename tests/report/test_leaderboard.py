"""The main leaderboard: one table per metric convention, tasks × (backbone, method), recomputed from results.csv."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pandas as pd
import pytest
from report_sweeps import log_sweep, values_for
from scipy import stats

from orchestrator.report import build_report

PRIMARY = {"toy-top": "top1", "toy-top2": "top1", "toy-mpc": "mean_per_class"}
ORDER = ("linear", "sea", "logreg")
# bb-b has no logreg at all, and no sea on toy-top2: its columns differ and its averages are incomplete
CELLS = [c for c in itertools.product(("bb-a", "bb-b"), PRIMARY, ORDER, (0, 1, 2))
         if not (c[0] == "bb-b" and (c[2] == "logreg" or (c[2] == "sea" and c[1] == "toy-top2")))]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("board")
    sweep = log_sweep(root, "board", values_for(np.random.default_rng(5), CELLS), PRIMARY)
    return build_report(sweep.experiment, root / "out", tracking_uri=sweep.tracking_uri)


def _ci(d: np.ndarray) -> str:
    if len(d) < 2:
        return "n/a"
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return f"[{d.mean() - half:+.2f}, {d.mean() + half:+.2f}]"


def _expected(results: pd.DataFrame, metric: str) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """Header and rows (text, bold) of the `metric` table, straight from results.csv with pandas/scipy."""
    primary = results[results["primary"] & (results["task"].map(PRIMARY) == metric)]
    tasks = sorted(primary["task"].unique())
    stats_ = primary.groupby(["task", "backbone", "method"])["value"].agg(["mean", "std"])
    header, rows = ["task (metric)"], [[(f"{t} ({metric})", False)] for t in tasks] + [[(f"average over tasks ({len(tasks)})", False)]]
    for backbone in sorted(primary["backbone"].unique()):
        mine = primary[primary["backbone"] == backbone]
        methods = [m for m in ORDER if m in set(mine["method"])]
        diff = "sea" in methods and "linear" in methods
        header += [f"{backbone} · {m}" for m in methods] + ([f"{backbone} · SeA − linear"] if diff else [])
        means = {}
        for i, task in enumerate(tasks):
            best = stats_.loc[(task, backbone)]["mean"].max()
            for m in methods:
                if (task, backbone, m) in stats_.index:
                    mean, std = stats_.loc[(task, backbone, m)]
                    rows[i].append((f"{mean:.2f} ± {std:.2f}", bool(np.isclose(mean, best))))
                    means.setdefault(m, []).append(mean)
                else:
                    rows[i].append(("–", False))
        complete = {m: np.mean(v) for m, v in means.items() if len(v) == len(tasks)}
        rows[-1] += [(f"{complete[m]:.2f}", bool(np.isclose(complete[m], max(complete.values()))))
                     if m in complete else ("–", False) for m in methods]
        if diff:
            cell_means = []
            for i, task in enumerate(tasks):
                pivot = mine[mine["task"] == task].pivot(index="seed", columns="method", values="value")
                if "sea" not in pivot:
                    rows[i].append(("–", False))
                    continue
                d = (pivot["sea"] - pivot["linear"]).dropna().to_numpy()
                rows[i].append((f"{d.mean():+.2f} {_ci(d)}", False))
                cell_means.append(d.mean())
            c = np.array(cell_means)
            rows[-1].append((f"{c.mean():+.2f} {_ci(c)}", False) if len(c) == len(tasks) else ("–", False))
    return header, rows


def _md_row(row) -> str:
    escape = lambda s: s.replace("[", "\\[").replace("]", "\\]")  # noqa: E731 - Markdown's escape of brackets
    return "| " + " | ".join(f"**{escape(t)}**" if bold else escape(t) for t, bold in row) + " |"


@pytest.mark.parametrize("metric", ["top1", "mean_per_class"])
def test_markdown_table_equals_results_csv(report, metric):
    results = pd.read_csv(report.results_csv)
    header, rows = _expected(results, metric)
    md = report.leaderboard_md.read_text()
    assert "| " + " | ".join(header) + " |" in md
    for row in rows:
        assert _md_row(row) in md, _md_row(row)
    # the combined tables come before the per-method details
    assert md.index(_md_row(rows[0])) < md.index("## Details: the leaderboard per method") < md.index("### method: linear")


def test_the_average_row_is_shown_only_for_columns_with_every_task(report):
    results = pd.read_csv(report.results_csv)
    _, rows = _expected(results, "top1")
    average = [t for t, _ in rows[-1]]
    assert average[0] == "average over tasks (2)"
    # bb-a: linear, sea, logreg, SeA − linear all complete; bb-b: linear complete, sea and its difference are not
    assert "–" not in average[1:5] and average[5] != "–" and average[6:] == ["–", "–"]


def _html_tables(html: str) -> list[str]:
    return re.findall(r'<table class="board"><caption>[^<]*accuracy \(%, test\).*?</table>', html, re.S)


def test_html_table_has_backbone_groups_bold_winners_and_the_same_numbers(report):
    results = pd.read_csv(report.results_csv)
    html = report.leaderboard_html.read_text()
    tables = _html_tables(html)
    assert len(tables) == 2  # one per metric convention, outside the collapsed details
    assert html.index(tables[1]) < html.index("<details>")
    for table, metric in zip(tables, ("top1", "mean_per_class")):
        _, rows = _expected(results, metric)
        assert '<th colspan="1" class="group"></th><th colspan="4" class="group">bb-a</th>' in table
        for row in rows:
            cells = "".join(f'<td class="best">{t}</td>' if bold else f"<td>{t}</td>" for t, bold in row)
            assert cells in table
    assert html.count('<tr class="summary">') == 2
    details = html[html.index("<details>"):html.index("</details>")]
    assert details.count('<table class="board">') == 3 + 2  # per method, best method, SeA − linear with n


def test_latex_rows_hold_the_same_numbers(report):
    results = pd.read_csv(report.results_csv)
    tex = report.leaderboard_tex.read_text()
    assert report.leaderboard_tex in report.files
    for metric in ("top1", "mean_per_class"):
        _, rows = _expected(results, metric)
        for row in rows:
            cells = [t.replace("±", r"\ensuremath{\pm}").replace("−", r"\ensuremath{-}").replace("_", r"\_")
                     .replace("[", "{[}").replace("]", "{]}").replace("–", "--") for t, _ in row]
            cells = [rf"\textbf{{{c}}}" if bold else c for c, (_, bold) in zip(cells, row)]
            assert " & ".join(cells) + r" \\" in tex
