"""L2 logistic regression with bias by full-batch L-BFGS: the classic linear-probe baseline.

Objective (scikit-learn's multinomial LogisticRegression, divided by C·n for conditioning, which
moves neither the minimiser nor the choice of C): mean CE + ‖W‖² / (2·C·n); the bias is not
penalised (as in sklearn's lbfgs solver). C is swept from strong to weak regularisation with warm
starts and chosen on validation top-1 (ties: the stronger regularisation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sea.errors import SeaError
from sea.metrics import mean_per_class_accuracy, top1_accuracy
from sea.validation import as_features, check_val_classes, infer_num_classes, progress_bar, validate_features

DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 4, 9))


@dataclass
class LogRegResult:
    weight: torch.Tensor                  # C×d, float32, CPU; applies to L2-normalised features
    bias: torch.Tensor                    # C
    c: float                              # chosen inverse regularisation strength
    val_curve: list[tuple[float, float]] = field(default_factory=list)   # (c, validation top-1)
    val_top1: float = float("nan")
    val_mean_per_class: float = float("nan")
    val_scores: list[dict] = field(default_factory=list)   # per C: {"c", "top1", "mean_per_class"}

    def predict(self, x: Any) -> torch.Tensor:
        feats = as_features(x, "prediction", self.weight.shape[1]).to(self.weight.dtype)
        return (feats @ self.weight.T + self.bias).argmax(1)


def _check_cs(cs: Sequence[float] | None) -> list[float]:
    values = list(DEFAULT_CS if cs is None else cs)
    if not values:
        raise SeaError("cs is empty; pass at least one regularisation strength C > 0")
    for c in values:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not np.isfinite(c) or c <= 0:
            raise SeaError(f"logreg C={c!r} is invalid: C is an inverse regularisation strength, use C > 0")
    return sorted(float(c) for c in values)


def _minimise(x: torch.Tensor, y: torch.Tensor, c: float, params: list[torch.Tensor], max_iter: int) -> None:
    weight, bias = params
    penalty = 1.0 / (2.0 * c * x.shape[0])
    optimiser = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-5, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, y) + penalty * weight.square().sum()
        loss.backward()
        return loss

    optimiser.step(closure)


def _device(device: str | None, x: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")


def fit_logreg(x_train: Any, y_train: Any, x_val: Any, y_val: Any, num_classes: int | None = None,
               cs: Sequence[float] | None = None, max_iter: int = 200,
               device: str | None = None, progress: bool = False) -> LogRegResult:
    """Sweeps C over `cs` (default 10**linspace(-4, 4, 9)), keeps the best on validation top-1.

    `progress` shows a tqdm bar over the Cs when stderr is a terminal.
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise SeaError(f"max_iter={max_iter!r} is invalid: use a positive int such as 200")
    grid = _check_cs(cs)
    x, y = validate_features(x_train, y_train, name="train", num_classes=num_classes)
    xv, yv = validate_features(x_val, y_val, name="validation", num_classes=num_classes, dim=x.shape[1])
    num_classes = infer_num_classes(num_classes, y, yv)
    check_val_classes(y, yv)
    dev = _device(device, x_train)
    x, y, xv = x.to(dev), y.to(dev), xv.to(dev)
    weight = torch.zeros(num_classes, x.shape[1], device=dev, dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(num_classes, device=dev, dtype=x.dtype, requires_grad=True)
    scores: list[dict] = []
    fitted: list[tuple[torch.Tensor, torch.Tensor]] = []
    for c in progress_bar(grid, progress, "logreg", "C"):
        _minimise(x, y, c, [weight, bias], max_iter)      # warm start from the previous C
        with torch.no_grad():
            pred = (xv @ weight.T + bias).argmax(1).cpu()
        scores.append({"c": c, "top1": top1_accuracy(pred, yv),
                       "mean_per_class": mean_per_class_accuracy(pred, yv, num_classes)})
        fitted.append((weight.detach().cpu().clone(), bias.detach().cpu().clone()))
    tops = [s["top1"] for s in scores]
    best = tops.index(max(tops))                          # ties: the first, i.e. the stronger regularisation
    return LogRegResult(*fitted[best], scores[best]["c"], [(s["c"], s["top1"]) for s in scores],
                        scores[best]["top1"], scores[best]["mean_per_class"], scores)


def refit_logreg(x: Any, y: Any, c: float, num_classes: int | None = None, max_iter: int = 200,
                 device: str | None = None, warm_path: Sequence[float] = ()) -> LogRegResult:
    """Fits one C on all of (x, y), e.g. train+validation after selection; no validation scores.

    `warm_path`: smaller Cs to pass through first, reproducing the sweep's warm starts.
    """
    path = [v for v in _check_cs([*warm_path, c]) if v <= c]
    feats, labels = validate_features(x, y, name="refit", num_classes=num_classes)
    num_classes = infer_num_classes(num_classes, labels)
    dev = _device(device, x)
    weight = torch.zeros(num_classes, feats.shape[1], device=dev, dtype=feats.dtype, requires_grad=True)
    bias = torch.zeros(num_classes, device=dev, dtype=feats.dtype, requires_grad=True)
    feats, labels = feats.to(dev), labels.to(dev)
    for value in path:
        _minimise(feats, labels, value, [weight, bias], max_iter)
    return LogRegResult(weight.detach().cpu(), bias.detach().cpu(), c)
