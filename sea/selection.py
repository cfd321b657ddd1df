"""Model selection: choose on validation only, refit the winner on train+validation, test once."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sea.config import DEFAULT_SETTINGS, HeadConfig, TrainSettings
from sea.errors import SeaError
from sea.logreg import DEFAULT_CS, fit_logreg, refit_logreg
from sea.metrics import mean_per_class_accuracy, top1_accuracy
from sea.trainer import EpochCallback, predict, train_heads
from sea.validation import as_features, as_labels, check_configs, infer_num_classes, validate_features

LOGREG = "logreg"
SELECTION_METRICS: tuple[str, ...] = ("top1", "mean_per_class")


@dataclass
class SelectionResult:
    best_index: int
    best_config: HeadConfig | dict        # a HeadConfig, or {"method": "logreg", "c": C}
    val_metrics: list[dict]               # per candidate: {"top1", "mean_per_class"} (+ "c" for logreg)
    test_top1: float
    test_mean_per_class: float
    seconds: float
    val_history: list[list[dict]] = field(default_factory=list)   # per epoch, per candidate (heads only)
    stopped_epoch: int = 0                # epochs the selection ran (and the refit runs); 0 for logreg
    refit_weights: torch.Tensor | None = None   # the refit head (C×d, CPU); None for logreg
    phase_seconds: dict[str, float] = field(default_factory=dict)   # wall (and "_cpu") s of select/refit/test


def _mark() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _phases(*marks: tuple[float, float]) -> dict[str, float]:
    """Wall and CPU seconds (this process, all threads) of selection, refit and the one test evaluation,
    from the (wall, cpu) marks at their boundaries: {"select", "refit", "test", "select_cpu", …}."""
    marks = (*marks, _mark())
    out: dict[str, float] = {}
    for name, (a, b) in zip(("select", "refit", "test"), itertools.pairwise(marks)):
        out[name], out[f"{name}_cpu"] = b[0] - a[0], b[1] - a[1]
    return out


def _logreg_grid(configs: Any) -> list[float] | None:
    """'logreg' -> default C grid; ('logreg', cs) -> that grid; anything else -> None (head configs)."""
    if isinstance(configs, str):
        if configs != LOGREG:
            raise SeaError(f"configs={configs!r} is unknown; pass HeadConfigs, 'logreg' or ('logreg', cs)")
        return list(DEFAULT_CS)
    if isinstance(configs, tuple) and configs and isinstance(configs[0], str) and configs[0] == LOGREG:
        if len(configs) != 2:
            raise SeaError("logreg candidates are spelt ('logreg', cs) with cs a sequence of C values")
        return list(configs[1])
    return None


def _test_once(loader: Callable[[], tuple[Any, Any]], dim: int,
               predict_fn: Callable[[torch.Tensor], torch.Tensor]) -> tuple[float, float]:
    loaded = loader()
    if not isinstance(loaded, (tuple, list)) or len(loaded) != 2:
        raise SeaError("x_test_loader() must return a pair (x_test, y_test)")
    x_test = as_features(loaded[0], "test", dim)
    y_test = as_labels(loaded[1], "test", x_test.shape[0])
    pred = predict_fn(x_test).cpu()
    return top1_accuracy(pred, y_test), mean_per_class_accuracy(pred, y_test)


def select_and_refit(x_train: Any, y_train: Any, x_val: Any, y_val: Any,
                     x_test_loader: Callable[[], tuple[Any, Any]],
                     configs: Sequence[HeadConfig] | str | tuple,
                     settings: TrainSettings = DEFAULT_SETTINGS, metric: str = "top1",
                     num_classes: int | None = None, on_epoch: EpochCallback | None = None,
                     progress: bool = False) -> SelectionResult:
    """Chooses among `configs` on validation `metric` (the final epoch's score; ties: the first
    candidate), retrains the winner on train+validation with the same settings, then calls
    `x_test_loader()` exactly once and scores the refit model on it.

    If `on_epoch` stops training early, the refit reproduces the selected run's schedule: the same
    horizon (settings.epochs, which a cosine schedule anneals over) stopped after the same epoch.
    `configs` is a sequence of HeadConfig (trained together in one pass), or 'logreg' /
    ('logreg', cs) for the L-BFGS logistic-regression baseline (C chosen on the same metric).
    """
    started = time.perf_counter()
    begin = _mark()
    if metric not in SELECTION_METRICS:
        raise SeaError(f"metric={metric!r} is unknown; choose one of {', '.join(SELECTION_METRICS)}")
    x, y = validate_features(x_train, y_train, name="train")
    xv, yv = validate_features(x_val, y_val, name="validation", dim=x.shape[1])
    num_classes = infer_num_classes(num_classes, y, yv)
    x_all, y_all = torch.cat([x, xv]), torch.cat([y, yv])
    grid = _logreg_grid(configs)
    if grid is not None:
        device = settings.device
        val_metrics = fit_logreg(x, y, xv, yv, num_classes, cs=grid, device=device, progress=progress).val_scores
        scores = [m[metric] for m in val_metrics]
        best_index = scores.index(max(scores))
        c = val_metrics[best_index]["c"]
        marks = [begin, _mark()]
        refit = refit_logreg(x_all, y_all, c, num_classes, device=device, warm_path=[m["c"] for m in val_metrics])
        marks.append(_mark())
        test_top1, test_mpc = _test_once(x_test_loader, x.shape[1], refit.predict)
        return SelectionResult(best_index, {"method": LOGREG, "c": c}, val_metrics, test_top1, test_mpc,
                               time.perf_counter() - started, phase_seconds=_phases(*marks))
    heads = check_configs(configs)
    result = train_heads(x, y, heads, settings, num_classes, val=(xv, yv), on_epoch=on_epoch,
                         progress=progress)
    val_metrics = result.val_history[-1]
    scores = [m[metric] for m in val_metrics]
    best_index = scores.index(max(scores))
    marks = [begin, _mark()]
    # an early stop (on_epoch) ends every head at once: the refit runs the same schedule, stopped there
    refit = train_heads(x_all, y_all, [heads[best_index]], settings, num_classes, progress=progress,
                        stop_after=result.stopped_epoch)
    marks.append(_mark())
    test_top1, test_mpc = _test_once(x_test_loader, x.shape[1], lambda t: predict(refit.weights[0], t))
    return SelectionResult(best_index, heads[best_index], val_metrics, test_top1, test_mpc,
                           time.perf_counter() - started, result.val_history, result.stopped_epoch,
                           refit.weights[0], _phases(*marks))
