"""`seabench list`: the registered tasks or backbones, and what is available locally."""

from __future__ import annotations

import argparse
import json

HELP = "List the registered tasks or backbones (with local availability)."

COLUMNS = {
    "tasks": ("name", "title", "classes", "metric", "val_rule", "sizes"),
    "backbones": ("name", "presets", "arch", "weights", "feature_dim", "available"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=sorted(COLUMNS), help="what to list")
    parser.add_argument("--data-root", default="data", help="dataset root folder (for local split sizes)")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def _rows(what: str, data_root: str) -> list[dict]:
    import tasks

    if what == "tasks":
        return tasks.list_tasks(data_root)
    return tasks.list_backbones()


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={_cell(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ",".join(_cell(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def format_table(rows: list[dict], columns: tuple[str, ...]) -> str:
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def run(args: argparse.Namespace) -> int:
    rows = _rows(args.what, args.data_root)
    if args.json:
        for row in rows:
            print(json.dumps(row, default=str))
    else:
        print(format_table(rows, COLUMNS[args.what]))
    return 0
