"""What the numbers cost: compute per cell by method, and per unit of extraction, from each cell run's metrics.

Every cell run records (where its sweep did) `select_wall_s`, `refit_wall_s`, `test_wall_s`,
`cell_wall_s`, `cell_cpu_s`, `cell_gpu_s` and `extract_s` — the seconds spent extracting the feature
units the cell read, summed over them (an ensemble `ensemble:A+B` reads A's and B's units, so its
`extract_s` is their sum). Each unit — a (stored backbone, task) — is charged once: its seconds (a cell of
that backbone's `extract_s`) are spread evenly over every cell that reads it, ensemble cells included, and
a cell's share is the sum over the units it reads. `finetune` cells train on the images, not the stored
features: they read no unit and get no share. A metric no cell recorded is shown as "–" and named in a
note; cells of a `finetune` method (when a sweep has them) are one more row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from orchestrator.report.blocks import MISSING, Figure, Heading, Para, Table, TableCell, seconds
from orchestrator.report.plots import Plot, _png, _pyplot
from orchestrator.report.sections.base import ReportInputs, SectionOutput
from sea.methods import ordered_methods

COST_METRICS = ("select_wall_s", "refit_wall_s", "test_wall_s", "cell_wall_s", "cell_cpu_s", "cell_gpu_s", "extract_s")
SHARE = "extract_share_s"  # the sum over the cell's units of unit seconds / cells reading that unit
TOTAL = "total_s"  # cell_wall_s + the cell's share of the extraction
LABELS = {"select_wall_s": "selection", "refit_wall_s": "refit", "test_wall_s": "test", "cell_wall_s": "cell (wall)",
          "cell_cpu_s": "cell (CPU)", "cell_gpu_s": "cell (GPU)", SHARE: "extraction share", TOTAL: "total"}
CELL = ["backbone", "task", "method", "seed"]
STACK = ("select_wall_s", "refit_wall_s", "test_wall_s", SHARE)  # the parts of a cell's time in the plot
ENSEMBLE_PREFIX = "ensemble:"  # orchestrator.extract's spelling of a virtual backbone (report never imports extract)
NO_FEATURES = ("finetune",)  # methods trained on images: they read no stored unit


def unit_parts(backbone: str) -> tuple[str, ...]:
    """The stored backbones whose units a cell of `backbone` reads (an ensemble's parts, else itself)."""
    if backbone.startswith(ENSEMBLE_PREFIX):
        return tuple(p for p in backbone[len(ENSEMBLE_PREFIX):].split("+") if p)
    return (backbone,)


def unit_table(costs: pd.DataFrame) -> pd.DataFrame:
    """Per unit (stored backbone, task): its extraction seconds, the cells reading it, the share per reader.
    A unit's seconds are the `extract_s` of a cell of that very backbone; a unit read only by ensembles gets
    what remains of an ensemble's `extract_s` once its other parts are counted (split evenly when several
    parts have no cell of their own)."""
    own = costs[~costs["backbone"].str.startswith(ENSEMBLE_PREFIX)]
    seconds = own.groupby(["backbone", "task"])["extract_s"].max().dropna().to_dict()
    readers: dict[tuple[str, str], int] = {}
    for r in costs[~costs["method"].isin(NO_FEATURES)].itertuples(index=False):
        for part in unit_parts(r.backbone):
            readers[(part, r.task)] = readers.get((part, r.task), 0) + 1
    for r in costs[costs["backbone"].str.startswith(ENSEMBLE_PREFIX)].dropna(subset=["extract_s"]).itertuples(index=False):
        unknown = [(p, r.task) for p in unit_parts(r.backbone) if (p, r.task) not in seconds]
        if unknown:
            rest = r.extract_s - sum(seconds.get((p, r.task), 0.0) for p in unit_parts(r.backbone))
            seconds.update({u: max(rest, 0.0) / len(unknown) for u in unknown})
    rows = [{"backbone": b, "task": t, "extract_s": seconds.get((b, t), math.nan), "cells": n}
            for (b, t), n in sorted(readers.items())]
    out = pd.DataFrame(rows, columns=["backbone", "task", "extract_s", "cells"])
    out[SHARE] = out["extract_s"] / out["cells"]
    return out


def cell_costs(results: pd.DataFrame, runs: Mapping[str, object]) -> pd.DataFrame:
    """One row per cell of the results: its cost metrics (NaN where not recorded), share and total."""
    cells = results.drop_duplicates(CELL)[[*CELL, "run_id", *(["source"] if "source" in results else [])]]
    rows = []
    for cell in cells.to_dict("records"):
        run = runs.get(cell["run_id"])
        metrics = run.data.metrics if run is not None else {}
        rows.append({**cell, **{m: float(metrics[m]) if m in metrics else math.nan for m in COST_METRICS}})
    out = pd.DataFrame(rows, columns=[*cells.columns, *COST_METRICS])
    units = unit_table(out).set_index(["backbone", "task"])[SHARE].to_dict()
    out[SHARE] = [0.0 if m in NO_FEATURES else sum(units.get((p, t), math.nan) for p in unit_parts(b))
                  for b, t, m in zip(out["backbone"], out["task"], out["method"])]
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
                    "share: each unit's extraction seconds are charged once, spread evenly over every cell that "
                    "reads that unit — an ensemble cell reads its parts' units, so it shares their seconds with "
                    "the parts' own cells instead of being charged them again — and a cell's share is the sum "
                    "over the units it reads; finetune cells train on the images and get no share (0). Total: "
                    "cell wall time plus that share. A method 'finetune', when present, is a row like the "
                    "others."),
               Table(("method", "cells", *(LABELS[c] for c in columns)), rows, caption="compute per cell (s)")]
    notes = [f"{m} was not recorded by any cell (shown as {MISSING})" for m in COST_METRICS if m not in recorded]
    for _, r in table.iterrows():
        partial = [c for c in COST_METRICS[:-1] if 0 < r[f"{c}_n"] < r["cells"]]
        notes += [f"{r['method']}: {c} recorded by {r[f'{c}_n']} of {r['cells']} cells (mean over those)" for c in partial]
    if notes:
        blocks.append(Para("Not recorded: " + "; ".join(notes) + "."))
    if "extract_s" in recorded:
        units = unit_table(costs)
        blocks.append(Table(("backbone", "task", "extraction (s)", "cells reading it", "per cell (s)"), tuple(
            (TableCell(r.backbone), TableCell(r.task), TableCell(seconds(r.extract_s)), TableCell(str(r.cells)),
             TableCell(seconds(getattr(r, SHARE)))) for r in units.itertuples(index=False)),
            caption="extraction per unit (stored backbone, task), charged once"))
    if plot is not None:
        blocks.append(Figure(plot))
    return blocks


def section(inputs: ReportInputs) -> SectionOutput:
    costs = cell_costs(inputs.results, inputs.runs)
    if not costs[list(COST_METRICS)].notna().any().any():
        return SectionOutput(cost_blocks(costs))
    figure = cost_plot(by_method(costs))
    return SectionOutput(cost_blocks(costs, figure), (figure,) if figure is not None else (),
                         {"cost.csv": costs.to_csv(index=False, lineterminator="\n")})   # per cell
