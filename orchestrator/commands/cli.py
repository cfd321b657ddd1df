"""The `seabench` command line: a few flat verbs, each one module under `orchestrator.commands`.

Only the chosen verb's module is imported (so `seabench fit` starts within a fraction of a second of
`import torch`, without Ray, MLflow or timm); `seabench --help` imports them all to list them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from orchestrator.errors import OrchestratorError

# verb -> module in orchestrator.commands exposing HELP, add_arguments(parser) and run(args) -> int
COMMANDS: dict[str, str] = {
    "fit": "fit",
    "list": "listing",
    "extract": "extract",
    "run": "run",
    "status": "status",
    "plan": "plan",
    "report": "report",
}
DESCRIPTION = "Linear evaluation of frozen features with and without SeA, at cluster scale."


def _module(verb: str) -> ModuleType:
    return importlib.import_module(f"orchestrator.commands.{COMMANDS[verb]}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every verb, or of `only` (the others are then listed without their options)."""
    parser = argparse.ArgumentParser(prog="seabench", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for verb in COMMANDS:
        if only is not None and verb != only:
            sub.add_parser(verb)   # named, so that argparse still lists and accepts it
            continue
        module = _module(verb)
        cmd = sub.add_parser(verb, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def _chosen_verb(argv: Sequence[str]) -> str | None:
    """The verb of `argv` when it is the first argument (the usual case), else None (parse them all)."""
    return argv[0] if argv and argv[0] in COMMANDS else None


def _is_user_error(exc: BaseException) -> bool:
    """One of the packages' own error types. A package whose errors module was never imported cannot
    have raised one, so this imports nothing (tasks would import timm)."""
    kinds: list[type] = [OrchestratorError]
    for module, name in (("sea.errors", "SeaError"), ("tasks.errors", "TaskError")):
        if module in sys.modules:
            kinds.append(getattr(sys.modules[module], name))
    return isinstance(exc, tuple(kinds))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_chosen_verb(argv)).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"seabench {args.command}: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _is_user_error(exc):
            raise
        print(f"seabench {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
