"""Everything that schedules, stores and reports: Ray extraction, the feature store, Tune sweeps,
MLflow tracking, leaderboard reports and the `seabench` command line.

Layout, along the data flow (docs/architecture.md): `extract/` (units → actors → Parquet store),
`sweep/` (cells → Tune trials → MLflow), `report/` (MLflow → tables, plots, pages), `commands/` (the
verbs). The modules at this level (config, names, runs, tracking_retry, errors, progress, raycluster,
capacity) serve all three.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__version__ = "0.1.0"


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` giving `exports` (name -> module of `package`), imported on first use.

    Each folder's `__init__` names its public API this way without importing Ray, timm or MLflow
    until a name that needs them is used.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__
