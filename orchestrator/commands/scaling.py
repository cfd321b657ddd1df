"""The flags of the verbs that run on a cluster that may grow (run, extract): `--autoscaling` and
`--wait-for-nodes`, one definition for both; they become $SEABENCH_AUTOSCALING and $SEABENCH_WAIT_FOR_NODES,
which orchestrator.raycluster and orchestrator.capacity read (so actors and drivers see the same)."""

from __future__ import annotations

import argparse
import os


def _duration(text: str) -> str:
    from orchestrator.capacity import parse_duration

    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def scaling_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--autoscaling", action="store_true",
                        help=f"the cluster's autoscaler may add nodes: ask it for {what} instead of refusing what "
                             "no node has yet, refuse shapes no node type holds, and withdraw the request when each "
                             "stage ends (same as $SEABENCH_AUTOSCALING=1)")
    parser.add_argument("--wait-for-nodes", type=_duration, default=None, metavar="DURATION",
                        help="with --autoscaling: how long a stage waits for nodes of its shape to join before it "
                             "stops with an error naming the shape (1800, 30m, 2h; default 30m; same as "
                             "$SEABENCH_WAIT_FOR_NODES)")


def apply_scaling(args: argparse.Namespace) -> None:
    """Export the flags to the environment that the cluster helpers read."""
    from orchestrator.capacity import WAIT_ENV
    from orchestrator.raycluster import AUTOSCALING_ENV

    if args.autoscaling:
        os.environ[AUTOSCALING_ENV] = "1"
    if args.wait_for_nodes is not None:
        os.environ[WAIT_ENV] = args.wait_for_nodes
