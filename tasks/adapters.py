"""Checkpoints: read a weights file safely, unwrap its container, remap its keys into timm's.

An adapter is a pure function `state_dict -> state_dict` from the key format a model's authors
published into the keys of the matching timm model. Adapters see the checkpoint *after*
`unwrap_checkpoint` has removed the common containers (a top-level "state_dict" or "model"
entry, a DistributedDataParallel "module." prefix), so each one only knows its own format.
Keys an adapter neither maps nor drops are passed through unchanged, so a strict load names them.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from tasks.errors import TaskError

StateDict = dict[str, torch.Tensor]

# Container keys that training scripts wrap the weights in, tried in this order.
_CONTAINER_KEYS = ("state_dict", "model")
_DDP_PREFIX = "module."


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Deterministic sha256 over key, dtype, shape and bytes of each tensor, in key order."""
    digest = hashlib.sha256()
    for key, tensor in state_dict.items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        # Viewed as bytes so every dtype (bf16 included) hashes without a numpy round trip.
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_checkpoint(path: Path) -> object:
    """Load a weights file without executing pickled code: safetensors, or torch.load(weights_only=True)."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise TaskError(f"{path} is a .safetensors file but the safetensors package is not installed "
                            "(pip install safetensors)") from err
        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise TaskError(f"cannot read safetensors file {path}: {err}") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise TaskError(
            f"refusing to load {path}: it stores Python objects that need full pickle, which can run "
            f"arbitrary code, and seabench only loads tensors (torch.load(weights_only=True)). Reason: "
            f"{str(err).splitlines()[0]}. If you trust the file, convert it once: python -c \"import torch; "
            f"c = torch.load('{path}', map_location='cpu', weights_only=False); "
            f"torch.save(c.get('state_dict', c.get('model', c)), 'converted.pth')\" and pass converted.pth"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise TaskError(f"cannot read checkpoint {path}: {err}") from err


def unwrap_checkpoint(obj: object) -> StateDict:
    """The tensor mapping inside a checkpoint: descend into "state_dict"/"model", strip "module."."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise TaskError(f"checkpoint holds no state dict (found {type(obj).__name__})")
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise TaskError(f"checkpoint state dict has {len(not_tensors)} non-tensor entries, "
                        f"e.g. {not_tensors[:5]}; expected a mapping of parameter names to tensors")
    keys = list(obj)
    if all(k.startswith(_DDP_PREFIX) for k in keys):
        return {k[len(_DDP_PREFIX):]: v for k, v in obj.items()}
    return dict(obj)


def _select(state_dict: StateDict, keep: str, drop: tuple[str, ...]) -> StateDict:
    """Drop keys under any `drop` prefix, then strip `keep` from keys under it; others pass through."""
    out: StateDict = {}
    for key, value in state_dict.items():
        if key.startswith(drop):
            continue
        out[key[len(keep):] if keep and key.startswith(keep) else key] = value
    return out


def timm_identity(state_dict: StateDict) -> StateDict:
    """Checkpoints already in timm's key format."""
    return dict(state_dict)


def mocov3_vit(state_dict: StateDict) -> StateDict:
    """MoCo v3 (Chen et al. 2021): keep `base_encoder.*` minus its projection MLP `head.*`."""
    return _select(state_dict, "base_encoder.", ("base_encoder.head.", "momentum_encoder.", "predictor."))


def mocov2_resnet(state_dict: StateDict) -> StateDict:
    """MoCo v1/v2: keep the query encoder `encoder_q.*` minus its MLP projection `fc.*`."""
    return _select(state_dict, "encoder_q.", ("encoder_q.fc.", "encoder_k.", "queue", "queue_ptr"))


def swav_resnet(state_dict: StateDict) -> StateDict:
    """SwAV: torchvision-style ResNet keys plus `projection_head.*` and `prototypes.*`, dropped."""
    return _select(state_dict, "", ("projection_head.", "prototypes."))


def mae_vit(state_dict: StateDict) -> StateDict:
    """MAE: encoder keys match timm's ViT; pretraining files may also carry the decoder, dropped."""
    return _select(state_dict, "", ("decoder_", "mask_token"))


_EFFNET_TOP = {"_conv_stem.": "conv_stem.", "_bn0.": "bn1.", "_conv_head.": "conv_head.",
               "_bn1.": "bn2.", "_fc.": "classifier."}
