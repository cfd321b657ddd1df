"""Low-level files of a store on any fsspec filesystem: atomic writes, reads, memory maps, folder locks."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import fsspec
import pyarrow as pa
from filelock import FileLock, Timeout
from fsspec.implementations.local import LocalFileSystem

from orchestrator.errors import OrchestratorError

LOCK_TIMEOUT_S = 600.0


class StoreFiles:
    """Files under the root `uri` of a store: atomic writes, reads, memory maps and folder locks."""

    def __init__(self, uri: str | os.PathLike) -> None:
        self.uri = str(uri)
        try:
            self.fs, root = fsspec.core.url_to_fs(self.uri)
        except (ValueError, ImportError) as exc:
            raise OrchestratorError(f"feature store {self.uri!r}: unsupported location ({exc})") from exc
        self.root = root.rstrip("/") or "/"
        self.local = isinstance(self.fs, LocalFileSystem)
        if self.fs.exists(self.root) and not self.fs.isdir(self.root):
            raise OrchestratorError(f"feature store {self.uri!r} is a file, not a folder; pass a folder path")

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def write_atomic(self, relative: str, data: bytes) -> None:
        """Write to a temporary name and rename, so readers never see a half-written file."""
        final = self.path(relative)
        parent = final.rsplit("/", 1)[0]
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        try:
            self.fs.makedirs(parent, exist_ok=True)
            if self.local:
                with open(tmp, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, final)
            else:
                self.fs.pipe_file(tmp, data)
                self.fs.mv(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.fs.rm(tmp)
            raise OrchestratorError(f"cannot write {final} in feature store {self.uri!r}: {exc}") from exc

    def read_bytes(self, relative: str) -> bytes | None:
        try:
            return self.fs.cat_file(self.path(relative))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OrchestratorError(f"cannot read {self.path(relative)} in feature store {self.uri!r}: {exc}") from exc

    def read_buffer(self, relative: str) -> pa.Buffer | None:
        """A shard's bytes as an Arrow buffer: memory-mapped on local disk (no copy through Python)."""
        if not self.local:
            data = self.read_bytes(relative)
            return None if data is None else pa.py_buffer(data)
        try:
            with pa.memory_map(self.path(relative)) as mapped:
                return mapped.read_buffer()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OrchestratorError(f"cannot read {self.path(relative)} in feature store {self.uri!r}: {exc}") from exc

    @contextlib.contextmanager
    def lock_folder(self, relative: str) -> Iterator[None]:
        """Exclusive access to one folder across processes (local filesystems; object stores: one writer)."""
        if not self.local:
            yield
            return
        folder = self.path(relative)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise OrchestratorError(f"cannot create {folder} in feature store {self.uri!r}: {exc}") from exc
        try:
            with FileLock(f"{folder}/.lock", timeout=LOCK_TIMEOUT_S):
                yield
        except Timeout as exc:
            raise OrchestratorError(f"{folder}/.lock held for {LOCK_TIMEOUT_S:.0f} s by another extraction; "
                                    "wait for it or delete the lock if that process is gone") from exc
