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
        """Write `relative` so that readers never see a half-written file.

        Local disk: a temporary name in the same folder, then `os.replace` (atomic within one filesystem).
        Object stores (s3://, gs://, any non-local fsspec filesystem): one `pipe_file` PUT of the whole
        object. An S3 or GCS PUT is all-or-nothing: the object appears only once every byte has arrived,
        and readers see either the old object or the new one, never a mixture (S3 has been strongly
        read-after-write consistent since 2020; GCS always was). A temporary key plus `mv` would be a
        copy and a delete there — two requests, not atomic, and twice the traffic.
        """
        final = self.path(relative)
        parent = final.rsplit("/", 1)[0]
        if not self.local:
            try:
                self.fs.pipe_file(final, data)
            except OSError as exc:
                raise OrchestratorError(f"cannot write {final} in feature store {self.uri!r}: {exc}") from exc
            return
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        try:
            os.makedirs(parent, exist_ok=True)
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise OrchestratorError(f"cannot write {final} in feature store {self.uri!r}: {exc}") from exc

    def size_of(self, relative: str) -> int | None:
        """The size in bytes of a file of the store (None when absent): one metadata request."""
        try:
            return int(self.fs.size(self.path(relative)))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OrchestratorError(f"cannot stat {self.path(relative)} in feature store {self.uri!r}: {exc}") from exc

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
