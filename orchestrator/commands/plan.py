"""`seabench plan --config FILE`: what a sweep would cost, before anything runs, with or without its data.

Cells per method (the sweep's own `plan_cells`), heads and head-epochs (the real grids), images to extract
and the feature store's bytes per backbone, fine-tuning runs and optimiser steps with each backbone's
recipe, MLflow runs, and how many cells the config's tracking store holds already: done (a complete run
with the current fingerprint, as `seabench status` decides it), stale (runs, none current) or missing.
Split sizes are counted from the data where it is on disk, else taken from the task registry's official
sizes (each task says which). `--calibrate` times a few batches of each stage here and scales them
(`orchestrator.sweep.calibrate`). Nothing is started or written: no Ray, no extraction; MLflow is opened
only where the tracking store exists, read-only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from orchestrator.config import SweepConfig, load_config

HELP = ("Size a sweep before it runs: cells, heads, head-epochs, images, fine-tuning steps, feature bytes, MLflow "
        "runs, what is done already; --calibrate estimates its time on this machine.")
STATES = ("done", "stale", "missing", "unchecked")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from orchestrator.commands.status import config_arguments

    config_arguments(parser, "configs/paper.yaml")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--calibrate", action="store_true",
                        help="time a few batches of extraction, heads and fine-tuning here (random weights and "
                             "inputs, about a minute) and estimate each stage's seconds")


@contextlib.contextmanager
def _impatient_http() -> Iterator[None]:
    """An unreachable MLflow server fails the done-check within seconds, not after MLflow's minutes of retries."""
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    before = {k: os.environ.get(k) for k in quick}
    os.environ.update({k: v for k, v in quick.items() if before[k] is None})
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)


def done_counts(cfg: SweepConfig, cells: Sequence[Any], sizes: Mapping[str, Any]) -> dict[str, Any]:
    """done / stale / missing cells against the tracking store (`unchecked`: stored runs whose fingerprint
    cannot be computed here, the task's data or a backbone's weights being absent)."""
    from orchestrator.commands.status import REUSED, cell_rows, stored_runs, tracking_store_absent

    counts = dict.fromkeys(STATES, 0) | {"missing": len(cells), "tracking_uri": cfg.tracking_uri}
    if tracking_store_absent(cfg.tracking_uri):
        return counts | {"note": "no tracking store: nothing done (none was created)"}
    from mlflow.exceptions import MlflowException

    try:
        with _impatient_http():
            runs = stored_runs(cfg.tracking_uri, cfg.name)
    except (MlflowException, OSError) as exc:
        return counts | {"missing": None, "unchecked": len(cells), "note": f"tracking store unreadable: {exc}"}
    if runs is None:
        return counts | {"note": f"no experiment {cfg.name!r} in the tracking store: nothing done"}
    from tasks import TaskError

    present = [t for t, s in sizes.items() if s.source == "data"]
    rows, note = {}, ""
    try:
        checked = [c for c in cells if c.task in present]
        rows = {r["cell_id"]: r for r in cell_rows(cfg, present, checked, runs)[0]} if checked else {}
    except TaskError as exc:   # a backbone's weights are absent: the feature keys, hence fingerprints, are unknown
        note = f"fingerprints not computed: {exc}"
    states: Counter[str] = Counter()
    for cell in cells:
        row, stored = rows.get(cell.cell_id), bool(runs.get(cell.cell_id))
        states["done" if row and row["state"] == REUSED else "stale" if row and stored else
               "unchecked" if stored else "missing"] += 1
    if states["unchecked"] and not note:
        note = "cells of tasks without data here have stored runs whose fingerprints cannot be computed"
    return counts | {s: states[s] for s in STATES} | ({"note": note} if note else {})


def plan(cfg: SweepConfig, where: str, calibrate: bool = False) -> dict[str, Any]:
    """The plan of `cfg` (read from `where`) as one JSON-ready mapping."""
    from dataclasses import replace

    from orchestrator.commands.run import available_tasks, check_names
    from orchestrator.sweep import plan_cells, sweep_budget, task_size

    cfg = replace(cfg, backbones=check_names(cfg, where))
    task_names = available_tasks(cfg)
    sizes = {task: task_size(task, cfg.data_root) for task in task_names}
    cells = plan_cells(cfg, task_names)
    out = {"config": where, "experiment": cfg.name, "mode": cfg.mode, "search": cfg.search.algorithm,
           "backbones": list(cfg.backbones), "methods": list(cfg.methods), "seeds": list(cfg.seeds),
           "skipped_tasks": [t for t in cfg.all_tasks if t not in task_names], **sweep_budget(cfg, cells, sizes)}
    out["done"] = done_counts(cfg, cells, sizes)
    if calibrate:
        from orchestrator.sweep import estimate_seconds

        out["estimate_s"] = estimate_seconds(cfg, cells, sizes, out)
    return out


def _n(value: Any) -> str:
    return "unknown" if value is None else f"{value:,}".replace(",", " ") if isinstance(value, int) else str(value)


def _bytes(value: int | None) -> str:
    if value is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return ""


