"""Checkpoint adapters: files in each authors' published key format load strictly and reproduce the source model.

Each test builds a small random-init timm model of the same family, writes it in the authors' format
(inverse key mapping, plus the extra heads/encoders their files carry), loads it back through
`build_backbone` and compares outputs exactly.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import timm
import torch

from tasks.adapters import ADAPTERS, adapt, unwrap_checkpoint
from tasks.backbones import BackboneSpec, build_backbone, get_backbone
from tasks.errors import TaskError


def _source(arch: str, **kwargs: object) -> torch.nn.Module:
    torch.manual_seed(1)
    model = timm.create_model(arch, **kwargs).eval()
    # Non-trivial BN statistics, so a dropped or misplaced buffer changes the output.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def _mlp(prefix: str, dims: list[int], last_bn_affine: bool) -> dict[str, torch.Tensor]:
    """Keys of a MoCo v3 / SwAV style Linear-BN-ReLU stack (indices as nn.Sequential numbers them)."""
    out: dict[str, torch.Tensor] = {}
    index = 0
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        out[f"{prefix}{index}.weight"] = torch.randn(d_out, d_in)
        bn = f"{prefix}{index + 1}."
        if i < len(dims) - 2 or last_bn_affine:
            out[bn + "weight"], out[bn + "bias"] = torch.ones(d_out), torch.zeros(d_out)
        out[bn + "running_mean"], out[bn + "running_var"] = torch.zeros(d_out), torch.ones(d_out)
        out[bn + "num_batches_tracked"] = torch.tensor(7)
        index += 3
    return out


def mocov3_format(sd: dict[str, torch.Tensor]) -> dict:
    dim = sd["cls_token"].shape[-1]
    enc = {**sd, **_mlp("head.", [dim, 64, 64, 16], last_bn_affine=False)}
    state = {f"module.base_encoder.{k}": v for k, v in enc.items()}
    state.update({f"module.momentum_encoder.{k}": v.clone() for k, v in enc.items()})
    state.update({f"module.predictor.{k}": v for k, v in _mlp("", [16, 64, 16], last_bn_affine=False).items()})
    return {"epoch": 300, "arch": "vit_base", "state_dict": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4, "params": [0, 1]}]},
            "scaler": {"scale": 65536.0, "growth_factor": 2.0}}


def _resnet_dim(sd: dict[str, torch.Tensor]) -> int:
    """Width of a ResNet's pooled feature: the last BN weight of its last stage."""
    return [v for k, v in sd.items() if k.startswith("layer4.") and k.endswith("weight")][-1].shape[0]


def mocov2_format(sd: dict[str, torch.Tensor]) -> dict:
    dim = _resnet_dim(sd)
    enc = {**sd, "fc.0.weight": torch.randn(dim, dim), "fc.0.bias": torch.randn(dim),
           "fc.2.weight": torch.randn(128, dim), "fc.2.bias": torch.randn(128)}
    state = {f"module.encoder_q.{k}": v for k, v in enc.items()}
    state.update({f"module.encoder_k.{k}": v.clone() for k, v in enc.items()})
    state["module.queue"] = torch.randn(128, 256)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return {"epoch": 800, "arch": "resnet50", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}


def swav_format(sd: dict[str, torch.Tensor]) -> dict:
    dim = _resnet_dim(sd)
    # SwAV's projection head is Linear(bias)-BN-ReLU-Linear, then a bias-free prototype layer.
    extra = {**_mlp("projection_head.", [dim, 64], last_bn_affine=True), "projection_head.0.bias": torch.randn(64),
             "projection_head.3.weight": torch.randn(16, 64), "projection_head.3.bias": torch.randn(16),
             "prototypes.weight": torch.randn(30, 16)}
    return {f"module.{k}": v for k, v in {**sd, **extra}.items()}


