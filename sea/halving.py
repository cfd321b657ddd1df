"""Successive halving inside one K-batched pass: the rungs, what they cost, and who survives a rung.

Rungs: with factor f ≥ 2 and min_epochs m ≥ 1, the rungs of an E-epoch schedule are the epochs
m, m·f, m·f², … that are < E (a rung at E would drop heads at the very end, when all of them have
already paid for the whole schedule). At the end of a rung's epoch the heads still training are ranked
by the selection statistic (the last-k window mean of the selection metric ending at that epoch, or
that epoch's value for select_on=last) and the best ⌈n/f⌉ of the n go on (at least one; ties go to
the first candidate, as in selection); the others stop there, and their candidate rows say so. A rung
with a single head left drops nothing. Everything else is the full grid's: the horizon of the
schedule (a cosine anneals over all E epochs), the seeds, each head's own random streams, so a head
that survives trains exactly as it does in the full grid.

Default min_epochs (None): E // f^⌈log_f K⌉ (at least 1) — the budget at which K heads halved at
every rung come down to one within the schedule (K = 9, f = 3, E = 100: 11, rungs 11, 33, 99).

`rungs` and `head_epochs` are pure: `seabench plan` sizes a halved grid with them before it runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from sea.errors import SeaError

History = Sequence[Sequence["dict | None"]]   # per epoch, per candidate: scores, or None where not measured


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


KEYS = ("halving.factor", "halving.min_epochs")   # how errors name the two settings (a caller may pass its own)


def check_halving(factor: object, min_epochs: object, epochs: int | None, keys: tuple[str, str] = KEYS) -> None:
    """Raises SeaError naming the key (`keys`: factor's, min_epochs') for a factor < 2, a min_epochs < 1,
    or (given `epochs`) a min_epochs that leaves no rung before the last epoch (min_epochs ≥ epochs)."""
    if not _int(factor) or factor < 2:
        raise SeaError(f"{keys[0]}={factor!r} is invalid: keep the best 1/factor of the heads at each rung "
                       "with an int factor >= 2 (e.g. 3)")
    if min_epochs is None:
        return
    if not _int(min_epochs) or min_epochs < 1:
        raise SeaError(f"{keys[1]}={min_epochs!r} is invalid: the first rung needs an int >= 1 epochs")
    if epochs is not None and min_epochs >= epochs:
        raise SeaError(f"{keys[1]}={min_epochs} leaves no rung before the last of the {epochs} epochs "
                       f"(rungs are min_epochs·factor^i < epochs): use {keys[1]} < {epochs}, or turn halving off")


def default_min_epochs(heads: int, epochs: int, factor: int) -> int:
    """E // f^⌈log_f K⌉, at least 1: K heads halved at every rung reach one head within the E epochs."""
    halvings = 0
    while factor ** halvings < heads:
        halvings += 1
    return max(1, epochs // factor ** max(1, halvings))


def rungs(epochs: int, factor: int, min_epochs: int) -> list[int]:
    """The epochs after which heads are dropped: min_epochs·factor^i < epochs, ascending."""
    check_halving(factor, min_epochs, epochs)
    out, rung = [], min_epochs
    while rung < epochs:
        out.append(rung)
        rung *= factor
    return out


def survivors(heads: int, factor: int) -> int:
    """How many of `heads` go on past a rung: ⌈heads / factor⌉ (never fewer than one)."""
    return max(1, math.ceil(heads / factor))


def head_epochs(heads: int, epochs: int, factor: int, min_epochs: int | None = None) -> int:
    """Head-epochs a halved K-batch trains: Σ over stretches between rungs of (heads alive) × (epochs)
    (the full grid trains heads × epochs). min_epochs None: `default_min_epochs`."""
    if not _int(heads) or heads < 1:
        raise SeaError(f"heads={heads!r} is invalid: a grid has at least one head")
    if min_epochs is None:
        check_halving(factor, None, epochs)
        min_epochs = default_min_epochs(heads, epochs, factor)
    total, alive, start = 0, heads, 0
    for rung in rungs(epochs, factor, min_epochs):
        total += alive * (rung - start)
        alive, start = survivors(alive, factor), rung
    return total + alive * (epochs - start)


def read_epochs(epochs: int, window: int, at: Iterable[int] = (), at_window: int | None = None) -> set[int]:
    """The epochs (1-based) whose validation a selection reads: the last `window` of the schedule and the
    `at_window` (default `window`) epochs ending at each rung in `at` (fewer before epoch 1)."""
    spans = [(epochs, window), *((rung, window if at_window is None else at_window) for rung in at)]
    return {e for end, span in spans for e in range(max(1, end - span + 1), end + 1)}


@dataclass(frozen=True)
class Halving:
    """Successive halving of a K-batch: factor f ≥ 2; min_epochs the first rung (None: the default above).
    `keys` is how errors name the two settings where they came from (a config key, a flag)."""

    factor: int = 3
    min_epochs: int | None = None
    keys: tuple[str, str] = field(default=KEYS, compare=False)

    def __post_init__(self) -> None:
        check_halving(self.factor, self.min_epochs, None, self.keys)

    def rungs_for(self, heads: int, epochs: int) -> list[int]:
        """The rungs of a K = `heads` grid trained for `epochs` (a min_epochs ≥ epochs is an error)."""
        check_halving(self.factor, self.min_epochs, epochs, self.keys)
        first = default_min_epochs(heads, epochs, self.factor) if self.min_epochs is None else self.min_epochs
        if first >= epochs:   # the default, for a one-epoch schedule: no rung fits
            raise SeaError(f"{self.keys[0]}: {epochs} epoch(s) leave no rung before the last; train for at "
                           "least 2 epochs or turn halving off")
        return rungs(epochs, self.factor, first)


class RungPruner:
    """The trainer's `prune` callback: at a rung, the best ⌈n/f⌉ of the n heads still training by
    `statistic(history, index)` (higher is better; ties to the lower index); elsewhere None (keep all)."""

    def __init__(self, at: Iterable[int], factor: int, statistic: Callable[[History, int], float]) -> None:
        self.at, self.factor, self.statistic = set(at), factor, statistic

    def __call__(self, epoch: int, history: History, active: Sequence[int]) -> list[int] | None:
        if epoch not in self.at or len(active) <= 1:
            return None
        ranked = sorted(active, key=lambda i: (-self.statistic(history, i), i))
        return sorted(ranked[: survivors(len(active), self.factor)])
