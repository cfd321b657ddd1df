"""A tqdm bar on stderr when it is a terminal, and the bare iterable otherwise."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def progress_bar(items: Iterable[Any], enabled: bool, desc: str, unit: str, total: int | None = None) -> Any:
    """`items`, wrapped in a tqdm bar on stderr if `enabled` and stderr is a terminal."""
    if enabled and sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, unit=unit, total=total, file=sys.stderr)
    return items
