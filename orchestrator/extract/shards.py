"""The Parquet shard file: how one shard of a unit is encoded, and how it is verified when read.

Schema: `index` int64 (row in the stored split), `label` int32, `feature` fixed-size list of float32
or float16 (length d), zstd-compressed with byte-stream-split floats; the key's metadata is stored as
JSON under b"seabench" in the Parquet schema metadata, so pandas, DuckDB or Ray Data read the files
as they are. A file is verified on load by size, CRC-32 (or sha256) and the key in its metadata.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.errors import OrchestratorError
from orchestrator.extract.manifest import METADATA_KEY, FeatureKey, Manifest, ShardRecord

FEATURE_LEAF = "feature.list.element"  # the Parquet column path of the feature values
FIX = "re-run `seabench extract` with the same arguments to re-extract it"


def _checksum_ok(data: pa.Buffer, record: ShardRecord) -> bool:
    view = memoryview(data)
    if record.crc32 >= 0:
        return zlib.crc32(view) == record.crc32
    return hashlib.sha256(view).hexdigest() == record.sha256


def shard_table(index: np.ndarray, labels: np.ndarray, features: np.ndarray, meta: dict) -> pa.Table:
    """The Arrow table of one shard (features already in the storage dtype)."""
    d = features.shape[1]
    values = pa.array(np.ascontiguousarray(features).reshape(-1))
    # Non-nullable fields: features are never null, and Parquet decodes a list of non-null values ~2x faster.
    element = pa.field("element", values.type, nullable=False)
    schema = pa.schema(
        [pa.field("index", pa.int64(), nullable=False), pa.field("label", pa.int32(), nullable=False),
         pa.field("feature", pa.list_(element, d), nullable=False)],
        metadata={METADATA_KEY: json.dumps(meta, sort_keys=True).encode()},
    )
    columns = [
        pa.array(np.asarray(index, dtype=np.int64)),
        pa.array(np.asarray(labels, dtype=np.int32)),
        pa.FixedSizeListArray.from_arrays(values, type=schema.field("feature").type),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def encode_shard(fkey: FeatureKey, shard: int, start: int, stop: int, index: np.ndarray, labels: np.ndarray,
                 features: np.ndarray, skipped: Sequence[tuple[int, str]] = ()) -> tuple[bytes, ShardRecord]:
    """The Parquet bytes of one shard and the record the manifest keeps of them."""
    buffer = pa.BufferOutputStream()
    meta = {"key": fkey.key, **fkey.metadata()}
    table = shard_table(index, labels, features.astype(fkey.dtype, copy=False), meta)
    # Byte-stream-split puts the exponent bytes of the floats together: better zstd ratio and
    # about 2x faster decoding than plain encoding for feature vectors.
    pq.write_table(table, buffer, compression="zstd", use_dictionary=False, use_byte_stream_split=[FEATURE_LEAF])
    data = buffer.getvalue().to_pybytes()
    record = ShardRecord(f"shard-{shard:05d}.parquet", start, stop, stop - start,
                         hashlib.sha256(data).hexdigest(), len(data), zlib.crc32(data), tuple(skipped))
    return data, record


def decode_shard(name: str, data: pa.Buffer | None, manifest: Manifest, record: ShardRecord,
                 features: np.ndarray, labels: np.ndarray) -> None:
    """Verify the bytes of one shard (`name`, for messages) and copy it into rows [start, stop)."""
    if data is None:
        raise OrchestratorError(f"{name} is missing; {FIX}")
    if data.size != record.bytes or not _checksum_ok(data, record):
        raise OrchestratorError(f"{name}: checksum mismatch with the manifest (corrupt or replaced); {FIX}")
    table = pq.read_table(pa.BufferReader(data))
    meta = json.loads((table.schema.metadata or {}).get(METADATA_KEY, b"{}"))
    if meta.get("key") != manifest.key:
        raise OrchestratorError(
            f"{name} belongs to feature key {meta.get('key')!r}, not {manifest.key}; "
            f"shards of different keys never mix — delete it and {FIX}"
        )
    column = table.column("feature")
    dim = getattr(column.type, "list_size", None)
    if dim != manifest.dim or table.num_rows != record.rows:
        raise OrchestratorError(f"{name}: {table.num_rows} rows of dim {dim}, manifest says "
                                f"{record.rows} of dim {manifest.dim}; delete it and {FIX}")
    index = table.column("index").to_numpy()
    if not np.array_equal(index, np.arange(record.start, record.stop)):
        raise OrchestratorError(f"{name}: indices are not rows [{record.start}, {record.stop}); {FIX}")
    row = record.start
    for chunk in column.chunks:
        flat = chunk.flatten().to_numpy(zero_copy_only=False)
        features[row: row + len(chunk)] = flat.reshape(len(chunk), manifest.dim)
        row += len(chunk)
    labels[record.start: record.stop] = table.column("label").to_numpy()
    block = features[record.start: record.stop]
    if not np.isfinite(block).all():
        rows = (record.start + np.flatnonzero(~np.isfinite(block).all(axis=1))[:5]).tolist()
        raise OrchestratorError(f"{name}: features contain NaN/Inf (rows {rows}...); the backbone "
                                "diverged — check its weights, then delete this folder and re-extract")
