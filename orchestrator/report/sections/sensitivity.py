"""The paper's ablations: validation accuracy against η (one line per α) and against lr, per task and backbone.

Read from each cell run's artifact `candidates.csv` (one row per candidate configuration: `candidate`,
the method's hyper-parameters among lr, weight_decay, lamda, eta, alpha, c, `val_top1`,
`val_mean_per_class` in percent, `epochs_run`, `selected` 0/1). A profile point is, per seed, the best
validation value (the task's primary metric) over the other hyper-parameters at that η and α (or lr),
then the mean and std over seeds. Cells without the artifact (older runs) are left out, with a note.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from orchestrator.errors import OrchestratorError
from orchestrator.report.blocks import Figure, Heading, Para
from orchestrator.report.data import quiet_downloads, tracking_client
from orchestrator.report.plots import Plot, _png, _pyplot, slug
from orchestrator.report.sections.base import ReportInputs, SectionOutput
from orchestrator.runs import cell_id

ARTIFACT = "candidates.csv"
HYPER = ("lr", "weight_decay", "lamda", "eta", "alpha", "c")
REQUIRED = ("candidate", "val_top1", "val_mean_per_class", "epochs_run", "selected")
CELL = ["backbone", "task", "method", "seed"]
PROFILE_COLUMNS = ["task", "backbone", "method", "axis", "x", "alpha", "mean", "std", "n"]
MAX_LISTED = 10


@dataclass(frozen=True)
class Candidates:
    table: pd.DataFrame  # CELL, source, run_id, metric (the task's primary), the artifact's columns
    missing: pd.DataFrame  # CELL, source, run_id of cell runs without the artifact


def _invalid(cell: dict, problem: str) -> OrchestratorError:
    name = cell_id(cell)
    return OrchestratorError(
        f"cell {name} of experiment {cell.get('source', '?')!r} (run {cell['run_id']}): its {ARTIFACT} {problem}. "
        f"The file must hold one row per candidate with columns {', '.join(REQUIRED)} and the method's "
        f"hyper-parameters among {', '.join(HYPER)}; fix or delete the artifact (the cell is then left out of "
        "the sensitivity plots), or rerun the cell")


def _validated(frame: pd.DataFrame, cell: dict) -> pd.DataFrame:
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise _invalid(cell, f"lacks column(s) {', '.join(missing)} (has: {', '.join(map(str, frame.columns))})")
    if frame.empty:
        raise _invalid(cell, "has no rows")
    columns = [*REQUIRED, *(h for h in HYPER if h in frame.columns)]
    out = frame[columns].apply(pd.to_numeric, errors="coerce")
    for column in (c for c in columns if c not in HYPER):  # hyper-parameters may be empty where not used
        if out[column].isna().any():
            raise _invalid(cell, f"has non-numeric or empty values in column {column!r}")
    if not out["selected"].isin([0, 1]).all():
        raise _invalid(cell, "has values other than 0 and 1 in column 'selected'")
    return out


def load_candidates(tracking_uri: Any, results: pd.DataFrame) -> Candidates:
    """The candidate tables of the results' cell runs; a malformed table is an error naming its cell."""
    client = tracking_client(tracking_uri)
    primary = results[results["primary"].astype(bool)]
    metric = dict(zip(primary["task"], primary["metric"]))
    keys = [*CELL, "run_id", *(["source"] if "source" in results else [])]
    tables, missing = [], []
    with tempfile.TemporaryDirectory(prefix="seabench-candidates-") as tmp, quiet_downloads():
        for cell in results.drop_duplicates(CELL)[keys].to_dict("records"):
            listed = {Path(a.path).name for a in client.list_artifacts(cell["run_id"])}
            if ARTIFACT not in listed:
                missing.append(cell)
                continue
            local = client.download_artifacts(cell["run_id"], ARTIFACT, str(Path(tmp) / cell["run_id"]))
            try:
                frame = pd.read_csv(local)
            except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
                raise _invalid(cell, f"is not a readable CSV ({exc})") from None
            tables.append(_validated(frame, cell).assign(**cell, metric=metric.get(cell["task"], "top1")))
    columns = [*keys, "metric", *REQUIRED, *HYPER]
    table = pd.concat(tables, ignore_index=True).reindex(columns=columns) if tables else pd.DataFrame(columns=columns)
    table["value"] = np.where(table["metric"] == "mean_per_class", table["val_mean_per_class"], table["val_top1"])
    return Candidates(table, pd.DataFrame(missing, columns=keys))


