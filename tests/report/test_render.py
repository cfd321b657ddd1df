"""Renderers: leaderboard.tex is structurally sound booktabs with every user string escaped; groups in MD/HTML."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from orchestrator.report import compute_leaderboard, render_html, render_markdown
from orchestrator.report.render import render_latex

HOSTILE_TASK = r"a_b & c%d $x# {y} ~z^ \w [0]"
HOSTILE_BACKBONE = "bb_1&2%"
# the same strings as LaTeX must print them, written out by hand
TASK_TEX = (r"a\_b \& c\%d \$x\# \{y\} \textasciitilde{}z\textasciicircum{} \textbackslash{}w {[}0{]}")
BACKBONE_TEX = r"bb\_1\&2\%"
ALLOWED = {"toprule", "midrule", "bottomrule", "cmidrule", "multicolumn", "textbf", "ensuremath", "pm", "begin",
           "end", "textbackslash", "textasciitilde", "textasciicircum", "textless", "textgreater", "textbar",
           "&", "%", "_", "$", "#", "{", "}", "\\"}


def _frame() -> pd.DataFrame:
    rows = []
    for task, metric in ((HOSTILE_TASK, "top1"), ("plain", "top1"), ("mpc", "mean_per_class")):
        for backbone in (HOSTILE_BACKBONE, "clean"):
            for method, offset in (("linear", 0.0), ("sea", 2.0), ("my_method%", 1.0)):
                for seed in (0, 1, 2):
                    rows.append({"backbone": backbone, "task": task, "method": method, "seed": seed, "metric": metric,
                                 "split": "test", "value": 60 + offset + seed * 0.7 + len(task) % 3, "run_id": "r",
                                 "primary": True})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tex() -> str:
    return render_latex(compute_leaderboard(_frame(), experiment="exp_1 & co"))


def _body(tex: str) -> list[str]:
    return [line for line in tex.splitlines() if line and not line.startswith("%")]


def test_environments_are_balanced(tex):
    stack = []
    for kind, name in re.findall(r"\\(begin|end)\{(\w+)\}", tex):
        if kind == "begin":
            stack.append(name)
        else:
            assert stack and stack.pop() == name
    assert not stack and tex.count(r"\begin{tabular}") == 2  # top-1 and mean per-class tables


def test_every_special_character_of_user_strings_is_escaped(tex):
    assert TASK_TEX in tex and BACKBONE_TEX in tex and r"my\_method\%" in tex
    for line in _body(tex):
        assert not re.search(r"(?<!\\)[_$#^~%]", line), line  # no bare specials, nor a comment inside a row
        commands = set(re.findall(r"\\([A-Za-z]+|.)", line))
        assert commands <= ALLOWED, commands - ALLOWED
        unescaped = re.sub(r"\\[{}]", "", line)
        depth = 0
        for char in unescaped:
            depth += {"{": 1, "}": -1}.get(char, 0)
            assert depth >= 0, line
        assert depth == 0, line
    # the comment lines (title, captions) are escaped too: none can end the comment and start markup
    for line in (ln for ln in tex.splitlines() if ln.startswith("%")):
        assert "\n" not in line and not re.search(r"(?<!\\)[_&$#]", line[1:])
    assert r"% seabench leaderboard — exp\_1 \& co" in tex


def test_every_row_has_the_column_count_of_its_tabular(tex):
    for tabular in re.findall(r"\\begin\{tabular\}\{(\w+)\}(.*?)\\end\{tabular\}", tex, re.S):
        spec, content = tabular
        columns = len(spec)
        assert spec[0] == "l" and set(spec[1:]) == {"r"}
        rows = [line for line in content.splitlines() if line.endswith(r"\\")]
        assert len(rows) >= 4  # groups, header, ≥ 1 task, average
        for row in rows:
            cells = re.split(r"(?<!\\)&", row[:-2])
            spans = [int(m.group(1)) if (m := re.match(r"\s*\\multicolumn\{(\d+)\}", c)) else 1 for c in cells]
            assert sum(spans) == columns, row
        assert content.count(r"\toprule") == content.count(r"\bottomrule") == 1
        rules = re.findall(r"\\cmidrule\(lr\)\{(\d+)-(\d+)\}", content)
        assert [int(b) for _, b in rules][-1] == columns  # the group rules cover the table to its last column


def test_markdown_and_html_name_the_backbone_over_each_method_column():
    board = compute_leaderboard(_frame(), experiment="exp")
    md, html = render_markdown(board), render_html(board)
    assert "| task (metric) | bb_1&amp;2% · linear | bb_1&amp;2% · sea | bb_1&amp;2% · my_method% |" in md
    assert '<th colspan="4" class="group">bb_1&amp;2%</th>' in html
    assert "<details><summary>Details: the leaderboard per method</summary>" in html
