"""What the report says, in order, as a list of format-neutral blocks (rendered by `orchestrator.report.render`).

The main leaderboard is `leaderboard`'s; the sections that need more than the results (sensitivity, cost,
sources) are built by their modules and passed in as `sections`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

from orchestrator.report.blocks import (
    MISSING,
    NA,
    Details,
    Document,
    Figure,
    Heading,
    Para,
    Table,
    TableCell,
    interval,
    mean_std,
    num,
)
from orchestrator.report.evidence.claims import finetune_paras, headline_paras, interval_blocks
from orchestrator.report.evidence.stability import Evidence, gather_evidence, stability_blocks
from orchestrator.report.leaderboard import leaderboard_blocks
from orchestrator.report.plots import Plot
from orchestrator.report.stats import CONFIDENCE, Leaderboard
from sea.methods import ordered_methods

MAX_ERROR_CHARS = 300


def _task_label(board: Leaderboard, task: str) -> str:
    return f"{task} ({board.primary_metric.get(task, 'top1')})"


def _grid(board: Leaderboard, frame: pd.DataFrame, cell) -> Table:
    """A task × backbone table; `cell(row_or_None)` turns one frame row into a TableCell."""
    tasks = sorted(board.summary["task"].unique())
    backbones = sorted(board.summary["backbone"].unique())
    index = {(r.task, r.backbone): r for r in frame.itertuples(index=False)}
    rows = tuple(
        (TableCell(_task_label(board, t)), *(cell(index.get((t, b))) for b in backbones)) for t in tasks
    )
    return Table(("task (metric)", *backbones), rows)


def _details(board: Leaderboard) -> Details:
    """The per-method task × backbone tables, the best method per cell, and SeA − linear with n."""
    blocks: list = [Para(
        "Test accuracy (%) of each task's primary metric, mean ± std over seeds; highlighted: the best "
        "method for that task and backbone (ties all highlighted).")]
    for method in ordered_methods(board.summary["method"].unique()):
        rows = board.summary[board.summary["method"] == method]
        table = _grid(board, rows, lambda r: TableCell(MISSING) if r is None else TableCell(mean_std(r.mean, r.std), bool(r.best)))
        blocks += [Heading(f"method: {method}", 3), table]
    best = _grid(board, board.best, lambda r: TableCell(MISSING) if r is None else TableCell(r.method))
    blocks += [Heading("Best method per task and backbone", 3), best]
    if not board.differences.empty:
        blocks += [Heading("SeA − linear per cell, with the number of paired seeds", 3),
                   _grid(board, board.differences, lambda r: TableCell(MISSING) if r is None else TableCell(
                       f"{num(r.mean, True)} {interval(r.ci_low, r.ci_high)} (n={r.n})"))]
    return Details("Details: the leaderboard per method", tuple(blocks))


def _difference_section(board: Leaderboard, plots: Sequence[Plot], evidence: Evidence) -> list:
    blocks: list = [Heading("SeA − linear (paired over seeds)")]
    if board.differences.empty:
        return [*blocks, Para("Not available: no cell has results for both sea and linear on the same seed.")]
    blocks.append(Para(
        f"Per cell: mean of the per-seed differences SeA − linear (points) and its {CONFIDENCE:.0%} t-interval "
        f"(mean ± t·sd/√n over seeds; {NA} when only one seed is paired); the numbers are the leaderboard's "
        "SeA − linear columns, the number of paired seeds is in the details."))
    blocks += [Figure(p) for p in plots if p.filename == "sea_minus_linear.png"]
    return [*blocks, *interval_blocks(evidence)]


def _claims(board: Leaderboard, evidence: Evidence) -> list:
    small_print = headline_paras(board, evidence) if board.overall.n_cells else []
    return [Heading("Claims"), Para(board.overall.verdict, strong=True), *small_print,
            *finetune_paras(board, evidence)]


def _error_tail(error: str) -> str:
    # the sweep stores a traceback's end; its last lines name the exception
    error = " ".join(str(error).split())
    return error if len(error) <= MAX_ERROR_CHARS else "…" + error[-MAX_ERROR_CHARS:]


def _failed(board: Leaderboard) -> list:
    if board.failed.empty:
        return []
    sourced = "source" in board.failed.columns  # the experiment each failed cell belongs to
    rows = tuple(
        tuple(TableCell(str(v)) for v in (r.backbone, r.task, r.method, r.seed, getattr(r, "attempts", 1),
                                      _error_tail(r.error), r.run_id, *((r.source,) if sourced else ())))
        for r in board.failed.itertuples(index=False)
    )
    header = ("backbone", "task", "method", "seed", "attempts", "error", "run", *(("experiment",) if sourced else ()))
    return [Heading("Failed cells"),
            Para(f"{len(rows)} cell(s) have no successful run; they are excluded from every number above. "
                 "Rerun the sweep to retry them (finished cells are skipped)."),
            Table(header, rows, css="failed")]


def _skipped(board: Leaderboard) -> list:
    if board.skipped is None or board.skipped.empty:
        return []
    rows = tuple(tuple(TableCell(str(v)) for v in (r.backbone, r.task, r.skipped_images))
                 for r in board.skipped.itertuples(index=False))
    return [Heading("Skipped images"),
            Para("These features were extracted with --skip-bad-images: images that could not be decoded "
                 "were left out of training, validation and test. Each unit's _manifest.json lists the files "
                 "and why they failed."),
            Table(("backbone", "task", "images left out"), rows, css="failed")]


def document(board: Leaderboard, plots: Sequence[Plot] = (), sections: Iterable[list] = (),
             evidence: Evidence | None = None) -> Document:
    """The whole report; `sections` (lists of blocks: sensitivity, cost, sources) follow the per-task bars.
    Without `evidence` (the runs' details and per-cell bootstraps), it is computed from the results alone."""
    if evidence is None:
        evidence = gather_evidence(board.results if board.results is not None else pd.DataFrame(
            columns=["backbone", "task", "method", "seed", "metric", "split", "value", "run_id", "primary"]))
    n_cells = int(board.summary["n"].sum())
    n_skipped = 0 if board.skipped is None or board.skipped.empty else int(board.skipped["skipped_images"].sum())
    overview = (f"Experiment {board.experiment or '(unnamed)'}"
                f"{f' · protocol: {board.mode}' if board.mode else ''} · {n_cells} finished cell run(s) · "
                f"{len(board.failed)} failed cell(s)"
                f"{f' · {n_skipped} unreadable image(s) left out' if n_skipped else ''}"
                f"{f' · {board.superseded} finished run(s) of older configurations left out (other fingerprints: the sweep was rerun with another config or other features; they stay in MLflow)' if board.superseded else ''}.")
    bars = [Figure(p) for p in plots if p.filename.startswith("bars_")]
    blocks = [Para(overview), *_claims(board, evidence), *leaderboard_blocks(board),
              *_difference_section(board, plots, evidence), *stability_blocks(evidence)]
    if bars:
        blocks += [Heading("Per task"), Para("Bars: mean over seeds; error bars: std over seeds."), *bars]
    for section in sections:
        blocks += section
    blocks += [*_failed(board), *_skipped(board), _details(board)]
    return Document(f"seabench leaderboard — {board.experiment or '(unnamed)'}", blocks)
