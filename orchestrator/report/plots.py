"""The report's figures as PNG bytes (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from orchestrator import names
from sea.methods import ordered_methods


@dataclass(frozen=True)
class Plot:
    filename: str  # file name inside the report folder (safe characters only)
    title: str  # caption; may contain any characters (escaped by the renderers)
    png: bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: never pick an interactive backend
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def slug(text: str) -> str:
    """A file-name-safe version of a task name (names are user data: `<script>` must not reach a path)."""
    return names.slug(text, allowed="A-Za-z0-9_.-", sep="-", limit=40, fallback="task")


def difference_heatmap(differences: pd.DataFrame) -> Plot | None:
    """SeA − linear per (task, backbone), diverging colours centred at 0, values annotated."""
    if differences.empty:
        return None
    plt = _pyplot()
    grid = differences.pivot(index="task", columns="backbone", values="mean")
    values = grid.to_numpy(dtype=float)
    limit = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    limit = limit or 1.0
    # floor on the size: a 1×1 grid must still leave room for the colour bar's label
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 + 1.4 * grid.shape[1]), max(3.2, 1.2 + 0.5 * grid.shape[0])))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        text = "n/a" if math.isnan(v) else f"{v:+.2f}"
        dark = not math.isnan(v) and abs(v) > 0.6 * limit
        ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns], rotation=30, ha="right")
    ax.set_yticks(range(grid.shape[0]), [str(r) for r in grid.index])
    ax.set_title("SeA − linear (points, mean over seeds)")
    fig.colorbar(image, ax=ax, label="SeA − linear (points); blue: SeA better")
    return Plot("sea_minus_linear.png", "SeA − linear per task and backbone", _png(fig))


def task_bars(summary: pd.DataFrame) -> list[Plot]:
    """One figure per task: grouped bars per backbone, one bar per method, error bars = std over seeds."""
    plt = _pyplot()
    plots = []
    methods = ordered_methods(summary["method"])
    for index, (task, rows) in enumerate(summary.groupby("task", sort=True)):
        backbones = sorted(rows["backbone"].unique())
        width = 0.8 / max(len(methods), 1)
        fig, ax = plt.subplots(figsize=(2.0 + 1.3 * len(backbones) * max(1, len(methods) / 3), 3.2))
        for k, method in enumerate(methods):
            sub = rows[rows["method"] == method].set_index("backbone").reindex(backbones)
            x = np.arange(len(backbones)) + (k - (len(methods) - 1) / 2) * width
            ax.bar(x, sub["mean"].to_numpy(dtype=float), width, label=method,
                   yerr=np.nan_to_num(sub["std"].to_numpy(dtype=float)), capsize=3)
        ax.set_xticks(range(len(backbones)), backbones, rotation=20, ha="right")
        ax.set_ylabel("test accuracy (%), primary metric")
        ax.set_title(f"{task}: mean ± std over seeds")
        low = float(np.nanmin(rows["mean"] - rows["std"].fillna(0)))
        ax.set_ylim(max(0.0, low - 5), min(100.0, float(np.nanmax(rows["mean"] + rows["std"].fillna(0))) + 3))
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="method")  # outside: never hides a bar
        plots.append(Plot(f"bars_{index:02d}_{slug(str(task))}.png", f"{task}: methods per backbone", _png(fig)))
    return plots
