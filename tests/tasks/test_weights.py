"""Weights: where a backbone's file is (paths, $SEABENCH_WEIGHTS, packages, URIs) and how it loads
(strictly, without pickle, its sha256 recorded and checked)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import timm
import torch

import tasks.backbones as backbones
from tasks import staging
from tasks.backbones import BackboneSpec, build_backbone, get_backbone
from tasks.errors import TaskError
from tasks.staging import file_sha256
from tasks.weights import missing_weights

TINY = "random:resnet18@32"


@pytest.fixture(autouse=True)
def stage_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """URIs are staged under this test's tmp_path, never under ~/.cache."""
    monkeypatch.setattr(staging, "STAGE_DIR", tmp_path / "staged")
    return tmp_path / "staged"


def _tiny_file(tmp_path: Path, arch: str = "resnet18", name: str = "tiny.pth") -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(3)
    model = timm.create_model(arch, num_classes=0).eval()
    path = tmp_path / name
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, path)
    return path, model


def _file_spec(path: Path | str, **changes: object) -> BackboneSpec:
    spec = BackboneSpec("tiny-file", "resnet18", f"file:{path}", input_size=32, model_kwargs=(("num_classes", 0),))
    return dataclasses.replace(spec, **changes)


def test_file_weights_load_strictly_and_record_the_file_sha256(tmp_path: Path) -> None:
    path, model = _tiny_file(tmp_path)
    backbone = build_backbone(_file_spec(path))
    assert backbone.weights_sha256 == file_sha256(path) and backbone.weights_file == str(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(backbone.features(x), model(x))


def test_relative_file_weights_resolve_under_seabench_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _tiny_file(tmp_path, name="rel.pth")
    monkeypatch.setenv("SEABENCH_WEIGHTS", str(tmp_path))
    assert build_backbone(_file_spec(Path("rel.pth"))).weights_file == str(tmp_path / "rel.pth")


def test_relative_file_weights_may_not_leave_the_weights_folder() -> None:
    with pytest.raises(TaskError, match="leaves"):
        build_backbone(_file_spec(Path("../../etc/passwd")))


def test_safetensors_weights_load(tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    _, model = _tiny_file(tmp_path)
    path = tmp_path / "tiny.safetensors"
    safetensors.save_file(model.state_dict(), str(path))
    assert build_backbone(_file_spec(path)).weights_sha256 == file_sha256(path)


def test_missing_published_weights_name_the_path_and_the_download_url(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEABENCH_WEIGHTS", str(tmp_path))
    with pytest.raises(TaskError) as err:
        build_backbone("mocov3-vit-b16")
    assert str(tmp_path / "vit-b-300ep.pth.tar") in str(err.value)
    assert "https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar" in str(err.value)


def test_user_weights_path_must_exist_and_be_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="not found"):
        build_backbone(TINY, weights_path=tmp_path / "nope.pth")
    with pytest.raises(TaskError, match="not a regular file"):
        build_backbone(TINY, weights_path=tmp_path)


def test_checkpoint_that_needs_pickle_is_refused_with_a_conversion_hint(tmp_path: Path) -> None:
    path, model = _tiny_file(tmp_path)
    torch.save({"state_dict": model.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(TaskError, match=r"refusing to load.*weights_only=True.*convert it once"):
        build_backbone(_file_spec(path))


def test_checkpoint_with_wrong_shapes_lists_the_mismatches(tmp_path: Path) -> None:
    path, model = _tiny_file(tmp_path)
    state = model.state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(TaskError, match=r"1 shape mismatches \(e\.g\. conv1.weight: checkpoint \(64, 3, 3, 3\)"):
        build_backbone(_file_spec(tmp_path / "bad.pth"))
    with pytest.raises(TaskError, match=r"\d+ missing keys .*\d+ unexpected keys"):
        build_backbone(_file_spec(path, arch="vit_tiny_patch16_224"))


def test_recorded_sha256_must_match_the_published_file(tmp_path: Path) -> None:
    path, _ = _tiny_file(tmp_path)
    with pytest.raises(TaskError, match="not the published checkpoint"):
        build_backbone(_file_spec(path, sha256="0" * 64))
    assert build_backbone(_file_spec(path, sha256=file_sha256(path))).weights_sha256 == file_sha256(path)


def test_weights_path_overrides_a_registered_source_through_its_adapter(tmp_path: Path) -> None:
    path, _ = _tiny_file(tmp_path)
    spec = _file_spec(tmp_path / "absent.pth")
    assert build_backbone(spec, weights_path=str(path)).weights_file == str(path)


def test_timm_pretrained_source_asks_timm_for_the_tagged_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, bool]] = []
    real = timm.create_model

    def fake(arch: str, pretrained: bool = False, **kwargs: object) -> torch.nn.Module:
        calls.append((arch, pretrained))
        return real("resnet18", pretrained=False, **kwargs)

    monkeypatch.setattr(backbones.timm, "create_model", fake)
    spec = BackboneSpec("tv", "resnet18", "timm:tv_in1k", input_size=32, model_kwargs=(("num_classes", 0),))
    assert len(build_backbone(spec).weights_sha256) == 64
    assert calls == [("resnet18.tv_in1k", True)]


def test_timm_download_failure_is_a_task_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*_args: object, **_kwargs: object) -> torch.nn.Module:
        raise OSError("network unreachable")

    monkeypatch.setattr(backbones.timm, "create_model", offline)
    with pytest.raises(TaskError, match="network unreachable"):
        build_backbone(BackboneSpec("tv", "resnet18", "timm:tv_in1k"))



def test_weights_path_given_as_a_file_uri_is_staged_and_loads_strictly(tmp_path: Path, stage_dir: Path) -> None:
    path, model = _tiny_file(tmp_path)
    backbone = build_backbone(_file_spec(tmp_path / "absent.pth"), weights_path=path.as_uri())
    assert Path(backbone.weights_file).is_relative_to(stage_dir) and backbone.weights_sha256 == file_sha256(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(backbone.features(x), model(x))


def test_seabench_weights_may_be_a_uri_for_relative_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            stage_dir: Path) -> None:
    _tiny_file(tmp_path, name="rel.pth")
    monkeypatch.setenv("SEABENCH_WEIGHTS", tmp_path.as_uri())
    spec = _file_spec(Path("rel.pth"))
    assert missing_weights(spec) is None
    backbone = build_backbone(spec)
    assert Path(backbone.weights_file).is_relative_to(stage_dir) and Path(backbone.weights_file).name == "rel.pth"
    assert missing_weights(_file_spec(Path("other.pth"))) == f"{tmp_path.as_uri()}/other.pth"


def test_uri_weights_with_the_wrong_sha256_name_the_uri_and_both_digests(tmp_path: Path, stage_dir: Path) -> None:
    path, _ = _tiny_file(tmp_path)
    with pytest.raises(TaskError) as err:
        build_backbone(_file_spec(path.as_uri(), sha256="0" * 64))
    assert path.as_uri() in str(err.value) and "0" * 64 in str(err.value) and file_sha256(path) in str(err.value)
    assert not any(stage_dir.glob("*/tiny.pth"))  # nothing half-verified is kept


def test_missing_uri_weights_name_the_uri_and_the_download_url(tmp_path: Path) -> None:
    spec = dataclasses.replace(get_backbone("swav-r50-800ep"), weights=f"file:{(tmp_path / 'x.pth').as_uri()}")
    with pytest.raises(TaskError, match=r"not found: file://.*x\.pth.*dl\.fbaipublicfiles\.com"):
        build_backbone(spec)
