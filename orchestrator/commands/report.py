"""`seabench report`: leaderboard (CSV, Markdown, HTML, LaTeX, plots) of one or more sweeps' MLflow experiments."""

from __future__ import annotations

import argparse
import math

from orchestrator.runs import DEFAULT_TRACKING_URI

HELP = ("Write the leaderboard of one or more sweeps (results.csv, leaderboard.md/.html/.tex, plots) "
        "from MLflow.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", action="append", default=[], metavar="NAME",
                        help="MLflow experiment name (the sweep config's `name`); repeat to combine several sweeps")
    parser.add_argument("--experiment-pattern", action="append", default=[], metavar="GLOB",
                        help="also every experiment whose name matches this shell-style pattern, e.g. 'sea-*'")
    parser.add_argument("--prefer", action="append", default=[], metavar="NAME|newest",
                        help="when a (backbone, task, method, seed) has results in several experiments: take this "
                             "experiment's, or the most recently started run's with 'newest'; repeat to rank")
    parser.add_argument("--out", required=True, help="folder to write the report into (created if missing)")
    parser.add_argument(
        "--reference",
        default=None,
        help="fine-tuning reference CSV: columns task, optional backbone, and top1 or value (percent)",
    )
    parser.add_argument(
        "--tracking-uri", default=DEFAULT_TRACKING_URI, help=f"MLflow tracking URI (default {DEFAULT_TRACKING_URI})"
    )
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE (or a .py file) first: the sections and methods it registers "
                             "(report order) are in the report; repeatable")


def run(args: argparse.Namespace) -> int:
    from orchestrator.report import build_report  # heavy imports (mlflow, matplotlib) only for this verb
    from sea.methods import import_plugins

    import_plugins(args.plugin)
    paths = build_report(args.experiment, args.out, tracking_uri=args.tracking_uri, reference_csv=args.reference,
                         prefer=args.prefer, patterns=args.experiment_pattern)
    for path in paths.files:
        print(path)
    if len(paths.experiments) > 1:
        print(f"combined {len(paths.experiments)} experiments: {', '.join(paths.experiments)}"
              + (f" ({paths.conflicts} cell(s) decided by --prefer)" if paths.conflicts else ""))
    if paths.n_cells:
        ci = "n/a" if math.isnan(paths.ci_low) else f"[{paths.ci_low:+.2f}, {paths.ci_high:+.2f}]"
        print(f"SeA − linear over {paths.n_cells} cells: {paths.mean_difference:+.2f} points, 95 % CI {ci}")
    print(paths.verdict)
    if paths.finetune_within is not None:
        print(f"SeA within 1 point of fine-tuning on {paths.finetune_within} of {paths.finetune_compared} tasks")
    if paths.n_failed:
        print(f"{paths.n_failed} failed cell(s) listed in the report")
    if paths.parent_run_id:
        print(f"logged to MLflow run {paths.parent_run_id} under artifact path 'report'")
    elif len(paths.experiments) > 1:
        print("not logged to MLflow: a report over several experiments belongs to no single sweep")
    return 0
