"""Input checks: bad arrays are rejected where they enter, with a message that says how to fix them; and what a
pass shows while it runs (`progress_bar`)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from sea.config import HeadConfig
from sea.errors import SeaError


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as err:
        raise SeaError(f"{what} must be a numeric array; this {type(value).__name__} cannot be converted ({err})") from None


def _first_bad_row(mask: torch.Tensor) -> int:
    return int(torch.nonzero(mask).flatten()[0])


def as_features(x: Any, name: str = "train", dim: int | None = None) -> torch.Tensor:
    """Checks a feature matrix and returns it L2-normalised on the CPU: float64 stays float64, the rest float32."""
    t = _as_tensor(x, f"{name} features")
    if t.dim() != 2:
        raise SeaError(f"{name} features must be 2-D (n_examples, feature_dim), got shape {tuple(t.shape)}; "
                       "flatten per-example features or stack them")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise SeaError(f"{name} features are empty (shape {tuple(t.shape)}); extract features first")
    if dim is not None and t.shape[1] != dim:
        raise SeaError(f"{name} features have dimension {t.shape[1]} but the training features have {dim}; "
                       "use features from the same backbone for every split")
    if t.dtype == torch.bool or not (t.is_floating_point() or t.dtype in _INT_DTYPES):
        raise SeaError(f"{name} features must be real numbers, got dtype {t.dtype}")
    t = t.to(device="cpu", dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
    # rows are scaled by their max-abs before the norm: squares of huge or tiny values neither
    # overflow nor underflow; NaN/inf propagate into the scale, and only then is the culprit sought
    scale = t.abs().amax(dim=1, keepdim=True)
    if not bool(torch.isfinite(scale).all()):
        bad = ~torch.isfinite(t)
        row = _first_bad_row(bad.any(1))
        col = int(torch.nonzero(bad[row]).flatten()[0])
        raise SeaError(f"{name} features contain {int(bad.sum())} non-finite value(s) (NaN/inf), first "
                       f"at row {row}, column {col} (value {t[row, col].item()}); re-extract the "
                       "features or drop those rows")
    zero = scale.squeeze(1) == 0
    if zero.any():
        raise SeaError(f"{name} features have {int(zero.sum())} all-zero row(s), first at row "
                       f"{_first_bad_row(zero)}; they cannot be L2-normalised, drop them or re-extract")
    t = t / scale
    return t / torch.linalg.vector_norm(t, dim=1, keepdim=True)


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def as_labels(y: Any, name: str = "train", n: int | None = None,
              num_classes: int | None = None) -> torch.Tensor:
    """Checks a label vector and returns it int64 on the CPU."""
    t = _as_tensor(y, f"{name} labels")
    if t.dim() != 1:
        raise SeaError(f"{name} labels must be 1-D (n_examples,), got shape {tuple(t.shape)}; "
                       "pass class indices, not one-hot rows")
    if t.shape[0] == 0:
        raise SeaError(f"{name} labels are empty; there is nothing to train or score")
    if n is not None and t.shape[0] != n:
        raise SeaError(f"{name} has {n} feature rows but {t.shape[0]} labels; they must have the same length")
    if t.dtype not in _INT_DTYPES:
        frac = t.is_floating_point() and bool((t != torch.round(t)).any())
        detail = ""
        if frac:
            row = _first_bad_row(t != torch.round(t))
            detail = f" (row {row} holds {t[row].item()})"
        raise SeaError(f"{name} labels must be integer class indices, got dtype {t.dtype}{detail}; "
                       "cast with y.astype(np.int64) after checking they are class ids")
    t = t.to(device="cpu", dtype=torch.int64)
    neg = t < 0
    if neg.any():
        row = _first_bad_row(neg)
        raise SeaError(f"{name} labels must be >= 0, row {row} holds {int(t[row])}; map classes to 0..C-1")
    if num_classes is not None:
        high = t >= num_classes
        if high.any():
            row = _first_bad_row(high)
            raise SeaError(f"{name} label {int(t[row])} at row {row} is >= num_classes={num_classes}; "
                           "raise num_classes or map classes to 0..C-1")
    return t


def validate_features(x: Any, y: Any, *, name: str = "train", num_classes: int | None = None,
                      dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks one split; returns (L2-normalised features, int64 labels) on the CPU.

    Features come back float32 (float64 input stays float64).

    `dim` is the feature dimension the split must have (that of the training split).
    """
    features = as_features(x, name, dim)
    return features, as_labels(y, name, features.shape[0], num_classes)


def check_val_classes(y_train: torch.Tensor, y_val: torch.Tensor, val_name: str = "validation") -> None:
    """A validation class that never occurs in train cannot be learnt: selection on it is meaningless."""
    unseen = sorted(set(torch.unique(y_val).tolist()) - set(torch.unique(y_train).tolist()))
    if unseen:
        shown = ", ".join(map(str, unseen[:10])) + (" ..." if len(unseen) > 10 else "")
        raise SeaError(f"{val_name} labels contain {len(unseen)} class(es) never seen in train ({shown}); "
                       "carve the validation split stratified from the training split")


def infer_num_classes(num_classes: int | None, *labels: torch.Tensor) -> int:
    if num_classes is None:
        return int(max(int(t.max()) for t in labels)) + 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise SeaError(f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes


def check_configs(configs: Sequence[HeadConfig]) -> tuple[HeadConfig, ...]:
    if isinstance(configs, HeadConfig):
        configs = (configs,)
    configs = tuple(configs)
    if not configs:
        raise SeaError("configs is empty: no head configurations given; pass at least one HeadConfig")
    for i, config in enumerate(configs):
        if not isinstance(config, HeadConfig):
            raise SeaError(f"configs[{i}] is a {type(config).__name__}, not a HeadConfig; build it with "
                           "HeadConfig(**values) so its hyper-parameters are checked")
    return configs


def progress_bar(items: Iterable[Any], enabled: bool, desc: str, unit: str, total: int | None = None) -> Any:
    """`items`, wrapped in a tqdm bar on stderr if `enabled` and stderr is a terminal; else the bare iterable."""
    if enabled and sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, unit=unit, total=total, file=sys.stderr)
    return items
