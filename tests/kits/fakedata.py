"""Tiny fake copies of every task's real on-disk layout (after torchvision's tests/datasets_utils.py).

`make_fake_<task>(root)` writes the task under `<root>/<task directory>/` exactly as the loader
reads the real one and returns the expected split sizes. Images are 8×8 JPEGs. CIFAR and
Flowers-102 are md5-checked by torchvision against the real files: wrap their use in
`integrity_checks_skipped()` (it patches only those checks, in this process).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
from PIL import Image

SIZE = 8


def write_image(path: Path, seed: int, size: int = SIZE, mode: str = "RGB") -> Path:
    """A random `size`×`size` image at `path` (format from the suffix)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def write_corrupt_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole JPEG")
    return path


@contextlib.contextmanager
def integrity_checks_skipped() -> Iterator[None]:
    """Let torchvision's CIFAR and Flowers-102 accept fake files (they compare md5s with the real ones)."""
    with mock.patch("torchvision.datasets.cifar.check_integrity", return_value=True), \
            mock.patch("torchvision.datasets.flowers102.check_integrity", return_value=True):
        yield


def _lines(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def make_fake_aircraft(root: Path) -> dict[str, int]:
    data = Path(root) / "aircraft" / "fgvc-aircraft-2013b" / "data"
    classes = ["707-320", "Cessna 172", "F/A-18"]  # real names hold spaces and slashes
    _lines(data / "variants.txt", classes)
    counts = {"train": 2, "val": 1, "test": 2}
    rows: dict[str, list[str]] = {s: [] for s in counts}
    image_id = 1000000
    for split, per_class in counts.items():
        for cls in classes:
            for _ in range(per_class):
                image_id += 1
                write_image(data / "images" / f"{image_id}.jpg", image_id)
                rows[split].append(f"{image_id} {cls}")
    for split, lines in {**rows, "trainval": rows["train"] + rows["val"]}.items():
        _lines(data / f"images_variant_{split}.txt", lines)
        _lines(data / f"images_family_{split}.txt", [line.split(" ")[0] + " family" for line in lines])
    return {s: n * len(classes) for s, n in counts.items()}


def make_fake_caltech101(root: Path) -> dict[str, int]:
    base = Path(root) / "caltech101" / "caltech101"
    counts = {"Faces": 31, "accordion": 32, "airplanes": 33, "BACKGROUND_Google": 2}
    for k, (cls, n) in enumerate(counts.items()):
        for i in range(1, n + 1):
            # some real Caltech images are greyscale: the loader must still give RGB
            write_image(base / "101_ObjectCategories" / cls / f"image_{i:04d}.jpg", 100 * k + i,
                        mode="L" if i % 5 == 0 else "RGB")
    (base / "Annotations").mkdir(parents=True, exist_ok=True)
    return {"train": 3 * 30, "test": 1 + 2 + 3}


def make_fake_cars(root: Path) -> dict[str, int]:
    import scipy.io as sio

    base = Path(root) / "cars" / "stanford_cars"
    names = np.array(["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi TTS Coupe 2012"], dtype=object)
    _mkdir(base / "devkit")
    sio.savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    sizes = {"train": 6, "test": 5}
    targets = {"train": (base / "devkit" / "cars_train_annos.mat", base / "cars_train"),
               "test": (base / "cars_test_annos_withlabels.mat", base / "cars_test")}
    for split, (mat, folder) in targets.items():
        n = sizes[split]
        fnames = [f"{i + 1:05d}.jpg" for i in range(n)]
        for i, fname in enumerate(fnames):
            write_image(folder / fname, 7 * i + n)
        box = np.ones(n, dtype=np.uint8)
        classes = (np.arange(n) % 3 + 1).astype(np.uint8)  # 1-based as in the devkit
        record = np.rec.fromarrays([box, box, box * 8, box * 8, classes, fnames],
                                   names=["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"])
        sio.savemat(mat, {"annotations": record})
    return sizes


def _mkdir(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return True


def _cifar(folder: Path, batches: dict[str, int], label_key: str, meta: tuple[str, str, int], used: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    meta_file, names_key, num_classes = meta
    for name, n in batches.items():
        entry = {"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
                 label_key: [int(v) for v in np.arange(n) % used]}  # `used` classes appear
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / meta_file).write_bytes(pickle.dumps({names_key: [f"class{i}" for i in range(num_classes)]}))


def make_fake_cifar10(root: Path) -> dict[str, int]:
    batches = {f"data_batch_{i}": 4 for i in range(1, 6)} | {"test_batch": 6}
    _cifar(Path(root) / "cifar10" / "cifar-10-batches-py", batches, "labels", ("batches.meta", "label_names", 10), 10)
    return {"train": 20, "test": 6}


def make_fake_cifar100(root: Path) -> dict[str, int]:
    _cifar(Path(root) / "cifar100" / "cifar-100-python", {"train": 8, "test": 4}, "fine_labels",
           ("meta", "fine_label_names", 100), 4)
    return {"train": 8, "test": 4}


def make_fake_cub200(root: Path) -> dict[str, int]:
    base = Path(root) / "cub200" / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, labels, split = [], [], []
    image_id = 0
    for c, cls in enumerate(classes, 1):
        for k in range(4):
            image_id += 1
            rel = f"{cls}/{cls[4:]}_{k:04d}_{image_id}.jpg"
            write_image(base / "images" / rel, image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {int(k < 2)}")
    _lines(base / "images.txt", images)
    _lines(base / "image_class_labels.txt", labels)
    _lines(base / "train_test_split.txt", split)
    _lines(base / "classes.txt", [f"{c} {cls}" for c, cls in enumerate(classes, 1)])
    return {"train": 6, "test": 6}


def make_fake_dtd(root: Path) -> dict[str, int]:
    base = Path(root) / "dtd" / "dtd" / "dtd"
    classes = ["banded", "blotchy", "braided"]
    counts = {"train": 2, "val": 1, "test": 2}
    rows: dict[str, list[str]] = {s: [] for s in counts}
    for c, cls in enumerate(classes):
        k = 0
        for split, n in counts.items():
            for _ in range(n):
                k += 1
                write_image(base / "images" / cls / f"{cls}_{k:04d}.jpg", 10 * c + k)
                rows[split].append(f"{cls}/{cls}_{k:04d}.jpg")
    for split, lines in rows.items():
        _lines(base / "labels" / f"{split}1.txt", lines)
    return {s: n * len(classes) for s, n in counts.items()}


def make_fake_flowers102(root: Path) -> dict[str, int]:
    import scipy.io as sio

    base = Path(root) / "flowers102" / "flowers-102"
    n = 12
    for i in range(1, n + 1):
        write_image(base / "jpg" / f"image_{i:05d}.jpg", i)
    sio.savemat(base / "imagelabels.mat", {"labels": (np.arange(n) % 3 + 1)[None, :]})
    ids = np.arange(1, n + 1)
    sio.savemat(base / "setid.mat", {"trnid": ids[:3][None], "valid": ids[3:6][None], "tstid": ids[6:][None]})
    return {"train": 3, "val": 3, "test": 6}


def make_fake_food101(root: Path) -> dict[str, int]:
    base = Path(root) / "food101" / "food-101"
    classes = ["apple_pie", "baby_back_ribs", "baklava"]
    meta = {"train": {}, "test": {}}
    for c, cls in enumerate(classes):
        for split, n, first in (("train", 2, 0), ("test", 1, 50)):
            meta[split][cls] = [f"{cls}/{100 * c + first + k}" for k in range(n)]
            for rel in meta[split][cls]:
                write_image(base / "images" / f"{rel}.jpg", 100 * c + first + len(rel))
    _mkdir(base / "meta")
    for split, content in meta.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(content))
        _lines(base / "meta" / f"{split}.txt", [rel for ids in content.values() for rel in ids])
    _lines(base / "meta" / "classes.txt", classes)
    return {"train": 6, "test": 3}


def make_fake_pets(root: Path) -> dict[str, int]:
    base = Path(root) / "pets" / "oxford-iiit-pet"
    breeds = [("Abyssinian", 1), ("american_bulldog", 2), ("Bengal", 1)]  # (name, species 1=cat 2=dog)
    rows: dict[str, list[str]] = {"trainval": [], "test": []}
    for c, (breed, species) in enumerate(breeds, 1):
        for k in range(1, 4):
            image_id = f"{breed}_{k}"
            write_image(base / "images" / f"{image_id}.jpg", 10 * c + k)
            rows["trainval" if k < 3 else "test"].append(f"{image_id} {c} {species} {k}")
    for split, lines in rows.items():
        _lines(base / "annotations" / f"{split}.txt", lines)
    _lines(base / "annotations" / "list.txt", rows["trainval"] + rows["test"])
    (base / "annotations" / "trimaps").mkdir(exist_ok=True)
    return {"train": 6, "test": 3}


def make_fake_sun397(root: Path) -> dict[str, int]:
    task = Path(root) / "sun397"
    classes = ["/a/abbey", "/b/bakery/shop", "/c/church/outdoor"]  # real names can be two levels deep
    _lines(task / "SUN397" / "ClassName.txt", classes)
    rows: dict[str, list[str]] = {"Training_01": [], "Testing_01": []}
    for c, cls in enumerate(classes):
        for k in range(4):  # the 4th image is in no partition-01 list, as in the real data
            rel = f"{cls}/sun_{'abcdefgh'[k]}{c}fakeimage.jpg"
            write_image(task / "SUN397" / rel.lstrip("/"), 10 * c + k)
            if k < 3:
                rows["Training_01" if k < 2 else "Testing_01"].append(rel)
    for name, lines in rows.items():
        _lines(task / f"{name}.txt", lines[::-1])  # reversed: order must follow the file, not the disk
    return {"train": 6, "test": 3}


def write_idx(path: Path, array: np.ndarray) -> Path:
    """A gzipped unsigned-byte IDX file."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    return path


def make_fake_fashion_mnist(root: Path, n_train: int = 12, n_test: int = 5) -> dict[str, int]:
    folder = Path(root) / "fashion-mnist"
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return {"train": n_train, "test": n_test}


def make_fake_imagefolder(root: Path, classes: Sequence[str] | int = 3, n_train: int = 3, n_test: int = 2,
                          size: int = SIZE, n_val: int = 0) -> dict[str, int]:
    """`root/{train,test[,val]}/<class>/NNNN.jpg` with n_* images per class; returns the split sizes."""
    names = [f"class{i}" for i in range(classes)] if isinstance(classes, int) else list(classes)
    counts = {"train": n_train, "test": n_test} | ({"val": n_val} if n_val else {})
    for split, n in counts.items():
        for c, name in enumerate(names):
            for k in range(n):
                write_image(Path(root) / split / name / f"{k:04d}.jpg", 1000 * c + k + 100 * len(split), size)
    return {split: n * len(names) for split, n in counts.items()}


FAKE_WRITERS: dict[str, Callable[[Path], dict[str, int]]] = {
    "aircraft": make_fake_aircraft,
    "caltech101": make_fake_caltech101,
    "cars": make_fake_cars,
    "cifar10": make_fake_cifar10,
    "cifar100": make_fake_cifar100,
    "cub200": make_fake_cub200,
    "dtd": make_fake_dtd,
    "flowers102": make_fake_flowers102,
    "food101": make_fake_food101,
    "pets": make_fake_pets,
    "sun397": make_fake_sun397,
}
# Number of classes each fake holds (the real counts are in TaskSpec.num_classes).
FAKE_CLASSES = {"aircraft": 3, "caltech101": 3, "cars": 3, "cifar10": 10, "cifar100": 100, "cub200": 3,
                "dtd": 3, "flowers102": 102, "food101": 3, "pets": 3, "sun397": 3}


@dataclass(frozen=True)
class FakeTask:
    name: str               # "imagefolder:<path>", usable wherever a task name is
    path: Path
    sizes: dict[str, int]   # images per stored split
    num_classes: int


def fake_task(root: Path, classes: int, n_train: int, n_test: int, size: int) -> FakeTask:
    """A fake image-folder task under `root` with `classes` classes of `size`×`size` px images."""
    sizes = make_fake_imagefolder(root, classes=classes, n_train=n_train, n_test=n_test, size=size)
    return FakeTask(f"imagefolder:{root}", root, sizes, classes)
