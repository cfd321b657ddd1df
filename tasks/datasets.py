"""The task registry: one declarative `TaskSpec` per downstream task and one `build_task`.

Layout on disk: task `<name>` lives in `<root>/<name>/`, in the layout torchvision (or the
official archive) uses inside that folder; `TaskSpec.marker` is the file whose absence means
"not downloaded". `imagefolder:<path>` turns any `train/<class>/…`, `test/<class>/…` folder into a task.
The data root and image-folder roots may be fsspec URIs: a task's folder is then staged into the
node-local cache (`tasks.staging`) when it is built.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tasks import loaders, offline
from tasks.errors import TaskError
from tasks.imagedata import TaskData
from tasks.splits import VAL_FRACTION, VAL_SEED, validation_indices
from tasks.staging import exists, is_uri, join, stage, subfolders

METRICS = ("top1", "mean_per_class")
VAL_RULES = ("official", "carve")
IMAGEFOLDER_PREFIX = "imagefolder:"
PHASES = ("fit", "val", "trainval", "test")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    title: str
    num_classes: int
    metric: str                       # primary metric: "top1" | "mean_per_class"
    stored_splits: tuple[str, ...]    # splits that exist on disk and get extracted
    val_rule: str                     # "official" (stored val split) | "carve" (VAL_FRACTION of train, VAL_SEED)
    directory: str                    # sub-folder of the data root ("" = needs no root)
    source: str                       # where the official files come from (for error messages)
    loader: Callable[[Path | None, str, bool], TaskData]
    marker: str = ""                  # file under <root>/<directory> proving the data is there ("" = loader checks)
    probe: Callable[[Path | str | None], None] | None = None   # cheap presence check instead of a marker
    downloadable: bool = True
    needs_root: bool = True           # False: the loader finds its data without a user data root
    note: str = ""                    # what the stored splits mean relative to the official ones
    hflip: bool = True                # a mirrored image keeps its label (fine-tuning's train-time flips)

    def __post_init__(self) -> None:
        if self.metric not in METRICS or self.val_rule not in VAL_RULES:
            raise TaskError(f"task {self.name}: metric must be one of {METRICS}, val_rule one of {VAL_RULES}")
        if (self.val_rule == "official") != ("val" in self.stored_splits):
            raise TaskError(f"task {self.name}: a stored 'val' split exists iff val_rule is 'official'")


def _vgg(path: str) -> str:
    return f"https://www.robots.ox.ac.uk/~vgg/data/{path}"


_TRAINVAL_NOTE = ("protocol train = official train+val: stored 'train' is the official train part, 'val' the "
                  "official val; select on train→val, refit on train+val, test once")
_CARVE_NOTE = f"no official val: val = stratified {VAL_FRACTION:.0%} of train, seed {VAL_SEED}"

_SPECS = (
    TaskSpec("aircraft", "FGVC-Aircraft (variant)", 100, "mean_per_class", ("train", "val", "test"), "official",
             "aircraft", _vgg("fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz"), loaders.load_aircraft,
             "fgvc-aircraft-2013b/data/variants.txt", note=_TRAINVAL_NOTE),
    TaskSpec("caltech101", "Caltech-101", 101, "mean_per_class", ("train", "test"), "carve", "caltech101",
             "https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip (101_ObjectCategories)",
             loaders.load_caltech101, "caltech101/101_ObjectCategories",
             note=f"no BACKGROUND_Google; {loaders.CALTECH101_TRAIN_PER_CLASS} random images per class train, "
                  f"rest test (seed {loaders.CALTECH101_SPLIT_SEED}); {_CARVE_NOTE}"),
    TaskSpec("cars", "Stanford Cars", 196, "top1", ("train", "test"), "carve", "cars",
             "no working automatic download upstream (the Stanford URL is gone): get the Kaggle mirror "
             "(kaggle.com/datasets/rickyyyyyyy/torchvision-stanford-cars) and lay it out as torchvision expects: "
             "stanford_cars/{devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_train/, cars_test/, "
             "cars_test_annos_withlabels.mat}", loaders.load_stanford_cars, "stanford_cars/devkit/cars_meta.mat",
             downloadable=False, note=_CARVE_NOTE),
    TaskSpec("cifar10", "CIFAR-10", 10, "top1", ("train", "test"), "carve", "cifar10",
             "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", loaders.load_cifar10,
             "cifar-10-batches-py/batches.meta", note=_CARVE_NOTE),
    TaskSpec("cifar100", "CIFAR-100", 100, "top1", ("train", "test"), "carve", "cifar100",
             "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", loaders.load_cifar100,
             "cifar-100-python/meta", note=_CARVE_NOTE),
    TaskSpec("cub200", "CUB-200-2011", 200, "top1", ("train", "test"), "carve", "cub200",
             loaders.CUB_URL, loaders.load_cub200, "CUB_200_2011/images.txt",
             note=f"official train_test_split.txt; {_CARVE_NOTE}"),
    TaskSpec("dtd", "DTD", 47, "top1", ("train", "val", "test"), "official", "dtd",
             _vgg("dtd/download/dtd-r1.0.1.tar.gz"), loaders.load_dtd, "dtd/dtd/labels/train1.txt",
             note=f"official split 1; {_TRAINVAL_NOTE}"),
    TaskSpec("flowers102", "Oxford Flowers-102", 102, "mean_per_class", ("train", "val", "test"), "official",
             "flowers102", _vgg("flowers/102/") + " (102flowers.tgz, imagelabels.mat, setid.mat)",
             loaders.load_flowers102, "flowers-102/setid.mat", note=_TRAINVAL_NOTE),
    TaskSpec("food101", "Food-101", 101, "top1", ("train", "test"), "carve", "food101",
             "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz", loaders.load_food101,
             "food-101/meta/train.json", note=_CARVE_NOTE),
    TaskSpec("pets", "Oxford-IIIT Pets", 37, "mean_per_class", ("train", "test"), "carve", "pets",
             _vgg("pets/data/") + " (images.tar.gz, annotations.tar.gz)", loaders.load_pets,
             "oxford-iiit-pet/annotations/trainval.txt",
             note=f"stored 'train' = official trainval (Pets has no official val); {_CARVE_NOTE}"),
    TaskSpec("sun397", "SUN397", 397, "top1", ("train", "test"), "carve", "sun397",
             f"http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz + {loaders.SUN397_PARTITIONS_URL}",
             loaders.load_sun397, "SUN397/ClassName.txt",
             note=f"official partition {loaders.SUN397_PARTITION} (Training_01.txt / Testing_01.txt); {_CARVE_NOTE}"),
    TaskSpec("digits", "scikit-learn digits (8×8 → 32×32)", 10, "top1", ("train", "test"), "carve", "",
             "ships inside scikit-learn (sklearn.datasets.load_digits)", offline.load_digits_task,
             downloadable=False, needs_root=False, hflip=False,
             note=f"stratified {offline.DIGITS_TEST_FRACTION:.0%} test split of the 1 797 images, seed "
                  f"{offline.DIGITS_SPLIT_SEED}; {_CARVE_NOTE}"),
    TaskSpec("fashion-mnist", "Fashion-MNIST", 10, "top1", ("train", "test"), "carve", "fashion-mnist",
             f"Debian package dataset-fashion-mnist ({offline.FASHION_MNIST_DEFAULT}), or <root>/fashion-mnist",
             offline.load_fashion_mnist, downloadable=False, needs_root=False, probe=offline.check_fashion_mnist,
             note=f"official train/test; {_CARVE_NOTE}"),
    TaskSpec("fashion-mnist-small", "Fashion-MNIST (stratified subset)", 10, "top1", ("train", "test"), "carve",
             "fashion-mnist", "as fashion-mnist", offline.load_fashion_mnist_small, downloadable=False,
             needs_root=False, probe=offline.check_fashion_mnist,
             note=f"stratified subsets of the official splits, seed {offline.FASHION_MNIST_SMALL_SEED}: "
                  + ", ".join(f"{k} {v}" for k, v in offline.FASHION_MNIST_SMALL.items()) + f"; {_CARVE_NOTE}"),
)
TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _SPECS}
# Which stored splits each protocol phase reads when val is official; carve tasks cut fit/val from train.
_OFFICIAL_PHASES = {"fit": ("train",), "val": ("val",), "trainval": ("train", "val"), "test": ("test",)}


def register_task(spec: TaskSpec) -> None:
    if spec.name in TASKS or spec.name.startswith(IMAGEFOLDER_PREFIX):
        raise TaskError(f"task name {spec.name!r} is taken")
    TASKS[spec.name] = spec


def _imagefolder_spec(name: str) -> TaskSpec:
    ref = name[len(IMAGEFOLDER_PREFIX):]
    path: Path | str = ref if is_uri(ref) else Path(ref).expanduser()
    offline.check_imagefolder(path)
    has_val = offline.has_folder(path, "val")
    classes = subfolders(join(path, "train"))
    return TaskSpec(name, f"image folder {path}", len(classes), "top1",
                    ("train", "val", "test") if has_val else ("train", "test"), "official" if has_val else "carve",
                    path if isinstance(path, str) else str(path.resolve()), "the user's folder",
                    offline.load_imagefolder, downloadable=False, needs_root=False,
                    note="val/ folder" if has_val else _CARVE_NOTE)


def get_task(name: str) -> TaskSpec:
    """The spec of a registered task, or of `imagefolder:<path>`; TaskError with close names otherwise."""
    if name.startswith(IMAGEFOLDER_PREFIX):
        return _imagefolder_spec(name)
    if not name or "/" in name or "\\" in name or ".." in name or Path(name).is_absolute():
        raise TaskError(f"{name!r} is not a task name (paths are only accepted as "
                        f"'{IMAGEFOLDER_PREFIX}<path>'); tasks: {', '.join(TASKS)}")
    if name not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise TaskError(f"unknown task {name!r}; {hint}known tasks: {', '.join(TASKS)}, {IMAGEFOLDER_PREFIX}<path>")
    return TASKS[name]


def task_root(spec: TaskSpec, root: str | Path | None) -> Path | str | None:
    """Where `spec`'s files are expected: a local path, or a URI (str) when the root is one."""
    if spec.name.startswith(IMAGEFOLDER_PREFIX):
        return spec.directory if is_uri(spec.directory) else Path(spec.directory)
    if root is None:
        if not spec.needs_root:
            return None
        raise TaskError(f"task {spec.name} needs a data root (its files go under <root>/{spec.directory}/)")
    if is_uri(root):
        return join(root, spec.directory) if spec.directory else None  # "" = reads nothing under the root
    return Path(root).expanduser() / spec.directory if spec.directory else Path(root).expanduser()


