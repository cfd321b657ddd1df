"""The SEABENCH_* variables the package reads (found in its source), and those a worker node needs:
cluster.yaml and kuberay.yaml must set the latter on every node; the driver's own tuning is exempt."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# read by the driver only (on the head): the experiment lease, MLflow's retry, how long to wait for nodes
# and where the autoscaler's node types are
DRIVER_ONLY = ("SEABENCH_LEASE_", "SEABENCH_TRACKING_", "SEABENCH_WAIT_FOR_NODES", "SEABENCH_NODE_TYPES")


def read_by_package() -> set[str]:
    found: set[str] = set()
    for folder in ("orchestrator", "tasks", "sea"):
        for path in (REPO / folder).rglob("*.py"):
            found |= set(re.findall(r"\"(SEABENCH_[A-Z_]+)\"", path.read_text()))
    return found


def needed_on_workers() -> set[str]:
    return {name for name in read_by_package() if not name.startswith(DRIVER_ONLY)}
