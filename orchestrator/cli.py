"""The `seabench` command line: a few flat verbs, each one module under `orchestrator.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from orchestrator.errors import OrchestratorError

# verb -> module in orchestrator.commands exposing HELP, add_arguments(parser) and run(args) -> int
COMMANDS: dict[str, str] = {
    "fit": "fit",
    "list": "listing",
    "extract": "extract",
    "run": "run",
    "report": "report",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seabench",
        description="Linear evaluation of frozen features with and without SeA, at cluster scale.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for verb, module_name in COMMANDS.items():
        module = importlib.import_module(f"orchestrator.commands.{module_name}")
        cmd = sub.add_parser(verb, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from sea.errors import SeaError
    from tasks.errors import TaskError

    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (SeaError, TaskError, OrchestratorError) as exc:
        print(f"seabench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"seabench {args.command}: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
