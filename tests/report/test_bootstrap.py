"""orchestrator.report.evidence.bootstrap: seeded, correct on the primary metric, and covering a known truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from orchestrator.report.evidence.bootstrap import (
    hierarchical_bootstrap,
    paired_bootstrap,
    pooled_sd,
    seeds_for_half_width,
)

CLASS_SHARE = np.array([0.6, 0.25, 0.1, 0.05])
SEA_RECALL = np.array([0.95, 0.7, 0.6, 0.5])  # per class: SeA helps the rare classes most
LINEAR_RECALL = np.array([0.93, 0.62, 0.45, 0.3])


def _draw(rng, recall, labels, seeds=1, uniform=None):
    # a shared `uniform` makes the two methods' errors nested, as two heads on one feature set are
    right = (rng.random((seeds, len(labels))) if uniform is None else uniform) < recall[labels]
    return np.where(right, labels, (labels + 1) % len(recall))


def _mean_per_class(pred, labels):
    return np.mean([np.mean(pred[labels == c] == c) for c in np.unique(labels)]) * 100


def test_the_same_seed_gives_the_same_interval_and_another_seed_another():
    rng = np.random.default_rng(0)
    labels = rng.choice(4, 300, p=CLASS_SHARE)
    sea, linear = _draw(rng, SEA_RECALL, labels, 3), _draw(rng, LINEAR_RECALL, labels, 3)
    first = paired_bootstrap(labels, sea, linear, "top1", 1000, seed=5)
    assert first == paired_bootstrap(labels, sea, linear, "top1", 1000, seed=5)
    assert (first.low, first.high) != (paired_bootstrap(labels, sea, linear, "top1", 1000, seed=6).low,
                                       paired_bootstrap(labels, sea, linear, "top1", 1000, seed=6).high)
    assert first.resamples == 1000 and first.n == 300


@pytest.mark.parametrize("metric", ["top1", "mean_per_class"])
def test_the_point_is_the_mean_over_seeds_of_the_metrics_difference(metric):
    rng = np.random.default_rng(1)
    labels = rng.choice(4, 250, p=CLASS_SHARE)
    sea, linear = _draw(rng, SEA_RECALL, labels, 3), _draw(rng, LINEAR_RECALL, labels, 3)
    score = (lambda p: np.mean(p == labels) * 100) if metric == "top1" else (lambda p: _mean_per_class(p, labels))
    expected = np.mean([score(s) - score(b) for s, b in zip(sea, linear)])
    got = paired_bootstrap(labels, sea, linear, metric, 200)
    assert got.point == pytest.approx(expected)
    assert got.low < got.point < got.high


def test_mean_per_class_is_recomputed_per_resample_not_top1():
    """On imbalanced classes the two metrics' differences are far apart: each interval sits on its own."""
    rng = np.random.default_rng(2)
    labels = rng.choice(4, 2000, p=CLASS_SHARE)
    uniform = rng.random((1, len(labels)))
    sea, linear = _draw(rng, SEA_RECALL, labels, uniform=uniform), _draw(rng, LINEAR_RECALL, labels, uniform=uniform)
    top1 = paired_bootstrap(labels, sea, linear, "top1")
    mpc = paired_bootstrap(labels, sea, linear, "mean_per_class")
    truth_top1 = float(CLASS_SHARE @ (SEA_RECALL - LINEAR_RECALL) * 100)  # 4.4 points
    truth_mpc = float(np.mean(SEA_RECALL - LINEAR_RECALL) * 100)  # 11.25 points
    assert top1.low <= truth_top1 <= top1.high and mpc.low <= truth_mpc <= mpc.high
    assert top1.high < mpc.low  # disjoint: a top-1 interval would not cover the mean per-class truth


@pytest.mark.parametrize("metric", ["top1", "mean_per_class"])
def test_the_paired_interval_covers_the_known_difference_about_95_percent_of_the_time(metric):
    truth = (CLASS_SHARE @ (SEA_RECALL - LINEAR_RECALL) if metric == "top1" else np.mean(SEA_RECALL - LINEAR_RECALL)) * 100
    rng = np.random.default_rng(3)
    covered = 0
    for trial in range(120):
        labels = rng.choice(4, 400, p=CLASS_SHARE)
        sea, linear = _draw(rng, SEA_RECALL, labels, 2), _draw(rng, LINEAR_RECALL, labels, 2)
        found = paired_bootstrap(labels, sea, linear, metric, 1000, seed=trial)
        covered += found.low <= truth <= found.high
    assert 0.88 <= covered / 120 <= 0.99


def test_the_hierarchical_interval_covers_the_known_mean_over_cells():
    rng = np.random.default_rng(4)
    covered = 0
    for trial in range(150):
        cells = [rng.normal(rng.normal(1.5, 1.0), 0.8, 5) for _ in range(25)]  # true mean over cells: 1.5
        found = hierarchical_bootstrap(cells, 1000, seed=trial)
        assert found.point == pytest.approx(np.mean([c.mean() for c in cells]))
        covered += found.low <= 1.5 <= found.high
    assert 0.85 <= covered / 150 <= 0.99


def test_the_hierarchical_bootstrap_is_seeded_and_needs_two_cells():
    cells = [np.array([1.0, 2.0, 3.0]), np.array([-1.0, 0.5]), np.array([4.0, 4.5, 5.0])]
    assert hierarchical_bootstrap(cells, 500, seed=1) == hierarchical_bootstrap(cells, 500, seed=1)
    one = hierarchical_bootstrap(cells[:1])
    assert one.point == 2.0 and math.isnan(one.low) and math.isnan(one.high)


def test_pooled_sd_and_the_seeds_for_one_point():
    cells = [np.array([1.0, 2.0, 3.0]), np.array([0.0, 4.0])]
    assert pooled_sd(cells) == pytest.approx(math.sqrt((2 * 1.0 + 1 * 8.0) / 3))
    for sd, expected in ((1.0, 7), (2.0, 18)):
        n = seeds_for_half_width(sd)
        assert n == expected
        assert stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) <= 1 < stats.t.ppf(0.975, n - 2) * sd / math.sqrt(n - 1)
    assert seeds_for_half_width(math.nan) is None
