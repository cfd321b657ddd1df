"""The Parquet feature store: one folder of shard files plus a manifest per unit, on any fsspec filesystem.

Layout under the store root (a local path or an fsspec URI such as `s3://bucket/features`):

    <backbone>/<task>/<split>/<key>/shard-00000.parquet, ..., _manifest.json
    index/<backbone>__<task>__<split>.json      -> names the current key of that unit

The shard files' schema is in extract/shards.py; pandas, DuckDB or Ray Data read them as they are.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from orchestrator.errors import OrchestratorError
from orchestrator.extract.files import StoreFiles
from orchestrator.extract.manifest import MANIFEST, FeatureKey, Manifest, ShardRecord, pointer_name
from orchestrator.extract.shards import FIX, decode_shard, encode_shard
from orchestrator.names import path_component

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredUnit:
    """A loaded unit. Rows listed in `skipped_rows` (images unreadable at extraction) hold zero features."""

    features: np.ndarray        # n×d float32, row i = sample i of the stored split
    labels: np.ndarray          # n int64
    key: str
    skipped: dict[int, str]     # row -> what failed

    @property
    def skipped_rows(self) -> np.ndarray:
        """Sorted int64 indices of the skipped rows."""
        return np.array(sorted(self.skipped), dtype=np.int64)


class FeatureStore(StoreFiles):
    """Read and write feature units under `uri` (local path or any fsspec URL)."""

    def __repr__(self) -> str:
        return f"FeatureStore({self.uri!r})"

    @contextlib.contextmanager
    def lock(self, fkey: FeatureKey) -> Iterator[None]:
        """Exclusive access to one unit across processes (local filesystems; object stores: one writer)."""
        with self.lock_folder(fkey.unit_path()):
            yield

    # ---- writing -------------------------------------------------------------------------------
    def read_manifest(self, fkey: FeatureKey) -> Manifest | None:
        relative = f"{fkey.unit_path()}/{MANIFEST}"
        data = self.read_bytes(relative)
        return None if data is None else Manifest.from_json(data.decode(errors="replace"), self.path(relative))

    def _usable_manifest(self, fkey: FeatureKey) -> Manifest | None:
        """The unit's manifest for a writer; None when absent or damaged from outside (writes are atomic),
        in which case its checksums are lost and every shard is extracted again."""
        try:
            return self.read_manifest(fkey)
        except OrchestratorError as exc:
            log.warning("%s; extracting the unit again", exc)
            return None

    def shard_ok(self, fkey: FeatureKey, record: ShardRecord) -> bool:
        """The shard file exists with the recorded size and sha256."""
        data = self.read_bytes(f"{fkey.unit_path()}/{record.file}")
        return data is not None and len(data) == record.bytes and hashlib.sha256(data).hexdigest() == record.sha256

    def open_unit(self, fkey: FeatureKey, num_rows: int, dim: int, shard_size: int) -> tuple[Manifest, int]:
        """The unit's manifest with only verified shards kept (and how many were dropped as bad or missing).

        An existing manifest keeps its own shard size so that finished shards stay reusable.
        """
        if shard_size < 1:
            raise OrchestratorError(f"shard size must be ≥ 1, got {shard_size}")
        self._remove_stale_temporaries(fkey)
        old = self._usable_manifest(fkey)
        if old is None or old.key != fkey.key or (old.num_rows, old.dim) != (num_rows, dim):
            return Manifest(fkey.key, fkey.metadata(), num_rows, dim, fkey.dtype, shard_size), 0
        good = {i: r for i, r in old.shards.items() if self.shard_ok(fkey, r)}
        dropped = len(old.shards) - len(good)
        old.shards = good
        old.complete = not old.missing()
        if dropped:
            # Rewrite at once: the manifest on storage is the truth every writer merges with.
            with self.lock(fkey):
                self.write_atomic(f"{fkey.unit_path()}/{MANIFEST}", old.to_json().encode())
        return old, dropped

    def _remove_stale_temporaries(self, fkey: FeatureKey) -> None:
        """Delete `.tmp-*` files a killed writer left in the unit folder.

        Writers create a unit's temporaries only while holding its lock, so under the lock every one
        found belongs to a process that died before its rename.
        """
        if not self.local:
            return  # no cross-process lock on object stores: a temporary may be another writer's
        folder = self.path(fkey.unit_path())
        with self.lock(fkey):
            try:
                stale = [p for p in self.fs.ls(folder, detail=False) if p.rsplit("/", 1)[-1].startswith(".tmp-")]
            except FileNotFoundError:
                return
            for path in stale:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(path)

    def write_shard(
        self, fkey: FeatureKey, manifest: Manifest, shard: int, index: np.ndarray, labels: np.ndarray,
        features: np.ndarray, skipped: Sequence[tuple[int, str]] = (),
    ) -> ShardRecord:
        """Write one shard atomically and record it in the manifest (and the pointer once complete).

        `skipped`: (row, reason) of rows whose image could not be read; their features must be zeros.
        """
        record = self.write_shard_file(fkey, manifest, shard, index, labels, features, skipped)
        return self.record_shard(fkey, manifest, int(shard), record)

    def write_shard_file(
        self, fkey: FeatureKey, manifest: Manifest, shard: int, index: np.ndarray, labels: np.ndarray,
        features: np.ndarray, skipped: Sequence[tuple[int, str]] = (),
    ) -> ShardRecord:
        """Write one shard's Parquet file (atomically) without recording it; returns its record.

        This is the extraction actor's half of `write_shard`: the shard is written where it is made,
        and only the record travels back to the driver, which records it (`record_shard`). A shard that
        the unit's manifest already records with a file of the recorded size is kept, not rewritten.
        """
        shard = int(shard)
        start, stop = manifest.shard_range(shard)
        if features.shape != (stop - start, manifest.dim) or not np.array_equal(index, np.arange(start, stop)):
            raise OrchestratorError(
                f"shard {shard} of {fkey.unit_path()}: got {features.shape} rows for indices "
                f"[{start}, {stop}) of dim {manifest.dim}; extraction returned the wrong rows"
            )
        bad = [row for row, _ in skipped if not start <= row < stop]
        if bad:
            raise OrchestratorError(f"shard {shard} of {fkey.unit_path()}: skipped rows {bad[:5]} lie outside "
                                    f"[{start}, {stop})")
        data, record = encode_shard(fkey, shard, start, stop, index, labels, features, skipped)
        with self.lock(fkey):
            current = self._usable_manifest(fkey)
            if current is not None and current.key == manifest.key and shard in current.shards:
                kept = current.shards[shard]
                if self.size_of(f"{fkey.unit_path()}/{kept.file}") == kept.bytes:
                    return kept  # recorded meanwhile by another process: keep its file
            self.write_atomic(f"{fkey.unit_path()}/{record.file}", data)
        return record

    def record_shard(self, fkey: FeatureKey, manifest: Manifest, shard: int, record: ShardRecord) -> ShardRecord:
        """Record a shard file written by `write_shard_file` (the driver's half: the single writer of
        manifests and pointers). The file is checked against the record: its size always (one metadata
        request), its sha256 too on local disk (a local read is cheap; an object store's would be a
        download of the whole shard)."""
        relative = f"{fkey.unit_path()}/{record.file}"
        start, stop = manifest.shard_range(shard)
        if (record.start, record.stop, record.rows) != (start, stop, stop - start):
            raise OrchestratorError(f"{self.path(relative)}: the record says rows [{record.start}, {record.stop}), "
                                    f"the plan [{start}, {stop}); extraction returned the wrong shard")
        with self.lock(fkey):
            # Re-read under the lock: another process may have recorded shards of this unit meanwhile.
            current = self._usable_manifest(fkey)
            if current is not None and current.key == manifest.key and current.shard_size == manifest.shard_size:
                manifest.shards.update(current.shards)
            if shard in manifest.shards:
                return manifest.shards[shard]  # written meanwhile by another process: keep its file
            size = self.size_of(relative)
            if size is None:
                raise OrchestratorError(f"{self.path(relative)} is missing although its extraction actor wrote it "
                                        "(was the folder removed meanwhile?); re-run the extraction")
            if size != record.bytes or (self.local and not self.shard_ok(fkey, record)):
                raise OrchestratorError(
                    f"{self.path(relative)} is not the file its extraction actor wrote (size or sha256 differ "
                    "from its record): another writer replaced it meanwhile; re-run the extraction")
            manifest.shards[shard] = record
            manifest.complete = not manifest.missing()
            self.write_atomic(f"{fkey.unit_path()}/{MANIFEST}", manifest.to_json().encode())
            if manifest.complete:
                self.set_current(fkey)
        return record

    def set_current(self, fkey: FeatureKey) -> None:
        """Point `load(backbone, task, split)` at this key."""
        pointer = {"key": fkey.key, "path": fkey.unit_path(), "backbone": fkey.backbone, "task": fkey.task,
                   "split": fkey.split}
        self.write_atomic(f"index/{fkey.pointer_name()}", json.dumps(pointer, indent=1).encode())

    # ---- reading -------------------------------------------------------------------------------
    def _pointer(self, backbone: str, task: str, split: str) -> dict:
        relative = f"index/{pointer_name(backbone, task, split)}"
        data = self.read_bytes(relative)
        if data is None:
            raise OrchestratorError(
                f"no features for backbone {backbone!r}, task {task!r}, split {split!r} in store {self.uri!r}; "
                f"run `seabench extract --backbone {backbone} --task {task} --store {self.uri}`"
            )
        return json.loads(data)

    def _unit_path_of_key(self, key: str) -> str:
        if not key.isalnum():
            raise OrchestratorError(f"{key!r} is not a feature key (expected hex digits)")
        hits = self.fs.glob(f"{self.root}/*/*/*/{key}/{MANIFEST}")
        if not hits:
            raise OrchestratorError(f"feature key {key} is not in store {self.uri!r}; run `seabench extract`")
        return hits[0][len(self.root) + 1: -len(MANIFEST) - 1]

    def _manifest_at(self, unit_path: str) -> Manifest:
        relative = f"{unit_path}/{MANIFEST}"
        data = self.read_bytes(relative)
        if data is None:
            raise OrchestratorError(f"{self.path(relative)} is missing; {FIX}")
        manifest = Manifest.from_json(data.decode(errors="replace"), self.path(relative))
        if manifest.key != unit_path.rsplit("/", 1)[-1]:
            raise OrchestratorError(f"{self.path(relative)} is the manifest of feature key {manifest.key}, not of "
                                    f"the folder it lies in; units of different keys never mix — {FIX}")
        return manifest

    def unit_info(self, backbone: str, task: str, split: str) -> dict:
        """The current manifest of (backbone, task, split) as a dict, including the key metadata."""
        manifest = self._manifest_at(self._pointer(backbone, task, split)["path"])
        return json.loads(manifest.to_json())

    def feature_key(self, backbone: str, task: str, split: str) -> FeatureKey:
        """The FeatureKey of the features `load(backbone, task, split)` returns."""
        return FeatureKey.from_metadata(self.unit_info(backbone, task, split)["metadata"])

    def key_for(self, backbone: str, task: str, split: str) -> str:
        return self._pointer(backbone, task, split)["key"]

    def load(self, backbone: str, task: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(features float32 n×d, labels int64) of the current unit, ordered by index.

        Rows of images skipped at extraction (see `read`) hold zeros."""
        unit = self.read(backbone, task, split)
        return unit.features, unit.labels

    def read(self, backbone: str, task: str, split: str) -> StoredUnit:
        """The current unit of (backbone, task, split): features, labels, key and skipped rows."""
        return self._load_unit(self._pointer(backbone, task, split)["path"])

    def _keyed_path(self, backbone: str, task: str, split: str, key: str) -> str:
        unit_path = "/".join((path_component(backbone, "backbone"), path_component(task, "task"),
                              path_component(split, "split"), key))
        if not key.isalnum() or self.read_bytes(f"{unit_path}/{MANIFEST}") is None:
            raise OrchestratorError(
                f"feature key {key!r} of {backbone} / {task} / {split} is not in store {self.uri!r}; the "
                f"extraction that planned it did not finish there — rerun `seabench run` (or `seabench extract`)")
        return unit_path

    def read_key(self, backbone: str, task: str, split: str, key: str) -> StoredUnit:
        """The unit of (backbone, task, split) with exactly this feature key, whatever the pointer says."""
        return self._load_unit(self._keyed_path(backbone, task, split, key))

    def manifest_of(self, backbone: str, task: str, split: str, key: str) -> Manifest:
        """The manifest of the unit of (backbone, task, split) with this feature key (its shards' records)."""
        return self._manifest_at(self._keyed_path(backbone, task, split, key))

    def load_key(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        unit = self._load_unit(self._unit_path_of_key(key))
        return unit.features, unit.labels

    def _load_unit(self, unit_path: str) -> StoredUnit:
        manifest = self._manifest_at(unit_path)
        where = self.path(f"{unit_path}/{MANIFEST}")
        if not manifest.complete or manifest.missing():
            raise OrchestratorError(f"{where}: unit is incomplete (shards {manifest.missing()} missing); {FIX}")
        features = np.empty((manifest.num_rows, manifest.dim), dtype=np.float32)
        labels = np.empty(manifest.num_rows, dtype=np.int64)
        records = [manifest.shards[i] for i in range(manifest.num_shards)]

        def read(record: ShardRecord) -> None:
            name = self.path(f"{unit_path}/{record.file}")
            decode_shard(name, self.read_buffer(f"{unit_path}/{record.file}"), manifest, record, features, labels)

        # Shards decode in parallel: pyarrow and hashlib release the GIL.
        with ThreadPoolExecutor(max(1, min(len(records), os.cpu_count() or 1))) as pool:
            list(pool.map(read, records))
        return StoredUnit(features, labels, manifest.key, manifest.skipped())

