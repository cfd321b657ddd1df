"""Validation curves and the selection statistic read from them (`sea.selection`, halving's rungs, search).

A curve is `val_history`: per epoch, per candidate, {"top1", "mean_per_class"} in percent, or None where
that candidate was not scored that epoch (halving stopped it at a rung, or nothing read that epoch). A
candidate's window is the k epochs ending at the last one it was scored in: its final epoch, or its rung.
"""

from __future__ import annotations

import math

from sea.errors import SeaError

SELECTION_METRICS: tuple[str, ...] = ("top1", "mean_per_class")
SELECT_ON: tuple[str, ...] = ("last", "last_k")


def default_k(epochs: int) -> int:
    """The protocol's window: the last max(5, ⌈0.1·epochs⌉) epochs, never more than there are."""
    return min(epochs, max(5, math.ceil(0.1 * epochs)))


def resolve_k(select_on: str, k: int | None, epochs: int) -> int:
    """Epochs the selection statistic averages: 1 for 'last', k (default `default_k`) for 'last_k'."""
    if select_on not in SELECT_ON:
        raise SeaError(f"select_on={select_on!r} is unknown; choose one of {', '.join(SELECT_ON)} "
                       "(last: the final epoch's validation metric; last_k: its mean over the last k epochs)")
    if select_on == "last":
        return 1
    if k is None:
        return default_k(epochs)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise SeaError(f"k={k!r} is invalid: the number of last epochs to average must be an int >= 1")
    if k > epochs:
        raise SeaError(f"k={k} is more than the {epochs} training epochs: use k <= epochs, or k=None for "
                       f"max(5, ⌈0.1·epochs⌉) = {default_k(epochs)}")
    return k


def _window(val_history: list[list[dict | None]], k: int, index: int) -> list[dict]:
    """Candidate `index`'s measured scores in the k epochs ending at its last measured one: its final epoch,
    or the rung where halving stopped it (None entries, epochs nothing read, are left out)."""
    measured = [e for e, epoch in enumerate(val_history) if epoch[index] is not None]
    if not measured:
        return []
    return [epoch[index] for epoch in val_history[max(0, measured[-1] - k + 1): measured[-1] + 1]
            if epoch[index] is not None]


def window_scores(val_history: list[list[dict | None]], k: int) -> list[dict]:
    """Per candidate, both metrics averaged over the last k epochs it was scored in (see `_window`); NaN for
    a candidate never scored."""
    out = []
    for i in range(len(val_history[0])):
        window = _window(val_history, k, i)
        out.append({name: sum(s[name] for s in window) / len(window) if window else math.nan
                    for name in SELECTION_METRICS})
    return out


def window_statistic(val_history: list[list[dict | None]], index: int, k: int, metric: str) -> float:
    """The selection statistic of one candidate: its `metric` averaged over its last k epochs so far."""
    window = _window(val_history, k, index)
    return sum(s[metric] for s in window) / len(window) if window else -math.inf


def window_spread(val_history: list[list[dict | None]], k: int, index: int, metric: str) -> float:
    """max − min of candidate `index`'s validation `metric` over its last k epochs (points; NaN if never scored)."""
    values = [s[metric] for s in _window(val_history, k, index)]
    return max(values) - min(values) if values else math.nan


def last_scores(val_history: list[list[dict | None]], index: int) -> dict | None:
    """Candidate `index`'s scores at the last epoch it was scored in (its stopping rung under halving)."""
    window = _window(val_history, 1, index)
    return window[0] if window else None
