"""Deterministic, hashable index splits: carved validation sets, per-class splits, split identities.

Every split a result depends on is a pure function of (labels, fraction or count, seed), and is
identified by `stored_split_hash` so that cached features and sweep cells can never silently mix splits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from tasks.errors import TaskError

if TYPE_CHECKING:
    from tasks.imagedata import TaskData

# The protocol's carved validation split: a stratified 20 % of train, seed recorded here.
VAL_FRACTION = 0.2
VAL_SEED = 0


def _as_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise TaskError(f"labels must be a 1-d array of class indices, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TaskError(f"labels must be integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def validation_indices(
    labels: Sequence[int] | np.ndarray, fraction: float = VAL_FRACTION, seed: int = VAL_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of `labels` into sorted (train_idx, val_idx).

    Each class with n ≥ 2 examples gives round(fraction·n) of them (at least 1, at most n − 1) to
    validation; a class with a single example stays in train. Classes are visited in sorted order
    with one generator, so the result depends only on (labels, fraction, seed).
    """
    if not 0.0 < fraction < 1.0:
        raise TaskError(f"validation fraction must be in (0, 1), got {fraction}")
    y = _as_labels(labels)
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        if members.size < 2:
            continue  # a singleton class must stay trainable
        n_val = min(members.size - 1, max(1, int(np.floor(fraction * members.size + 0.5))))
        held.append(rng.permutation(members)[:n_val])
    val_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    train_mask = np.ones(y.size, dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask).astype(np.int64), val_idx.astype(np.int64)


def per_class_split(
    labels: Sequence[int] | np.ndarray, n_train: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train_idx, test_idx) with `n_train` random examples per class in train, the rest in test.

    A class with ≤ n_train examples keeps one example for test (Caltech-101's smallest class has 31
    images, so with n_train = 30 every class is tested).
    """
    if n_train < 1:
        raise TaskError(f"n_train must be ≥ 1, got {n_train}")
    y = _as_labels(labels)
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        take = min(n_train, max(members.size - 1, 1))
        train.append(rng.permutation(members)[:take])
    train_idx = np.sort(np.concatenate(train)) if train else np.zeros(0, dtype=np.int64)
    mask = np.zeros(y.size, dtype=bool)
    mask[train_idx] = True
    return train_idx.astype(np.int64), np.flatnonzero(~mask).astype(np.int64)


def stored_split_hash(task: str, split: str, data: TaskData | int) -> str:
    """Identity of a whole stored split of `task` (first 16 hex digits of a sha256).

    Given the built `TaskData` (the form to use), it covers the task and split names, the index set
    (all n examples, in loader order), the labels, and each image's identity: for files the list of
    paths relative to their common folder with each file's size and mtime, for in-memory images the
    array's bytes — so a folder with the same count and labels but another image gets a new hash.
    Size + mtime rather than a content hash: measured on 10 000 JPEG files in a tmp dir (2 vCPUs,
    warm page cache), this hash takes 0.06 s; sha256 of the contents takes 0.07 s for CIFAR-sized
    files (0.9 KB, 9 MB in all) but 0.8 s at a typical 110 KB per photo (1.1 GB), and a cold disk or
    a shared mount makes that a read of every byte, on every plan of every task. A rewritten file
    gets a new mtime; a copy that keeps mtime (rsync -t, cp -p, `tasks.staging`) keeps its identity.

    The old form with an int `n` (count only) is kept until its caller moves to the TaskData form.
    """
    if isinstance(data, int | np.integer):
        digest = hashlib.sha256(f"{task}\n{split}\n{int(data)}\n".encode())
        digest.update(np.arange(int(data), dtype="<i8").tobytes())
        return digest.hexdigest()[:16]
    n = len(data)
    digest = hashlib.sha256(f"stored-split/2\n{task}\n{split}\n{n}\n".encode())
    digest.update(np.arange(n, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(data.targets, dtype="<i8").tobytes())
    data.images.identity(digest)
    return digest.hexdigest()[:16]
