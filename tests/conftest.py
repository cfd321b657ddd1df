"""Shared fixtures: one local Ray cluster per test session, and tiny fake tasks on disk."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fakedata import make_fake_imagefolder

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A 2-CPU local Ray cluster, started once for the whole session (start-up costs seconds)."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@dataclass(frozen=True)
class FakeTask:
    name: str               # "imagefolder:<path>", usable wherever a task name is
    path: Path
    sizes: dict[str, int]   # images per stored split
    num_classes: int


def _fake_task(root: Path, classes: int, n_train: int, n_test: int, size: int) -> FakeTask:
    sizes = make_fake_imagefolder(root, classes=classes, n_train=n_train, n_test=n_test, size=size)
    return FakeTask(f"imagefolder:{root}", root, sizes, classes)


@pytest.fixture(scope="session")
def fake_task(tmp_path_factory: pytest.TempPathFactory) -> FakeTask:
    """A 3-class image folder: 15 train and 6 test images of 12×12 px (read-only: do not modify)."""
    return _fake_task(tmp_path_factory.mktemp("fake-task"), classes=3, n_train=5, n_test=2, size=12)


@pytest.fixture
def make_fake_task(tmp_path: Path):
    """Factory for a fresh fake image-folder task in this test's tmp_path."""

    def make(classes: int = 3, n_train: int = 5, n_test: int = 2, size: int = 12, name: str = "task") -> FakeTask:
        return _fake_task(tmp_path / name, classes, n_train, n_test, size)

    return make
