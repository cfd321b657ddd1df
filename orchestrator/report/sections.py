"""What the leaderboard says, as a list of format-neutral blocks (rendered by `orchestrator.report.render`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from orchestrator.report.plots import Plot
from orchestrator.report.stats import CONFIDENCE, Leaderboard, ordered_methods

NA = "n/a"
MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class TableCell:
    text: str
    best: bool = False  # highlighted: bold in Markdown, class "best" in HTML


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str
    strong: bool = False


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[TableCell, ...], ...]
    caption: str = ""
    css: str = "board"


@dataclass(frozen=True)
class Figure:
    plot: Plot


@dataclass(frozen=True)
class Document:
    title: str
    blocks: list = field(default_factory=list)  # Heading | Para | Table | Figure, in order


def _num(value: float, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return NA
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _mean_std(mean: float, std: float) -> str:
    return f"{_num(mean)} ± {_num(std)}"


def _interval(low: float, high: float) -> str:
    return NA if math.isnan(low) else f"[{_num(low, True)}, {_num(high, True)}]"


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


def _method_tables(board: Leaderboard) -> list:
    blocks: list = [Heading("Leaderboard"), Para(
        "Test accuracy (%) of each task's primary metric, mean ± std over seeds; highlighted: the best "
        "method for that task and backbone (ties all highlighted).")]
    for method in ordered_methods(board.summary["method"].unique()):
        rows = board.summary[board.summary["method"] == method]
        table = _grid(board, rows, lambda r: TableCell("–") if r is None else TableCell(_mean_std(r.mean, r.std), bool(r.best)))
        blocks += [Heading(f"method: {method}", 3), table]
    best = _grid(board, board.best, lambda r: TableCell("–") if r is None else TableCell(r.method))
    blocks += [Heading("Best method per task and backbone", 3), best]
    return blocks


def _difference_section(board: Leaderboard, plots: Sequence[Plot]) -> list:
    blocks: list = [Heading("SeA − linear (paired over seeds)")]
    if board.differences.empty:
        return [*blocks, Para("Not available: no cell has results for both sea and linear on the same seed.")]
    pct = f"{CONFIDENCE:.0%}"
    blocks.append(Para(
        f"Per cell: mean of the per-seed differences SeA − linear (points) and its {pct} t-interval "
        f"(mean ± t·sd/√n over seeds; {NA} when only one seed is paired)."))
    table = _grid(board, board.differences, lambda r: TableCell("–") if r is None else TableCell(
        f"{_num(r.mean, True)} {_interval(r.ci_low, r.ci_high)} (n={r.n})"))
    blocks.append(table)
    blocks += [Figure(p) for p in plots if p.filename == "sea_minus_linear.png"]
    return blocks


def _finetune_blocks(board: Leaderboard) -> list:
    comparison = board.finetune
    if comparison is None:
        return [Para("Fine-tuning: no reference supplied (--reference ft.csv); the paper's claim that SeA "
                     "is comparable to fine-tuning on 6 of 11 tasks is not checked.")]
    got, of = comparison.paper
    text = (f"Fine-tuning: SeA is within 1 point of (or above) fine-tuning on {comparison.within} of "
            f"{comparison.compared} tasks compared (paper: {got} of {of}).")
    rows = tuple(
        (TableCell(r.task), TableCell(r.backbone), TableCell(r.metric), TableCell(_num(r.sea)), TableCell(_num(r.finetune)),
         TableCell(_num(r.gap, True)), TableCell(NA if r.within is None else ("yes" if r.within else "no"), bool(r.within)))
        for r in comparison.table.itertuples(index=False)
    )
    header = ("task", "backbone", "compared on", "SeA", "fine-tuning", "SeA − FT", "within 1 point")
    return [Para(text, strong=True), Table(header, rows, caption="SeA (test, mean over seeds) vs the reference")]


def _claims(board: Leaderboard) -> list:
    o = board.overall
    numbers = (f"Mean SeA − linear over {o.n_cells} (task, backbone) cells: {_num(o.mean, True)} points, "
               f"{CONFIDENCE:.0%} CI {_interval(o.ci_low, o.ci_high)} (t-interval over the cells' mean paired "
               f"differences); paper: ≈ +{o.paper:g} points.")
    return [Heading("Claims"), Para(o.verdict, strong=True), Para(numbers), *_finetune_blocks(board)]


def _error_tail(error: str) -> str:
    # the sweep stores a traceback's end; its last lines name the exception
    error = " ".join(str(error).split())
    return error if len(error) <= MAX_ERROR_CHARS else "…" + error[-MAX_ERROR_CHARS:]


def _failed(board: Leaderboard) -> list:
    if board.failed.empty:
        return []
    rows = tuple(
        tuple(TableCell(str(v)) for v in (r.backbone, r.task, r.method, r.seed, getattr(r, "attempts", 1),
                                      _error_tail(r.error), r.run_id))
        for r in board.failed.itertuples(index=False)
    )
    return [Heading("Failed cells"),
            Para(f"{len(rows)} cell(s) have no successful run; they are excluded from every number above. "
                 "Rerun the sweep to retry them (finished cells are skipped)."),
            Table(("backbone", "task", "method", "seed", "attempts", "error", "run"), rows, css="failed")]


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


def document(board: Leaderboard, plots: Sequence[Plot] = ()) -> Document:
    n_cells = int(board.summary["n"].sum())
    n_skipped = 0 if board.skipped is None or board.skipped.empty else int(board.skipped["skipped_images"].sum())
    overview = (f"Experiment {board.experiment or '(unnamed)'}"
                f"{f' · protocol: {board.mode}' if board.mode else ''} · {n_cells} finished cell run(s) · "
                f"{len(board.failed)} failed cell(s)"
                f"{f' · {n_skipped} unreadable image(s) left out' if n_skipped else ''}.")
    bars = [Figure(p) for p in plots if p.filename.startswith("bars_")]
    blocks = [Para(overview), *_claims(board), *_method_tables(board), *_difference_section(board, plots)]
    if bars:
        blocks += [Heading("Per task"), Para("Bars: mean over seeds; error bars: std over seeds."), *bars]
    blocks += _failed(board) + _skipped(board)
    return Document(f"seabench leaderboard — {board.experiment or '(unnamed)'}", blocks)
