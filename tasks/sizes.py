"""The official size of each registered task's stored splits: what a sweep is sized with before its data is
on the machine (`seabench plan`); the count of the data on disk wins wherever it is there.

The numbers are the stored splits as `tasks.datasets` defines them (e.g. Pets' stored `train` is the
official trainval, Caltech-101's is 30 images per class of its 8 677 outside BACKGROUND_Google), from the
datasets' own papers and files; digits and the Fashion-MNIST subset are this package's seeded splits.
`tests/tasks/test_sizes.py` checks them against the data where it is present.
"""

from __future__ import annotations

from tasks.errors import TaskError

OFFICIAL_SIZES: dict[str, dict[str, int]] = {
    "aircraft": {"train": 3334, "val": 3333, "test": 3333},     # FGVC-Aircraft 2013b
    "caltech101": {"train": 3030, "test": 5647},                 # 30 per class × 101; the rest of 8 677
    "cars": {"train": 8144, "test": 8041},
    "cifar10": {"train": 50000, "test": 10000},
    "cifar100": {"train": 50000, "test": 10000},
    "cub200": {"train": 5994, "test": 5794},                     # train_test_split.txt
    "dtd": {"train": 1880, "val": 1880, "test": 1880},           # split 1: 40 per class and split × 47
    "flowers102": {"train": 1020, "val": 1020, "test": 6149},    # setid.mat
    "food101": {"train": 75750, "test": 25250},
    "pets": {"train": 3680, "test": 3669},                       # trainval.txt / test.txt
    "sun397": {"train": 19850, "test": 19850},                   # partition 01: 50 per class × 397
    "digits": {"train": 1438, "test": 359},                      # 1 797 images, stratified 20 % test, seed 0
    "fashion-mnist": {"train": 60000, "test": 10000},
    "fashion-mnist-small": {"train": 2000, "test": 1000},        # tasks.offline.FASHION_MNIST_SMALL
}


def official_sizes(task: str) -> dict[str, int]:
    """Stored split -> its official number of images; TaskError for a task without recorded sizes (an
    image folder, a task registered at run time)."""
    if task not in OFFICIAL_SIZES:
        raise TaskError(f"task {task!r} has no official split sizes recorded (tasks/sizes.py): its data must be "
                        "present to be counted")
    return dict(OFFICIAL_SIZES[task])
