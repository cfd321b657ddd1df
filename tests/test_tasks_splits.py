"""tasks.splits: carved validation sets, per-class splits and split identities."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks import TaskError, per_class_split, split_hash, stored_split_hash, validation_indices


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


def test_split_hash_is_sha256_of_int64_indices_and_dtype_independent() -> None:
    idx = np.array([0, 3, 7])
    expected = hashlib.sha256(np.array([0, 3, 7], dtype="<i8").tobytes()).hexdigest()[:16]
    assert split_hash(idx) == expected == split_hash(idx.astype(np.int32)) == split_hash([0, 3, 7])
    assert split_hash([0, 3, 8]) != expected


def test_stored_split_hash_depends_on_task_split_and_size() -> None:
    base = stored_split_hash("cifar10", "train", 100)
    assert base == stored_split_hash("cifar10", "train", 100)
    assert len({base, stored_split_hash("cifar100", "train", 100), stored_split_hash("cifar10", "test", 100),
                stored_split_hash("cifar10", "train", 101)}) == 4
