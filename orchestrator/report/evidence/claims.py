"""The claims' small print: which interval backs each claim, what its n counts, how many of its cells are
flagged and whether its verdict holds without them, the budget it ran at, and how many seeds would give
± 1 point. Text only (format-neutral blocks); the numbers come from `Evidence` and the leaderboard."""

from __future__ import annotations

import pandas as pd

from orchestrator.report.blocks import NA, Para, Table, TableCell, interval, num
from orchestrator.report.evidence.bootstrap import SEED
from orchestrator.report.evidence.flags import (
    EXCLUDED,
    HEADS_WITHOUT_EPOCHS,
    REDUCED_BUDGET,
    UNDER_TRAINED,
    has_any,
    split_flags,
    without_flagged,
)
from orchestrator.report.evidence.stability import Evidence, budgets, count_text
from orchestrator.report.reference import compare_with_sweep
from orchestrator.report.stats import CONFIDENCE, FinetuneComparison, Leaderboard

ENSEMBLE_PREFIX = "ensemble:"  # orchestrator.extract's spelling of a virtual backbone (report never imports extract)
PC = f"{CONFIDENCE:.0%}".replace("%", " %")


def _ensembles(board: Leaderboard) -> int:
    return int(board.differences["backbone"].astype(str).str.startswith(ENSEMBLE_PREFIX).sum())


def headline_paras(board: Leaderboard, ev: Evidence) -> list:
    """Under the headline's verdict: its numbers with both intervals named, what n counts, the budget, the
    flagged cells and the verdict without them, and the seeds a ± 1 point interval needs."""
    o, h = board.overall, ev.hierarchical
    seeds = board.differences["n"]
    seed_text = f"{int(seeds.min())}" if len(seeds) and seeds.min() == seeds.max() else (
        f"{int(seeds.min())}–{int(seeds.max())}" if len(seeds) else "0")
    boot = (f"{PC} hierarchical bootstrap (the cells resampled with replacement, then each one's seeds; "
            f"{count_text(h.resamples)} resamples, seed {SEED}) {interval(h.low, h.high)}")
    text = (f"Mean SeA − linear over {o.n_cells} (task, backbone) cells: {num(o.mean, True)} points; the verdict "
            f"is read from the {PC} t-interval over the {o.n_cells} cells' mean paired differences "
            f"{interval(o.ci_low, o.ci_high)}; beside it the {boot}; paper: ≈ +{o.paper:g} points. n counts "
            f"(task, backbone) cells, each the mean over its {seed_text} paired seed(s).")
    ensembles = _ensembles(board)
    if ensembles:
        text += (f" Ensemble cells: {ensembles} of the {o.n_cells}; an ensemble reuses its parts' features, so its "
                 "cell is not independent of its parts' cells: both intervals treat it as independent and are "
                 "too narrow by an amount not estimated.")
    paras = [Para(text)]
    budget = budget_line(ev.runs)
    if budget:
        paras.append(Para(budget))
    paras.append(Para(_without_text(o, ev)))
    if ev.seeds_needed is not None:
        paras.append(Para(
            f"Seeds for ± 1 point: the paired per-seed differences spread with a pooled sample sd (ddof = 1, within "
            f"cells) of {num(ev.spread)} points; a {PC} t-interval of ± 1 point on one cell needs n = "
            f"{ev.seeds_needed} seeds (the smallest n with t·s/√n ≤ 1, i.e. n ≈ (t·s / 1)²); this sweep ran "
            f"{seed_text}."))
    return paras


def budget_line(runs: pd.DataFrame) -> str:
    """One line on the head runs (Evidence.runs) trained below the protocol's epochs ("" when none)."""
    heads = runs[~runs["method"].isin(HEADS_WITHOUT_EPOCHS)]
    reduced = heads[heads["flags"].map(lambda f: REDUCED_BUDGET in split_flags(f))]
    if reduced.empty:
        return ""
    which = "All" if len(reduced) == len(heads) else f"{len(reduced)} of the"
    epochs = budgets(reduced, REDUCED_BUDGET)
    return (f"Budget: {which} {len(heads)} head cell runs ran a reduced budget{f' ({epochs})' if epochs else ''}: "
            "their numbers hold at that budget, not at the protocol's; kept in every claim (a budget caveat, "
            "not a defect).")


def _without_text(o, ev: Evidence) -> str:
    if ev.flagged_runs == 0:
        return (f"Flagged: none of the {o.n_cells} cells has a SeA or linear run flagged {' or '.join(EXCLUDED)}; "
                "the verdict stands as computed.")
    w = ev.without
    held = "holds" if w.kind == o.kind else f"does not hold (without them: {w.verdict})"
    return (f"Flagged cells: {ev.flagged_cells} of {o.n_cells} (a SeA or linear run flagged "
            f"{' or '.join(EXCLUDED)}; {ev.flagged_runs} run(s), listed under Stability). Without those runs "
            f"(the seeds they belong to unpaired): {num(w.mean, True)} points over {w.n_cells} cells, {PC} "
            f"t-interval {interval(w.ci_low, w.ci_high)}; the verdict {held}.")