def missing_dataset(spec: TaskSpec, where: Path | str | None, download: bool = False) -> str | None:
    """Why `spec`'s files are not at `where` (None when present, or when the loader will download them).

    Cheap: one existence check of the marker file (or the spec's probe); no image is opened."""
    if spec.probe is not None:
        try:
            spec.probe(where)
        except TaskError as err:
            return str(err)
        return None
    if not spec.marker or where is None or exists(join(where, spec.marker)):
        return None
    if download and spec.downloadable:
        return None  # the loader downloads
    expected = join(where, spec.marker)
    if not spec.downloadable:
        return (f"{spec.title} not found: expected {expected}; it cannot be downloaded automatically: "
                f"{spec.source}")
    return (f"{spec.title} not found: expected {expected} (under {where}/), from the official archive "
            f"{spec.source}; pass download=True to fetch it there")


def _local(spec: TaskSpec, where: Path | str | None, download: bool) -> Path | None:
    """`where` itself, or for a URI its node-local staged copy."""
    if not is_uri(where):
        return where if where is None else Path(where)
    if download:
        raise TaskError(f"task {spec.name}: cannot download into {where}; download into a local data root "
                        "and copy it there, or use a local data root")
    return stage(where) if spec.needs_root or exists(where) else None


def build_task(name: str, root: str | Path | None, split: str,
               transform: Callable[[Image.Image], Any] | None = None, download: bool = False) -> TaskData:
    """One split of a task: `dataset[i] -> (transform(PIL RGB), label)`, with `.targets` and `.classes`.

    `split` is a stored split, or "val" of a carve task (the carved part of stored train).
    """
    spec = get_task(name)
    carved_val = split == "val" and spec.val_rule == "carve"
    if split not in spec.stored_splits and not carved_val:
        raise TaskError(f"task {spec.name} has splits {', '.join(spec.stored_splits)} (got {split!r})")
    where = task_root(spec, root)
    absent = missing_dataset(spec, where, download)
    if absent:
        raise TaskError(absent)
    where = _local(spec, where, download)
    data = spec.loader(where, "train" if carved_val else split, download)
    if len(data) == 0:
        raise TaskError(f"task {spec.name}: its {'train' if carved_val else split} split at {where} holds no "
                        "images; put the images there (see `seabench list tasks`) or drop the task")
    if carved_val:
        data = data.subset(validation_indices(data.targets, VAL_FRACTION, VAL_SEED)[1])
    return data.with_transform(transform)


