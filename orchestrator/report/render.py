"""Markdown, self-contained HTML and LaTeX from one list of report blocks (so all always say the same).

Every string that reaches the output passes through `_md`, `_html` or `_tex` here: task, backbone and
method names, experiment names, error messages and reference-CSV content are user data and must
render as text.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence

from orchestrator.report.blocks import Details, Document, Figure, Heading, Para, Table, TableCell
from orchestrator.report.document import document
from orchestrator.report.evidence.stability import Evidence
from orchestrator.report.leaderboard import leaderboard_tables
from orchestrator.report.plots import Plot
from orchestrator.report.stats import Leaderboard


def _md(text: str) -> str:
    # HTML-escape (Markdown renderers pass raw HTML through), then neutralise table/emphasis syntax
    escaped = html.escape(str(text), quote=False).replace("\n", " ")
    for char in "\\`*|[]":
        escaped = escaped.replace(char, "\\" + char)
    return escaped


def _md_cell(cell: TableCell) -> str:
    return f"**{_md(cell.text)}**" if cell.best and cell.text else _md(cell.text)


def _header_labels(table: Table) -> list[str]:
    """One header row for formats without column spans: `group · column` under a group."""
    if not table.groups:
        return list(table.header)
    groups = [label for label, span in table.groups for _ in range(span)]
    return [f"{g} · {h}" if g else h for g, h in zip(groups, table.header)]


def _md_block(block) -> list[str]:
    if isinstance(block, Heading):
        return ["#" * block.level + " " + _md(block.text), ""]
    if isinstance(block, Para):
        return [f"**{_md(block.text)}**" if block.strong else _md(block.text), ""]
    if isinstance(block, Table):
        lines = [f"*{_md(block.caption)}*", ""] if block.caption else []
        lines.append("| " + " | ".join(_md(h) for h in _header_labels(block)) + " |")
        lines.append("|" + "---|" * len(block.header))
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        return [*lines, ""]
    if isinstance(block, Figure):
        return [f"![{_md(block.plot.title)}]({block.plot.filename})", ""]
    if isinstance(block, Details):
        return ["## " + _md(block.summary), "", *(line for b in block.blocks for line in _md_block(b))]
    raise TypeError(f"unknown report block {type(block).__name__}")


def to_markdown(doc: Document) -> str:
    lines = ["# " + _md(doc.title), ""]
    for block in doc.blocks:
        lines += _md_block(block)
    return "\n".join(lines).rstrip() + "\n"


def _html(text: str) -> str:
    return html.escape(str(text), quote=True)


def _html_cell(cell: TableCell) -> str:
    return f'<td class="best">{_html(cell.text)}</td>' if cell.best else f"<td>{_html(cell.text)}</td>"


def _html_table(table: Table) -> str:
    caption = f"<caption>{_html(table.caption)}</caption>" if table.caption else ""
    groups = ""
    if table.groups:
        groups = "<tr>" + "".join(f'<th colspan="{span}" class="group">{_html(label)}</th>' for label, span in table.groups) + "</tr>"
    head = "".join(f"<th>{_html(h)}</th>" for h in table.header)
    first_summary = len(table.rows) - table.summary_rows
    body = "\n".join(("<tr class=\"summary\">" if i >= first_summary else "<tr>") + "".join(_html_cell(c) for c in row)
                     + "</tr>" for i, row in enumerate(table.rows))
    # the box scrolls a table wider than the page instead of the page: the page always fits its window
    return (f'<div class="scroll"><table class="{_html(table.css)}">{caption}<thead>{groups}<tr>{head}</tr></thead>'
            f"<tbody>\n{body}\n</tbody></table></div>")


def _html_block(block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{_html(block.text)}</h{block.level}>"
    if isinstance(block, Para):
        text = f"<strong>{_html(block.text)}</strong>" if block.strong else _html(block.text)
        return f"<p>{text}</p>"
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Figure):
        data = base64.b64encode(block.plot.png).decode("ascii")
        title = _html(block.plot.title)
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{title}">'
                f"<figcaption>{title}</figcaption></figure>")
    if isinstance(block, Details):
        inner = "\n".join(_html_block(b) for b in block.blocks)
        return f"<details><summary>{_html(block.summary)}</summary>\n{inner}\n</details>"
    raise TypeError(f"unknown report block {type(block).__name__}")


# inline only: the page must open offline, from a mail attachment or an MLflow artifact view
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #1f2328; line-height: 1.45; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0 1.4em; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-style: italic; color: #57606a; padding-bottom: .3em; }
th, td { border: 1px solid #d0d7de; padding: .3em .7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f6f8fa; }
th.group { text-align: center; }
/* a wide leaderboard (3 backbones × 7 columns) fits by wrapping "mean ± std" and long names onto two lines
   at a smaller size; one still wider scrolls inside its own box (div.scroll), never the page */
div.scroll { max-width: 100%; overflow-x: auto; margin: .8em 0 1.4em; }
div.scroll > table { margin: 0; }
table.board { font-size: .78em; }
table.board th, table.board td { padding: .25em .3em; text-wrap: balance; }  /* "64.48" over "± 9.02" */
table.board th.group { overflow-wrap: anywhere; }  /* "ensemble:A+B" is one long word */
table.failed td { overflow-wrap: anywhere; }
tr.summary td { border-top: 2px solid #57606a; font-style: italic; }
td.best { font-weight: 700; background: #dafbe1; }
table.failed th { text-align: left; }
table.failed td { text-align: left; font-family: ui-monospace, monospace; font-size: .9em; }
figure { display: inline-block; margin: .5em 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: .9em; }
details { margin-top: 1.8em; border-top: 1px solid #d0d7de; padding-top: .5em; }
details > summary { font-size: 1.3em; font-weight: 600; cursor: pointer; }
"""


