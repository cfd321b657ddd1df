"""tasks.datasets: the task registry, every loader on a fake copy of its real layout, offline tasks."""

from __future__ import annotations

import re
from pathlib import Path

import fakedata
import numpy as np
import pytest
from PIL import Image

from tasks import (
    TASKS,
    TaskError,
    build_task,
    get_task,
    list_tasks,
    offline,
    protocol_split,
    staging,
    stored_split_hash,
)
from tasks.imagedata import FileImages

PAPER_TASKS = tuple(fakedata.FAKE_WRITERS)
SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
CIFAR_SMALL = SHARED / "cifar10-jpeg-small"

# The protocol table: primary metric and validation rule of each paper task.
PROTOCOL = {
    "aircraft": ("mean_per_class", "official", 100), "caltech101": ("mean_per_class", "carve", 101),
    "cars": ("top1", "carve", 196), "cifar10": ("top1", "carve", 10), "cifar100": ("top1", "carve", 100),
    "cub200": ("top1", "carve", 200), "dtd": ("top1", "official", 47),
    "flowers102": ("mean_per_class", "official", 102), "food101": ("top1", "carve", 101),
    "pets": ("mean_per_class", "carve", 37), "sun397": ("top1", "carve", 397),
}


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, int]]]:
    root = tmp_path_factory.mktemp("data")
    return root, {name: write(root) for name, write in fakedata.FAKE_WRITERS.items()}


def _build(name: str, root: Path, split: str, **kwargs):
    with fakedata.integrity_checks_skipped():
        return build_task(name, root, split, **kwargs)


def test_registry_matches_the_protocol_table() -> None:
    assert {n: (TASKS[n].metric, TASKS[n].val_rule, TASKS[n].num_classes) for n in PROTOCOL} == PROTOCOL
    assert TASKS["dtd"].stored_splits == ("train", "val", "test")
    assert TASKS["pets"].stored_splits == ("train", "test")


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_fake_task_builds_every_stored_split_with_expected_sizes_and_labels(name: str, fake_root) -> None:
    root, expected = fake_root
    for split in TASKS[name].stored_splits:
        data = _build(name, root, split)
        assert len(data) == expected[name][split] == len(data.targets), split
        assert len(data.classes) == fakedata.FAKE_CLASSES[name]
        assert data.targets.min() >= 0 and data.targets.max() < len(data.classes)
        image, label = data[len(data) - 1]
        assert isinstance(image, Image.Image) and image.mode == "RGB" and label == data.targets[-1]


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_fake_task_stored_splits_are_disjoint_by_file(name: str, fake_root) -> None:
    root, _ = fake_root
    sources = [{_build(name, root, s).source(i) for i in range(len(_build(name, root, s)))}
               for s in TASKS[name].stored_splits]
    assert sum(len(s) for s in sources) == len(set().union(*sources))


@pytest.mark.parametrize("name", [n for n in PAPER_TASKS if TASKS[n].val_rule == "carve"])
def test_carved_validation_split_is_deterministic_and_part_of_train(name: str, fake_root) -> None:
    root, _ = fake_root
    train, val = _build(name, root, "train"), _build(name, root, "val")
    again = _build(name, root, "val")
    assert [val.source(i) for i in range(len(val))] == [again.source(i) for i in range(len(again))]
    assert {val.source(i) for i in range(len(val))} <= {train.source(i) for i in range(len(train))}
    assert 0 < len(val) < len(train)


@pytest.mark.parametrize("name", PAPER_TASKS)
def test_missing_dataset_error_names_the_expected_path_and_the_archive(name: str, tmp_path: Path) -> None:
    spec = TASKS[name]
    with pytest.raises(TaskError) as info:
        build_task(name, tmp_path, "test")
    message = str(info.value)
    assert str(tmp_path / spec.directory / spec.marker) in message
    assert spec.source.split()[0] in message
    assert not (tmp_path / spec.directory).exists()  # nothing created as a side effect


def test_stanford_cars_error_says_no_automatic_download_and_names_the_mirror(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="no working automatic download") as info:
        build_task("cars", tmp_path, "train")
    assert "kaggle" in str(info.value).lower() and "cars_train_annos.mat" in str(info.value)
    with pytest.raises(TaskError, match="cannot be downloaded automatically"):
        build_task("cars", tmp_path, "train", download=True)
    assert not (tmp_path / "cars").exists()


def test_transform_is_applied_to_pil_rgb_images(fake_root) -> None:
    root, _ = fake_root
    data = _build("cub200", root, "train", transform=lambda im: np.asarray(im).shape)
    assert data[0] == ((fakedata.SIZE, fakedata.SIZE, 3), 0)
    assert data.image(0).size == (fakedata.SIZE, fakedata.SIZE)


