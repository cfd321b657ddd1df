"""A damaged feature store is detected, never read as good, and repaired by rerunning the extraction.

Bit flips and truncation (checksums), manifests that disagree with their files or their folder, shards
of another key, and files a killed writer left behind. Every repair must give back the very bytes of
the original extraction, which is deterministic.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from faultkit import BACKBONE, extract, shard_digests, unit_folder

from orchestrator.errors import OrchestratorError
from orchestrator.extract.manifest import MANIFEST
from orchestrator.extract.store import FeatureStore


@pytest.fixture(scope="module")
def pristine(ray_cluster, tmp_path_factory):
    """One extraction of a 3-class fake task (train: 4 shards of 4 rows, test: 2 shards), copied per test."""
    from fakedata import make_fake_imagefolder

    root = tmp_path_factory.mktemp("corruption")
    make_fake_imagefolder(root / "task", classes=3, n_train=5, n_test=2, size=12)
    task = f"imagefolder:{root / 'task'}"
    extract(task, root / "store")
    return task, root / "store"


@pytest.fixture
def damaged(pristine, tmp_path):
    """A private copy of the pristine store: (task, store path, digests of the train unit)."""
    task, source = pristine
    store = tmp_path / "store"
    shutil.copytree(source, store)
    return task, store, shard_digests(store, task, "train")


def _manifest(store: Path, task: str) -> Path:
    return unit_folder(store, task, "train") / MANIFEST


def test_bit_flips_and_truncations_are_refused_on_load_and_only_those_shards_are_extracted_again(damaged):
    task, store, digests = damaged
    test_digests = shard_digests(store, task, "test")
    flipped = unit_folder(store, task, "train") / "shard-00002.parquet"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x04
    flipped.write_bytes(bytes(data))
    truncated = unit_folder(store, task, "test") / "shard-00000.parquet"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 3])
    for split, victim in (("train", flipped), ("test", truncated)):
        with pytest.raises(OrchestratorError, match=rf"{victim}: checksum mismatch"):
            FeatureStore(store).load(BACKBONE, task, split)
    summary = extract(task, store)
    assert (summary.shards_repaired, summary.shards_extracted) == (2, 2)
    assert shard_digests(store, task, "train") == digests and shard_digests(store, task, "test") == test_digests
    FeatureStore(store).load(BACKBONE, task, "train")


def test_unreadable_or_off_plan_manifests_are_named_and_their_units_extracted_again(damaged):
    task, store, digests = damaged
    test_digests = shard_digests(store, task, "test")
    unreadable = _manifest(store, task)
    unreadable.write_text(unreadable.read_text()[:200])
    off_plan = unit_folder(store, task, "test") / MANIFEST
    body = json.loads(off_plan.read_text())
    body["shards"][1]["start"] += 1
    off_plan.write_text(json.dumps(body))
    with pytest.raises(OrchestratorError, match=rf"{unreadable} is not a valid feature manifest"):
        FeatureStore(store).load(BACKBONE, task, "train")
    with pytest.raises(OrchestratorError, match=r"shard 1 is recorded as rows \[5, 6\).*disagrees with its plan"):
        FeatureStore(store).load(BACKBONE, task, "test")
    summary = extract(task, store)
    assert summary.shards_extracted == 4 + 2
    assert shard_digests(store, task, "train") == digests and shard_digests(store, task, "test") == test_digests


def test_a_manifest_marked_complete_with_a_shard_missing_is_refused_and_completed(damaged):
    task, store, digests = damaged
    manifest = _manifest(store, task)
    body = json.loads(manifest.read_text())
    body["shards"] = [s for s in body["shards"] if s["shard"] != 3]
    manifest.write_text(json.dumps(body))
    assert body["complete"] is True
    with pytest.raises(OrchestratorError, match=r"unit is incomplete \(shards \[3\] missing\)"):
        FeatureStore(store).load(BACKBONE, task, "train")
    summary = extract(task, store)
    assert (summary.shards_skipped, summary.shards_extracted) == (4 + 2 - 1, 1)
    assert shard_digests(store, task, "train") == digests


def test_a_manifest_row_count_that_disagrees_with_the_file_is_refused(damaged):
    task, store, _ = damaged
    manifest = _manifest(store, task)
    body = json.loads(manifest.read_text())
    body["num_rows"], body["shards"] = 14, body["shards"][:3]   # a plan for 14 rows: shard 3 would hold 2
    body["shards"].append({**json.loads(manifest.read_text())["shards"][3], "rows": 2, "stop": 14})
    manifest.write_text(json.dumps(body))
    with pytest.raises(OrchestratorError, match=r"shard-00003.parquet: 3 rows of dim 512, manifest says 2"):
        FeatureStore(store).load(BACKBONE, task, "train")


def test_a_unit_copied_under_another_key_is_refused(damaged):
    task, store, _ = damaged
    folder = unit_folder(store, task, "train")
    other = folder.parent / ("0" * len(folder.name))
    shutil.copytree(folder, other)
    with pytest.raises(OrchestratorError, match=rf"manifest of feature key {folder.name}, not of the folder"):
        FeatureStore(store).load_key(other.name)


def test_a_shard_of_another_split_is_refused_even_when_the_manifest_matches_it(damaged):
    task, store, _ = damaged
    train, test = unit_folder(store, task, "train"), unit_folder(store, task, "test")
    manifest = _manifest(store, task)
    body = json.loads(manifest.read_text())
    test_record = json.loads((test / MANIFEST).read_text())["shards"][0]
    shutil.copy(test / test_record["file"], train / "shard-00000.parquet")
    body["shards"][0].update({k: test_record[k] for k in ("sha256", "bytes", "crc32")})
    manifest.write_text(json.dumps(body))
    with pytest.raises(OrchestratorError, match=r"belongs to feature key .*shards of different keys never mix"):
        FeatureStore(store).load(BACKBONE, task, "train")


def test_leftovers_of_a_killed_writer_are_never_read_and_are_cleaned_up(damaged):
    """A writer killed before its rename leaves a `.tmp-*` file; one killed between the rename and the
    manifest leaves a shard the manifest does not list. Neither is read; a rerun removes the first."""
    task, store, digests = damaged
    folder = unit_folder(store, task, "train")
    (folder / ".tmp-0123456789abcdef").write_bytes(b"PAR1 half a shard")
    manifest = _manifest(store, task)
    body = json.loads(manifest.read_text())
    body["shards"], body["complete"] = [s for s in body["shards"] if s["shard"] != 1], False
    manifest.write_text(json.dumps(body))
    (folder / "shard-00001.parquet").write_bytes(b"PAR1 not a finished shard")   # unlisted, unreadable
    with pytest.raises(OrchestratorError, match=r"incomplete \(shards \[1\] missing\)"):
        FeatureStore(store).load(BACKBONE, task, "train")
    assert extract(task, store).shards_extracted == 1
    assert not list(folder.glob(".tmp-*")) and shard_digests(store, task, "train") == digests
    FeatureStore(store).load(BACKBONE, task, "train")
