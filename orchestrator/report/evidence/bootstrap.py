"""Bootstrap intervals, pure functions of arrays (numpy only; every draw from a seeded generator).

- `paired_bootstrap`: one (task, backbone), SeA − linear over test examples. A resample draws test indices
  with replacement, the same indices for both methods and for every seed; its statistic is the mean over
  seeds of the difference of the primary metric recomputed on that resample (mean per-class accuracy: the
  recall of each class present in the resample, averaged over those classes, as `sea.metrics` does).
  It measures test-set sampling noise with the trained heads held fixed; the t-interval over seeds measures
  seed noise with the test set held fixed.
- `hierarchical_bootstrap`: the headline. Resample (task, backbone) cells with replacement, then each chosen
  cell's seeds with replacement; statistic = the mean over chosen cells of the mean resampled difference.
Both intervals are percentile intervals.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

RESAMPLES = 1000  # per (task, backbone), over test examples
HIERARCHICAL_RESAMPLES = 1000  # the headline, over cells then seeds (torchgeo-bench uses 500)
SEED = 19  # fixed: the same report twice gives the same intervals
CONFIDENCE = 0.95
CHUNK = 100  # resamples per block: bounds memory at CHUNK × test examples


@dataclass(frozen=True)
class Interval:
    point: float  # the statistic on the original sample
    low: float  # NaN when it cannot be computed
    high: float
    resamples: int
    n: int  # test examples (paired) or cells (hierarchical)


def key_seed(*parts: object) -> int:
    """A generator seed for one cell from its name, so a cell's interval does not depend on the others."""
    return zlib.crc32("|".join(map(str, (SEED, *parts))).encode("utf-8"))


def _scores(correct: np.ndarray, onehot: np.ndarray | None, weights: np.ndarray) -> np.ndarray:
    """Metric (%) per (resample, seed): `correct` seeds × n booleans, `weights` resamples × n counts."""
    if onehot is None:  # top-1: weighted share of correct examples
        return weights @ correct.T.astype(float) / weights.sum(axis=1, keepdims=True) * 100.0
    per_class = weights @ onehot  # resamples × classes: how often each class was drawn
    present = per_class > 0
    out = np.empty((weights.shape[0], correct.shape[0]))
    for s, row in enumerate(correct):
        hits = (weights * row) @ onehot
        recall = np.divide(hits, per_class, out=np.zeros_like(hits), where=present)
        out[:, s] = recall.sum(axis=1) / present.sum(axis=1) * 100.0
    return out


def paired_bootstrap(labels: np.ndarray, treatment: np.ndarray, baseline: np.ndarray, metric: str,
                     resamples: int = RESAMPLES, seed: int = SEED, confidence: float = CONFIDENCE) -> Interval:
    """Interval of mean over seeds of metric(treatment) − metric(baseline); predictions are seeds × n,
    row s of both methods from the same seed, columns paired with `labels` (n)."""
    y = np.asarray(labels)
    t, b = np.atleast_2d(treatment), np.atleast_2d(baseline)
    if t.shape != b.shape or t.shape[1] != len(y):
        raise ValueError(f"predictions {t.shape} and {b.shape} do not pair with {len(y)} labels")
    n = len(y)
    onehot = None
    if metric == "mean_per_class":
        _, codes = np.unique(y, return_inverse=True)
        onehot = np.eye(codes.max() + 1)[codes]
    diff_correct = (t == y), (b == y)

    def statistic(weights: np.ndarray) -> np.ndarray:
        return (_scores(diff_correct[0], onehot, weights) - _scores(diff_correct[1], onehot, weights)).mean(axis=1)

    point = float(statistic(np.ones((1, n)))[0])
    rng = np.random.default_rng(seed)
    draws = [statistic(rng.multinomial(n, np.full(n, 1.0 / n), size=min(CHUNK, resamples - done)).astype(float))
             for done in range(0, resamples, CHUNK)]
    low, high = _percentiles(np.concatenate(draws), confidence)
    return Interval(point, low, high, resamples, n)


def hierarchical_bootstrap(per_cell: Sequence[np.ndarray], resamples: int = HIERARCHICAL_RESAMPLES,
                           seed: int = SEED, confidence: float = CONFIDENCE) -> Interval:
    """Interval of the mean over cells of each cell's mean paired difference; `per_cell` holds each cell's
    per-seed differences. Fewer than two cells: no spread over cells to resample (low/high NaN)."""
    cells = [np.asarray(d, dtype=float) for d in per_cell if len(d)]
    point = float(np.mean([d.mean() for d in cells])) if cells else math.nan
    if len(cells) < 2:
        return Interval(point, math.nan, math.nan, resamples, len(cells))
    rng = np.random.default_rng(seed)
    # each cell's mean over its seeds resampled, one per bootstrap draw: cells × resamples
    seed_means = np.stack([d[rng.integers(0, len(d), (resamples, len(d)))].mean(axis=1) for d in cells])
    chosen = rng.integers(0, len(cells), (resamples, len(cells)))
    draws = seed_means[chosen, np.arange(resamples)[:, None]].mean(axis=1)
    low, high = _percentiles(draws, confidence)
    return Interval(point, low, high, resamples, len(cells))


def _percentiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def pooled_sd(per_cell: Sequence[np.ndarray]) -> float:
    """Pooled sample sd (ddof = 1 within each cell) of the per-seed differences; NaN without a cell of ≥ 2."""
    dof = sum(len(d) - 1 for d in per_cell if len(d) > 1)
    if dof == 0:
        return math.nan
    return math.sqrt(sum((len(d) - 1) * float(np.var(d, ddof=1)) for d in per_cell if len(d) > 1) / dof)


def seeds_for_half_width(sd: float, half: float = 1.0, confidence: float = CONFIDENCE, limit: int = 100_000) -> int | None:
    """The smallest n ≥ 2 whose t-interval over n seeds is ± `half` or narrower at this sd: t·sd/√n ≤ half,
    i.e. n ≈ (t·sd / half)²; None when sd is unknown or it would take more than `limit` seeds."""
    if math.isnan(sd):
        return None
    n = max(2, math.ceil((1.96 * sd / half) ** 2))  # the normal approximation undershoots: step up from it
    while n <= limit:
        if stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n) <= half:
            return n
        n += 1
    return None
