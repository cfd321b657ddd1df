"""The runs' flags (issue #19's contract) and what a claim does with them, pure functions of the long table.

- `refit_unstable`: the refit scores below the selected candidate's head on test by more than both that
  candidate's validation spread over its last k epochs and the test's paired noise: the number is a draw.
- `under_trained`: a fine-tuning cell that ran fewer optimiser steps than its recipe's budget: a toy run.
- `reduced_budget`: a head trained for fewer than the protocol's 100 epochs.
A claim is recomputed without the cell runs flagged `refit_unstable` or `under_trained` (EXCLUDED); a
`reduced_budget` run is the same protocol at a smaller budget, comparable with the other runs of that
budget, so it stays and the claim states the budget instead (CAVEAT).
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

REFIT_UNSTABLE, UNDER_TRAINED, REDUCED_BUDGET = "refit_unstable", "under_trained", "reduced_budget"
EXCLUDED = (REFIT_UNSTABLE, UNDER_TRAINED)
CAVEAT = (REDUCED_BUDGET,)
PROTOCOL_EPOCHS = 100  # benchmark-protocol.md (the sweep flags a head trained for fewer)
MARKS = {REFIT_UNSTABLE: "†", UNDER_TRAINED: "‡", REDUCED_BUDGET: "°"}
MEANINGS = {REFIT_UNSTABLE: "its refit and selected head disagree on test",
            UNDER_TRAINED: "fine-tuned for fewer steps than its recipe",
            REDUCED_BUDGET: f"trained for fewer than the protocol's {PROTOCOL_EPOCHS} epochs"}
RUN = ["backbone", "task", "method", "seed"]
HEADS_WITHOUT_EPOCHS = ("logreg", "finetune")  # never reduced_budget: no epoch budget of the protocol's


def split_flags(text: object) -> tuple[str, ...]:
    """The flags of one ";"-joined string ("" or NaN: none)."""
    return tuple(f for f in text.split(";") if f) if isinstance(text, str) else ()


def has_any(text: object, kinds: Iterable[str]) -> bool:
    return bool(set(split_flags(text)) & set(kinds))


def runs_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per cell run: RUN, run_id and its flags ("" when none or recorded before flags existed)."""
    frame = results if "flags" in results.columns else results.assign(flags="")
    out = frame.drop_duplicates("run_id")[[*RUN, "run_id", "flags"]].reset_index(drop=True)
    out["flags"] = out["flags"].where(out["flags"].map(lambda f: isinstance(f, str)), "")
    return out


def without_flagged(results: pd.DataFrame, kinds: Iterable[str] = EXCLUDED) -> pd.DataFrame:
    """The results minus every row of a cell run carrying one of `kinds`."""
    if "flags" not in results.columns:
        return results
    kinds = tuple(kinds)
    return results[~results["flags"].map(lambda f: has_any(f, kinds))]


def flagged_units(results: pd.DataFrame, methods: Iterable[str], kinds: Iterable[str] = EXCLUDED) -> tuple[int, int]:
    """(task, backbone) cells with a run of `methods` carrying one of `kinds`, and how many such runs."""
    runs = runs_table(results)
    runs = runs[runs["method"].isin(list(methods)) & runs["flags"].map(lambda f: has_any(f, kinds))]
    return len(runs[["task", "backbone"]].drop_duplicates()), len(runs)


def uniform_budget(results: pd.DataFrame) -> bool:
    """True when every head run that can carry reduced_budget carries it (then marking each is noise)."""
    runs = runs_table(results)
    heads = runs[~runs["method"].isin(HEADS_WITHOUT_EPOCHS)]
    return bool(len(heads)) and bool(heads["flags"].map(lambda f: REDUCED_BUDGET in split_flags(f)).all())


def marked(summary: pd.DataFrame, results: pd.DataFrame | None) -> tuple[str, ...]:
    """The flags the leaderboard marks: those present, except reduced_budget when it is on every head run
    (the claims say so once instead)."""
    present = {f for text in summary.get("flags", pd.Series(dtype=object)) for f in split_flags(text)}
    if results is not None and uniform_budget(results):
        present.discard(REDUCED_BUDGET)
    return tuple(f for f in MARKS if f in present)


def mark(flags: object, shown: Iterable[str]) -> str:
    """The marks to put after a leaderboard value ("" when none of `shown` applies)."""
    marks = "".join(MARKS[f] for f in shown if f in split_flags(flags))
    return f" {marks}" if marks else ""


def legend(shown: Iterable[str]) -> str:
    return "; ".join(f"{MARKS[f]}: {f} in at least one seed ({MEANINGS[f]})" for f in shown)
