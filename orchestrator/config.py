"""Sweep configuration: YAML loaded with `yaml.safe_load`, validated into frozen dataclasses.

Every error names the offending key and what it expects; unknown keys are rejected with the
closest valid name. `--set a.b=value` overrides are applied to the raw mapping before validation
(values are YAML-parsed, so `--set seeds=[0,1]` and `--set trainer.epochs=5` both work).
Round trip: `SweepConfig.from_dict(cfg.to_dict()) == cfg`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.finetune_config import FinetuneConfig, check_finetune
from orchestrator.names import check_safe_name
from orchestrator.protocol import STORE_DTYPES
from orchestrator.runs import DEFAULT_TRACKING_URI
from orchestrator.schema import (
    CUSTOM_BUILDERS,
    apply_override,
    build,
    check_meta,
    coerce,
    read_yaml,
    set_path,
    unknown_key,
    where_of,
)
from sea.methods import PROTOCOL_GRID, SCHEDULES, get_method, method_names

MODES = ("select", "reference")
ALGORITHMS = ("grid", "random", "optuna")


def _choices(*values: str, help: str = "") -> dict:
    return {"choices": values, "help": help}


@dataclass(frozen=True)
class HalvingConfig:   # successive halving in a grid cell's K-batch (sea.halving): rungs min_epochs·factor^i < epochs
    factor: int = field(default=3, metadata={"min": 2})                 # the best 1/factor go on at each rung
    min_epochs: int | None = field(default=None, metadata={"min": 1})   # None: epochs // factor^⌈log_factor K⌉


@dataclass(frozen=True)
class SearchConfig:
    algorithm: str = field(default="grid", metadata=_choices(*ALGORITHMS))
    num_samples: int = field(default=16, metadata={"min": 1, "help": "trials per cell (random/optuna)"})
    asha: bool = False                 # early-stop trials on per-epoch validation (random/optuna)
    grace_period: int = field(default=5, metadata={"min": 1})
    reduction_factor: int = field(default=3, metadata={"min": 2})
    max_concurrent: int | None = field(default=None, metadata={"min": 1})
    # cells searched at once: each is one Tune driver process on the head node
    max_concurrent_cells: int = field(default=4, metadata={"min": 1})
    halving: HalvingConfig | None = None   # grid mode: successive halving of each cell's heads (null: off)


@dataclass(frozen=True)
class TrainerConfig:
    epochs: int = field(default=100, metadata={"min": 1})
    batch_size: int = field(default=256, metadata={"min": 1})
    momentum: float = 0.9
    schedule: str = field(default="constant", metadata=_choices(*SCHEDULES))
    bf16: bool = False
    checkpoint_every: int = field(default=10, metadata={"min": 0, "help": "epochs between a head trial's checkpoints (0: never)"})


SELECT_ON = ("last", "last_k")


@dataclass(frozen=True)
class ProtocolConfig:
    """How a head cell selects and refits (sea.select_and_refit); reference mode ignores it."""

    # last: the final epoch's validation metric; last_k: its mean over the last k epochs (robust to chaotic runs)
    select_on: str = field(default="last_k", metadata=_choices(*SELECT_ON))
    k: int | None = field(default=None, metadata={"min": 1})   # None: max(5, ceil(0.1 * trainer.epochs))
    refits: int = field(default=1, metadata={"min": 1})        # refits of the winner, each its own batch order


@dataclass(frozen=True)
class ExtractionConfig:
    shard_size: int = field(default=4096, metadata={"min": 1})
    dtype: str = field(default="float16", metadata=_choices(*STORE_DTYPES))
    batch_size: int = field(default=64, metadata={"min": 1})
    num_gpus_per_actor: float = field(default=0.0, metadata={"min": 0})
    num_actors: int | None = field(default=None, metadata={"min": 1})
    skip_bad_images: bool = False      # unreadable images are left out (and counted) instead of stopping


@dataclass(frozen=True)
class ResourcesConfig:
    cpu: float = field(default=1.0, metadata={"min": 0})
    gpu: float = field(default=0.0, metadata={"min": 0, "help": "fractions share one GPU between trials"})


@dataclass(frozen=True)
class ReportConfig:
    out: str | None = None             # None: reports/<name>
    reference_csv: str | None = None   # user-supplied fine-tuning numbers


Axes = tuple[tuple[str, tuple[float, ...]], ...]


@dataclass(frozen=True)
class GridConfig:
    """Overrides of the protocol grid: `common` axes apply to every method searching that axis,
    `per_method` axes to one method only. Unset axes keep the protocol defaults (orchestrator.sweep.cells)."""

    common: Axes = ()
    per_method: tuple[tuple[str, Axes], ...] = ()

    def own(self, method: str, axis: str) -> tuple[float, ...] | None:
        """The per-method override of `axis`, or None."""
        return dict(dict(self.per_method).get(method, ())).get(axis)

    def shared(self, axis: str) -> tuple[float, ...] | None:
        """The override of `axis` for every method, or None."""
        return dict(self.common).get(axis)


@dataclass(frozen=True)
class SweepConfig:
    name: str
    backbones: tuple[str, ...]
    tasks: tuple[str, ...] = ()
    optional_tasks: tuple[str, ...] = ()   # run only where their data is present; else skipped with a note
    methods: tuple[str, ...] = ("linear", "sea")
    plugins: tuple[str, ...] = ()          # modules or .py files that register methods (sea.register_method)
    seeds: tuple[int, ...] = (0, 1, 2)
    data_root: str = "data"
    store: str = "features"
    tracking_uri: str = DEFAULT_TRACKING_URI
    address: str | None = None             # None: start a local Ray cluster
    num_cpus: int | None = field(default=None, metadata={"min": 1})   # local cluster size
    mode: str = field(default="select", metadata=_choices(*MODES))
    max_failures: int = field(default=2, metadata={"min": 0})
    tune_dir: str | None = None            # Tune's own trial folders; None: a temporary folder
    search: SearchConfig = SearchConfig()
    protocol: ProtocolConfig = ProtocolConfig()
    grid: GridConfig = GridConfig()
    trainer: TrainerConfig = TrainerConfig()
    extraction: ExtractionConfig = ExtractionConfig()
    resources: ResourcesConfig = ResourcesConfig()
    report: ReportConfig = ReportConfig()
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)   # orchestrator/finetune_config.py

    @property
    def all_tasks(self) -> tuple[str, ...]:
        return self.tasks + tuple(t for t in self.optional_tasks if t not in self.tasks)

    @property
    def report_dir(self) -> Path:
        return Path(self.report.out) if self.report.out else Path("reports") / self.name

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepConfig:
        if isinstance(data, Mapping) and data.get("plugins"):   # before the grid, which may name their methods
            # a .py file means what it means here, also to a Ray worker started elsewhere
            plugins = [str(Path(p).resolve()) if p.endswith(".py") else p
                       for p in coerce(tuple[str, ...], data["plugins"], "plugins")]
            _import_plugins(plugins)
            data = {**data, "plugins": plugins}
        cfg = build(cls, data, "")
        _check_cross_fields(cfg)
        return cfg


# ---------------------------------------------------------------- validation machinery


def _import_plugins(plugins: Sequence[str]) -> None:
    from sea.errors import SeaError
    from sea.methods import import_plugins

    try:
        import_plugins(plugins)
    except SeaError as exc:
        raise OrchestratorError(f"config: 'plugins': {exc}") from None


def _build_axes(data: object, path: str, allowed: Sequence[str]) -> Axes:
    if not isinstance(data, Mapping):
        raise OrchestratorError(f"config: {path!r} expects a mapping of axis -> list of values")
    axes = []
    for axis in sorted(data):
        if axis not in allowed:
            raise unknown_key(axis, allowed, path)
        values = coerce(tuple[float, ...], data[axis], where_of(path, axis))
        if not values:
            raise OrchestratorError(f"config: {where_of(path, axis)!r} needs at least one value")
        axes.append((axis, values))
    return tuple(axes)


def _build_grid(data: object, path: str) -> GridConfig:
    if not isinstance(data, Mapping):
        raise OrchestratorError(f"config: {path!r} expects a mapping (axis: [values] or method: {{axis: [values]}})")
    if "finetune" in data:   # its candidates are each backbone's recipe's lr × weight_decay
        raise OrchestratorError(f"config: {where_of(path, 'finetune')!r}: set finetune.lr and finetune.weight_decay "
                                "(every backbone) or finetune.recipes.<backbone>.lr / .weight_decay")
    methods = method_names()
    common = {k: v for k, v in data.items() if k not in methods}
    per_method = tuple((m, _build_axes(data[m], where_of(path, m), get_method(m).axes))
                       for m in sorted(data) if m in methods)
    for key in common:
        if key not in PROTOCOL_GRID:
            raise unknown_key(key, [*PROTOCOL_GRID, *methods], path)
    return GridConfig(_build_axes(common, path, list(PROTOCOL_GRID)), per_method)


CUSTOM_BUILDERS[GridConfig] = _build_grid


def _check_cross_fields(cfg: SweepConfig) -> None:
    # the name is the MLflow experiment and the default report folder reports/<name>
    check_safe_name(cfg.name, "config: 'name'", "it names the report folder")
    if not cfg.backbones:
        raise OrchestratorError("config: 'backbones' needs at least one backbone")
    if not cfg.all_tasks:
        raise OrchestratorError("config: 'tasks' (or 'optional_tasks') needs at least one task")
    if not cfg.seeds:
        raise OrchestratorError("config: 'seeds' needs at least one seed")
    if not cfg.methods:
        raise OrchestratorError("config: 'methods' needs at least one method")
    for i, method in enumerate(cfg.methods):
        check_meta({"choices": method_names()}, method, f"methods[{i}]")
    check_finetune(cfg.finetune, cfg.methods, cfg.mode)
    _check_protocol(cfg)
    for key in ("backbones", "tasks", "optional_tasks", "methods", "seeds"):
        values = getattr(cfg, key)
        if len(set(values)) != len(values):
            raise OrchestratorError(f"config: {key!r} lists a value twice: {list(values)}")


def _check_protocol(cfg: SweepConfig) -> None:   # what selection reads of the epochs: k, the halving rungs
    k, halving, epochs = cfg.protocol.k, cfg.search.halving, cfg.trainer.epochs
    if k is not None and k > epochs:
        raise OrchestratorError(f"config: 'protocol.k'={k} is more than trainer.epochs={epochs}: "
                                "the mean of the last k epochs needs k ≤ epochs; lower protocol.k or leave it "
                                "null for max(5, ⌈0.1·epochs⌉)")
    if halving is not None and (cfg.search.algorithm != "grid" or cfg.mode != "select"):
        raise OrchestratorError(f"config: 'search.halving' halves a grid cell's heads (search.algorithm=grid, mode="
                                f"select), not algorithm={cfg.search.algorithm}, mode={cfg.mode}; use search.asha")
    if halving is not None and (halving.min_epochs or 1) >= epochs:   # the default is at least 1
        raise OrchestratorError(f"config: 'search.halving.min_epochs'={halving.min_epochs} leaves no rung before the "
                                f"last of trainer.epochs={epochs} (rungs: min_epochs·factor^i < epochs)")


def _to_plain(value: object) -> Any:
    if isinstance(value, GridConfig):
        out: dict[str, Any] = {axis: list(vals) for axis, vals in value.common}
        out.update({m: {a: list(v) for a, v in axes} for m, axes in value.per_method})
        return out
    if hasattr(value, "to_plain"):   # a section whose YAML shape is not its field layout (finetune.recipes)
        return value.to_plain()
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


# ---------------------------------------------------------------- loading and overrides


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), *,
                data: Mapping[str, Any] | None = None, store: str | None = None, tracking_uri: str | None = None,
                address: str | None = None, out: str | None = None) -> SweepConfig:
    """Read `path` (or take `data`), apply `--set` overrides then the common flags, and validate."""
    raw = read_yaml(path) if path is not None else dict(data or {})
    for assignment in overrides:
        apply_override(raw, assignment)
    flags = {"store": store, "tracking_uri": tracking_uri, "address": address, "report.out": out}
    for key, value in flags.items():
        if value is not None:
            set_path(raw, key, value)
    try:
        return SweepConfig.from_dict(raw)
    except OrchestratorError as exc:
        where = f"{path}: " if path is not None else ""
        raise OrchestratorError(f"{where}{exc}") from exc
