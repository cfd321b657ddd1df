"""sea.config.TrainState (checkpoints): a K-batch (and a whole selection) checkpointed every N epochs resumes from any of its
checkpoints and ends bitwise equal to the run never interrupted — every augmentation, halving, a cosine."""

from __future__ import annotations

import functools
import io

import pytest
import torch

from sea import Halving, HeadConfig, SeaError, TrainSettings, select_and_refit, train_heads
from sea.curves import window_statistic
from sea.halving import RungPruner

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MIXED = [HeadConfig(method="sea", lr=0.8, eta=0.4, alpha=0.05), HeadConfig(method="linear", lr=0.05),
         HeadConfig(method="noise", lr=0.4, eta=0.3), HeadConfig(method="mixup", lr=0.4, eta=0.4),
         HeadConfig(method="sea", lr=0.2, eta=0.2), HeadConfig(method="linear", lr=1.6),
         HeadConfig(method="fgsm", lr=0.4, eta=0.3), HeadConfig(method="mixup", lr=0.1, eta=1.0),
         HeadConfig(method="noise", lr=1.6, eta=0.1)]


def _reloaded(state: dict) -> dict:
    """Through the bytes a checkpoint file holds, loaded as the sweep loads it (weights_only)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _same(a, b) -> None:
    assert torch.equal(a.weights, b.weights)
    assert a.val_history == b.val_history
    assert a.stopped_at == b.stopped_at and a.stopped_epoch == b.stopped_epoch


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_run_resumed_from_any_checkpoint_ends_bitwise_equal_to_the_uninterrupted_run(digits, dtype):
    (x, y), val, _ = digits
    settings = TrainSettings(epochs=9, batch_size=64, seed=3, schedule="cosine", dtype=dtype)
    prune = RungPruner([2, 5], 3, lambda h, i: window_statistic(h, i, 2, "top1"))   # 9 -> 3 -> 1 heads
    states: list[dict] = []
    full = train_heads(x, y, MIXED, settings, val=val, prune=prune, checkpoint_every=2, on_checkpoint=states.append)
    assert [s["epoch"] for s in states] == [2, 4, 6, 8]
    assert len(states[0]["active"]) == 3 and len(states[-1]["active"]) == 1   # halving's record travels with it
    _same(full, train_heads(x, y, MIXED, settings, val=val, prune=prune))   # checkpointing changes nothing
    for state in states:
        resumed = train_heads(x, y, MIXED, settings, val=val, prune=prune, resume=_reloaded(state))
        _same(resumed, full)


def test_an_interrupted_run_resumes_from_its_last_checkpoint_and_redoes_at_most_n_epochs(digits):
    (x, y), val, _ = digits
    settings = TrainSettings(epochs=7, batch_size=64, seed=1, dtype="float32")
    full = train_heads(x, y, MIXED, settings, val=val)
    saved: list[dict] = []

    def preempted(epoch: int, metrics: list) -> None:
        if epoch == 5:
            raise KeyboardInterrupt("node lost")

    with pytest.raises(KeyboardInterrupt):
        train_heads(x, y, MIXED, settings, val=val, on_epoch=preempted, checkpoint_every=3, on_checkpoint=saved.append)
    assert [s["epoch"] for s in saved] == [3]
    trained: list[int] = []
    resumed = train_heads(x, y, MIXED, settings, val=val, resume=_reloaded(saved[-1]),
                          on_epoch=lambda epoch, metrics: trained.append(epoch))
    assert trained == [4, 5, 6, 7]
    _same(resumed, full)


def test_a_checkpoint_resumes_only_the_run_that_wrote_it(digits):
    (x, y), val, _ = digits
    settings = TrainSettings(epochs=3, batch_size=64)
    states: list[dict] = []
    train_heads(x, y, MIXED[:3], settings, val=val, checkpoint_every=1, on_checkpoint=states.append)
    with pytest.raises(SeaError, match=r"another run.*configs"):
        train_heads(x, y, MIXED[:4], settings, val=val, resume=states[0])
    with pytest.raises(SeaError, match=r"another run.*seed"):
        train_heads(x, y, MIXED[:3], TrainSettings(epochs=3, batch_size=64, seed=5), val=val, resume=states[0])
    with pytest.raises(SeaError, match="not a sea training state"):
        train_heads(x, y, MIXED[:3], settings, val=val, resume={"epoch": 1})
    with pytest.raises(SeaError, match="checkpoint_every=-1"):
        train_heads(x, y, MIXED[:3], settings, checkpoint_every=-1)


@pytest.mark.parametrize("refits", [1, 2])
def test_a_selection_resumed_in_its_grid_or_its_refit_ends_bitwise_equal(digits, refits):
    (x, y), (xv, yv), test = digits
    settings = TrainSettings(epochs=8, batch_size=64, seed=2, schedule="cosine", dtype="float64")
    run = functools.partial(select_and_refit, x, y, xv, yv, lambda: test, MIXED, settings, refits=refits,
                            halving=Halving(factor=3, min_epochs=2), k=2)
    states: list[dict] = []
    full = run(checkpoint_every=3, on_checkpoint=states.append)
    # the grid at 3 and 6, the selection's end, then each refit at 3 and 6 (and the end of a refit before the last)
    phases = [(s["phase"], s.get("train", {}).get("epoch"), len(s.get("refits", []))) for s in states]
    expected = [("select", 3, 0), ("select", 6, 0), ("refit", None, 0), ("refit", 3, 0), ("refit", 6, 0)]
    if refits == 2:
        expected += [("refit", None, 1), ("refit", 3, 1), ("refit", 6, 1)]
    assert phases == expected
    for state in states:
        resumed = run(resume=_reloaded(state))
        assert torch.equal(resumed.refit_weights, full.refit_weights)
        assert resumed.val_history == full.val_history and resumed.best_index == full.best_index
        assert resumed.stopped_at == full.stopped_at and resumed.refit_tests == full.refit_tests
        assert all(torch.equal(p, full.test_predictions[n]) for n, p in resumed.test_predictions.items())
    with pytest.raises(SeaError, match="selection belongs to another run"):
        select_and_refit(x, y, xv, yv, lambda: test, MIXED[:3], settings, refits=refits, resume=states[2])
