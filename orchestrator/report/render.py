"""Markdown and self-contained HTML from one list of report blocks (so both always say the same).

Every string that reaches the output passes through `_md` or `_html` here: task, backbone and method
names, error messages and reference-CSV content are user data and must render as text.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

from orchestrator.report.plots import Plot
from orchestrator.report.sections import Document, Figure, Heading, Para, Table, TableCell, document
from orchestrator.report.stats import Leaderboard


def _md(text: str) -> str:
    # HTML-escape (Markdown renderers pass raw HTML through), then neutralise table/emphasis syntax
    escaped = html.escape(str(text), quote=False).replace("\n", " ")
    for char in "\\`*|[]":
        escaped = escaped.replace(char, "\\" + char)
    return escaped


def _md_cell(cell: TableCell) -> str:
    return f"**{_md(cell.text)}**" if cell.best and cell.text else _md(cell.text)


def _md_block(block) -> list[str]:
    if isinstance(block, Heading):
        return ["#" * block.level + " " + _md(block.text), ""]
    if isinstance(block, Para):
        return [f"**{_md(block.text)}**" if block.strong else _md(block.text), ""]
    if isinstance(block, Table):
        lines = [f"*{_md(block.caption)}*", ""] if block.caption else []
        lines.append("| " + " | ".join(_md(h) for h in block.header) + " |")
        lines.append("|" + "---|" * len(block.header))
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        return [*lines, ""]
    if isinstance(block, Figure):
        return [f"![{_md(block.plot.title)}]({block.plot.filename})", ""]
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


def _html_block(block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{_html(block.text)}</h{block.level}>"
    if isinstance(block, Para):
        text = f"<strong>{_html(block.text)}</strong>" if block.strong else _html(block.text)
        return f"<p>{text}</p>"
    if isinstance(block, Table):
        caption = f"<caption>{_html(block.caption)}</caption>" if block.caption else ""
        head = "".join(f"<th>{_html(h)}</th>" for h in block.header)
        body = "\n".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in block.rows)
        return (f'<table class="{_html(block.css)}">{caption}<thead><tr>{head}</tr></thead>'
                f"<tbody>\n{body}\n</tbody></table>")
    if isinstance(block, Figure):
        data = base64.b64encode(block.plot.png).decode("ascii")
        title = _html(block.plot.title)
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{title}">'
                f"<figcaption>{title}</figcaption></figure>")
    raise TypeError(f"unknown report block {type(block).__name__}")


# inline only: the page must open offline, from a mail attachment or an MLflow artifact view
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #1f2328; line-height: 1.45; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0 1.4em; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-style: italic; color: #57606a; padding-bottom: .3em; }
th, td { border: 1px solid #d0d7de; padding: .3em .7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f6f8fa; }
td.best { font-weight: 700; background: #dafbe1; }
table.failed th { text-align: left; }
table.failed td { text-align: left; font-family: ui-monospace, monospace; font-size: .9em; }
figure { display: inline-block; margin: .5em 1em 1em 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: .9em; }
"""


def to_html(doc: Document) -> str:
    body = "\n".join(_html_block(b) for b in doc.blocks)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_html(doc.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{_html(doc.title)}</h1>\n{body}\n</body>\n</html>\n"
    )


def render_markdown(board: Leaderboard, plots: Sequence[Plot] = ()) -> str:
    """The leaderboard as Markdown; figures are linked by file name (they sit beside the .md file)."""
    return to_markdown(document(board, plots))


def render_html(board: Leaderboard, plots: Sequence[Plot] = ()) -> str:
    """The leaderboard as one self-contained HTML page (CSS inline, figures as data: URIs)."""
    return to_html(document(board, plots))