def to_html(doc: Document) -> str:
    body = "\n".join(_html_block(b) for b in doc.blocks)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_html(doc.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{_html(doc.title)}</h1>\n{body}\n</body>\n</html>\n"
    )


# one pass over the characters, so that an escape's own backslash is never escaped again
_TEX = str.maketrans({
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
    ">": r"\textgreater{}", "|": r"\textbar{}", "\n": " ", "\r": " ",
    "[": "{[}", "]": "{]}",  # braced: a cell opening with "[" would be read as the optional argument of \\
    "±": r"\ensuremath{\pm}", "−": r"\ensuremath{-}", "–": "--", "·": r"\ensuremath{\cdot}",
    "≈": r"\ensuremath{\approx}", "η": r"\ensuremath{\eta}", "α": r"\ensuremath{\alpha}",
    "λ": r"\ensuremath{\lambda}", "†": r"\ensuremath{\dagger}", "‡": r"\ensuremath{\ddagger}",
    "°": r"\ensuremath{^{\circ}}", "√": r"\ensuremath{\surd}",
})


def _tex(text: str) -> str:
    return str(text).translate(_TEX)


def _tex_cell(cell: TableCell) -> str:
    return rf"\textbf{{{_tex(cell.text)}}}" if cell.best and cell.text else _tex(cell.text)


def to_latex_tabular(table: Table) -> str:
    """A booktabs `tabular` (needs \\usepackage{booktabs}); column groups become \\multicolumn + \\cmidrule."""
    n = len(table.header)
    lines = [f"% {_tex(table.caption)}"] if table.caption else []
    lines += [rf"\begin{{tabular}}{{l{'r' * (n - 1)}}}", r"\toprule"]
    if table.groups:
        cells, rules, column = [], [], 1
        for label, span in table.groups:
            cells.append(rf"\multicolumn{{{span}}}{{c}}{{{_tex(label)}}}" if span > 1 or label else _tex(label))
            if label:
                rules.append(rf"\cmidrule(lr){{{column}-{column + span - 1}}}")
            column += span
        lines += [" & ".join(cells) + r" \\", " ".join(rules)]
    lines += [" & ".join(_tex(h) for h in table.header) + r" \\", r"\midrule"]
    first_summary = len(table.rows) - table.summary_rows
    for i, row in enumerate(table.rows):
        if i == first_summary and i > 0:
            lines.append(r"\midrule")
        lines.append(" & ".join(_tex_cell(c) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def to_latex(tables: Iterable[Table], title: str = "") -> str:
    """The leaderboard's tables as booktabs tabulars, one after the other, ready for \\input{}."""
    head = [f"% {_tex(title)}" if title else "% seabench leaderboard", r"% requires \usepackage{booktabs}"]
    body = [to_latex_tabular(t) for t in tables]
    return "\n".join(head) + "\n\n" + "\n\n".join(body or [r"% (no results)"]) + "\n"


def render_markdown(board: Leaderboard, plots: Sequence[Plot] = (), sections: Iterable[list] = (),
                    evidence: Evidence | None = None) -> str:
    """The leaderboard as Markdown; figures are linked by file name (they sit beside the .md file)."""
    return to_markdown(document(board, plots, sections, evidence))


def render_html(board: Leaderboard, plots: Sequence[Plot] = (), sections: Iterable[list] = (),
                evidence: Evidence | None = None) -> str:
    """The leaderboard as one self-contained HTML page (CSS inline, figures as data: URIs)."""
    return to_html(document(board, plots, sections, evidence))


def render_latex(board: Leaderboard) -> str:
    """The main leaderboard (one tabular per metric convention) as LaTeX."""
    return to_latex(leaderboard_tables(board), f"seabench leaderboard — {board.experiment or '(unnamed)'}")