def test_caltech101_drops_background_and_keeps_thirty_per_class_in_train(fake_root) -> None:
    root, _ = fake_root
    train = _build("caltech101", root, "train")
    assert "BACKGROUND_Google" not in train.classes
    assert np.bincount(train.targets).tolist() == [30, 30, 30]
    assert all(train[i][0].mode == "RGB" for i in range(0, len(train), 7))  # includes greyscale files


def test_sun397_follows_partition_file_order_and_two_level_class_names(fake_root) -> None:
    root, _ = fake_root
    train = _build("sun397", root, "train")
    listed = (root / "sun397" / "Training_01.txt").read_text().split()
    assert [Path(train.source(i)).as_posix().split("SUN397")[1] for i in range(len(train))] == listed
    assert train.classes == ["abbey", "bakery/shop", "church/outdoor"]


def test_dtd_and_aircraft_labels_agree_across_splits(fake_root) -> None:
    root, _ = fake_root
    for split in ("train", "val", "test"):
        dtd = _build("dtd", root, split)
        assert all(dtd.classes[y] == Path(dtd.source(i)).parent.name for i, y in enumerate(dtd.targets))
    assert _build("aircraft", root, "val").classes == ["707-320", "Cessna 172", "F/A-18"]


def test_pets_stored_train_is_official_trainval(fake_root) -> None:
    root, _ = fake_root
    train = _build("pets", root, "train")
    assert train.classes == ["Abyssinian", "American Bulldog", "Bengal"]
    assert np.bincount(train.targets).tolist() == [2, 2, 2]


def test_protocol_split_maps_phases_to_stored_splits() -> None:
    labels = {"train": np.arange(20) % 2, "val": np.arange(4) % 2, "test": np.arange(6) % 2}
    assert [s for s, _ in protocol_split("dtd", "trainval", labels)] == ["train", "val"]
    fit, val = protocol_split("cifar10", "fit", labels)[0][1], protocol_split("cifar10", "val", labels)[0][1]
    assert sorted(np.concatenate([fit, val]).tolist()) == list(range(20)) and len(val) == 4
    assert protocol_split("cifar10", "trainval", labels)[0][1].tolist() == list(range(20))
    assert protocol_split("dtd", "fit", {"train": labels["train"]})[0][1].tolist() == list(range(20))
    with pytest.raises(TaskError, match="stored split 'train'"):
        protocol_split("cifar10", "val", {"test": labels["test"]})
    with pytest.raises(TaskError, match="phase"):
        protocol_split("cifar10", "refit", labels)


def test_list_tasks_reports_sizes_only_for_tasks_present(fake_root, monkeypatch) -> None:
    root, expected = fake_root
    monkeypatch.setattr(offline, "FASHION_MNIST_DEFAULT", root / "no-debian-package")
    with fakedata.integrity_checks_skipped():
        rows = {row["name"]: row for row in list_tasks(root)}
    assert rows["dtd"]["sizes"] == expected["dtd"] and rows["cub200"]["metric"] == "top1"
    assert rows["digits"]["sizes"] == {"train": 1438, "test": 359}
    assert rows["fashion-mnist"]["sizes"] == {"train": None, "test": None}
    assert {row["name"] for row in list_tasks(None) if all(v is None for v in row["sizes"].values())} >= set(PAPER_TASKS)


def test_digits_is_a_seeded_stratified_split_of_1797_upsampled_rgb_images() -> None:
    train, test = build_task("digits", None, "train"), build_task("digits", None, "test")
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert train.image(0).size == (32, 32) and train.image(0).mode == "RGB"
    assert np.abs(np.bincount(test.targets) / len(test) - np.bincount(train.targets) / len(train)).max() < 0.01
    assert np.array_equal(build_task("digits", "/ignored", "test", download=True).targets, test.targets)


def test_fashion_mnist_reads_gzipped_idx_files_under_root(tmp_path: Path) -> None:
    sizes = fakedata.make_fake_fashion_mnist(tmp_path, n_train=12, n_test=5)
    train = build_task("fashion-mnist", tmp_path, "train")
    assert len(train) == sizes["train"] and train.targets.tolist() == [i % 10 for i in range(12)]
    assert train.classes[9] == "Ankle boot" and train.image(0).size == (28, 28)
    assert len(build_task("fashion-mnist", tmp_path, "test")) == 5


