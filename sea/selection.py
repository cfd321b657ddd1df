"""Model selection: choose on validation only, refit the winner on train+validation, test once."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sea.config import (
    DEFAULT_SETTINGS,
    CheckpointCallback,
    HeadConfig,
    TrainResult,
    TrainSettings,
    check_every,
)
from sea.curves import SELECTION_METRICS, resolve_k, window_scores, window_spread, window_statistic
from sea.errors import SeaError
from sea.halving import Halving, RungPruner, read_epochs
from sea.logreg import DEFAULT_CS, fit_logreg, refit_logreg
from sea.metrics import mean_per_class_accuracy, top1_accuracy
from sea.trainer import EpochCallback, predict, train_heads
from sea.validation import as_features, as_labels, check_configs, infer_num_classes, validate_features

LOGREG = "logreg"
REFIT_SEED_STRIDE = 1_000_003   # refit i >= 1 shuffles with seed + i·stride (another batch order, same init)


@dataclass
class SelectionResult:
    best_index: int
    best_config: HeadConfig | dict        # a HeadConfig, or {"method": "logreg", "c": C}
    # per candidate: {"top1", "mean_per_class"} of the selection statistic (+ "c" for logreg): the final
    # epoch's scores (select_on="last") or their mean over the last `select_k` epochs ("last_k")
    val_metrics: list[dict]
    test_top1: float                      # the refit's test score (the mean over refits when refits > 1)
    test_mean_per_class: float
    seconds: float
    val_history: list[list[dict | None]] = field(default_factory=list)   # per epoch, per candidate (sea.curves)
    stopped_epoch: int = 0                # epochs the selection ran (and the refit runs); 0 for logreg
    refit_weights: torch.Tensor | None = None   # the (first) refit head (C×d, CPU); None for logreg
    phase_seconds: dict[str, float] = field(default_factory=dict)   # wall (and "_cpu") s of select/refit/test
    select_on: str = "last"
    select_k: int = 1
    val_spread: float = math.nan          # the selected candidate's max − min of `metric` over its last k epochs
    selected_test_top1: float = math.nan  # the selected candidate's train-only head, same test pass (heads only)
    selected_test_mean_per_class: float = math.nan
    refit_train_top1: float = math.nan    # the (first) refit's final accuracy on train + validation
    refit_train_mean_per_class: float = math.nan
    refit_tests: list[dict] = field(default_factory=list)   # per refit: {"top1", "mean_per_class"} on test
    refit_unstable: bool = False          # see `is_refit_unstable`
    refit_noise: float = math.nan         # `paired_noise` of the refit against the selected head (points)
    test_labels: torch.Tensor | None = None   # the test labels, and per head its predictions on them:
    test_predictions: dict[str, torch.Tensor] = field(default_factory=dict)   # pred, pred_selected, pred_refit_<i>
    stopped_at: list[int] = field(default_factory=list)   # per candidate: epochs trained (halving: its rung)
    rungs: list[int] = field(default_factory=list)        # the halving rungs (empty: the full grid)


def paired_noise(pred_a: torch.Tensor, pred_b: torch.Tensor, y: torch.Tensor, metric: str) -> float:
    """Two standard errors (points) of the difference in `metric` between two heads scored on the same test
    examples: sqrt(Σ wᵢ² dᵢ²) with dᵢ = correct_a − correct_b and wᵢ each example's weight in the metric
    (1/n for top-1; 1/(classes · class size) for mean per-class) — the McNemar bound on the paired error."""
    d = (pred_a == y).double() - (pred_b == y).double()
    if metric == "top1":
        weight = torch.full_like(d, 1.0 / len(y))
    else:
        counts = torch.bincount(y)
        weight = 1.0 / (int((counts > 0).sum()) * counts[y].double())
    return 200.0 * float(torch.sqrt((weight.square() * d.square()).sum()))


def is_refit_unstable(refit: float, selected: float, spread: float, noise: float = 0.0) -> bool:
    """The refit scores below the selected train-only head on test (the selection metric) by more than both
    the selected candidate's own validation spread over its last k epochs and the test set's paired noise
    (`paired_noise`): neither the run's epoch-to-epoch jitter nor the test sample explains what the refit
    lost. One-sided on purpose: the refit trains on more data (train + validation), so landing above the
    train-only head is what it is for (measured on digits: +1 to +2 points for a stable candidate);
    `refits` > 1 measures the refit's own spread in both directions."""
    if math.isnan(refit) or math.isnan(selected):
        return False
    return selected - refit > max(0.0 if math.isnan(spread) else spread, noise)


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
               heads: dict[str, Callable[[torch.Tensor], torch.Tensor]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loads the test split once and predicts it with every head of `heads`: (labels, name -> predictions)."""
    loaded = loader()
    if not isinstance(loaded, (tuple, list)) or len(loaded) != 2:
        raise SeaError("x_test_loader() must return a pair (x_test, y_test)")
    x_test = as_features(loaded[0], "test", dim)
    y_test = as_labels(loaded[1], "test", x_test.shape[0])
    return y_test, {name: head(x_test).cpu() for name, head in heads.items()}


def _scores(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, float]:
    return {"top1": top1_accuracy(pred, y), "mean_per_class": mean_per_class_accuracy(pred, y, num_classes)}


def select_and_refit(x_train: Any, y_train: Any, x_val: Any, y_val: Any,
                     x_test_loader: Callable[[], tuple[Any, Any]],
                     configs: Sequence[HeadConfig] | str | tuple,
                     settings: TrainSettings = DEFAULT_SETTINGS, metric: str = "top1",
                     num_classes: int | None = None, on_epoch: EpochCallback | None = None,
                     progress: bool = False, select_on: str = "last_k", k: int | None = None,
                     refits: int = 1, halving: Halving | None = None,
                     val_every_epoch: bool = True, checkpoint_every: int = 0,
                     on_checkpoint: CheckpointCallback | None = None, resume: dict | None = None) -> SelectionResult:
    """Chooses among `configs` on validation `metric`, retrains the winner on train+validation with the
    same settings, then calls `x_test_loader()` exactly once and scores the refit model on it.

    The selection statistic (`select_on`) is the mean of the last k epochs' validation metric ("last_k",
    k = max(5, ⌈0.1·epochs⌉) unless given; robust to a chaotic run whose last epoch is a draw) or the
    final epoch's ("last"); ties go to the first candidate. The same test pass also scores the selected
    candidate's train-only head (`selected_test_*`); when the refit falls below it by more than the
    candidate's validation spread and the test set's paired noise, `refit_unstable` is set. `refits` > 1 retrains the winner that many
    times with different batch orders and reports the mean (`refit_tests` has each).

    `halving` (`sea.halving`): at each rung the heads still training are ranked by the same statistic,
    ending at that epoch, and only the best 1/factor go on; the winner is the survivor with the best final
    statistic (`stopped_at` says where each candidate stopped). `val_every_epoch=False` scores validation
    only at the epochs the statistic, the spread and the rungs read (`val_history` holds None elsewhere);
    with `on_epoch` every epoch is scored.

    If `on_epoch` stops training early, the refit reproduces the selected run's schedule: the same
    horizon (settings.epochs, which a cosine schedule anneals over) stopped after the same epoch.
    Checkpoints (heads only): every `checkpoint_every` epochs of the grid `on_checkpoint` receives {"phase":
    "select", "train": the grid's state}; once the winner is chosen, {"phase": "refit", "selection": the
    grid's result, "refits": the refits done}, and every `checkpoint_every` epochs of a refit the same
    with "train": that refit's state. `resume=` any of them redoes neither the selection nor a finished
    refit, resumes the refit under way from its own checkpoint, and ends bitwise equal to the whole run.
    `configs` is a sequence of HeadConfig (trained together in one pass), or 'logreg' /
    ('logreg', cs) for the L-BFGS logistic-regression baseline (C chosen on the same metric, no curve).
    """
    started = time.perf_counter()
    begin = _mark()
    if metric not in SELECTION_METRICS:
        raise SeaError(f"metric={metric!r} is unknown; choose one of {', '.join(SELECTION_METRICS)}")
    window = resolve_k(select_on, k, settings.epochs)
    if isinstance(refits, bool) or not isinstance(refits, int) or refits < 1:
        raise SeaError(f"refits={refits!r} is invalid: retrain the winner at least once (an int >= 1)")
    x, y = validate_features(x_train, y_train, name="train")
    xv, yv = validate_features(x_val, y_val, name="validation", dim=x.shape[1])
    num_classes = infer_num_classes(num_classes, y, yv)
    x_all, y_all = torch.cat([x, xv]), torch.cat([y, yv])
    grid = _logreg_grid(configs)
    if grid is not None:
        return _select_logreg(x, y, xv, yv, x_all, y_all, x_test_loader, grid, settings, metric, num_classes,
                              progress, started, begin)
    heads = check_configs(configs)
    # the spread behind the stability flag always spans the protocol's window, whatever selects
    spread_k = resolve_k("last_k", k, settings.epochs)
    rungs = [] if halving is None else halving.rungs_for(len(heads), settings.epochs)
    prune = None if halving is None else RungPruner(rungs, halving.factor, functools.partial(
        window_statistic, k=window, metric=metric))
    read = None if val_every_epoch else read_epochs(settings.epochs, spread_k, rungs, window)
    every, resume = check_every(checkpoint_every), resume or {"phase": "select"}
    save = on_checkpoint if every else None
    signature = {"configs": [c.as_dict() for c in heads], "settings": {**settings.as_dict(), "device": None}}
    if resume.get("phase") == "refit":
        chosen = _chosen(resume, signature)
        result = TrainResult(chosen["weights"], heads, chosen["val_history"], 0.0, chosen["stopped_epoch"],
                             chosen["stopped_at"])
    elif resume.get("phase") == "select":
        result = train_heads(x, y, heads, settings, num_classes, val=(xv, yv), on_epoch=on_epoch, progress=progress,
                             prune=prune, val_epochs=read, checkpoint_every=every, resume=resume.get("train"),
                             on_checkpoint=save and (lambda state: save({"phase": "select", "train": state})))
    else:
        raise SeaError(f"resume: phase {resume.get('phase')!r} is unknown; pass what on_checkpoint received")
    selection = {"weights": result.weights, "val_history": result.val_history, "stopped_epoch": result.stopped_epoch,
                 "stopped_at": result.stopped_at, "signature": signature}
    window = min(window, len(result.val_history))
    val_metrics = window_scores(result.val_history, window)
    alive = [i for i, stop in enumerate(result.stopped_at) if stop == result.stopped_epoch]
    best_index = max(alive, key=lambda i: (val_metrics[i][metric], -i))   # ties: the first candidate
    spread = window_spread(result.val_history, min(spread_k, len(result.val_history)), best_index, metric)
    marks = [begin, _mark()]
    # an early stop (on_epoch) ends every head at once: the refit runs the same schedule, stopped there
    refit_weights: list[torch.Tensor] = list(resume.get("refits", []))
    if save and resume["phase"] == "select":
        save({"phase": "refit", "selection": selection, "refits": []})
    resumed_refit = len(refit_weights)   # the refit a refit-phase checkpoint was in
    for i in range(resumed_refit, refits):
        run = settings if i == 0 else dataclasses.replace(settings, shuffle_seed=settings.seed + i * REFIT_SEED_STRIDE)
        done = list(refit_weights)
        refit_weights.append(train_heads(
            x_all, y_all, [heads[best_index]], run, num_classes, progress=progress, stop_after=result.stopped_epoch,
            checkpoint_every=every, resume=resume.get("train") if resume["phase"] == "refit" and i == resumed_refit else None,
            on_checkpoint=save and (lambda state, done=done: save({"phase": "refit", "selection": selection,
                                                                  "refits": done, "train": state}))).weights[0])
        if save and i < refits - 1:
            save({"phase": "refit", "selection": selection, "refits": list(refit_weights)})
    train_scores = _scores(predict(refit_weights[0], x_all), y_all, num_classes)
    marks.append(_mark())
    predictors = {"pred": refit_weights[0], "pred_selected": result.weights[best_index],
                  **{f"pred_refit_{i}": w for i, w in enumerate(refit_weights) if i}}
    y_test, preds = _test_once(x_test_loader, x.shape[1],
                               {name: functools.partial(predict, w) for name, w in predictors.items()})
    refit_tests = [_scores(preds["pred" if i == 0 else f"pred_refit_{i}"], y_test, num_classes) for i in range(refits)]
    selected = _scores(preds["pred_selected"], y_test, num_classes)
    test = {name: sum(r[name] for r in refit_tests) / refits for name in SELECTION_METRICS}
    noise = paired_noise(preds["pred"], preds["pred_selected"], y_test, metric)
    return SelectionResult(best_index, heads[best_index], val_metrics, test["top1"], test["mean_per_class"],
                           time.perf_counter() - started, result.val_history, result.stopped_epoch,
                           refit_weights[0], _phases(*marks), select_on, window, spread,
                           selected["top1"], selected["mean_per_class"], train_scores["top1"],
                           train_scores["mean_per_class"], refit_tests,
                           is_refit_unstable(test[metric], selected[metric], spread, noise), noise, y_test, preds,
                           result.stopped_at, rungs)


def _chosen(resume: dict, signature: dict) -> dict:
    """The selection a refit-phase checkpoint recorded, if it is this run's (SeaError otherwise)."""
    chosen = resume.get("selection")
    if not isinstance(chosen, dict) or chosen.get("signature") != signature:
        raise SeaError("resume: the checkpoint's selection belongs to another run (configs or settings differ); "
                       "resume only the run that wrote it, or start afresh")
    return chosen


def _select_logreg(x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, x_all: torch.Tensor,
                   y_all: torch.Tensor, x_test_loader: Callable[[], tuple[Any, Any]], grid: list[float],
                   settings: TrainSettings, metric: str, num_classes: int, progress: bool, started: float,
                   begin: tuple[float, float]) -> SelectionResult:
    """logreg: C chosen on validation by a warm-started L-BFGS path, refit on train + validation, tested once."""
    device = settings.device
    val_metrics = fit_logreg(x, y, xv, yv, num_classes, cs=grid, device=device, progress=progress).val_scores
    scores = [m[metric] for m in val_metrics]
    best_index = scores.index(max(scores))
    c = val_metrics[best_index]["c"]
    marks = [begin, _mark()]
    refit = refit_logreg(x_all, y_all, c, num_classes, device=device, warm_path=[m["c"] for m in val_metrics])
    train_scores = _scores(refit.predict(x_all).cpu(), y_all, num_classes)
    marks.append(_mark())
    y_test, preds = _test_once(x_test_loader, x.shape[1], {"pred": refit.predict})
    test = _scores(preds["pred"], y_test, num_classes)
    return SelectionResult(best_index, {"method": LOGREG, "c": c}, val_metrics, test["top1"], test["mean_per_class"],
                           time.perf_counter() - started, phase_seconds=_phases(*marks),
                           refit_train_top1=train_scores["top1"], refit_train_mean_per_class=train_scores["mean_per_class"],
                           refit_tests=[test], test_labels=y_test, test_predictions=preds)
