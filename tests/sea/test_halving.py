"""sea.halving: successive halving inside one K-batched pass — the rungs, their cost, who survives, and
that a survivor trains exactly as it does in the full grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sea import (
    Halving,
    HeadConfig,
    SeaError,
    TrainSettings,
    head_epochs,
    rungs,
    select_and_refit,
    train_heads,
)
from sea.curves import last_scores, window_scores, window_spread, window_statistic
from sea.halving import RungPruner, default_min_epochs, read_epochs, survivors

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_rungs_are_min_epochs_times_powers_of_the_factor_below_the_last_epoch():
    assert rungs(100, 3, 1) == [1, 3, 9, 27, 81]
    assert rungs(100, 3, 11) == [11, 33, 99]
    assert rungs(10, 2, 3) == [3, 6]
    assert rungs(10, 3, 9) == [9]
    assert default_min_epochs(9, 100, 3) == 11 and default_min_epochs(9, 10, 3) == 1
    assert default_min_epochs(432, 100, 3) == 1 and default_min_epochs(1, 100, 3) == 33
    assert [survivors(n, 3) for n in (1, 2, 3, 4, 9, 10)] == [1, 1, 1, 2, 3, 4]


def _simulated_head_epochs(heads: int, epochs: int, factor: int, first: int) -> int:
    alive, total, at = heads, 0, set(rungs(epochs, factor, first))
    for epoch in range(1, epochs + 1):
        total += alive
        if epoch in at:
            alive = math.ceil(alive / factor)
    return total


@pytest.mark.parametrize("heads, epochs, factor, first", [(9, 10, 3, 1), (9, 100, 3, 11), (48, 100, 3, 1),
                                                           (10, 50, 2, 4), (1, 20, 3, 2)])
def test_head_epochs_counts_every_epoch_of_every_head_still_training(heads, epochs, factor, first):
    assert head_epochs(heads, epochs, factor, first) == _simulated_head_epochs(heads, epochs, factor, first)
    assert head_epochs(9, 10, 3, 1) == 9 * 1 + 3 * 2 + 1 * 7
    assert head_epochs(9, 100, 3) == head_epochs(9, 100, 3, 11) < 9 * 100


@pytest.mark.parametrize("call, match", [
    (lambda: rungs(10, 1, 1), r"halving\.factor=1 is invalid"),
    (lambda: rungs(10, 2.5, 1), r"halving\.factor=2\.5"),
    (lambda: Halving(factor=True), r"halving\.factor=True"),
    (lambda: rungs(10, 3, 0), r"halving\.min_epochs=0 is invalid"),
    (lambda: rungs(10, 3, 10), r"halving\.min_epochs=10 leaves no rung before the last of the 10 epochs"),
    (lambda: head_epochs(9, 10, 3, 12), r"halving\.min_epochs=12"),
    (lambda: head_epochs(0, 10, 3, 1), r"heads=0"),
    (lambda: Halving(3, 5, keys=("search.halving.factor", "search.halving.min_epochs")).rungs_for(9, 5),
     r"search\.halving\.min_epochs=5 leaves no rung"),
    (lambda: Halving(3).rungs_for(9, 1), r"halving\.factor: 1 epoch\(s\) leave no rung"),
])
def test_bad_settings_are_refused_naming_the_key(call, match):
    with pytest.raises(SeaError, match=match):
        call()


MIXED = [HeadConfig(method="sea", lr=0.8, eta=0.4, alpha=0.05), HeadConfig(method="linear", lr=0.05),
         HeadConfig(method="noise", lr=0.4, eta=0.3), HeadConfig(method="mixup", lr=0.4, eta=0.4),
         HeadConfig(method="sea", lr=0.2, eta=0.2), HeadConfig(method="linear", lr=1.6),
         HeadConfig(method="fgsm", lr=0.4, eta=0.3), HeadConfig(method="mixup", lr=0.1, eta=1.0),
         HeadConfig(method="noise", lr=1.6, eta=0.1)]


def test_survivors_train_exactly_as_in_the_full_grid_and_the_dropped_stop_at_their_rung(digits):
    (x, y), val, _ = digits
    settings = TrainSettings(epochs=6, batch_size=64, seed=3, schedule="cosine", dtype="float64")
    at = rungs(6, 3, 1)   # [1, 3]
    prune = RungPruner(at, 3, lambda h, i: window_statistic(h, i, 2, "top1"))
    halved = train_heads(x, y, MIXED, settings, val=val, prune=prune)
    full = train_heads(x, y, MIXED, settings, val=val)
    assert sorted(halved.stopped_at) == [1] * 6 + [3] * 2 + [6]
    for i, stop in enumerate(halved.stopped_at):
        # a head's weights and curve up to its rung are the full grid's, stopped at that epoch
        reference = full if stop == 6 else train_heads(x, y, MIXED, settings, stop_after=stop)
        assert torch.allclose(halved.weights[i], reference.weights[i], rtol=1e-10, atol=1e-12), MIXED[i]
        assert [e[i] for e in halved.val_history[:stop]] == [e[i] for e in full.val_history[:stop]]
        assert all(e[i] is None for e in halved.val_history[stop:])
    # who survives a rung: the best ⌈n/3⌉ by the statistic at that epoch
    first = [window_statistic(full.val_history[:1], i, 2, "top1") for i in range(len(MIXED))]
    kept = sorted(sorted(range(len(MIXED)), key=lambda i: (-first[i], i))[:3])
    assert [i for i, s in enumerate(halved.stopped_at) if s > 1] == kept


def test_float32_survivors_match_the_full_grid_to_rounding(digits):
    (x, y), val, _ = digits
    settings = TrainSettings(epochs=5, batch_size=64, seed=1)
    prune = RungPruner([1, 3], 3, lambda h, i: window_statistic(h, i, 1, "top1"))
    halved = train_heads(x, y, MIXED, settings, val=val, prune=prune)
    full = train_heads(x, y, MIXED, settings, val=val)
    (winner,) = [i for i, s in enumerate(halved.stopped_at) if s == 5]
    assert torch.allclose(halved.weights[winner], full.weights[winner], rtol=1e-4, atol=1e-6)


# one learning rate clearly better from the first epoch on: halving must find what the full grid finds
LEADER_GRID = [HeadConfig(method="sea", lr=lr, eta=eta) for lr in (0.001, 0.01, 0.8) for eta in (0.1, 0.2, 0.4)]


@pytest.mark.parametrize("select_on", ["last_k", "last"])
def test_halving_selects_what_the_full_grid_selects_when_the_winner_leads_from_the_first_rung(digits, select_on):
    (x, y), (xv, yv), test = digits
    settings = TrainSettings(epochs=10, batch_size=64, seed=0, schedule="cosine")
    full = select_and_refit(x, y, xv, yv, lambda: test, LEADER_GRID, settings, select_on=select_on)
    halved = select_and_refit(x, y, xv, yv, lambda: test, LEADER_GRID, settings, select_on=select_on,
                              halving=Halving(3, 1))
    assert LEADER_GRID[full.best_index].lr == 0.8
    assert halved.best_index == full.best_index and halved.best_config == full.best_config
    assert halved.val_metrics[halved.best_index] == full.val_metrics[full.best_index]
    assert (halved.test_top1, halved.val_spread) == (full.test_top1, full.val_spread)   # the same refit, bitwise
    assert halved.rungs == [1, 3, 9] and full.rungs == [] and full.stopped_at == [10] * 9
    # the candidate table: 6 heads stop at epoch 1, 2 at 3, the winner runs the schedule
    assert sorted(halved.stopped_at) == [1] * 6 + [3] * 2 + [10]
    assert halved.stopped_at[halved.best_index] == 10 and sum(halved.stopped_at) == head_epochs(9, 10, 3, 1)
    # a dropped head's statistic is the one it was ranked by: its window ending at its rung
    k = halved.select_k
    for i, stop in enumerate(halved.stopped_at):
        if stop < 10:
            window = [e[i]["top1"] for e in full.val_history[max(0, stop - k):stop]]
            assert halved.val_metrics[i]["top1"] == pytest.approx(sum(window) / len(window))


def test_validation_is_scored_only_at_the_epochs_selection_reads(digits):
    (x, y), (xv, yv), test = digits
    settings = TrainSettings(epochs=20, batch_size=64, seed=0)
    every = select_and_refit(x, y, xv, yv, lambda: test, LEADER_GRID, settings, halving=Halving(3, 1))
    sparse = select_and_refit(x, y, xv, yv, lambda: test, LEADER_GRID, settings, halving=Halving(3, 1),
                              val_every_epoch=False)
    scored = {e + 1 for e, epoch in enumerate(sparse.val_history) if any(m is not None for m in epoch)}
    assert scored == read_epochs(20, 5, [1, 3, 9], 5) == {1, 2, 3, 5, 6, 7, 8, 9, 16, 17, 18, 19, 20}
    assert len(sparse.val_history) == 20   # one entry per epoch: None where nothing was scored
    assert (sparse.best_index, sparse.stopped_at, sparse.val_metrics, sparse.test_top1, sparse.val_spread) == \
           (every.best_index, every.stopped_at, every.val_metrics, every.test_top1, every.val_spread)
    # without halving: the protocol's window (the spread's) only
    plain = select_and_refit(x, y, xv, yv, lambda: test, LEADER_GRID[:3], settings, select_on="last",
                             val_every_epoch=False)
    assert {e + 1 for e, epoch in enumerate(plain.val_history) if epoch[0] is not None} == set(range(16, 21))


def test_curve_readers_take_a_head_stopped_at_a_rung_at_its_last_scored_epoch():
    s = [{"top1": float(v), "mean_per_class": float(v) / 2} for v in range(10)]
    history = [[s[1], s[2]], [s[3], s[4]], [s[5], None], [None, None], [s[9], None]]   # head 1 stopped at 2
    assert window_scores(history, 2) == [{"top1": 9.0, "mean_per_class": 4.5}, {"top1": 3.0, "mean_per_class": 1.5}]
    assert window_spread(history, 3, 0, "top1") == 4.0 and window_spread(history, 3, 1, "top1") == 2.0
    assert last_scores(history, 1) == s[4] and last_scores(history, 0) == s[9]
    assert window_statistic(history[:2], 1, 5, "top1") == 3.0
    never = [[s[1], None], [s[2], None]]
    assert math.isnan(window_scores(never, 2)[1]["top1"]) and window_statistic(never, 1, 2, "top1") == -math.inf
    assert last_scores(never, 1) is None and math.isnan(window_spread(never, 2, 1, "top1"))


def test_pruning_needs_validation():
    with pytest.raises(SeaError, match="prune ranks heads on validation"):
        train_heads(np.eye(4, dtype=np.float32), np.arange(4), MIXED[:2], TrainSettings(epochs=2),
                    prune=RungPruner([1], 3, lambda h, i: 0.0))
