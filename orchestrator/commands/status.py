"""`seabench status --config FILE`: per planned cell, whether `seabench run` would reuse its MLflow result
or compute it, and for a cell to compute which inputs changed against its latest stored run.

Nothing is started or written: no Ray, no extraction, no MLflow run. The feature keys are those the run's
extraction would return: a unit's current key in the store where what the store recorded about it (its
images' identity — paths, sizes, mtimes and labels —, dtype, compute, timm version) is what the run would
use; otherwise the key the extraction's plan step computes from the images and the loaded backbone
(`orchestrator.extract.feature_key`), the backbone being loaded only then. A weights file replaced in place
under the same name is therefore seen by the run's extraction (which loads every backbone), not here.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.config import SweepConfig, load_config

HELP = ("Say, per planned cell, whether `seabench run` would reuse its MLflow result or compute it, and "
        "which inputs changed; starts nothing.")
REUSED, TO_COMPUTE = "reused", "to compute"


def config_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """The flags of a verb that reads a sweep config without running it (status, plan)."""
    parser.add_argument("--config", required=True, help=f"sweep YAML, e.g. {example}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key as `seabench run --set` does, e.g. --set trainer.epochs=5")
    parser.add_argument("--store", default=None, help="feature store path or fsspec URI (config key `store`)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (config key `tracking_uri`)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config_arguments(parser, "configs/demo.yaml")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _stored_key(store: Any, backbone: str, task: str, split: str, split_hash: str, dtype: str,
                compute: str) -> Any:
    """The store's current FeatureKey of the unit when the run's extraction would reuse it as it is, else None."""
    import timm

    from orchestrator.errors import OrchestratorError
    from orchestrator.extract import FeatureKey, extraction_code

    try:
        stored = store.feature_key(backbone, task, split)
    except OrchestratorError:
        return None   # not extracted, or recorded by another format version
    meta = {**stored.metadata(), "split_hash": split_hash, "dtype": dtype, "compute": compute,
            "timm_version": timm.__version__, "code": extraction_code()}
    meta.pop("format_version")   # the current format's: a unit of an older one is extracted again
    return stored if FeatureKey(**meta).key == stored.key else None


def planned_keys(cfg: SweepConfig, task_names: Sequence[str],
                 backbones: Sequence[str]) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """unit id -> the feature key `seabench run`'s extraction would return, unit id -> its image identity,
    and the unit ids it would extract (not in the store with that key yet)."""
    import tasks
    from orchestrator.extract import FeatureStore, backbone_parts, compute_of, feature_key
    from orchestrator.sweep import image_identity

    store = FeatureStore(cfg.store)
    dtype, compute = cfg.extraction.dtype, compute_of(cfg.extraction.num_gpus_per_actor)
    built: dict[str, Any] = {}
    keys, images, missing = {}, {}, []
    for part in dict.fromkeys(p for b in backbones for p in backbone_parts(b)):
        for task in task_names:
            for split in tasks.get_task(task).stored_splits:
                unit = f"{part}|{task}|{split}"
                data = tasks.build_task(task, cfg.data_root, split)
                fkey = _stored_key(store, part, task, split, tasks.stored_split_hash(task, split, data), dtype, compute)
                if fkey is None:
                    if part not in built:   # loading a model is the slow step: once per backbone, only if needed
                        built[part] = tasks.build_backbone(part)
                    fkey = feature_key(built[part], task, split, data, dtype, compute)
                    manifest = store.read_manifest(fkey)
                    if manifest is None or not manifest.complete:
                        missing.append(unit)
                keys[unit], images[unit] = fkey.key, image_identity(fkey.metadata())
    return keys, images, missing


def tracking_store_absent(tracking_uri: str) -> bool:
    """True where opening `tracking_uri` would create an empty store: a SQLite file or a local folder that
    does not exist (a server's store is never absent from here)."""
    if tracking_uri.startswith("sqlite:///"):
        return not Path(tracking_uri[len("sqlite:///"):]).is_file()
    if tracking_uri.startswith("file:") or "://" not in tracking_uri:
        return not Path(tracking_uri.removeprefix("file://").removeprefix("file:")).exists()
    return False


def stored_runs(tracking_uri: str, experiment: str) -> dict[str, list] | None:
    """cell_id -> the experiment's cell runs, or None when there is no such experiment (nothing is created)."""
    if tracking_store_absent(tracking_uri):
        return None   # opening it would create an empty store

    from mlflow import MlflowClient

    from orchestrator.runs import CELL_ROLE, role_filter, search_runs

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage == "deleted":
        return None
    out: dict[str, list] = {}
    for run in search_runs(client, found.experiment_id, role_filter(CELL_ROLE)):
        out.setdefault(run.data.tags.get("cell_id", ""), []).append(run)
    return out


def _shown(value: Any) -> str:
    return "-" if value is None else json.dumps(value) if not isinstance(value, str) else value


def cell_status(cell_id: str, fingerprint: Any, runs: Mapping[str, list] | None) -> dict[str, Any]:
    """reused (a FINISHED status=ok run with this fingerprint) or to compute, and why."""
    from orchestrator.runs import is_complete
    from orchestrator.sweep import changed_parts

    out: dict[str, Any] = {"cell_id": cell_id, "fingerprint": str(fingerprint), "state": TO_COMPUTE, "changed": {}}
    mine = (runs or {}).get(cell_id, [])
    if any(is_complete(r) and r.data.tags.get("fingerprint") == fingerprint for r in mine):
        return {**out, "state": REUSED, "why": ""}
    if runs is None or not mine:
        return {**out, "why": "no stored run" if runs is None else "new cell"}
    latest = max(mine, key=lambda r: r.info.start_time or 0)
    text = latest.data.tags.get("fingerprint_parts", "")
    if not text:
        return {**out, "why": "its stored run predates fingerprint_parts: which inputs changed is not recorded"}
    changed = changed_parts(json.loads(text), fingerprint.parts)
    if not changed:
        status = latest.data.tags.get("status") or latest.info.status
        return {**out, "why": f"its latest run of this fingerprint did not finish (status {status})"}
    why = ", ".join(f"{name} ({_shown(old)} → {_shown(new)})" for name, (old, new) in changed.items())
    return {**out, "changed": {k: list(v) for k, v in changed.items()}, "why": f"changed: {why}"}


def cell_rows(cfg: SweepConfig, task_names: Sequence[str], cells: Sequence[Any],
              runs: Mapping[str, list] | None) -> tuple[list[dict[str, Any]], dict[str, str], list[str]]:
    """`cell_status` of each of `cells` (over `task_names`, with the config's stored backbones) against `runs`,
    the unit id -> feature key they were fingerprinted with, and the unit ids still to extract."""
    from orchestrator.sweep import cell_fingerprints

    keys, images, missing = planned_keys(cfg, task_names, cfg.backbones)
    fingerprints = cell_fingerprints(cfg, cells, keys, images)
    return [cell_status(c.cell_id, fingerprints[c.cell_id], runs) for c in cells], keys, missing


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from orchestrator.commands.run import available_tasks, check_names
    from orchestrator.sweep import plan_cells

    cfg = load_config(args.config, args.overrides, store=args.store, tracking_uri=args.tracking_uri)
    cfg = replace(cfg, backbones=check_names(cfg, args.config))
    task_names = available_tasks(cfg)
    cells = plan_cells(cfg, task_names)
    rows, keys, missing = cell_rows(cfg, task_names, cells, stored_runs(cfg.tracking_uri, cfg.name))
    reused = sum(r["state"] == REUSED for r in rows)
    summary = {"experiment": cfg.name, "tracking_uri": cfg.tracking_uri, "store": cfg.store, "cells": rows,
               "reused": reused, "to_compute": len(rows) - reused, "units": len(keys), "units_to_extract": missing}
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"sweep {cfg.name!r} (MLflow {cfg.tracking_uri}, store {cfg.store}):")
    for row in rows:
        print(f"  {row['state']:<10}  {row['cell_id']}" + (f": {row['why']}" if row["why"] else ""))
    print(f"{reused} reused, {len(rows) - reused} to compute; {len(missing)} of {len(keys)} units to extract")
    return 0
