"""A cell's fingerprint: the hash of everything that determines its result.

Resume skips a cell only when MLflow holds a FINISHED run of it with the same fingerprint; change the
grid, the trainer, the mode, the selection metric, the search settings, the features (their keys) or
the code of `sea`, and the cell is computed again (older runs stay, tagged with their own fingerprint).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from orchestrator.config import SweepConfig
from orchestrator.extract import backbone_parts
from orchestrator.sweep.cells import Cell, candidate_configs, reference_config
from orchestrator.sweep.trial import unit_id

FINGERPRINT_VERSION = 1


@functools.cache
def sea_version() -> str:
    """`sea`'s version plus a digest of its source files: any change to the method's code counts."""
    import sea

    digest = hashlib.sha256()
    for path in sorted(Path(sea.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{getattr(sea, '__version__', '0')}+{digest.hexdigest()[:12]}"


# where checkpoints go, retries, CPU threads and which cells fine-tune: none of them changes a cell's numbers
FINETUNE_OPERATIONAL = ("storage", "max_failures", "cpus_per_worker", "backbones", "tasks")


@functools.cache
def finetune_version() -> str:
    """A digest of orchestrator/finetune's source files: a change to the fine-tuning loop counts."""
    digest = hashlib.sha256()
    for path in sorted((Path(__file__).parents[1] / "finetune").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def stored_splits(task: str) -> tuple[str, ...]:
    from tasks import get_task

    return get_task(task).stored_splits


def cell_units(cell: Cell) -> list[str]:
    """The unit ids (backbone|task|split) a cell reads: every part of its backbone, every stored split."""
    return [unit_id(part, cell.task, split) for part in backbone_parts(cell.backbone)
            for split in stored_splits(cell.task)]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=list)


def cell_fingerprint(cfg: SweepConfig, cell: Cell, keys: Mapping[str, str]) -> str:
    """The 24-hex-digit fingerprint of `cell` under `cfg`, reading the units whose keys are `keys`."""
    from tasks import get_task

    search = cfg.mode == "select" and cfg.search.algorithm != "grid" and cell.method != "logreg"
    body = {
        "version": FINGERPRINT_VERSION,
        "cell": cell.as_dict(),
        "mode": cfg.mode,
        "candidates": candidate_configs(cfg, cell.method) if cfg.mode == "select" else reference_config(cell.method),
        "search": cfg.to_dict()["search"] if search else None,
        "trainer": cfg.to_dict()["trainer"],
        "accelerated": cfg.resources.gpu > 0,
        "metric": get_task(cell.task).metric,
        "features": {unit: keys.get(unit, "") for unit in cell_units(cell)},
        "sea": sea_version(),
    }
    if cell.method == "finetune":   # images, not features, are trained on: its recipe and its code count
        recipe = {k: v for k, v in cfg.to_dict()["finetune"].items() if k not in FINETUNE_OPERATIONAL}
        body.update(finetune=recipe, finetune_code=finetune_version(), search=None,
                    trainer=None, accelerated=None, sea=None)
    return hashlib.sha256(_canonical(body).encode()).hexdigest()[:24]


def current_keys(store_uri: str, cells: Iterable[Cell]) -> dict[str, str]:
    """Unit id -> the key the store's pointer names now, for units that have one (a sweep run without
    an extraction in front of it, e.g. on a store filled by `seabench extract`)."""
    from orchestrator.errors import OrchestratorError
    from orchestrator.extract import FeatureStore

    store = FeatureStore(store_uri)
    keys: dict[str, str] = {}
    for cell in cells:
        for unit in cell_units(cell):
            if unit in keys:
                continue
            try:
                backbone, rest = unit.split("|", 1)
                keys[unit] = store.key_for(backbone, *rest.rsplit("|", 1))
            except OrchestratorError:
                continue  # not extracted: the cell fails with the store's message, and its fingerprint says ""
    return keys


def config_hash(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical(config).encode()).hexdigest()[:16]
