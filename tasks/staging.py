"""Data and weights that every node can reach: fsspec URIs staged into a node-local cache.

`data_root`, `imagefolder:` roots and weights files may be written as
  - a plain path (local disk or a shared mount): used in place, never copied;
  - an fsspec URI (`s3://…`, `gs://…`, `file://…`, `memory://…`): copied once per node into the
    cache (default `~/.cache/seabench/staged`) and used from there. `file://` is how a user asks for
    a node-local copy of a slow shared mount.
A cache entry is named by a hash of the URI and of what the remote listing says about it (per file:
relative name, size, and mtime or ETag), so a changed remote file or folder is staged again under a
new entry; an unchanged one is reused without copying. Entries are written under a temporary name
and renamed, under a `filelock` lock, so concurrent stagers on one node copy once and a killed copy
never looks complete. Staged files keep the remote's modification time, so split identities
(`tasks.stored_split_hash`) of staged data agree between nodes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

from tasks.errors import TaskError

STAGE_DIR = Path("~/.cache/seabench/staged")
_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SHA_SIDECAR = ".sha256"


def is_uri(where: str | Path | None) -> bool:
    """True for `scheme://…` strings (fsspec URIs), False for plain paths and None."""
    return isinstance(where, str) and bool(_URI_RE.match(where))


def absolute(where: str) -> str:
    """A URI as it is, a local path made absolute (`~` expanded): what Ray's workers, each in a working
    directory of its own, read the same as the driver."""
    return where if is_uri(where) else str(Path(where).expanduser().resolve())


def join(base: str | Path, *parts: str) -> str | Path:
    """`base/part/…` for a URI (with '/') or a path."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts if p)])
    return Path(base).joinpath(*parts)


def _fs(uri: str) -> tuple[Any, str]:
    import fsspec  # only needed for URIs

    try:
        return fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as err:
        raise TaskError(f"cannot open {uri}: {err} (an s3:// or gs:// URI needs s3fs or gcsfs installed)") from err


def exists(where: str | Path) -> bool:
    """Whether a path or URI names an existing file or folder (one metadata call for a URI)."""
    if not is_uri(where):
        return Path(where).expanduser().exists()
    fs, path = _fs(str(where))
    try:
        return bool(fs.exists(path))
    except OSError as err:
        raise TaskError(f"cannot reach {where}: {err}") from err


def isdir(where: str | Path) -> bool:
    if not is_uri(where):
        return Path(where).expanduser().is_dir()
    fs, path = _fs(str(where))
    return bool(fs.isdir(path))


def subfolders(where: str | Path) -> list[str]:
    """Names of the folders directly inside a folder (path or URI), sorted."""
    if not is_uri(where):
        return sorted(p.name for p in Path(where).expanduser().iterdir() if p.is_dir())
    fs, path = _fs(str(where))
    return sorted(entry["name"].rstrip("/").rsplit("/", 1)[-1]
                  for entry in fs.ls(path, detail=True) if entry.get("type") == "directory")


def _mtime(info: dict[str, Any]) -> float | None:
    """A remote entry's modification time in seconds, from whichever field its filesystem fills."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _listing(fs: Any, path: str, uri: str) -> tuple[bool, dict[str, dict[str, Any]]]:
    """(is a folder, {relative name: info}) of a remote file or folder; a file's relative name is ''."""
    try:
        info = fs.info(path)
    except FileNotFoundError as err:
        raise TaskError(f"nothing to stage at {uri}: it does not exist") from err
    except OSError as err:
        raise TaskError(f"cannot reach {uri}: {err}") from err
    if info.get("type") != "directory":
        return False, {"": info}
    root = path.rstrip("/") + "/"
    found = fs.find(path, detail=True)
    return True, {name[len(root):] if name.startswith(root) else name.lstrip("/"): entry
                  for name, entry in found.items() if entry.get("type") != "directory"}


def _entry_key(uri: str, folder: bool, files: dict[str, dict[str, Any]]) -> str:
    digest = hashlib.sha256(f"{uri}\n{folder}\n".encode())
    for name in sorted(files):
        info = files[name]
        tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or _mtime(info)
        digest.update(f"{name}\0{info.get('size')}\0{tag}\n".encode())
    return digest.hexdigest()[:20]


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, streamed (checkpoints can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha(uri: str, local: Path, expected: str) -> None:
    """Compare with the digest recorded when the entry was made (computed once, on copy)."""
    sidecar = local.parent / _SHA_SIDECAR
    actual = sidecar.read_text().strip() if sidecar.is_file() else file_sha256(local)
    if not sidecar.is_file():
        sidecar.write_text(actual)
    if actual != expected.lower():
        raise TaskError(f"{uri} has sha256 {actual}, expected {expected}: the file is not the one asked "
                        f"for (remove or replace it at its source; the staged copy is {local})")


def stage(uri: str | Path, cache_dir: str | Path | None = None, sha256: str | None = None) -> Path:
    """A local path for `uri`: a plain path as it is; a URI's file or folder copied once into `cache_dir`.

    With `sha256` (files only) the copy must have that digest, else a TaskError names the URI, the
    expected and the actual digest, and nothing is kept. A second call with the remote unchanged
    copies nothing. Concurrent calls on one node are serialised by a lock per entry.
    """
    if not is_uri(uri):
        return Path(uri).expanduser()
    uri = str(uri)
    cache = Path(cache_dir if cache_dir is not None else STAGE_DIR).expanduser()
    fs, path = _fs(uri)
    folder, files = _listing(fs, path, uri)
    if folder and sha256:
        raise TaskError(f"{uri} is a folder: a sha256 can only be checked for a single file")
    key = _entry_key(uri, folder, files)
    name = path.rstrip("/").rsplit("/", 1)[-1] or "root"
    final = cache / key / name
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / f".{key}.lock")):
        if not (cache / key).is_dir():
            _copy(fs, path, uri, folder, files, cache, key, name, sha256)
        elif sha256:
            _check_sha(uri, final, sha256)
    return final


def _copy(fs: Any, path: str, uri: str, folder: bool, files: dict[str, dict[str, Any]], cache: Path,
          key: str, name: str, sha256: str | None) -> None:
    tmp = cache / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    target = tmp / name
    try:
        sources = [f"{path.rstrip('/')}/{rel}" if folder else path for rel in files]
        locals_ = [target / rel if folder else target for rel in files]
        for local in locals_:
            local.parent.mkdir(parents=True, exist_ok=True)
        if sources:
            fs.get(sources, [str(p) for p in locals_])
        elif folder:
            target.mkdir(parents=True)
        for local, info in zip(locals_, files.values()):
            if (mtime := _mtime(info)) is not None:
                os.utime(local, ns=(round(mtime * 1e9),) * 2)
        if sha256:
            actual = file_sha256(target)
            if actual != sha256.lower():
                raise TaskError(f"{uri} has sha256 {actual}, expected {sha256}: refusing to use it "
                                "(the download is corrupt or the file is not the one asked for)")
            (tmp / _SHA_SIDECAR).write_text(actual)
        (tmp / ".source.json").write_text(json.dumps({"uri": uri, "files": len(files)}))
        os.rename(tmp, cache / key)
    except OSError as err:
        raise TaskError(f"cannot stage {uri} into {cache}: {err}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
