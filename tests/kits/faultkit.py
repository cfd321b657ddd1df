"""Helpers of the fault-injection suite: a tiny extraction, shard digests, CLI subprocesses, progress probes."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from orchestrator.extract import ExtractSummary
from orchestrator.extract.extraction import ActorSettings, extract_features
from orchestrator.extract.store import FeatureStore

BACKBONE = "random:resnet10t@32"
SHARD = 4
REPO = Path(__file__).resolve().parents[2]


def extract(task: str, store: str | Path | FeatureStore, **kwargs: object) -> ExtractSummary:
    """The suite's standard extraction: shards of 4 rows, one actor, batches of 4 (deterministic)."""
    settings = kwargs.pop("settings", ActorSettings(num_actors=1, batch_size=SHARD))
    return extract_features(BACKBONE, task, store=store if isinstance(store, FeatureStore) else str(store),
                            shard_size=SHARD, progress=False, settings=settings, **kwargs)


def unit_folder(store: str | Path, task: str, split: str, backbone: str = BACKBONE) -> Path:
    fs = FeatureStore(store)
    return Path(store) / fs.feature_key(backbone, task, split).unit_path()


def shard_digests(store: str | Path, task: str, split: str, backbone: str = BACKBONE) -> dict[str, str]:
    """file name -> sha256 of every shard the unit's manifest records."""
    info = FeatureStore(store).unit_info(backbone, task, split)
    return {shard["file"]: shard["sha256"] for shard in info["shards"]}


def store_digests(store: str | Path) -> dict[str, str]:
    """'<backbone>/<task>/<split>/<key>/<file>' -> sha256 for every recorded shard of every unit in the store."""
    import json

    out = {}
    for manifest in Path(store).glob("*/*/*/*/_manifest.json"):
        body = json.loads(manifest.read_text())
        unit = manifest.parent.relative_to(store).as_posix()
        out.update({f"{unit}/{s['file']}": s["sha256"] for s in body["shards"]})
    return out


def seabench(*argv: str, cwd: str | Path | None = None, timeout: float = 600, env: dict | None = None,
             **popen: object) -> subprocess.CompletedProcess:
    """`seabench ARGV` in a fresh Python process (this checkout's code), output captured."""
    return subprocess.run([sys.executable, "-m", "orchestrator.commands.cli", *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=_env(env), **popen)


def seabench_background(*argv: str, cwd: str | Path | None = None, log: Path | None = None) -> subprocess.Popen:
    """`seabench ARGV` started in its own session (so that killpg reaches all of it)."""
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    return subprocess.Popen([sys.executable, "-m", "orchestrator.commands.cli", *argv], cwd=cwd, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True, env=_env(None))


def _env(extra: dict | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("TQDM_DISABLE", "1")
    env.update(extra or {})
    return env


def finished_cells(db: Path, experiment: str) -> int:
    """FINISHED cell runs of an experiment, read straight from the SQLite store (read-only, never blocks
    the writer for long); 0 while the store or the experiment does not exist yet."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0) as con:
            row = con.execute(
                "SELECT COUNT(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                "JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'seabench.role' AND t.value = 'cell' "
                "WHERE e.name = ? AND r.status = 'FINISHED' AND r.lifecycle_stage = 'active'", (experiment,)
            ).fetchone()
    except sqlite3.Error:  # not created yet, or a schema migration in progress
        return 0
    return int(row[0])


def shard_files(store: Path) -> int:
    return sum(1 for _ in store.glob("*/*/*/*/shard-*.parquet")) if store.exists() else 0
