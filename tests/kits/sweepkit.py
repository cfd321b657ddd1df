"""Shared by the sweep tests: synthetic stored features and a tiny sweep configuration."""

from __future__ import annotations

from pathlib import Path

from synthstore import write_task

from orchestrator.config import SweepConfig, load_config
from orchestrator.sweep.tracking import SweepTracker

TINY_GRID = {"lr": [0.8, 1.6], "weight_decay": [1e-6], "lamda": [0.1], "eta": [0.2], "alpha": [0.05],
             "c": [0.1, 10.0]}
SIZES = {"digits": {"train": 120, "test": 60}, "dtd": {"train": 90, "val": 45, "test": 60}}
CLASSES = {"digits": 10, "dtd": 47}


def make_store(tmp_path: Path) -> str:
    """Synthetic features of backbones bb (16-d) and cc (8-d) on digits (carved val) and dtd (official val)."""
    uri = str(tmp_path / "store")
    for seed, (backbone, dim) in enumerate((("bb", 16), ("cc", 8))):
        for task, sizes in SIZES.items():
            write_task(uri, backbone, task, sizes, CLASSES[task], dim=dim, seed=seed)
    return uri


def make_config(tmp_path: Path, store: str, **overrides: object) -> SweepConfig:
    data = {"name": "sweep-test", "backbones": ["bb"], "tasks": ["digits"], "methods": ["linear", "sea"],
            "seeds": [0], "store": store, "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "trainer": {"epochs": 3, "batch_size": 32}, "grid": TINY_GRID, "max_failures": 0,
            "resources": {"cpu": 1}, "tune_dir": str(tmp_path / "tune")}
    data.update(overrides)
    return load_config(data=data)


def runs_by_cell(cfg: SweepConfig) -> dict[str, list]:
    tracker = SweepTracker(cfg.tracking_uri, cfg.name)
    tracker.start()
    out: dict[str, list] = {}
    for run in tracker.cell_runs():
        out.setdefault(run.data.tags["cell_id"], []).append(run)
    return out