def protocol_split(name: str, phase: str, stored_labels: Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """Which examples a protocol phase uses, as (stored split, sorted indices into it) pairs.

    phases: "fit" (train for selection), "val", "trainval" (the refit), "test". `stored_labels` maps
    each stored split to its labels (only train's are read for a carve task).
    """
    if phase not in PHASES:
        raise TaskError(f"phase must be one of {PHASES}, got {phase!r}")
    spec = get_task(name)

    def whole(split: str) -> tuple[str, np.ndarray]:
        if split not in stored_labels:
            raise TaskError(f"labels of stored split {split!r} of {spec.name} are needed for phase {phase!r}")
        return split, np.arange(len(stored_labels[split]), dtype=np.int64)

    if spec.val_rule == "official" or phase in ("trainval", "test"):
        return [whole(split) for split in _OFFICIAL_PHASES[phase] if split in spec.stored_splits]
    whole("train")  # raises when train's labels are missing
    fit_idx, val_idx = validation_indices(np.asarray(stored_labels["train"]), VAL_FRACTION, VAL_SEED)
    return [("train", fit_idx if phase == "fit" else val_idx)]


def list_tasks(root: str | Path | None = None) -> list[dict]:
    """One row per registered task; `sizes` holds split lengths where the data is present locally
    (not counted under a URI root, which would stage every dataset to count it)."""
    rows = []
    for spec in TASKS.values():
        sizes: dict[str, int | None] = dict.fromkeys(spec.stored_splits)
        if (root is not None and not is_uri(root)) or (root is None and not spec.needs_root):
            for split in spec.stored_splits:
                try:
                    sizes[split] = len(build_task(spec.name, root, split))
                except TaskError:
                    break  # not present locally: sizes stay None
        rows.append({"name": spec.name, "title": spec.title, "classes": spec.num_classes, "metric": spec.metric,
                     "val_rule": spec.val_rule, "stored_splits": spec.stored_splits, "sizes": sizes,
                     "directory": spec.directory, "source": spec.source, "note": spec.note})
    return rows

