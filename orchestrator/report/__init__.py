"""The report: a sweep's MLflow experiment read into long tables, statistics with confidence intervals,
plots, and the Markdown/HTML pages. The names below are what the rest of seabench may use."""

from orchestrator import lazy_exports

_EXPORTS = {
    "ReportPaths": "build", "build_report": "build", "write_atomic": "build",
    "ExperimentData": "data", "load_experiment": "data",
    "Leaderboard": "stats", "compute_leaderboard": "stats", "paired_differences": "stats", "summarise": "stats",
    "render_html": "render", "render_latex": "render", "render_markdown": "render",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
