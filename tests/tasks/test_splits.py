"""tasks.splits: carved validation sets, per-class splits and split identities."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import fakedata
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks import TaskData, TaskError, build_task, per_class_split, stored_split_hash, validation_indices
from tasks.imagedata import ArrayImages


def _labels(counts: dict[int, int], seed: int = 0) -> np.ndarray:
    y = np.concatenate([np.full(n, c) for c, n in counts.items()])
    return np.random.default_rng(seed).permutation(y)


def test_validation_split_is_stratified_twenty_percent_of_each_class() -> None:
    y = _labels({0: 50, 1: 20, 2: 10})
    train, val = validation_indices(y)
    assert [int((y[val] == c).sum()) for c in range(3)] == [10, 4, 2]
    assert [int((y[train] == c).sum()) for c in range(3)] == [40, 16, 8]


def test_validation_split_is_sorted_disjoint_and_covers_all_examples() -> None:
    y = _labels({0: 13, 1: 7, 2: 5})
    train, val = validation_indices(y, fraction=0.3, seed=4)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert not set(train) & set(val)
    assert sorted(np.concatenate([train, val])) == list(range(y.size))
    assert train.dtype == np.int64 and val.dtype == np.int64


def test_validation_split_is_deterministic_for_a_seed_and_changes_with_it() -> None:
    y = _labels({0: 40, 1: 40})
    first, second = validation_indices(y, seed=3), validation_indices(y, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not np.array_equal(validation_indices(y, seed=4)[1], first[1])


def test_singleton_class_stays_in_train_and_small_class_keeps_one_train_example() -> None:
    y = np.array([0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    train, val = validation_indices(y)
    assert 0 in train and 0 not in val
    assert int((y[val] == 1).sum()) == 1 and int((y[train] == 1).sum()) == 1


def test_validation_split_rejects_bad_fraction_and_non_integer_labels() -> None:
    with pytest.raises(TaskError, match="fraction"):
        validation_indices(np.zeros(4, dtype=int), fraction=1.0)
    with pytest.raises(TaskError, match="integers"):
        validation_indices(np.zeros(4, dtype=float))
    with pytest.raises(TaskError, match="1-d"):
        validation_indices(np.zeros((2, 2), dtype=int))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=80), st.integers(0, 10))
def test_validation_split_partitions_any_labels_and_keeps_every_class_in_train(labels: list[int], seed: int) -> None:
    y = np.array(labels)
    train, val = validation_indices(y, seed=seed)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(y.size))
    assert set(y[train]) == set(y)


def test_per_class_split_puts_n_per_class_in_train_and_the_rest_in_test() -> None:
    y = _labels({0: 31, 1: 40, 2: 35})
    train, test = per_class_split(y, 30, seed=0)
    assert [int((y[train] == c).sum()) for c in range(3)] == [30, 30, 30]
    assert [int((y[test] == c).sum()) for c in range(3)] == [1, 10, 5]
    assert np.array_equal(per_class_split(y, 30, seed=0)[0], train)


def test_stored_split_hash_old_count_form_depends_on_task_split_and_size() -> None:
    base = stored_split_hash("cifar10", "train", 100)
    assert base == stored_split_hash("cifar10", "train", 100)
    assert len({base, stored_split_hash("cifar100", "train", 100), stored_split_hash("cifar10", "test", 100),
                stored_split_hash("cifar10", "train", 101)}) == 4


def _folder_hash(root: Path, split: str = "train") -> str:
    name = f"imagefolder:{root}"
    return stored_split_hash(name, split, build_task(name, None, split))


def test_imagefolder_split_hash_changes_when_one_image_changes_with_same_count_and_labels(tmp_path: Path) -> None:
    fakedata.make_fake_imagefolder(tmp_path, 2, n_train=3, n_test=1)
    before = _folder_hash(tmp_path)
    assert _folder_hash(tmp_path) == before  # unchanged folder, same identity
    image = tmp_path / "train" / "class1" / "0001.jpg"
    labels = build_task(f"imagefolder:{tmp_path}", None, "train").targets.tolist()
    stat = image.stat()
    fakedata.write_image(image, seed=999)  # another picture under the same name
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert build_task(f"imagefolder:{tmp_path}", None, "train").targets.tolist() == labels
    assert _folder_hash(tmp_path) != before
    assert _folder_hash(tmp_path, "test") != _folder_hash(tmp_path)


def test_imagefolder_split_hash_sees_a_same_size_rewrite_through_its_mtime(tmp_path: Path) -> None:
    fakedata.make_fake_imagefolder(tmp_path, 2, n_train=2, n_test=1)
    image = tmp_path / "train" / "class0" / "0000.jpg"
    before = _folder_hash(tmp_path)
    stat = image.stat()
    image.write_bytes(bytes(reversed(image.read_bytes())))  # same size, other bytes
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _folder_hash(tmp_path) == before  # documented: size + mtime, not contents
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert _folder_hash(tmp_path) != before


def test_imagefolder_split_hash_is_the_same_for_a_copy_that_keeps_mtimes(tmp_path: Path) -> None:
    fakedata.make_fake_imagefolder(tmp_path / "a", 2, n_train=2, n_test=1)
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # copy2: keeps mtimes
    data_a = build_task(f"imagefolder:{tmp_path / 'a'}", None, "train")
    data_b = build_task(f"imagefolder:{tmp_path / 'b'}", None, "train")
    assert stored_split_hash("t", "train", data_a) == stored_split_hash("t", "train", data_b)


def test_stored_split_hash_covers_index_set_labels_and_array_bytes() -> None:
    images = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2)
    data = TaskData(ArrayImages(images, "x"), [0, 1, 0, 1], ["a", "b"])
    base = stored_split_hash("t", "train", data)
    assert base == stored_split_hash("t", "train", TaskData(ArrayImages(images.copy(), "y"), [0, 1, 0, 1], ["a", "b"]))
    changed = images.copy()
    changed[2, 1, 1] += 1
    variants = {
        "pixel": TaskData(ArrayImages(changed, "x"), [0, 1, 0, 1], ["a", "b"]),
        "labels": TaskData(ArrayImages(images, "x"), [0, 1, 1, 1], ["a", "b"]),
        "subset": data.subset([0, 1, 2]),
        "order": data.subset([1, 0, 2, 3]),
    }
    hashes = {k: stored_split_hash("t", "train", v) for k, v in variants.items()}
    assert base not in hashes.values() and len(set(hashes.values())) == 4
    assert base != stored_split_hash("t", "train", 4)  # the old count-only form is another identity


def test_digits_split_hash_is_stable_and_differs_between_splits() -> None:
    train = build_task("digits", None, "train")
    assert stored_split_hash("digits", "train", train) == stored_split_hash("digits", "train", build_task("digits", None, "train"))
    assert stored_split_hash("digits", "train", train) != stored_split_hash("digits", "test", build_task("digits", None, "test"))