def mae_format(sd: dict[str, torch.Tensor]) -> dict:
    dim = sd["cls_token"].shape[-1]
    decoder = {"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.randn(32, dim),
               "decoder_embed.bias": torch.zeros(32), "decoder_pos_embed": torch.zeros(1, 5, 32),
               "decoder_blocks.0.norm1.weight": torch.ones(32), "decoder_norm.weight": torch.ones(32),
               "decoder_pred.weight": torch.randn(48, 32), "decoder_pred.bias": torch.zeros(48)}
    return {"model": {**sd, **decoder}}


_DS = {"conv_dw.": "_depthwise_conv.", "bn1.": "_bn1.", "conv_pw.": "_project_conv.", "bn2.": "_bn2."}
_IR = {"conv_pw.": "_expand_conv.", "bn1.": "_bn0.", "conv_dw.": "_depthwise_conv.", "bn2.": "_bn1.",
       "conv_pwl.": "_project_conv.", "bn3.": "_bn2."}
_SE = {"se.conv_reduce.": "_se_reduce.", "se.conv_expand.": "_se_expand."}
_TOP = {"conv_stem.": "_conv_stem.", "bn1.": "_bn0.", "conv_head.": "_conv_head.", "bn2.": "_bn1.",
        "classifier.": "_fc."}


def efficientnet_pytorch_format(sd: dict[str, torch.Tensor]) -> dict:
    """timm EfficientNet -> lukemelas/efficientnet_pytorch keys (blocks numbered flat, `_fc` head)."""
    block_re = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
    order = sorted({(int(m[1]), int(m[2])) for k in sd if (m := block_re.match(k))})
    flat = {pair: n for n, pair in enumerate(order)}
    expanded = {(int(m[1]), int(m[2])) for k in sd if (m := block_re.match(k)) and ".conv_pwl." in k}
    out = {}
    for key, value in sd.items():
        m = block_re.match(key)
        if m is None:
            names, rest, prefix = _TOP, key, ""
        else:
            pair = (int(m[1]), int(m[2]))
            names = {**_SE, **(_IR if pair in expanded else _DS)}
            rest, prefix = m[3], f"_blocks.{flat[pair]}."
        src = next(s for s in names if rest.startswith(s))
        out[prefix + names[src] + rest[len(src):]] = value
    return out


def _roundtrip(tmp_path: Path, source: torch.nn.Module, checkpoint: object, spec: BackboneSpec, size: int) -> None:
    path = tmp_path / "authors.pth"
    torch.save(checkpoint, path)
    backbone = build_backbone(spec, weights_path=path)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = source.forward_features(x)[:, 0] if spec.feature == "cls" else \
            source.forward_head(source.forward_features(x), pre_logits=True)
    assert torch.equal(backbone.features(x), expected)
    assert backbone.feature_dim == expected.shape[1]
    assert backbone.weights_file == str(path)


def test_mocov3_vit_checkpoint_with_momentum_encoder_and_predictor_loads_strictly(tmp_path: Path) -> None:
    source = _source("vit_tiny_patch16_224", img_size=32, num_classes=0)
    spec = BackboneSpec("t-mocov3", "vit_tiny_patch16_224", "file:x", "mocov3_vit", "cls", 32,
                        (("num_classes", 0),))
    _roundtrip(tmp_path, source, mocov3_format(source.state_dict()), spec, 32)


def test_mae_vit_checkpoint_with_decoder_loads_strictly_and_uses_cls_after_norm(tmp_path: Path) -> None:
    source = _source("vit_tiny_patch16_224", img_size=32, num_classes=0)
    spec = BackboneSpec("t-mae", "vit_tiny_patch16_224", "file:x", "mae_vit", "cls", 32, (("num_classes", 0),))
    _roundtrip(tmp_path, source, mae_format(source.state_dict()), spec, 32)