def test_fashion_mnist_small_is_a_stratified_deterministic_subset(tmp_path: Path, monkeypatch) -> None:
    fakedata.make_fake_fashion_mnist(tmp_path, n_train=400, n_test=200)
    monkeypatch.setattr(offline, "FASHION_MNIST_SMALL", {"train": 100, "test": 50})
    full = build_task("fashion-mnist", tmp_path, "train")
    first, again = (build_task("fashion-mnist-small", tmp_path, "train") for _ in range(2))
    assert len(first) == 100 and np.bincount(first.targets).tolist() == [10] * 10
    assert np.array_equal(first.targets, again.targets)
    assert len(build_task("fashion-mnist-small", tmp_path, "test")) == 50
    # every subset image is an image of the full split with the same label
    full_images = {np.asarray(full.image(i)).tobytes(): full.targets[i] for i in range(len(full))}
    for i in range(len(first)):
        assert full_images[np.asarray(first.image(i)).tobytes()] == first.targets[i]


def test_fashion_mnist_missing_names_root_and_debian_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(offline, "FASHION_MNIST_DEFAULT", tmp_path / "debian")
    with pytest.raises(TaskError, match="dataset-fashion-mnist") as info:
        build_task("fashion-mnist", tmp_path, "train")
    assert str(tmp_path / "fashion-mnist") in str(info.value) and str(tmp_path / "debian") in str(info.value)


def test_idx_file_with_bad_magic_or_size_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gz"
    fakedata.write_idx(bad, np.zeros((2, 3), dtype=np.uint8))
    bad.write_bytes(bad.read_bytes()[:-3])
    with pytest.raises(TaskError, match=r"bad\.gz"):
        offline.read_idx(bad)
    (tmp_path / "magic").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(TaskError, match="magic"):
        offline.read_idx(tmp_path / "magic")


