"""Loaders of the paper's 11 tasks: `(task_root, split, download) -> TaskData` (no transform yet).

Where torchvision has a class for the dataset we use it for the on-disk layout, integrity checks
and downloads, and read its sample list (its private `_image_files`/`_labels`-style attributes:
torchvision exposes no public path list, and decoding ourselves is what lets every task return
RGB and name corrupt files). CUB-200-2011 and SUN397's official partitions have no torchvision
support and are read from the official files here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torchvision.datasets as tvd
from torchvision.datasets.utils import download_and_extract_archive

from tasks.errors import TaskError
from tasks.imagedata import ArrayImages, FileImages, TaskData
from tasks.splits import per_class_split

# Caltech-101 has no official split: 30 random images per class train, the rest test, from this seed.
CALTECH101_TRAIN_PER_CLASS = 30
CALTECH101_SPLIT_SEED = 0
CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
CUB_MD5 = "97eceeb196236b17998738112f37df78"
SUN397_PARTITIONS_URL = "https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip"
SUN397_PARTITION = "01"


def _torchvision(factory: Callable[[], Any], what: str) -> Any:
    """Build a torchvision dataset, turning its generic errors into a TaskError that names `what`."""
    try:
        return factory()
    except (RuntimeError, OSError, KeyError, ValueError) as exc:
        raise TaskError(f"{what} could not be loaded ({type(exc).__name__}: {exc}); "
                        "the files may be incomplete or corrupted (checksum mismatch)") from exc


def _read_lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise TaskError(f"cannot read {path}: {exc}") from exc


def _files(paths: list, labels: list, classes: list) -> TaskData:
    return TaskData(FileImages(paths), labels, classes)


def load_aircraft(task_root: Path, split: str, download: bool) -> TaskData:
    ds = _torchvision(lambda: tvd.FGVCAircraft(task_root, split=split, annotation_level="variant",
                                               download=download), f"FGVC-Aircraft {split} in {task_root}")
    return _files(ds._image_files, ds._labels, ds.classes)


def load_caltech101(task_root: Path, split: str, download: bool) -> TaskData:
    ds = _torchvision(lambda: tvd.Caltech101(task_root, download=download), f"Caltech-101 in {task_root}")
    folder = Path(ds.root) / "101_ObjectCategories"
    paths = [folder / ds.categories[y] / f"image_{k:04d}.jpg" for y, k in zip(ds.y, ds.index)]
    train, test = per_class_split(np.asarray(ds.y), CALTECH101_TRAIN_PER_CLASS, CALTECH101_SPLIT_SEED)
    chosen = {"train": train, "test": test}[split]
    return _files([paths[i] for i in chosen], [ds.y[i] for i in chosen], ds.categories)


def load_stanford_cars(task_root: Path, split: str, download: bool) -> TaskData:
    ds = _torchvision(lambda: tvd.StanfordCars(task_root, split=split), f"Stanford Cars {split} in {task_root}")
    return _files([p for p, _ in ds._samples], [int(y) for _, y in ds._samples], ds.classes)


def _load_cifar(cls: type, task_root: Path, split: str, download: bool) -> TaskData:
    ds = _torchvision(lambda: cls(task_root, train=split == "train", download=download),
                      f"{cls.__name__} {split} in {task_root}")
    return TaskData(ArrayImages(np.asarray(ds.data), f"{cls.__name__}:{split}"), ds.targets, ds.classes)


def load_cifar10(task_root: Path, split: str, download: bool) -> TaskData:
    return _load_cifar(tvd.CIFAR10, task_root, split, download)


def load_cifar100(task_root: Path, split: str, download: bool) -> TaskData:
    return _load_cifar(tvd.CIFAR100, task_root, split, download)


def load_cub200(task_root: Path, split: str, download: bool) -> TaskData:
    """CUB-200-2011 from its official archive layout (`CUB_200_2011/images.txt`, ...)."""
    base = task_root / "CUB_200_2011"
    if download and not (base / "images.txt").exists():
        download_and_extract_archive(CUB_URL, str(task_root), md5=CUB_MD5)

    def table(name: str) -> dict[str, str]:
        rows = [line.split(" ", 1) for line in _read_lines(base / name)]
        if any(len(row) != 2 for row in rows):
            raise TaskError(f"{base / name}: every line must be '<id> <value>'")
        return dict(rows)

    images, labels, is_train = table("images.txt"), table("image_class_labels.txt"), table("train_test_split.txt")
    classes = [name for _, name in sorted(((int(k), v) for k, v in table("classes.txt").items()))]
    wanted = "1" if split == "train" else "0"
    try:
        ids = [i for i in images if is_train[i].strip() == wanted]
        return _files([base / "images" / images[i] for i in ids], [int(labels[i]) - 1 for i in ids], classes)
    except KeyError as exc:
        raise TaskError(f"{base}: image id {exc} is missing from a CUB annotation file") from exc


def load_dtd(task_root: Path, split: str, download: bool) -> TaskData:
    ds = _torchvision(lambda: tvd.DTD(task_root, split=split, partition=1, download=download),
                      f"DTD {split}1 in {task_root}")
    # torchvision numbers DTD classes per split file; the image folders give one numbering for all splits.
    classes = sorted(p.name for p in (Path(ds._images_folder)).iterdir() if p.is_dir())
    index = {name: i for i, name in enumerate(classes)}
    return _files(ds._image_files, [index[Path(p).parent.name] for p in ds._image_files], classes)


def load_flowers102(task_root: Path, split: str, download: bool) -> TaskData:
    ds = _torchvision(lambda: tvd.Flowers102(task_root, split=split, download=download),
                      f"Flowers-102 {split} in {task_root}")
    return _files(ds._image_files, ds._labels, ds.classes)


def load_food101(task_root: Path, split: str, download: bool) -> TaskData:
    ds = _torchvision(lambda: tvd.Food101(task_root, split=split, download=download),
                      f"Food-101 {split} in {task_root}")
    return _files(ds._image_files, ds._labels, ds.classes)


def load_pets(task_root: Path, split: str, download: bool) -> TaskData:
    official = {"train": "trainval", "test": "test"}[split]
    ds = _torchvision(lambda: tvd.OxfordIIITPet(task_root, split=official, download=download),
                      f"Oxford-IIIT Pets {official} in {task_root}")
    return _files(ds._images, ds._labels, ds.classes)


def _sun397_partition_file(task_root: Path, split: str) -> Path:
    name = f"{'Training' if split == 'train' else 'Testing'}_{SUN397_PARTITION}.txt"
    # Partitions.zip unpacks flat next to SUN397/; some copies move the lists into SUN397/ instead.
    candidates = [task_root / name, task_root / "SUN397" / name, task_root / "Partitions" / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise TaskError(f"SUN397 partition list not found: expected {candidates[0]} (unpack the official "
                    f"{SUN397_PARTITIONS_URL} into {task_root})")


def load_sun397(task_root: Path, split: str, download: bool) -> TaskData:
    if download and not any((task_root / d / "Training_01.txt").exists() for d in ("", "SUN397", "Partitions")):
        download_and_extract_archive(SUN397_PARTITIONS_URL, str(task_root))
    partition = _sun397_partition_file(task_root, split)
    ds = _torchvision(lambda: tvd.SUN397(task_root, download=download), f"SUN397 in {task_root}")
    data_dir = Path(ds._data_dir)
    by_name = {p.relative_to(data_dir).as_posix(): (str(p), y) for p, y in zip(ds._image_files, ds._labels)}
    # Follow the partition file's order: torchvision's rglob order depends on the file system.
    wanted = [line.lstrip("/") for line in _read_lines(partition)]
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise TaskError(f"{len(missing)} images listed in {partition} are missing under {data_dir} "
                        f"(first: {missing[0]})")
    samples = [by_name[name] for name in wanted]
    return _files([p for p, _ in samples], [y for _, y in samples], ds.classes)
