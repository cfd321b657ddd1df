"""`seabench report`: one or more sweeps' MLflow experiments → results.csv, leaderboard.md/.html/.tex, plots.

Pipeline of pure steps: `load_experiment` per experiment (MLflow → long table) → `combine` (sources,
conflicts) → `compute_leaderboard` (statistics) and the evidence → every registered section
(`report.sections`: fine-tuning, sensitivity, cost, sources, in order) → plots and renderers → atomic
writes → for a single sweep, the files are attached to its parent run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import OrchestratorError
from orchestrator.names import check_safe_name
from orchestrator.report.data import ExperimentData, load_experiment, log_report, tracking_client
from orchestrator.report.evidence.predictions import cell_bootstraps, load_predictions, run_details
from orchestrator.report.evidence.stability import gather_evidence
from orchestrator.report.plots import difference_heatmap, task_bars
from orchestrator.report.reference import finetune_claim, load_reference
from orchestrator.report.render import render_html, render_latex, render_markdown
from orchestrator.report.sections import ReportInputs, sections
from orchestrator.report.sources import cell_runs, combine, resolve_experiments
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
    leaderboard_tex: Path  # the main table(s) as booktabs tabulars
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
    tables: tuple[Path, ...] = ()  # sensitivity.csv (the plotted points), cost.csv (per cell), where there is data
    experiments: tuple[str, ...] = ()  # the experiments the numbers come from, in order
    conflicts: int = 0  # cells with results in several experiments, decided by --prefer

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.results_csv, self.leaderboard_md, self.leaderboard_html, self.leaderboard_tex,
                *self.tables, *self.plots)


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
    reference = None
    if reference_csv is not None:
        reference = load_reference(reference_csv, experiment_tasks=set(data.results["task"]))
    finetune = finetune_claim(data.results, reference)   # the sweep's own finetune cells first, else the CSV
    board = compute_leaderboard(data.results, data.failed, data.experiment, data.mode, finetune, data.skipped)
    return dataclasses.replace(board, superseded=data.superseded)


def _check_tables(names: list[str]) -> None:
    """Sections' tables are plain `<name>.csv` files beside the pages: never a path, never one another's."""
    for name in names:
        check_safe_name(name, "report section table", "it names a file beside the report")
        if not name.endswith(".csv") or name == "results.csv" or names.count(name) > 1:
            raise OrchestratorError(f"report section table {name!r}: a .csv file name of its own (not results.csv, "
                                    "not another section's)")


def build_report(
    experiment: str | Sequence[str],
    out_dir: str | os.PathLike,
    tracking_uri: str | None = None,
    reference_csv: str | os.PathLike | None = None,
    *,
    prefer: Sequence[str] = (),
    patterns: Sequence[str] = (),
) -> ReportPaths:
    """Build the report of one sweep, or of several (`experiment` a list and/or shell-style `patterns`),
    into `out_dir`. A cell with results in two experiments is refused unless `prefer` (experiment names
    and/or "newest", tried in order) decides it. One sweep's report is logged to its parent run."""
    uri = tracking_uri or DEFAULT_TRACKING_URI
    client = tracking_client(uri)   # one client for every read and the final write; the cell runs fetched once
    names = resolve_experiments(client, [experiment] if isinstance(experiment, str) else list(experiment), patterns)
    runs = cell_runs(client, names)
    data, sources = combine([load_experiment(name, uri, client=client, runs=runs.values()) for name in names], prefer,
                            {run_id: run.info.start_time or 0 for run_id, run in runs.items()})
    board = leaderboard_for(data, reference_csv)  # validates the reference before anything is written
    # predictions are read once per run, for the SeA − linear claim's methods only
    bootstrap = cell_bootstraps(data.results, load_predictions(client, data.results))
    evidence = gather_evidence(data.results, run_details(runs, data.results["run_id"].unique()), bootstrap)
    inputs = ReportInputs(client, data, runs, sources, board, evidence)
    built = [section.make(inputs) for section in sections()]   # each in registry order, before anything is written
    _check_tables([name for b in built for name in b.tables])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    main_plots = [difference_heatmap(board.differences), *task_bars(board.summary)]
    plots = [p for p in (*main_plots, *(p for b in built for p in b.plots)) if p is not None]
    plot_paths = tuple(write_atomic(out / p.filename, p.png) for p in plots)
    tables = [write_atomic(out / name, text) for b in built for name, text in b.tables.items()]
    blocks = [b.blocks for b in built if b.blocks]
    csv_path = write_atomic(out / "results.csv", data.results.to_csv(index=False, lineterminator="\n"))
    md_path = write_atomic(out / "leaderboard.md", render_markdown(board, plots, blocks, evidence))
    html_path = write_atomic(out / "leaderboard.html", render_html(board, plots, blocks, evidence))
    tex_path = write_atomic(out / "leaderboard.tex", render_latex(board))

    o = board.overall
    paths = ReportPaths(
        out_dir=out,
        results_csv=csv_path,
        leaderboard_md=md_path,
        leaderboard_html=html_path,
        leaderboard_tex=tex_path,
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
        tables=tuple(tables),
        experiments=sources.experiments,
        conflicts=len(sources.conflicts),
    )
    if len(names) > 1:
        logger.info("report over %d experiments: not logged to MLflow (it belongs to no single sweep)", len(names))
    elif data.parent_run_id is None:
        logger.warning("experiment %r has no parent sweep run: report not logged to MLflow", names[0])
    else:
        log_report(client, data.parent_run_id, paths.files)
    return paths