def _profile(rows: pd.DataFrame, axis: str, by_alpha: bool) -> pd.DataFrame:
    keys = ["task", "backbone", "method", axis, *(["alpha"] if by_alpha else [])]
    per_seed = rows.groupby([*keys, "seed"], sort=True)["value"].max().reset_index()
    out = per_seed.groupby(keys, sort=True)["value"].agg(
        mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else math.nan, n="count").reset_index()
    out = out.rename(columns={axis: "x"}).assign(axis=axis)
    return out.reindex(columns=PROFILE_COLUMNS)


@dataclass(frozen=True)
class Sensitivity:
    profiles: pd.DataFrame  # PROFILE_COLUMNS; axis "eta" (per α, methods with η) or "lr" (per method)
    baseline: pd.DataFrame  # task, backbone, mean, std, n: linear's best validation value, over seeds
    selected: pd.DataFrame  # the selected candidate of each cell: CELL, lr, eta, alpha, value


def sensitivity_data(candidates: Candidates) -> Sensitivity:
    t = candidates.table
    with_eta = t[t["eta"].notna()]
    eta = [_profile(part, "eta", part["alpha"].notna().all()) for _, part in with_eta.groupby("method")]
    with_lr = t[t["lr"].notna()]
    frames = [*eta, _profile(with_lr, "lr", False)] if len(with_lr) else eta
    profiles = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PROFILE_COLUMNS)
    linear = t[t["method"] == "linear"].groupby(["task", "backbone", "seed"])["value"].max().reset_index()
    baseline = linear.groupby(["task", "backbone"])["value"].agg(
        mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else math.nan, n="count").reset_index()
    selected = t[t["selected"] == 1][[*CELL, "lr", "eta", "alpha", "value"]].reset_index(drop=True)
    return Sensitivity(profiles, baseline, selected)


def sensitivity_csv(data: Sensitivity) -> str:
    """The plotted points: the profiles, then linear's best validation value as axis "baseline"."""
    baseline = data.baseline.assign(method="linear", axis="baseline", x=math.nan, alpha=math.nan)
    frames = [f for f in (data.profiles, baseline.reindex(columns=PROFILE_COLUMNS)) if len(f)]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PROFILE_COLUMNS)
    return table.to_csv(index=False, lineterminator="\n")


def _band(ax, x, mean, std, **style) -> None:
    line = ax.plot(x, mean, marker="o", **style)[0]
    if np.isfinite(std).any():
        ax.fill_between(x, mean - np.nan_to_num(std), mean + np.nan_to_num(std), color=line.get_color(), alpha=0.2)


def _baseline(ax, base: pd.DataFrame) -> None:
    if len(base):
        mean, std = float(base["mean"].iloc[0]), float(base["std"].iloc[0])
        ax.axhline(mean, color="black", linestyle="--", linewidth=1, label="linear (best)")
        if not math.isnan(std):
            ax.axhspan(mean - std, mean + std, color="black", alpha=0.08)