def _duration(seconds: float) -> str:
    for unit, size, limit in (("s", 1, 120), ("min", 60, 7200), ("h", 3600, 172800)):
        if seconds < limit:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds / 86400:,.1f} d".replace(",", " ")


def _grid(values: Sequence[float]) -> str:
    return " ".join(f"{v:g}" for v in values)


def _table(rows: list[list[Any]]) -> list[str]:
    cells = [[_n(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return ["  " + "  ".join(c.ljust(w) if i == 0 or i == len(r) - 1 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in cells]


def render(out: Mapping[str, Any]) -> str:
    """The plan as readable tables."""
    cells = out["cells"]
    lines = [f"plan of sweep {out['experiment']!r} ({out['config']}): {len(out['tasks'])} tasks × "
             f"{len(out['backbones'])} backbones × {len(out['methods'])} methods × {len(out['seeds'])} seeds, "
             f"mode {out['mode']}, search {out['search']}"]
    if out["skipped_tasks"]:
        lines.append(f"  optional tasks without data here, left out as the sweep would: {', '.join(out['skipped_tasks'])}")
    lines += ["", "tasks (registry: the official split sizes in tasks/sizes.py; data: counted on disk; ≈ carved val):"]
    lines += _table([["task", "classes", "images", "fit", "val", "trainval", "test", "source"]] + [
        [t["task"], t["classes"], t["images"], t["phases"]["fit"], ("" if t["exact"] else "≈") + _n(t["phases"]["val"]),
         t["phases"]["trainval"], t["phases"]["test"], t["source"]] for t in out["tasks"]])
    lines += ["", "cells, heads and head-epochs per method:"]
    methods = out["method_plans"]
    rows = [["method", "cells", "heads/cell", "heads", "head-epochs", "what a cell trains"]]
    for method, count in cells["per_method"].items():
        plan = methods.get(method)
        rows.append([method, count, plan["heads"] if plan else "-", out["heads"]["per_method"].get(method, "-"),
                     out["head_epochs"]["per_method"].get(method, "-"),
                     plan["how"] if plan else "fine-tuning (below)"])
    rows.append(["total", cells["total"], "", out["heads"]["total"], out["head_epochs"]["total"], ""])
    lines += _table(rows)
    lines += ["", f"backbones (features {out['feature_bytes']['dtype']}; {out['images']['note']}):"]
    lines += _table([["backbone", "dim", "images", "feature bytes"]] + [
        [b, out["feature_dims"][b], n, _bytes(out["feature_bytes"]["per_backbone"][b])]
        for b, n in out["images"]["per_backbone"].items()] + [
        ["total", "", out["images"]["total"], _bytes(out["feature_bytes"]["total"])]])
    if out["finetune"]:
        lines += ["", "fine-tuning — each backbone's recipe (orchestrator/finetune/recipe.py; lr: the candidates, "
                  "× batch/256 where the recipe scales them; wd: the candidates, / lr where SGD is given wd / lr):"]
        lines += _table([["backbone", "recipe", "optimizer", "lr", "wd", "warmup_steps", "layer_decay", "smoothing",
                          "drop_path", "steps", "batch", "candidates", "cells", "runs", "optimiser steps"]] + [
            [f["backbone"], f["recipe"], f["optimizer"], _grid(f["lr"]) + (" ×b/256" if f.get("scale_lr") else ""),
             _grid(f["weight_decay"]) + (" /lr" if f.get("weight_decay_over_lr") else ""), f["warmup_steps"],
             "-" if f.get("layer_decay") is None else f["layer_decay"], f["label_smoothing"], f["drop_path"],
             f["steps"] if f["epochs"] is None else f"{f['epochs']} epochs", f["batch_size"], f["candidates"],
             f["cells"], f["runs"], f["optimizer_steps"]] for f in out["finetune"]])
        sources = {f["recipe"]: f["source"] for f in out["finetune"]}
        lines += [f"  {name}: {source}" for name, source in sources.items()]
    runs, done = out["mlflow_runs"], out["done"]
    lines += ["", f"MLflow runs: {runs['parent']} parent + {_n(runs['cells'])} cell runs = {_n(runs['total'])}",
              f"already done ({done['tracking_uri']}): " + ", ".join(f"{_n(done[s])} {s}" for s in STATES)
              + (f" — {done['note']}" if done.get("note") else "")]
    if "estimate_s" in out:
        est = out["estimate_s"]
        lines += ["", f"estimate on this machine ({est['device']}, calibrated in {est['calibration_s']:.1f} s): "
                  + ", ".join(f"{s} {_duration(est[s])}" for s in ("extract", "heads", "finetune", "total")),
                  f"  basis: {est['scaling']}"]
        for stage, entries in est["basis"].items():
            for name, entry in entries.items():
                lines.append(f"  {stage:<8} {name}: {entry['timed']} → {_duration(entry['seconds'])}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides, store=args.store, tracking_uri=args.tracking_uri)
    out = plan(cfg, args.config, calibrate=args.calibrate)
    print(json.dumps(out, indent=1, ensure_ascii=False) if args.json else render(out))
    sys.stdout.flush()
    return 0
