"""Loaders of real tasks that need no download: scikit-learn's digits, Fashion-MNIST from the
Debian package's IDX files, and any user image folder (`imagefolder:<path>`)."""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets import ImageFolder

from tasks.errors import TaskError
from tasks.imagedata import ArrayImages, FileImages, TaskData
from tasks.splits import validation_indices
from tasks.staging import exists, is_uri, isdir, join

# digits has no official split: a stratified 20 % test split of the 1 797 images from this seed.
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DIGITS_SIZE = 32
FASHION_MNIST_DEFAULT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8×8 digits (0..16 grey levels), upsampled bilinearly to 32×32 uint8, and labels."""
    from sklearn.datasets import load_digits  # scikit-learn is only needed for this task

    bunch = load_digits()
    small = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((DIGITS_SIZE, DIGITS_SIZE), Image.BILINEAR))
                    for im in small])
    return big, bunch.target.astype(np.int64)


def load_digits_task(task_root: Path | None, split: str, download: bool) -> TaskData:
    images, labels = _digits()
    train, test = validation_indices(labels, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    chosen = {"train": train, "test": test}[split]
    # fancy indexing copies, so the cached arrays are never shared with callers
    return TaskData(ArrayImages(images[chosen], f"digits:{split}"), labels[chosen], [str(d) for d in range(10)])


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (big-endian header: 0, 0, dtype code 0x08 = uint8, ndim, then ndim int32 sizes)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise TaskError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise TaskError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise TaskError(f"{path}: header says shape {shape} but holds {len(raw) - offset} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def fashion_mnist_dir(task_root: Path | None) -> Path:
    """`<root>/fashion-mnist` when it holds the IDX files, else the Debian package's directory."""
    for candidate in ([task_root] if task_root is not None else []) + [FASHION_MNIST_DEFAULT]:
        if all((candidate / name).is_file() for names in FASHION_MNIST_FILES.values() for name in names):
            return candidate
    where = f"{task_root} or " if task_root is not None else ""
    raise TaskError(f"Fashion-MNIST not found: expected {', '.join(FASHION_MNIST_FILES['train'] + FASHION_MNIST_FILES['test'])} "
                    f"in {where}{FASHION_MNIST_DEFAULT} (apt-get install dataset-fashion-mnist, or copy the "
                    "gzipped IDX files of github.com/zalandoresearch/fashion-mnist there)")


def check_fashion_mnist(task_root: Path | str | None) -> None:
    """TaskError unless the IDX files are under `task_root` (a path or URI) or the Debian directory."""
    if is_uri(task_root):
        if all(exists(join(task_root, name)) for names in FASHION_MNIST_FILES.values() for name in names):
            return
        fashion_mnist_dir(None)  # the Debian package's files are the fallback, as for a local root
        return
    fashion_mnist_dir(None if task_root is None else Path(task_root))


def load_fashion_mnist(task_root: Path | None, split: str, download: bool) -> TaskData:
    folder = fashion_mnist_dir(task_root)
    image_file, label_file = (folder / name for name in FASHION_MNIST_FILES[split])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise TaskError(f"{image_file} {images.shape} and {label_file} {labels.shape} do not match")
    return TaskData(ArrayImages(images, f"fashion-mnist:{split}"), labels.astype(np.int64),
                    list(FASHION_MNIST_CLASSES))


# A stratified, seeded subset of Fashion-MNIST for laptop-sized runs (the demo): extracting all 70 000
# images at 224 px takes over an hour on 2 CPU cores.
FASHION_MNIST_SMALL = {"train": 2000, "test": 1000}
FASHION_MNIST_SMALL_SEED = 0


def load_fashion_mnist_small(task_root: Path | None, split: str, download: bool) -> TaskData:
    full = load_fashion_mnist(task_root, split, download)
    fraction = FASHION_MNIST_SMALL[split] / len(full.targets)
    _, chosen = validation_indices(np.asarray(full.targets), fraction, FASHION_MNIST_SMALL_SEED)
    return full.subset(chosen)


IMAGEFOLDER_LAYOUT = "<path>/train/<class>/<image>, <path>/test/<class>/<image> (optional <path>/val/<class>/...)"


def has_folder(path: Path | str, name: str) -> bool:
    return isdir(join(path, name))


def check_imagefolder(path: Path | str) -> None:
    """TaskError unless `path` (a path or URI) holds train/ and test/ folders."""
    if not isdir(path):
        raise TaskError(f"image folder {path} does not exist; expected layout {IMAGEFOLDER_LAYOUT}")
    missing = [s for s in ("train", "test") if not has_folder(path, s)]
    if missing:
        raise TaskError(f"image folder {path} lacks {', '.join(s + '/' for s in missing)}; "
                        f"expected layout {IMAGEFOLDER_LAYOUT}")


class _TrainClassesFolder(ImageFolder):
    """ImageFolder whose class list is fixed to train/'s, so a split missing a class keeps the numbering."""

    def __init__(self, root: Path, classes: list[str], allow_empty: bool) -> None:
        self._fixed = classes
        super().__init__(str(root), allow_empty=allow_empty)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return list(self._fixed), {name: i for i, name in enumerate(self._fixed)}


def load_imagefolder(task_root: Path, split: str, download: bool) -> TaskData:
    """`task_root/<split>/<class>/*` in torchvision ImageFolder order (sorted classes, sorted files)."""
    check_imagefolder(task_root)
    classes = [entry.name for entry in sorted((task_root / "train").iterdir()) if entry.is_dir()]
    if not classes:
        raise TaskError(f"{task_root / 'train'} has no class folders; expected layout {IMAGEFOLDER_LAYOUT}")
    folder = task_root / split
    if not folder.is_dir():
        raise TaskError(f"image folder {task_root} has no {split}/ split")
    try:
        ds = _TrainClassesFolder(folder, classes, allow_empty=split != "train")
    except (FileNotFoundError, OSError) as exc:
        raise TaskError(f"cannot read image folder {folder}: {exc}") from exc
    extra = sorted({p.name for p in folder.iterdir() if p.is_dir()} - set(classes))
    if extra:
        raise TaskError(f"{folder} has class folders that train/ lacks: {', '.join(extra[:5])}")
    return TaskData(FileImages([p for p, _ in ds.samples]), [y for _, y in ds.samples], classes)
