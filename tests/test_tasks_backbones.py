"""Backbone registry: names, presets, weights sources, strict safe loading, preprocessing, errors."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import tasks.backbones as backbones
from tasks.adapters import file_sha256
from tasks.backbones import (
    BACKBONES,
    PRESETS,
    BackboneSpec,
    build_backbone,
    get_backbone,
    list_backbones,
    register_backbone,
)
from tasks.errors import TaskError

TINY = "random:resnet18@32"


@pytest.fixture
def registry() -> Iterator[dict[str, BackboneSpec]]:
    """The global registry, restored after the test."""
    saved = dict(BACKBONES)
    yield BACKBONES
    BACKBONES.clear()
    BACKBONES.update(saved)


def _tiny_file(tmp_path: Path, arch: str = "resnet18", name: str = "tiny.pth") -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(3)
    model = timm.create_model(arch, num_classes=0).eval()
    path = tmp_path / name
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, path)
    return path, model


def _file_spec(path: Path, **changes: object) -> BackboneSpec:
    spec = BackboneSpec("tiny-file", "resnet18", f"file:{path}", input_size=32, model_kwargs=(("num_classes", 0),))
    return dataclasses.replace(spec, **changes)


def test_presets_name_the_four_paper_backbones_and_the_offline_demo() -> None:
    assert PRESETS["paper"] == ("mocov3-vit-b16", "mae-vit-b16", "mocov2-r50-800ep", "swav-r50-800ep")
    assert PRESETS["demo"] == ("efficientnet-lite0",)
    for name in PRESETS["paper"]:
        spec = get_backbone(name)
        assert spec.source_url.startswith("https://dl.fbaipublicfiles.com/")
        assert spec.weights.startswith("file:") and spec.sha256 == ""  # unknown digests are left empty
        assert spec.feature_dim in (768, 2048)


def test_list_backbones_reports_architecture_source_dimension_and_local_availability(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SEABENCH_WEIGHTS", str(tmp_path))
    (tmp_path / "swav_800ep_pretrain.pth.tar").write_bytes(b"x")
    rows = {row["name"]: row for row in list_backbones()}
    assert set(PRESETS["paper"]) | set(PRESETS["demo"]) <= set(rows)
    assert rows["efficientnet-lite0"]["available"] is True  # shipped by an installed package
    assert rows["efficientnet-lite0"]["feature_dim"] == 1280 and rows["efficientnet-lite0"]["presets"] == ["demo"]
    assert rows["swav-r50-800ep"]["available"] is True
    assert rows["mocov3-vit-b16"]["available"] is False
    assert rows["mae-vit-b16"]["arch"] == "vit_base_patch16_224" and rows["mae-vit-b16"]["feature"] == "cls"


def test_unknown_backbone_name_suggests_close_names() -> None:
    with pytest.raises(TaskError, match=r"did you mean \['efficientnet-lite0'\]"):
        get_backbone("efficientnet-lit0")


@pytest.mark.parametrize("name", ["../../etc/passwd", "weights/../x", "a/b", "random:../resnet18@32", "", ".hidden"])
def test_path_traversal_and_separator_names_are_rejected(name: str) -> None:
    with pytest.raises(TaskError, match="invalid backbone name"):
        build_backbone(name)


def test_random_backbone_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = build_backbone(TINY)
    assert torch.equal(torch.rand(1), expected_next)
    second = build_backbone(TINY)
    assert first.weights_sha256 == second.weights_sha256 and len(first.weights_sha256) == 64
    assert first.feature_dim == 512 and not first.model.training
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(first.features(x), second.features(x))
    assert first.weights_sha256 != build_backbone("random:resnet26@32").weights_sha256


def test_random_vit_is_built_at_the_requested_input_size() -> None:
    backbone = build_backbone("random:vit_tiny_patch16_224@32")
    assert backbone.preprocessing["input_size"] == [3, 32, 32]
    assert backbone.features(torch.randn(2, 3, 32, 32)).shape == (2, 192)


def test_random_name_with_unknown_architecture_suggests_timm_names() -> None:
    with pytest.raises(TaskError, match="resnet18"):
        get_backbone("random:resnet18x@32")


def test_transform_maps_a_pil_image_to_the_model_input_size() -> None:
    backbone = build_backbone(TINY)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    tensor = backbone.transform(image)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    assert backbone.features(tensor[None]).shape == (1, 512)


def test_paper_specs_use_their_authors_linear_eval_preprocessing() -> None:
    spec = dataclasses.replace(get_backbone("mocov2-r50-800ep"), arch="resnet18", weights="random:0",
                               feature_dim=0, input_size=None)
    pre = build_backbone(spec).preprocessing
    assert pre["crop_pct"] == 0.875 and pre["interpolation"] == "bilinear" and pre["input_size"] == [3, 224, 224]
    assert pre["mean"] == pytest.approx([0.485, 0.456, 0.406]) and pre["std"] == pytest.approx([0.229, 0.224, 0.225])


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


def test_feature_dim_in_spec_is_checked_against_the_model(tmp_path: Path) -> None:
    spec = dataclasses.replace(get_backbone(TINY), feature_dim=999)
    with pytest.raises(TaskError, match="512-d features"):
        build_backbone(spec)


def test_register_backbone_adds_an_entry_and_refuses_conflicts(registry: dict[str, BackboneSpec]) -> None:
    spec = dataclasses.replace(get_backbone(TINY), name="tiny-test")
    register_backbone(spec)
    assert get_backbone("tiny-test") is spec and build_backbone("tiny-test").feature_dim == 512
    register_backbone(spec)  # identical re-registration is a no-op
    with pytest.raises(TaskError, match="already registered"):
        register_backbone(dataclasses.replace(spec, input_size=64))
    register_backbone(dataclasses.replace(spec, input_size=64), replace=True)
    with pytest.raises(TaskError, match="unknown adapter"):
        register_backbone(dataclasses.replace(spec, name="bad", adapter="nope"))
    with pytest.raises(TaskError, match="must start with one of"):
        register_backbone(dataclasses.replace(spec, name="bad", weights="http://x"))
    with pytest.raises(TaskError, match="invalid backbone name"):
        register_backbone(dataclasses.replace(spec, name="../bad"))


def test_a_spec_passed_directly_is_validated_like_a_registered_one() -> None:
    with pytest.raises(TaskError, match="unknown feature"):
        build_backbone(dataclasses.replace(get_backbone(TINY), feature="mean"))


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