# Layer names inside a block, by block kind: without expansion (timm DepthwiseSeparableConv)
# and with expansion (timm InvertedResidual); squeeze-excite names are shared.
_EFFNET_SE = {"_se_reduce.": "se.conv_reduce.", "_se_expand.": "se.conv_expand."}
_EFFNET_DS = {"_depthwise_conv.": "conv_dw.", "_bn1.": "bn1.", "_project_conv.": "conv_pw.", "_bn2.": "bn2."}
_EFFNET_IR = {"_expand_conv.": "conv_pw.", "_bn0.": "bn1.", "_depthwise_conv.": "conv_dw.",
              "_bn1.": "bn2.", "_project_conv.": "conv_pwl.", "_bn2.": "bn3."}
_EFFNET_BLOCK = re.compile(r"^_blocks\.(\d+)\.(.+)$")


def _effnet_stage_index(state_dict: StateDict) -> dict[int, tuple[int, int]]:
    """Block number -> (stage, index in stage). Every EfficientNet stage starts with the block that
    changes the channel count, so stage boundaries follow from the weights' shapes alone."""
    blocks = sorted({int(m.group(1)) for k in state_dict if (m := _EFFNET_BLOCK.match(k))})
    placement: dict[int, tuple[int, int]] = {}
    stage, index = -1, 0
    for block in blocks:
        first = state_dict.get(f"_blocks.{block}._expand_conv.weight")
        in_ch = first.shape[1] if first is not None else state_dict[f"_blocks.{block}._depthwise_conv.weight"].shape[0]
        out_ch = state_dict[f"_blocks.{block}._project_conv.weight"].shape[0]
        stage, index = (stage + 1, 0) if (in_ch != out_ch or stage < 0) else (stage, index + 1)
        placement[block] = (stage, index)
    return placement


def efficientnet_pytorch(state_dict: StateDict) -> StateDict:
    """lukemelas/efficientnet_pytorch format (`_conv_stem`, `_blocks.N.*`, `_fc`) -> timm EfficientNet."""
    try:
        placement = _effnet_stage_index(state_dict)
    except KeyError as err:
        raise TaskError(f"not an efficientnet_pytorch checkpoint: block weight {err} is missing") from err
    expanded = {int(m.group(1)) for k in state_dict if (m := _EFFNET_BLOCK.match(k)) and "_expand_conv." in k}
    out: StateDict = {}
    for key, value in state_dict.items():
        match = _EFFNET_BLOCK.match(key)
        if match is None:
            names, rest, prefix = _EFFNET_TOP, key, ""
        else:
            block = int(match.group(1))
            stage, index = placement[block]
            names = {**(_EFFNET_IR if block in expanded else _EFFNET_DS), **_EFFNET_SE}
            rest, prefix = match.group(2), f"blocks.{stage}.{index}."
        new = next((prefix + to + rest[len(src):] for src, to in names.items() if rest.startswith(src)), key)
        out[new] = value
    return out


ADAPTERS: dict[str, Callable[[StateDict], StateDict]] = {
    "timm": timm_identity,
    "efficientnet_pytorch": efficientnet_pytorch,
    "mocov3_vit": mocov3_vit,
    "mocov2_resnet": mocov2_resnet,
    "swav_resnet": swav_resnet,
    "mae_vit": mae_vit,
}


def adapt(adapter: str, state_dict: StateDict) -> StateDict:
    """Apply the named adapter; unknown names raise a TaskError listing the known ones."""
    if adapter not in ADAPTERS:
        raise TaskError(f"unknown checkpoint adapter {adapter!r}; known: {sorted(ADAPTERS)}")
    return ADAPTERS[adapter](state_dict)


def _listing(title: str, items: list[str]) -> str:
    return f"{len(items)} {title} (e.g. {', '.join(items[:5])})" if items else ""


def load_strict(model: torch.nn.Module, state_dict: StateDict, source: str) -> None:
    """Load every parameter and buffer exactly; any missing/unexpected key or wrong shape is a TaskError."""
    own = model.state_dict()
    # BatchNorm step counters only matter in training; older checkpoints predate them.
    for key in own.keys() - state_dict.keys():
        if key.endswith("num_batches_tracked"):
            state_dict[key] = torch.zeros((), dtype=torch.long)
    missing = sorted(own.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - own.keys())
    wrong = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in own.keys() & state_dict.keys() if own[k].shape != state_dict[k].shape)
    problems = [p for p in (_listing("missing keys", missing), _listing("unexpected keys", unexpected),
                            _listing("shape mismatches", wrong)) if p]
    if problems:
        raise TaskError(f"checkpoint {source} does not fit {type(model).__name__}: " + "; ".join(problems)
                        + ". Check the backbone's architecture, adapter and model_kwargs (e.g. num_classes).")
    model.load_state_dict(state_dict, strict=True)
