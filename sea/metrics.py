"""Accuracy metrics in percent: top-1 and mean per-class (over the classes present in y)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sea.errors import SeaError


def _pair(pred: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    p = pred.detach() if isinstance(pred, torch.Tensor) else torch.as_tensor(np.asarray(pred))
    t = y.detach() if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    if p.dim() != 1 or t.dim() != 1 or p.shape[0] != t.shape[0]:
        raise SeaError(f"predictions {tuple(p.shape)} and labels {tuple(t.shape)} must be 1-D of equal length")
    if t.shape[0] == 0:
        raise SeaError("cannot score an empty label vector")
    return p.to(torch.int64), t.to(device=p.device, dtype=torch.int64)


def top1_accuracy(pred: Any, y: Any) -> float:
    """Share of examples whose predicted label equals the true one, in percent (0..100)."""
    p, t = _pair(pred, y)
    return float((p == t).double().mean()) * 100.0


def mean_per_class_accuracy(pred: Any, y: Any, num_classes: int | None = None) -> float:
    """Recall averaged over the classes that occur in y, in percent; absent classes do not count."""
    p, t = _pair(pred, y)
    size = max(int(t.max()) + 1, num_classes or 0)
    total = torch.bincount(t, minlength=size).double()
    hits = torch.bincount(t[p == t], minlength=size).double()
    present = total > 0
    return float((hits[present] / total[present]).mean()) * 100.0


def batched_scores(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[dict]:
    """Both metrics for K prediction rows (K x n) against one label vector, in one pass on any device."""
    correct = (pred == y.unsqueeze(0)).double()                       # K x n
    total = torch.bincount(y, minlength=num_classes).double()
    per_class = torch.zeros(pred.shape[0], num_classes, dtype=torch.float64, device=pred.device)
    per_class.index_add_(1, y, correct)
    present = total > 0
    mpc = (per_class[:, present] / total[present]).mean(1) * 100.0
    top1 = correct.mean(1) * 100.0
    return [{"top1": float(a), "mean_per_class": float(b)} for a, b in zip(top1.tolist(), mpc.tolist())]
