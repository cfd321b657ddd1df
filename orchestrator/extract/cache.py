"""A node-local cache of decoded units, so that the cells a node runs read each unit from the store once.

A unit is decoded from its Parquet shards (verified by CRC-32) once per node and kept as `.npy` files
(float32 features, int64 labels) in one entry folder per feature key and store, named
`<key>-<sha256 of the manifest and the store's URI>`.
An entry is verified on every read against the store's current manifest of that unit (the sha256 of
its bytes, one small read) and against its own recorded file sizes; the features are then
memory-mapped (`np.load(mmap_mode="r")`), so cells running side by side on a node share one copy
in the page cache. Entries are written to a temporary folder and renamed, under a per-entry file
lock, so concurrent trials decode a unit once and a killed writer never leaves a readable entry.
The cache is bounded: once its entries pass `max_bytes`, the least recently used are removed.

Folder: $SEABENCH_CACHE or ~/.cache/seabench/units; bound: $SEABENCH_CACHE_GB (default 50; 0 turns
the cache off, every read then decodes from the store).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from filelock import FileLock

from orchestrator.errors import OrchestratorError
from orchestrator.extract.manifest import MANIFEST
from orchestrator.extract.store import FeatureStore, StoredUnit
from orchestrator.names import path_component

CACHE_ENV, CACHE_GB_ENV = "SEABENCH_CACHE", "SEABENCH_CACHE_GB"
DEFAULT_CACHE = "~/.cache/seabench/units"
DEFAULT_GB = 50.0
META = "entry.json"


def _default_bytes() -> int:
    raw = os.environ.get(CACHE_GB_ENV, "").strip()
    try:
        gb = float(raw) if raw else DEFAULT_GB
    except ValueError as exc:
        raise OrchestratorError(f"${CACHE_GB_ENV}={raw!r} is not a number of GB (0 turns the cache off)") from exc
    return int(gb * (1 << 30))


class UnitCache:
    """Decoded units of one or more stores under `folder`, at most `max_bytes` in all."""

    def __init__(self, folder: str | os.PathLike | None = None, max_bytes: int | None = None) -> None:
        self.folder = Path(folder or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()
        self.max_bytes = _default_bytes() if max_bytes is None else int(max_bytes)

    def read(self, store: FeatureStore, backbone: str, task: str, split: str, key: str | None = None) -> StoredUnit:
        """The unit `store.read(backbone, task, split)` returns (or the one of feature `key`), from the cache."""
        if key:
            unit_path = "/".join((path_component(backbone, "backbone"), path_component(task, "task"),
                                  path_component(split, "split"), path_component(key, "feature key")))
        else:
            unit_path = store._pointer(backbone, task, split)["path"]
        manifest = store.read_bytes(f"{unit_path}/{MANIFEST}")
        if self.max_bytes <= 0 or manifest is None:   # off, or absent (the store says why)
            return store.read_key(backbone, task, split, key) if key else store.read(backbone, task, split)
        # named by the key and a digest of the manifest's bytes and the store's location: a re-extracted
        # unit or another store never shares an entry (a store's own shards are what it vouches for)
        digest = hashlib.sha256(manifest + b"\0" + store.uri.encode()).hexdigest()[:16]
        entry = self.folder / f"{unit_path.rsplit('/', 1)[-1]}-{digest}"
        unit = self._open(entry)
        if unit is not None:
            return unit
        self.folder.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.folder / f".{entry.name}.lock")):
            unit = self._open(entry)     # another trial of this node may have written it meanwhile
            if unit is None:
                self._write(entry, store._load_unit(unit_path))
                unit = self._open(entry)
        self._evict(keep=entry)
        if unit is None:
            raise OrchestratorError(f"cache entry {entry} is unreadable right after it was written; remove "
                                    f"{self.folder} (${CACHE_ENV}) and retry")
        return unit

    def _open(self, entry: Path) -> StoredUnit | None:
        """The entry's unit if it is complete and its files have their recorded sizes; else None."""
        try:
            meta = json.loads((entry / META).read_text())
            files = {name: entry / name for name in ("features.npy", "labels.npy")}
            if any(path.stat().st_size != meta["sizes"][name] for name, path in files.items()):
                return None
            features = np.load(files["features.npy"], mmap_mode="r", allow_pickle=False)
            labels = np.load(files["labels.npy"], allow_pickle=False)
            os.utime(entry / META)   # least recently used = oldest entry.json
        except (OSError, ValueError, KeyError):
            return None
        return StoredUnit(features, labels, meta["key"], {int(r): why for r, why in meta["skipped"].items()})

    def _write(self, entry: Path, unit: StoredUnit) -> None:
        tmp = self.folder / f".tmp-{entry.name}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir()
            np.save(tmp / "features.npy", np.ascontiguousarray(unit.features, dtype=np.float32))
            np.save(tmp / "labels.npy", np.ascontiguousarray(unit.labels, dtype=np.int64))
            sizes = {name: (tmp / name).stat().st_size for name in ("features.npy", "labels.npy")}
            meta = {"key": unit.key, "sizes": sizes, "skipped": {str(r): why for r, why in unit.skipped.items()}}
            (tmp / META).write_text(json.dumps(meta))
            if entry.exists():
                shutil.rmtree(entry)     # damaged (sizes off): replaced whole
            os.rename(tmp, entry)
        except OSError as exc:
            raise OrchestratorError(f"cannot write the unit cache entry {entry}: {exc}; free space there, point "
                                    f"${CACHE_ENV} elsewhere, or set ${CACHE_GB_ENV}=0") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _evict(self, keep: Path) -> None:
        """Remove least recently used entries until the cache holds at most max_bytes (`keep` stays)."""
        with FileLock(str(self.folder / ".evict.lock")):
            entries = []
            for entry in self.folder.iterdir():
                if entry.name.startswith(".") or not entry.is_dir():
                    continue
                with contextlib.suppress(OSError):
                    size = sum(f.stat().st_size for f in entry.iterdir())
                    entries.append(((entry / META).stat().st_mtime, size, entry))
            total = sum(size for _, size, _ in entries)
            for _, size, entry in sorted(entries):
                if total <= self.max_bytes:
                    break
                if entry != keep:
                    # a trial that memory-mapped it keeps reading its (unlinked) files
                    shutil.rmtree(entry, ignore_errors=True)
                    total -= size