def _figure(data: Sensitivity, task: str, backbone: str, index: int) -> Plot:
    plt = _pyplot()
    here = lambda f: f[(f["task"] == task) & (f["backbone"] == backbone)]  # noqa: E731
    profiles, base, chosen = here(data.profiles), here(data.baseline), here(data.selected)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.3))
    sea = profiles[(profiles["axis"] == "eta") & (profiles["method"] == "sea")]
    for alpha, part in sea.groupby("alpha", sort=True, dropna=False):
        label = "α = n/a" if pd.isna(alpha) else f"α = {alpha:g}"
        _band(left, part["x"].to_numpy(float), part["mean"].to_numpy(float), part["std"].to_numpy(float), label=label)
    picked = chosen[(chosen["method"] == "sea") & chosen["eta"].notna()]
    left.scatter(picked["eta"], picked["value"], marker="*", s=140, color="crimson", zorder=4, label="selected (per seed)")
    _baseline(left, base)
    left.set_xlabel("η")
    left.set_title("SeA: η per α" if len(sea) else "SeA: no candidate tables")
    for method, part in profiles[profiles["axis"] == "lr"].groupby("method", sort=True):
        _band(right, part["x"].to_numpy(float), part["mean"].to_numpy(float), part["std"].to_numpy(float), label=str(method))
        picked = chosen[(chosen["method"] == method) & chosen["lr"].notna()]
        right.scatter(picked["lr"], picked["value"], marker="*", s=110, color=right.get_lines()[-1].get_color(),
                      edgecolors="black", linewidths=0.5, zorder=4)
    right.scatter([], [], marker="*", s=110, color="white", edgecolors="black", label="selected (per seed)")
    _baseline(right, base)
    right.set_xscale("log")
    lrs = sorted(profiles.loc[profiles["axis"] == "lr", "x"].unique())
    right.set_xticks(lrs, [f"{v:g}" for v in lrs])
    right.minorticks_off()
    right.set_xlabel("learning rate")
    right.set_title("lr per method")
    for ax in (left, right):
        ax.set_ylabel("validation accuracy (%)")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{task} · {backbone}: mean ± std over seeds", fontsize=10)
    return Plot(f"sensitivity_{index:02d}_{slug(str(task))}_{slug(str(backbone))}.png",
                f"{task} · {backbone}: validation accuracy against η (per α) and lr", _png(fig))


def sensitivity_plots(data: Sensitivity) -> list[Plot]:
    cells = data.profiles[["task", "backbone"]].drop_duplicates().sort_values(["task", "backbone"])
    return [_figure(data, t, b, i) for i, (t, b) in enumerate(cells.itertuples(index=False))]


def sensitivity_blocks(candidates: Candidates, plots: list[Plot]) -> list:
    blocks: list = [Heading("Sensitivity (the paper's ablations)")]
    n_missing, n_all = len(candidates.missing), len(candidates.missing) + candidates.table["run_id"].nunique()
    if plots:
        blocks.append(Para(
            "Validation accuracy (the task's primary metric, %) of the candidate configurations each cell tried: "
            "per seed the best over the other hyper-parameters at each η and α (left) or learning rate (right), "
            "then the mean over seeds with a ± std band; stars: the configuration each seed selected; dashed "
            "line: linear's best validation accuracy (mean ± std over seeds). The points are in sensitivity.csv."))
        blocks += [Figure(p) for p in plots]
    else:
        blocks.append(Para(f"No cell run has a {ARTIFACT} artifact (the candidate tables), so there is nothing "
                           "to plot; sweeps recorded before candidate tables were logged lack it: rerun their cells."))
    if n_missing and plots:
        listed = ", ".join(cell_id(r) for r in candidates.missing.head(MAX_LISTED).to_dict("records"))
        more = f" and {n_missing - MAX_LISTED} more" if n_missing > MAX_LISTED else ""
        blocks.append(Para(f"{n_missing} of {n_all} cell runs have no {ARTIFACT} (recorded before candidate tables "
                           f"were logged) and are left out of these plots: {listed}{more}."))
    return blocks


def section(inputs: ReportInputs) -> SectionOutput:
    candidates = load_candidates(inputs.tracking, inputs.results)   # every candidate table validated
    data = sensitivity_data(candidates)
    plots = sensitivity_plots(data)
    tables = {"sensitivity.csv": sensitivity_csv(data)} if len(data.profiles) else {}   # the plotted points
    return SectionOutput(sensitivity_blocks(candidates, plots), tuple(plots), tables)