@pytest.mark.skipif(not (offline.FASHION_MNIST_DEFAULT / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_test_split_has_10000_balanced_images() -> None:
    test = build_task("fashion-mnist", None, "test")
    assert len(test) == 10000 and np.bincount(test.targets).tolist() == [1000] * 10


def test_imagefolder_follows_torchvision_order_and_uses_val_folder(tmp_path: Path) -> None:
    sizes = fakedata.make_fake_imagefolder(tmp_path, ["b", "a", "c"], n_train=3, n_test=2, n_val=1)
    spec = get_task(f"imagefolder:{tmp_path}")
    assert spec.val_rule == "official" and spec.stored_splits == ("train", "val", "test") and spec.num_classes == 3
    train = build_task(f"imagefolder:{tmp_path}", "/ignored", "train")
    assert train.classes == ["a", "b", "c"] and len(train) == sizes["train"]
    assert [Path(train.source(i)).relative_to(tmp_path / "train").as_posix() for i in range(3)] == \
        ["a/0000.jpg", "a/0001.jpg", "a/0002.jpg"]
    assert len(build_task(f"imagefolder:{tmp_path}", None, "val")) == 3


def test_imagefolder_split_missing_a_class_keeps_train_numbering(tmp_path: Path) -> None:
    fakedata.make_fake_imagefolder(tmp_path, ["a", "b", "c"], n_train=2, n_test=1)
    for image in (tmp_path / "test" / "a").iterdir():
        image.unlink()
    (tmp_path / "test" / "a").rmdir()
    test = build_task(f"imagefolder:{tmp_path}", None, "test")
    assert test.classes == ["a", "b", "c"] and test.targets.tolist() == [1, 2]
    assert get_task(f"imagefolder:{tmp_path}").val_rule == "carve"


@pytest.mark.real
@pytest.mark.skipif(not CIFAR_SMALL.is_dir(), reason=f"real data {CIFAR_SMALL} absent (needs ../shared/data)")
def test_real_cifar10_jpeg_small_folder_has_2000_train_500_test_in_10_classes() -> None:
    name = f"imagefolder:{CIFAR_SMALL}"
    train, test = build_task(name, None, "train"), build_task(name, None, "test")
    assert (len(train), len(test), len(train.classes)) == (2000, 500, 10)
    assert np.bincount(test.targets).tolist() == [50] * 10
    assert train[0][0].size == (32, 32)
    assert not {train.source(i) for i in range(len(train))} & {test.source(i) for i in range(len(test))}


@pytest.mark.parametrize("name", ["../x", "/etc", "cifar10/../../x", "a\\b", "", ".."])
def test_path_like_task_names_are_rejected(name: str) -> None:
    with pytest.raises(TaskError, match="not a task name"):
        get_task(name)


def test_unknown_task_suggests_close_names() -> None:
    with pytest.raises(TaskError, match="did you mean cifar10"):
        get_task("cifar")
    with pytest.raises(TaskError, match="unknown task"):
        build_task("imagenet-zzz", "/data", "train")


def test_imagefolder_errors_say_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"does not exist.*train/<class>"):
        get_task(f"imagefolder:{tmp_path / 'nope'}")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(TaskError, match=r"lacks test/.*expected layout"):
        build_task(f"imagefolder:{tmp_path}", None, "train")


def test_unknown_split_is_rejected_with_the_task_splits(fake_root) -> None:
    with pytest.raises(TaskError, match="has splits train, val, test"):
        build_task("dtd", fake_root[0], "trainval")


def test_corrupt_image_raises_task_error_naming_the_file(tmp_path: Path) -> None:
    fakedata.make_fake_imagefolder(tmp_path, 2, n_train=2, n_test=1)
    broken = fakedata.write_corrupt_image(tmp_path / "train" / "class1" / "0001.jpg")
    data = build_task(f"imagefolder:{tmp_path}", None, "train")
    data[0]  # intact images still load
    with pytest.raises(TaskError, match=re.escape(str(broken))):
        data[3]
    with pytest.raises(TaskError, match="cannot read image"):
        FileImages([tmp_path / "missing.jpg"]).read(0)


def test_files_failing_torchvision_checksum_give_a_task_error(tmp_path: Path) -> None:
    fakedata.make_fake_cifar10(tmp_path)  # fake batches cannot match the real md5s
    with pytest.raises(TaskError, match="corrupted"):
        build_task("cifar10", tmp_path, "train")


@pytest.fixture
def stage_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(staging, "STAGE_DIR", tmp_path / "staged")
    return tmp_path / "staged"


def test_imagefolder_uri_is_inspected_remotely_and_staged_when_built(tmp_path: Path, stage_dir: Path) -> None:
    fakedata.make_fake_imagefolder(tmp_path / "set", ["b", "a"], n_train=2, n_test=1, n_val=1)
    name = f"imagefolder:{(tmp_path / 'set').as_uri()}"
    spec = get_task(name)
    assert (spec.num_classes, spec.stored_splits) == (2, ("train", "val", "test")) and not stage_dir.exists()
    staged, local = build_task(name, None, "train"), build_task(f"imagefolder:{tmp_path / 'set'}", None, "train")
    assert staged.classes == local.classes == ["a", "b"] and staged.targets.tolist() == local.targets.tolist()
    assert all(Path(staged.source(i)).is_relative_to(stage_dir) for i in range(len(staged)))
    assert [Path(staged.source(i)).read_bytes() for i in range(4)] == [Path(local.source(i)).read_bytes()
                                                                       for i in range(4)]
    assert staged.image(0).size == (fakedata.SIZE, fakedata.SIZE)


def test_staged_copies_on_two_nodes_have_the_same_split_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fakedata.make_fake_imagefolder(tmp_path / "set", 2, n_train=2, n_test=1)
    name = f"imagefolder:{(tmp_path / 'set').as_uri()}"
    hashes = []
    for node in ("node-a", "node-b"):
        monkeypatch.setattr(staging, "STAGE_DIR", tmp_path / node)
        hashes.append(stored_split_hash(name, "train", build_task(name, None, "train")))
    assert hashes[0] == hashes[1]


def test_data_root_uri_stages_only_the_task_folder(tmp_path: Path, stage_dir: Path) -> None:
    fakedata.make_fake_cub200(tmp_path / "data")
    fakedata.make_fake_dtd(tmp_path / "data")
    staged = build_task("cub200", (tmp_path / "data").as_uri(), "test")
    assert staged.targets.tolist() == build_task("cub200", tmp_path / "data", "test").targets.tolist()
    assert [p.name for p in stage_dir.glob("*/*") if not p.name.startswith(".")] == ["cub200"]
    assert len(build_task("digits", (tmp_path / "data").as_uri(), "test")) == 359  # reads nothing under the root


def test_data_root_uri_missing_a_task_names_the_uri_and_download_is_refused(tmp_path: Path, stage_dir: Path) -> None:
    root = (tmp_path / "data").as_uri()
    with pytest.raises(TaskError, match=re.escape(f"expected {root}/pets/oxford-iiit-pet/annotations/trainval.txt")):
        build_task("pets", root, "train")
    with pytest.raises(TaskError, match="cannot download into file://"):
        build_task("pets", root, "train", download=True)


def test_list_tasks_under_a_uri_root_counts_nothing_and_stages_nothing(tmp_path: Path, stage_dir: Path) -> None:
    fakedata.make_fake_cub200(tmp_path / "data")
    rows = {row["name"]: row for row in list_tasks((tmp_path / "data").as_uri())}
    assert rows["cub200"]["sizes"] == {"train": None, "test": None} and not stage_dir.exists()
