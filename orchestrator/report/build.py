"""`seabench report`: a sweep's MLflow experiment → results.csv, leaderboard.md/.html and PNG plots.

Pipeline of pure steps: `load_experiment` (MLflow → long table) → `compute_leaderboard` (statistics)
→ plots and renderers → atomic writes → the files are attached to the sweep's parent run.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator.report.data import ExperimentData, load_experiment, log_report
from orchestrator.report.plots import difference_heatmap, task_bars
from orchestrator.report.reference import compare_to_finetuning, load_reference
from orchestrator.report.render import render_html, render_markdown
from orchestrator.report.stats import Leaderboard, compute_leaderboard
from orchestrator.runs import DEFAULT_TRACKING_URI

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportPaths:
    """Where the report went, and the headline numbers of its claims section."""

    out_dir: Path
    results_csv: Path
    leaderboard_md: Path
    leaderboard_html: Path
    plots: tuple[Path, ...]
    n_cells: int  # (task, backbone) cells with paired SeA and linear results
    mean_difference: float  # mean over those cells of SeA − linear, points (NaN when none)
    ci_low: float  # 95 % t-interval over cells (NaN with fewer than two cells)
    ci_high: float
    supports_paper: bool | None  # our CI vs the paper's ≈ +2 points; None when it cannot be judged
    verdict: str
    finetune_within: int | None = None  # tasks where SeA is within 1 point of fine-tuning (with a reference)
    finetune_compared: int | None = None
    n_failed: int = 0
    skipped_images: int = 0  # unreadable images left out, summed over (backbone, task)
    parent_run_id: str | None = None  # the run the report was logged to

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.results_csv, self.leaderboard_md, self.leaderboard_html, *self.plots)


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write to a temporary name in the same folder, then rename: readers never see a half-written file."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def leaderboard_for(data: ExperimentData, reference_csv: str | os.PathLike | None = None) -> Leaderboard:
    finetune = None
    if reference_csv is not None:
        reference = load_reference(reference_csv, experiment_tasks=set(data.results["task"]))
        finetune = compare_to_finetuning(data.results, reference)
    return compute_leaderboard(data.results, data.failed, data.experiment, data.mode, finetune, data.skipped)


def build_report(
    experiment: str,
    out_dir: str | os.PathLike,
    tracking_uri: str | None = None,
    reference_csv: str | os.PathLike | None = None,
) -> ReportPaths:
    """Build the report of one sweep into `out_dir` and log it to the sweep's parent run (if any)."""
    uri = tracking_uri or DEFAULT_TRACKING_URI
    data = load_experiment(experiment, uri)
    board = leaderboard_for(data, reference_csv)  # validates the reference before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    plots = [p for p in (difference_heatmap(board.differences), *task_bars(board.summary)) if p is not None]
    plot_paths = tuple(write_atomic(out / p.filename, p.png) for p in plots)
    csv_path = write_atomic(out / "results.csv", data.results.to_csv(index=False, lineterminator="\n"))
    md_path = write_atomic(out / "leaderboard.md", render_markdown(board, plots))
    html_path = write_atomic(out / "leaderboard.html", render_html(board, plots))

    o = board.overall
    paths = ReportPaths(
        out_dir=out,
        results_csv=csv_path,
        leaderboard_md=md_path,
        leaderboard_html=html_path,
        plots=plot_paths,
        n_cells=o.n_cells,
        mean_difference=o.mean,
        ci_low=o.ci_low,
        ci_high=o.ci_high,
        supports_paper=o.supports_paper,
        verdict=o.verdict,
        finetune_within=board.finetune.within if board.finetune else None,
        finetune_compared=board.finetune.compared if board.finetune else None,
        n_failed=len(data.failed),
        skipped_images=int(data.skipped["skipped_images"].sum()) if len(data.skipped) else 0,
        parent_run_id=data.parent_run_id,
    )
    if data.parent_run_id is None:
        logger.warning("experiment %r has no parent sweep run: report not logged to MLflow", experiment)
    else:
        log_report(uri, data.parent_run_id, paths.files)
    return paths
