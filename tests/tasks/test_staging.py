"""tasks.staging: URIs copied once into a node-local cache (atomic, locked, sha256-checked); paths used in place."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import fsspec
import pytest

from tasks import TaskError, is_uri, stage, staging
from tasks.staging import exists, subfolders


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every copy stage() makes, by URI (the real copy still runs)."""
    made: list[str] = []
    real = staging._copy

    def counted(fs, path, uri, *args, **kwargs):
        made.append(uri)
        return real(fs, path, uri, *args, **kwargs)

    monkeypatch.setattr(staging, "_copy", counted)
    return made


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _folder(root: Path) -> Path:
    for rel, data in {"train/a/0.jpg": b"x" * 10, "train/b/1.jpg": b"yy", "test/a/2.jpg": b"zzz"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_plain_paths_are_returned_as_they_are_and_nothing_is_copied(tmp_path: Path, copies: list[str]) -> None:
    (tmp_path / "w.pth").write_bytes(b"w")
    assert stage(str(tmp_path / "w.pth"), tmp_path / "cache") == tmp_path / "w.pth"
    assert stage(tmp_path / "w.pth", tmp_path / "cache") == tmp_path / "w.pth"
    assert stage("~/x") == Path.home() / "x"
    assert copies == [] and not (tmp_path / "cache").exists()
    assert not is_uri(str(tmp_path)) and not is_uri(None) and is_uri("s3://b/k") and is_uri("file:///x")


def test_a_file_uri_is_copied_into_the_cache_with_its_bytes_and_mtime(tmp_path: Path, copies: list[str]) -> None:
    source = tmp_path / "src" / "weights.pth"
    source.parent.mkdir()
    source.write_bytes(b"checkpoint bytes")
    os.utime(source, (1_600_000_000, 1_600_000_000))
    local = stage(source.as_uri(), tmp_path / "cache")
    assert local.is_relative_to(tmp_path / "cache") and local.name == "weights.pth"
    assert local.read_bytes() == b"checkpoint bytes" and local.stat().st_mtime == 1_600_000_000
    assert copies == [source.as_uri()]


def test_a_folder_uri_is_copied_whole_and_its_listing_readable_remotely(tmp_path: Path) -> None:
    source = _folder(tmp_path / "set")
    uri = source.as_uri()
    assert exists(uri) and not exists(uri + "/nope") and subfolders(uri + "/train") == ["a", "b"]
    local = stage(uri, tmp_path / "cache")
    assert local.name == "set" and _tree(local) == _tree(source)


def test_second_stage_of_an_unchanged_uri_copies_nothing_and_a_changed_one_is_staged_again(
        tmp_path: Path, copies: list[str]) -> None:
    source = _folder(tmp_path / "set")
    first = stage(source.as_uri(), tmp_path / "cache")
    inode = (first / "train/a/0.jpg").stat().st_ino
    assert stage(source.as_uri(), tmp_path / "cache") == first and len(copies) == 1
    assert (first / "train/a/0.jpg").stat().st_ino == inode
    (source / "train/a/0.jpg").write_bytes(b"another image")
    changed = stage(source.as_uri(), tmp_path / "cache")
    assert changed != first and (changed / "train/a/0.jpg").read_bytes() == b"another image" and len(copies) == 2


def test_sha256_mismatch_names_the_uri_and_both_digests_and_keeps_nothing(tmp_path: Path) -> None:
    source = tmp_path / "w.pth"
    source.write_bytes(b"not the published file")
    actual = staging.file_sha256(source)
    with pytest.raises(TaskError) as err:
        stage(source.as_uri(), tmp_path / "cache", sha256="ab" * 32)
    assert source.as_uri() in str(err.value) and "ab" * 32 in str(err.value) and actual in str(err.value)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_matching_sha256_is_accepted_and_checked_again_on_reuse_without_rehashing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "w.pth"
    source.write_bytes(b"the published file")
    digest = staging.file_sha256(source)
    local = stage(source.as_uri(), tmp_path / "cache", sha256=digest)
    monkeypatch.setattr(staging, "file_sha256", lambda path: pytest.fail("re-hashed a verified entry"))
    assert stage(source.as_uri(), tmp_path / "cache", sha256=digest.upper()) == local
    with pytest.raises(TaskError, match=f"has sha256 {digest}, expected {'0' * 64}"):
        stage(source.as_uri(), tmp_path / "cache", sha256="0" * 64)


def test_concurrent_stagers_of_one_uri_copy_it_once(tmp_path: Path, copies: list[str]) -> None:
    source = _folder(tmp_path / "set")
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(stage(source.as_uri(), tmp_path / "cache")))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results) == 4 and len(copies) == 1


def test_a_killed_copy_leaves_no_entry_that_counts_as_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _folder(tmp_path / "set")

    def dies(*_args: object, **_kwargs: object) -> None:
        raise OSError("connection reset")

    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "get", dies)
    with pytest.raises(TaskError, match=r"cannot stage file://.*connection reset"):
        stage(source.as_uri(), tmp_path / "cache")
    monkeypatch.undo()
    assert [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []
    assert _tree(stage(source.as_uri(), tmp_path / "cache")) == _tree(source)


def test_other_fsspec_filesystems_stage_the_same_way(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe({"/seabench-test/set/train/a/0.jpg": b"m0", "/seabench-test/set/test/a/1.jpg": b"m1"})
    try:
        local = stage("memory://seabench-test/set", tmp_path / "cache")
        assert _tree(local) == {"test/a/1.jpg": b"m1", "train/a/0.jpg": b"m0"}
    finally:
        fs.rm("/seabench-test", recursive=True)


def test_missing_uris_and_sha256_of_a_folder_are_task_errors(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"nothing to stage at file://.*nope: it does not exist"):
        stage((tmp_path / "nope").as_uri(), tmp_path / "cache")
    with pytest.raises(TaskError, match="is a folder"):
        stage(_folder(tmp_path / "set").as_uri(), tmp_path / "cache", sha256="0" * 64)
