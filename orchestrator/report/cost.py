"""What the numbers cost: compute per cell by method, and per unit of extraction, from each cell run's metrics.

Every cell run records (where its sweep did) `select_wall_s`, `refit_wall_s`, `test_wall_s`,
`cell_wall_s`, `cell_cpu_s`, `cell_gpu_s` and `extract_s` — the seconds spent extracting the feature
units the cell read. Every cell of a (backbone, task) reads the same units, so a cell's share of the
extraction is its `extract_s` divided by the number of cells of that (backbone, task) in the report.
A metric no cell recorded is shown as "–" and named in a note; cells of a `finetune` method (when a
sweep has them) are one more row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from orchestrator.report.blocks import MISSING, Figure, Heading, Para, Table, TableCell, seconds
from orchestrator.report.plots import Plot, _png, _pyplot
from orchestrator.report.stats import ordered_methods

COST_METRICS = ("select_wall_s", "refit_wall_s", "test_wall_s", "cell_wall_s", "cell_cpu_s", "cell_gpu_s", "extract_s")
SHARE = "extract_share_s"  # extract_s / cells sharing the (backbone, task)
TOTAL = "total_s"  # cell_wall_s + the cell's share of the extraction
LABELS = {"select_wall_s": "selection", "refit_wall_s": "refit", "test_wall_s": "test", "cell_wall_s": "cell (wall)",
          "cell_cpu_s": "cell (CPU)", "cell_gpu_s": "cell (GPU)", SHARE: "extraction share", TOTAL: "total"}
CELL = ["backbone", "task", "method", "seed"]
STACK = ("select_wall_s", "refit_wall_s", "test_wall_s", SHARE)  # the parts of a cell's time in the plot


def cell_costs(results: pd.DataFrame, runs: Mapping[str, object]) -> pd.DataFrame:
    """One row per cell of the results: its cost metrics (NaN where not recorded), share and total."""
    cells = results.drop_duplicates(CELL)[[*CELL, "run_id", *(["source"] if "source" in results else [])]]
    rows = []
    for cell in cells.to_dict("records"):
        run = runs.get(cell["run_id"])
        metrics = run.data.metrics if run is not None else {}
        rows.append({**cell, **{m: float(metrics[m]) if m in metrics else math.nan for m in COST_METRICS}})
    out = pd.DataFrame(rows, columns=[*cells.columns, *COST_METRICS])
    sharing = out.groupby(["backbone", "task"])["method"].transform("size")
    out[SHARE] = out["extract_s"] / sharing
    out[TOTAL] = out["cell_wall_s"] + out[SHARE]
    return out.sort_values(CELL, ignore_index=True)


def by_method(costs: pd.DataFrame) -> pd.DataFrame:
    """Per method: cells, and the mean over its cells of each cost (over the cells that recorded it)."""
    columns = [*COST_METRICS[:-1], SHARE, TOTAL]
    rows = []
    for method in ordered_methods(costs["method"]):
        part = costs[costs["method"] == method]
        rows.append({"method": method, "cells": len(part), **{c: part[c].mean() for c in columns},
                     **{f"{c}_n": int(part[c].notna().sum()) for c in columns}})
    return pd.DataFrame(rows)


def by_unit(costs: pd.DataFrame) -> pd.DataFrame:
    """Per (backbone, task): the extraction seconds of its units, the cells sharing them, the share per cell."""
    grouped = costs.groupby(["backbone", "task"], sort=True)
    out = grouped.agg(extract_s=("extract_s", "max"), cells=("method", "size")).reset_index()
    out[SHARE] = out["extract_s"] / out["cells"]
    return out


def cost_plot(table: pd.DataFrame) -> Plot | None:
    """Horizontal stacked bars per method: mean seconds per cell, selection + refit + test + extraction share."""
    parts = [c for c in STACK if table[c].notna().any()]
    if not parts:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 1.4 + 0.45 * len(table)))
    y = np.arange(len(table))
    left = np.zeros(len(table))
    for part in parts:
        width = np.nan_to_num(table[part].to_numpy(dtype=float))
        ax.barh(y, width, left=left, label=LABELS[part])
        left += width
    if table["cell_wall_s"].notna().any():
        ax.scatter(table["cell_wall_s"].to_numpy(dtype=float), y, marker="|", s=300, color="black", zorder=3,
                   label="cell wall time")
    ax.set_yticks(y, [str(m) for m in table["method"]])
    ax.invert_yaxis()
    ax.set_xlabel("seconds per cell (mean over cells)")
    ax.set_title("Compute per cell by method")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return Plot("cost_per_cell.png", "Compute per cell by method (mean seconds)", _png(fig))


def _cost_cell(row: pd.Series, column: str) -> TableCell:
    return TableCell(MISSING if row[f"{column}_n"] == 0 else seconds(row[column]))


def cost_blocks(costs: pd.DataFrame, plot: Plot | None = None) -> list:
    """The cost section: the per-method table, the per-unit table, the plot and what was not recorded."""
    blocks: list = [Heading("Cost")]
    if costs.empty:
        return [*blocks, Para("No cells.")]
    recorded = [m for m in COST_METRICS if costs[m].notna().any()]
    if not recorded:
        return [*blocks, Para(f"No cell run recorded cost metrics ({', '.join(COST_METRICS)}): these sweeps "
                              "predate cost tracking; rerun the cells to measure them.")]
    table = by_method(costs)
    columns = [*COST_METRICS[:-1], SHARE, TOTAL]
    rows = tuple((TableCell(r["method"]), TableCell(str(r["cells"])), *(_cost_cell(r, c) for c in columns))
                 for _, r in table.iterrows())
    blocks += [Para("Seconds per cell, mean over the method's cells (all tasks, backbones and seeds). Extraction "
                    "share: the seconds spent extracting the cell's feature units divided by the number of cells "
                    "of its (backbone, task) that share them; total: cell wall time plus that share. A method "
                    "'finetune', when present, is a row like the others."),
               Table(("method", "cells", *(LABELS[c] for c in columns)), rows, caption="compute per cell (s)")]
    notes = [f"{m} was not recorded by any cell (shown as {MISSING})" for m in COST_METRICS if m not in recorded]
    for _, r in table.iterrows():
        partial = [c for c in COST_METRICS[:-1] if 0 < r[f"{c}_n"] < r["cells"]]
        notes += [f"{r['method']}: {c} recorded by {r[f'{c}_n']} of {r['cells']} cells (mean over those)" for c in partial]
    if notes:
        blocks.append(Para("Not recorded: " + "; ".join(notes) + "."))
    if "extract_s" in recorded:
        units = by_unit(costs)
        blocks.append(Table(("backbone", "task", "extraction (s)", "cells sharing", "per cell (s)"), tuple(
            (TableCell(r.backbone), TableCell(r.task), TableCell(seconds(r.extract_s)), TableCell(str(r.cells)),
             TableCell(seconds(getattr(r, SHARE)))) for r in units.itertuples(index=False)),
            caption="extraction per (backbone, task) unit"))
    if plot is not None:
        blocks.append(Figure(plot))
    return blocks
