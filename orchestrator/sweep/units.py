"""The extraction cost of the units a sweep reads, from their manifests: per unit (logged on the sweep's
parent run) and per cell (the sum over the units it reads, logged on the cell's run), so that a report
can put a method's compute beside the extraction it amortises."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.errors import OrchestratorError
from orchestrator.names import slug
from orchestrator.sweep.cells import Cell
from orchestrator.sweep.fingerprint import cell_units


@dataclass(frozen=True)
class UnitCost:
    rows: int
    seconds: float      # compute seconds of its shards on the actors (0 where not recorded)
    nodes: int          # distinct nodes that computed its shards

    @property
    def images_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def unit_costs(store_uri: str, keys: Mapping[str, str]) -> dict[str, UnitCost]:
    """unit id -> its extraction cost, for every unit of `keys` whose manifest is in the store."""
    from orchestrator.extract import FeatureStore

    store = FeatureStore(store_uri)
    out: dict[str, UnitCost] = {}
    for unit, key in keys.items():
        backbone, rest = unit.split("|", 1)
        task, split = rest.rsplit("|", 1)
        try:
            manifest = store.manifest_of(backbone, task, split, key)
        except OrchestratorError:
            continue   # not extracted: the cells that need it fail with the store's message
        records = manifest.shards.values()
        out[unit] = UnitCost(manifest.num_rows, sum(r.seconds for r in records),
                             len({r.node for r in records if r.node}))
    return out


def metric_name(prefix: str, unit: str) -> str:
    """An MLflow metric name for a unit id (MLflow allows letters, digits, _ - . / and spaces)."""
    return f"{prefix}/{slug(unit, allowed='A-Za-z0-9_.-', limit=200, fallback='unit')}"


def unit_metrics(costs: Mapping[str, UnitCost]) -> dict[str, float]:
    out: dict[str, float] = {}
    for unit, cost in sorted(costs.items()):
        out[metric_name("extract_s", unit)] = cost.seconds
        out[metric_name("extract_images_per_s", unit)] = cost.images_per_s
    return out


def cell_extract_metrics(cell: Cell, costs: Mapping[str, UnitCost]) -> dict[str, float]:
    """What extracting a cell's units cost (shared by every cell of its backbone and task)."""
    units = [costs[u] for u in cell_units(cell) if u in costs]
    rows, seconds = sum(u.rows for u in units), sum(u.seconds for u in units)
    return {"extract_s": seconds, "extract_images": float(rows)} if units else {}


def csv_table(costs: Mapping[str, UnitCost], keys: Mapping[str, str]) -> str:
    lines = ["unit,feature_key,rows,extract_s,images_per_s,nodes"]
    lines += [f'"{unit}",{keys.get(unit, "")},{c.rows},{c.seconds:.3f},{c.images_per_s:.2f},{c.nodes}'
              for unit, c in sorted(costs.items())]
    return "\n".join(lines) + "\n"


def phase_costs(phases: dict[str, float], wall: float, load: float, cpu: float, gpu: float) -> dict[str, float]:
    """Cost metrics of a cell: wall, CPU- and GPU-seconds per phase (GPU-s = wall × the trial's GPU share
    when it ran on CUDA, else 0), the feature loading, and the whole cell."""
    out = {"load_wall_s": load, "cell_wall_s": wall, "cell_cpu_s": cpu, "cell_gpu_s": wall * gpu}
    for phase in ("select", "refit", "test"):
        if phase in phases:
            out[f"{phase}_wall_s"] = phases[phase]
            out[f"{phase}_cpu_s"] = phases[f"{phase}_cpu"]
            out[f"{phase}_gpu_s"] = phases[phase] * gpu
    return out
