"""Feature keys and the per-unit manifest of the Parquet feature store.

A *unit* is the features of one (backbone, task, stored split). Its *key* hashes everything that
determines those features, so a changed input can never reuse stale shards.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.names import path_component
from orchestrator.protocol import STORE_DTYPES

# Bump when the meaning or layout of stored features changes: every key changes with it.
# 2: the split hash covers each image's identity, and the key holds how the features were computed.
FEATURE_FORMAT_VERSION = 2
DTYPES = STORE_DTYPES
COMPUTE_FLOAT32, COMPUTE_BF16 = "float32", "bf16-autocast"   # how the backbone ran (`compute` in the key)
COMPUTES = (COMPUTE_FLOAT32, COMPUTE_BF16)
# The leading "_" makes pyarrow/pandas/Spark skip it, so `pandas.read_parquet(<unit folder>)` just works.
MANIFEST = "_manifest.json"
METADATA_KEY = b"seabench"  # Parquet schema-metadata entry holding the unit's key metadata (JSON)

def _canonical(value: Any) -> Any:
    """JSON-ready copy with tuples as lists, so equal inputs always hash equally."""
    return json.loads(json.dumps(value, sort_keys=True, default=list))


@dataclass(frozen=True)
class FeatureKey:
    """Everything that determines the stored features of one unit; `.key` is its hash."""

    backbone: str
    weights_sha256: str
    timm_version: str
    preprocessing: dict
    feature: str
    task: str
    split: str
    split_hash: str
    dtype: str
    compute: str = COMPUTE_FLOAT32
    format_version: int = FEATURE_FORMAT_VERSION
    code: str = ""   # digest of the code and libraries that turn images into features (extract.plan.extraction_code)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise OrchestratorError(f"feature dtype {self.dtype!r} is not one of {DTYPES}")
        if self.compute not in COMPUTES:
            raise OrchestratorError(f"feature compute {self.compute!r} is not one of {COMPUTES}")
        object.__setattr__(self, "preprocessing", _canonical(self.preprocessing))

    def metadata(self) -> dict:
        return asdict(self)

    @property
    def key(self) -> str:
        blob = json.dumps(self.metadata(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    @classmethod
    def from_metadata(cls, meta: dict) -> FeatureKey:
        try:
            return cls(**meta)
        except TypeError as exc:
            raise OrchestratorError(f"feature-key metadata {sorted(meta)} is not this version's: {exc}") from exc

    def unit_path(self) -> str:
        """Folder of the unit relative to the store root: backbone/task/split/key."""
        return "/".join(
            (path_component(self.backbone, "backbone"), path_component(self.task, "task"), path_component(self.split, "split"), self.key)
        )

    def pointer_name(self) -> str:
        return pointer_name(self.backbone, self.task, self.split)


def pointer_name(backbone: str, task: str, split: str) -> str:
    """File name (under `<store>/index/`) naming the current key of (backbone, task, split)."""
    return f"{path_component(backbone, 'backbone')}__{path_component(task, 'task')}__{path_component(split, 'split')}.json"


@dataclass(frozen=True)
class ShardRecord:
    """One Parquet shard: rows [start, stop) of the split, the sha256 of the file's bytes (verified on
    resume) and their CRC-32 (verified on every load: ~10x cheaper than sha256, still catches
    truncation and bit flips). `skipped` lists the rows whose image could not be read, as
    (row, "what failed") pairs, when extraction ran with --skip-bad-images; their stored features
    are zeros and training leaves those rows out."""

    file: str
    start: int
    stop: int
    rows: int
    sha256: str
    bytes: int
    crc32: int = -1
    skipped: tuple[tuple[int, str], ...] = ()
    seconds: float = 0.0        # compute time of the shard on its actor (0: not recorded)
    node: str = ""              # the Ray node id that computed it ("" : not recorded)

    def __post_init__(self) -> None:
        object.__setattr__(self, "skipped", tuple((int(row), str(why)) for row, why in self.skipped))


@dataclass
class Manifest:
    """The `_manifest.json` of a unit. `complete` only once every planned shard is recorded."""

    key: str
    metadata: dict
    num_rows: int
    dim: int
    dtype: str
    shard_size: int
    shards: dict[int, ShardRecord] = field(default_factory=dict)
    complete: bool = False
    format_version: int = FEATURE_FORMAT_VERSION

    @property
    def num_shards(self) -> int:
        return max(1, -(-self.num_rows // self.shard_size))

    def shard_range(self, i: int) -> tuple[int, int]:
        start = i * self.shard_size
        return start, min(start + self.shard_size, self.num_rows)

    def missing(self) -> list[int]:
        return [i for i in range(self.num_shards) if i not in self.shards]

    def skipped(self) -> dict[int, str]:
        """Rows whose image could not be read (extracted with --skip-bad-images): row -> what failed."""
        return {row: why for i in sorted(self.shards) for row, why in self.shards[i].skipped}

    def to_json(self) -> str:
        body = asdict(self)
        body["shards"] = [asdict(self.shards[i]) | {"shard": i} for i in sorted(self.shards)]
        return json.dumps(body, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            body = json.loads(text)
            shards = {int(s.pop("shard")): ShardRecord(**s) for s in body.pop("shards")}
            manifest = cls(**body, shards=shards)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise OrchestratorError(
                f"{where} is not a valid feature manifest ({exc}); delete the folder and re-run `seabench extract`"
            ) from exc
        for i, record in manifest.shards.items():
            start, stop = manifest.shard_range(i)
            if not 0 <= i < manifest.num_shards or (record.start, record.stop, record.rows) != (start, stop, stop - start):
                raise OrchestratorError(
                    f"{where}: shard {i} is recorded as rows [{record.start}, {record.stop}) ({record.rows} rows), "
                    f"but a unit of {manifest.num_rows} rows in shards of {manifest.shard_size} puts it at "
                    f"[{start}, {stop}); the manifest disagrees with its plan — re-run `seabench extract`"
                )
        return manifest