def test_mocov2_resnet_checkpoint_with_key_encoder_queue_and_mlp_loads_strictly(tmp_path: Path) -> None:
    source = _source("resnet26", num_classes=0)
    spec = BackboneSpec("t-mocov2", "resnet26", "file:x", "mocov2_resnet", "pooled", 32, (("num_classes", 0),))
    _roundtrip(tmp_path, source, mocov2_format(source.state_dict()), spec, 32)


def test_swav_resnet50_checkpoint_with_projection_head_and_prototypes_loads_strictly(tmp_path: Path) -> None:
    source = _source("resnet50", num_classes=0)
    spec = BackboneSpec("t-swav", "resnet50", "file:x", "swav_resnet", "pooled", 32, (("num_classes", 0),))
    _roundtrip(tmp_path, source, swav_format(source.state_dict()), spec, 32)


def test_efficientnet_pytorch_checkpoint_with_fc_loads_strictly_into_tf_efficientnet_lite0(tmp_path: Path) -> None:
    source = _source("tf_efficientnet_lite0")
    spec = BackboneSpec("t-lite0", "tf_efficientnet_lite0", "file:x", "efficientnet_pytorch", "pooled", 32,
                        (("num_classes", 1000),))
    _roundtrip(tmp_path, source, efficientnet_pytorch_format(source.state_dict()), spec, 32)


@pytest.mark.parametrize("arch", ["efficientnet_b0", "tf_efficientnet_b2", "tf_efficientnet_lite3"])
def test_efficientnet_pytorch_adapter_infers_stages_for_other_depths_and_squeeze_excite(arch: str) -> None:
    with torch.device("meta"):
        sd = timm.create_model(arch).state_dict()
    adapted = adapt("efficientnet_pytorch", efficientnet_pytorch_format(sd))
    assert list(adapted) == list(sd)
    assert all(adapted[k].shape == sd[k].shape for k in sd)


_FORMATS = {"mocov3_vit": mocov3_format, "mae_vit": mae_format, "mocov2_resnet": mocov2_format,
            "swav_resnet": swav_format}


@pytest.mark.parametrize("name", ["mocov3-vit-b16", "mae-vit-b16", "mocov2-r50-800ep", "swav-r50-800ep"])
def test_paper_preset_adapter_maps_full_size_authors_keys_onto_its_timm_model(name: str) -> None:
    spec = get_backbone(name)
    with torch.device("meta"):
        sd = timm.create_model(spec.arch, **dict(spec.model_kwargs)).state_dict()
    with torch.device("meta"):  # full-size key sets and shapes, without allocating the weights
        adapted = adapt(spec.adapter, unwrap_checkpoint(_FORMATS[spec.adapter](sd)))
    assert sorted(adapted) == sorted(sd)
    assert all(adapted[k].shape == sd[k].shape for k in sd)


def test_unwrap_descends_into_containers_and_strips_the_ddp_prefix() -> None:
    t = torch.zeros(2)
    assert unwrap_checkpoint({"epoch": 3, "state_dict": {"module.a": t, "module.b": t}}) == {"a": t, "b": t}
    assert unwrap_checkpoint({"model": {"a": t}}) == {"a": t}
    assert list(unwrap_checkpoint({"module.a": t, "b": t})) == ["module.a", "b"]  # only a shared prefix


def test_unwrap_rejects_non_tensor_entries_and_empty_checkpoints() -> None:
    with pytest.raises(TaskError, match="non-tensor"):
        unwrap_checkpoint({"a": torch.zeros(1), "note": "hello"})
    with pytest.raises(TaskError, match="no state dict"):
        unwrap_checkpoint({})


def test_unknown_adapter_is_a_task_error_listing_known_ones() -> None:
    with pytest.raises(TaskError, match="mocov3_vit"):
        adapt("mocov4", {})
    assert {"timm", "efficientnet_pytorch", "mocov3_vit", "mocov2_resnet", "swav_resnet", "mae_vit"} <= set(ADAPTERS)