def finetune_paras(board: Leaderboard, ev: Evidence) -> list:
    """The fine-tuning claim: labelled under-trained when its fine-tuning runs are, with the interval named,
    the flagged runs counted and the verdict without them."""
    c = board.finetune
    if c is None:
        return [Para("Fine-tuning: no reference supplied (--reference ft.csv); the paper's claim that SeA "
                     "is comparable to fine-tuning on 6 of 11 tasks is not checked.")]
    got, of = c.paper
    label = finetune_label(ev) if c.source == "sweep" else ""
    basis = ("per (task, backbone) the mean paired difference SeA − fine-tuning over seeds, with its "
             f"{PC} t-interval over seeds; a task counts when each of its backbones is ≥ −1 point"
             if c.source == "sweep" else "an external CSV without seeds: no interval")
    text = (f"Fine-tuning{f' — {label}' if label else ''}: SeA is within 1 point of (or above) fine-tuning on "
            f"{c.within} of {c.compared} tasks compared (paper: {got} of {of}); {basis}.")
    rows = tuple(
        (TableCell(r.task), TableCell(r.backbone), TableCell(r.metric), TableCell(num(r.sea)), TableCell(num(r.finetune)),
         TableCell(num(r.gap, True)), TableCell(NA if r.within is None else ("yes" if r.within else "no"), bool(r.within)))
        for r in c.table.itertuples(index=False))
    header = ("task", "backbone", "compared on", "SeA", "fine-tuning", "SeA − FT", "within 1 point")
    blocks = [Para(text, strong=True), Table(header, rows, caption="SeA (test, mean over seeds) vs the reference")]
    if c.source == "sweep":
        blocks.append(Para(_finetune_without(board, c)))
    return blocks


def finetune_label(ev: Evidence) -> str:
    """"under-trained (20 of 5 000 steps): a check of the machinery, not a verdict" when any fine-tuning run
    is under_trained ("" otherwise)."""
    ft = ev.runs[ev.runs["method"] == "finetune"]
    if not ft["flags"].map(lambda f: UNDER_TRAINED in split_flags(f)).any():
        return ""
    steps = budgets(ft, UNDER_TRAINED)
    return f"under-trained{f' ({steps})' if steps else ''}: a check of the machinery, not a verdict"


def _finetune_without(board: Leaderboard, c: FinetuneComparison) -> str:
    results = board.results
    if results is None:
        return ""
    runs = results[results["method"].isin(["sea", "finetune"])].drop_duplicates("run_id")
    pairs = set(zip(c.table["task"], c.table["backbone"]))  # the (task, backbone) cells this claim compares
    runs = runs[[pair in pairs for pair in zip(runs["task"], runs["backbone"])]]
    flagged = runs[runs["flags"].map(lambda f: has_any(f, EXCLUDED))] if "flags" in runs.columns else runs.iloc[:0]
    if flagged.empty:
        return "Flagged: no SeA or fine-tuning run of this claim is flagged; the count stands as computed."
    rest = compare_with_sweep(without_flagged(results))
    after = ("no comparable pair is left, so there is no verdict" if rest is None else
             f"SeA is within 1 point on {rest.within} of {rest.compared} tasks — the count "
             f"{'holds' if (rest.within, rest.compared) == (c.within, c.compared) else 'changes'}")
    return (f"Flagged: {len(flagged)} of the {len(runs)} SeA and fine-tuning runs of this claim are flagged "
            f"{' or '.join(EXCLUDED)}; without them {after}.")


def interval_blocks(ev: Evidence) -> list:
    """Per (task, backbone): the paired bootstrap over test examples beside the t-interval over seeds."""
    b = ev.bootstrap
    if b.empty:
        return []
    if not (b["resamples"] > 0).any():
        return [Para("No SeA or linear run has a predictions.parquet (recorded before predictions were logged): "
                     "every cell has the t-interval over seeds only.")]
    rows = tuple(tuple(TableCell(t) for t in (
        r.task, r.backbone, r.metric, str(r.seeds), str(r.n_test) if r.n_test else "–", num(r.point, True),
        interval(r.low, r.high) if r.resamples else NA, r.note or "–")) for r in b.itertuples(index=False))
    done = b[b["resamples"] > 0]
    resamples = count_text(done["resamples"].max())
    return [Para(f"Beside the t-interval over seeds (seed noise, the test set held fixed): a {PC} paired bootstrap "
                 f"over test examples (test-set noise, the heads held fixed) from each run's predictions.parquet — "
                 f"{resamples} resamples of the test indices (seeded per cell), the same resample for both methods "
                 "and every seed, statistic = the mean over seeds of the primary metric's difference recomputed on "
                 "the resample. Cells without predictions (runs recorded before they were logged) have the "
                 "t-interval only."),
            Table(("task", "backbone", "metric", "seeds", "test examples", "SeA − linear", f"{PC} bootstrap", "note"),
                  rows, caption="SeA − linear per cell: paired bootstrap over test examples")]
