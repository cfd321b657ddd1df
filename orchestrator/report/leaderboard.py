"""The main leaderboard: one table per metric convention, tasks × (backbone, method), plus SeA − linear.

Rows are the tasks ranked by that metric (top-1 or mean per-class accuracy) and an "average over
tasks" row; columns are the methods within each backbone, then SeA − linear with its paired 95 %
t-interval over seeds. A cell is the mean ± std over seeds of the task's primary test metric; the best
method of each (task, backbone) is in bold. The same `Table`s become leaderboard.md/.html/.tex.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from orchestrator.report.blocks import MISSING, Heading, Para, Table, TableCell, interval, mean_std, num
from orchestrator.report.evidence.flags import legend, mark, marked
from orchestrator.report.stats import CONFIDENCE, Leaderboard, t_interval
from sea.methods import ordered_methods

CONVENTIONS = {"top1": "top-1 accuracy", "mean_per_class": "mean per-class accuracy"}
DIFF = "SeA − linear"
AVERAGE = "average over tasks"


def conventions(board: Leaderboard) -> list[str]:
    """The metrics the experiment's tasks are ranked by, in the protocol's order."""
    used = set(board.primary_metric.values())
    return [m for m in CONVENTIONS if m in used] + sorted(used - set(CONVENTIONS))


def _columns(summary: pd.DataFrame, differences: pd.DataFrame, backbone: str) -> list[str]:
    methods = ordered_methods(summary.loc[summary["backbone"] == backbone, "method"])
    has_diff = bool(len(differences)) and (differences["backbone"] == backbone).any()
    return methods + ([DIFF] if has_diff else [])


def _average_cells(summary: pd.DataFrame, differences: pd.DataFrame, tasks: list[str], backbone: str,
                   columns: list[str]) -> list[TableCell]:
    """Mean over the table's tasks, shown only where the column has every one of them (else –)."""
    means: dict[str, float] = {}
    cells: dict[str, str] = {}
    for column in columns:
        if column == DIFF:
            d = differences[differences["backbone"] == backbone]
            values = d.set_index("task")["mean"].reindex(tasks)
            if values.notna().all():
                mean, low, high = t_interval(values.to_numpy(dtype=float))
                cells[column] = f"{num(mean, True)} {interval(low, high)}"
            continue
        s = summary[(summary["backbone"] == backbone) & (summary["method"] == column)]
        values = s.set_index("task")["mean"].reindex(tasks)
        if values.notna().all():
            means[column] = float(values.mean())
            cells[column] = num(means[column])
    top = max(means.values()) if means else math.nan
    return [TableCell(cells.get(c, MISSING), bool(c in means and np.isclose(means[c], top, rtol=0, atol=1e-9)))
            for c in columns]


def convention_table(board: Leaderboard, metric: str) -> Table:
    """The leaderboard of the tasks ranked by `metric`."""
    tasks = sorted(t for t, m in board.primary_metric.items() if m == metric)
    summary = board.summary[board.summary["task"].isin(tasks)]
    differences = board.differences[board.differences["task"].isin(tasks)]
    backbones = sorted(summary["backbone"].unique())
    columns = {b: _columns(summary, differences, b) for b in backbones}
    cells = {(r.task, r.backbone, r.method): r for r in summary.itertuples(index=False)}
    diffs = {(r.task, r.backbone): r for r in differences.itertuples(index=False)}
    shown = marked(summary, board.results)  # this table's flags only: its legend explains its own marks
    rows = []
    for task in tasks:
        row = [TableCell(f"{task} ({metric})")]
        for b in backbones:
            for column in columns[b]:
                if column == DIFF:
                    d = diffs.get((task, b))
                    row.append(TableCell(MISSING) if d is None else TableCell(f"{num(d.mean, True)} {interval(d.ci_low, d.ci_high)}"))
                else:
                    r = cells.get((task, b, column))
                    row.append(TableCell(MISSING) if r is None else TableCell(
                        mean_std(r.mean, r.std) + mark(getattr(r, "flags", ""), shown), bool(r.best)))
        rows.append(tuple(row))
    average = [TableCell(f"{AVERAGE} ({len(tasks)})")]
    for b in backbones:
        average += _average_cells(summary, differences, tasks, b, columns[b])
    rows.append(tuple(average))
    header = ("task (metric)", *(c for b in backbones for c in columns[b]))
    groups = (("", 1), *((b, len(columns[b])) for b in backbones))
    caption = (f"{CONVENTIONS.get(metric, metric)} (%, test): mean ± std over seeds; bold: the best method of the "
               f"task and backbone; {DIFF}: mean paired difference over seeds (points) and its {CONFIDENCE:.0%} "
               f"t-interval; {AVERAGE}: the mean of the task rows (its {DIFF} interval is over tasks), shown "
               f"for columns with every task{f'; {legend(shown)} (see Stability)' if shown else ''}")
    return Table(header, tuple(rows), caption=caption, groups=groups, summary_rows=1)


def leaderboard_tables(board: Leaderboard) -> list[Table]:
    return [convention_table(board, metric) for metric in conventions(board)]


def leaderboard_blocks(board: Leaderboard) -> list:
    blocks: list = [Heading("Leaderboard"), Para(
        "One table per metric convention: each task is ranked by its primary metric (test split), as in the "
        "transfer-learning literature. The per-method tables are in the details at the end."), Para(
        "Definitions: mean ± std is over seeds, std the sample standard deviation (ddof = 1). A seed varies the "
        "head's initialisation, the batch order and the augmentation draws (SeA's, FGSM's, noise's and mixup's); "
        "it does not vary the train/validation carve, which is fixed (one seeded split for every seed). logreg "
        "(full-batch L-BFGS from a fixed start) is therefore the same on every seed: its ± 0.00 says the carve "
        "is fixed, not that logreg has no variance — its variance over carves is not measured.")]
    for metric, table in zip(conventions(board), leaderboard_tables(board)):
        blocks += [Heading(f"Tasks ranked by {CONVENTIONS.get(metric, metric)}", 3), table]
    return blocks
