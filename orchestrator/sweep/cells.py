"""The cell plan and the search spaces of a sweep.

A cell is (backbone, task, method, seed): one Tune trial in grid mode, one result row in MLflow.
What a method searches and the protocol's values of each axis are declared with the method, in the
registry `sea.methods` (`Method.axes`, `PROTOCOL_GRID`, a method's own `grid`). The baseline searches
exactly the optimisation axes SeA searches; SeA only adds η and α.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.runs import CELL_TAGS, cell_id
from sea.methods import get_method, grid_values

if TYPE_CHECKING:
    from orchestrator.config import SweepConfig

# reference mode: the authors' fixed defaults (sea-method.md) = HeadConfig's defaults; logreg's fixed C
REFERENCE_LOGREG_C = 1.0


@dataclass(frozen=True)
class Cell:
    backbone: str
    task: str
    method: str
    seed: int

    @property
    def cell_id(self) -> str:
        return cell_id(self.__dict__)

    def as_dict(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "task": self.task, "method": self.method, "seed": self.seed}

    @classmethod
    def from_id(cls, cell_id: str) -> Cell:
        backbone, task, method, seed = cell_id.rsplit("|", len(CELL_TAGS) - 1)
        return cls(backbone, task, method, int(seed))


def axis_values(cfg: SweepConfig, method: str, axis: str) -> tuple[float, ...]:
    """Per-method override > method-specific default > shared override > protocol default.

    A shared override (e.g. `grid.eta`) never reaches an axis whose meaning is method-specific
    (mixup's η is a Beta concentration): change that one with `grid.mixup.eta`.
    """
    if method == "finetune":   # each backbone's recipe has its own (finetune.backbone_recipe): the section's, if set
        return getattr(cfg.finetune, axis) or ()
    own = cfg.grid.own(method, axis)
    if own is not None:
        return own
    if axis in get_method(method).grid:
        return grid_values(method, axis)
    shared = cfg.grid.shared(axis)
    return shared if shared is not None else grid_values(method, axis)


def halving_settings(search: Any) -> dict[str, Any] | None:
    """A config's `search.halving` as {"factor", "min_epochs"} (TrialContext.halving, the budget), None when off."""
    halving = getattr(search, "halving", None)
    return None if halving is None else {"factor": halving.factor, "min_epochs": halving.min_epochs}


def candidate_configs(cfg: SweepConfig, method: str) -> list[dict[str, Any]]:
    """The grid of one method as plain dicts (HeadConfig fields, or {"c": …} for logreg), in a fixed order."""
    axes = get_method(method).axes
    grids = [axis_values(cfg, method, axis) for axis in axes]
    return [dict(zip(axes, combo)) for combo in itertools.product(*grids)]


def candidate_rows(method: str, grid: list[dict[str, Any]], val_metrics: list[dict], epochs_run: int | list[int],
                   best_index: int, val_history: list[list[dict | None]] | None = None, k: int = 1,
                   metric: str = "top1") -> list[dict[str, Any]]:
    """The candidate table: each configuration's knobs, its validation top-1 and mean per-class (the
    selection statistic), the epochs it ran (per candidate: a halving rung where it stopped there) and
    whether it was selected; with a curve (`val_history`, see sea.curves), also the scores of the last
    epoch it was scored in and the spread (max − min of `metric`) over its last k epochs."""
    from sea.curves import last_scores, window_spread

    ran = [epochs_run] * len(grid) if isinstance(epochs_run, int) else list(epochs_run)
    rows = []
    for i, (config, scores) in enumerate(zip(grid, val_metrics)):
        row = {"candidate": i, **{axis: config[axis] for axis in get_method(method).axes},
               "val_top1": scores["top1"], "val_mean_per_class": scores["mean_per_class"]}
        last = last_scores(val_history, i) if val_history else None
        if last is not None:
            row.update(val_last_top1=last["top1"], val_last_mean_per_class=last["mean_per_class"],
                       val_spread=window_spread(val_history, k, i, metric))
        rows.append({**row, "epochs_run": ran[i], "selected": int(i == best_index)})
    return rows


def reference_config(method: str) -> dict[str, Any]:
    """The authors' fixed configuration: HeadConfig defaults (η=0.8, α=0.01, λ=0.1, lr 1.6, wd 1e-6)."""
    return {"c": REFERENCE_LOGREG_C} if method == "logreg" else {}


def search_space(cfg: SweepConfig, method: str) -> dict[str, Any]:
    """Tune search space for random/Optuna search: log-uniform over each axis' [min, max] of the grid.

    Every axis is a positive scale parameter, hence log-uniform; a single-valued axis stays fixed.
    """
    from ray import tune

    space: dict[str, Any] = {}
    for axis in get_method(method).axes:
        values = axis_values(cfg, method, axis)
        lo, hi = min(values), max(values)
        space[axis] = lo if lo == hi else tune.loguniform(lo, hi)
    return space


def plan_cells(cfg: SweepConfig, tasks: Iterable[str]) -> list[Cell]:
    """All cells of the sweep, task-major so trials of one task's features run close together; finetune
    cells only for real backbones (an ensemble is stored features) in finetune.backbones / finetune.tasks."""
    tasks = list(tasks)
    if "finetune" in cfg.methods:
        _check_finetune_names(cfg, tasks)
    cells = [Cell(b, t, m, s) for t in tasks for b in cfg.backbones for m in cfg.methods for s in cfg.seeds
             if m != "finetune" or _finetuned(cfg, b, t)]
    if "finetune" in cfg.methods:   # every fine-tuned backbone's recipe resolves (keys it has not are refused)
        from orchestrator.finetune import backbone_recipe

        for backbone in dict.fromkeys(c.backbone for c in cells if c.method == "finetune"):
            backbone_recipe(cfg.finetune, backbone)
    return cells


def _finetuned(cfg: SweepConfig, backbone: str, task: str) -> bool:
    ft = cfg.finetune
    return (not backbone.startswith("ensemble:") and (not ft.backbones or backbone in ft.backbones)
            and (not ft.tasks or task in ft.tasks))


def _check_finetune_names(cfg: SweepConfig, tasks: list[str]) -> None:
    from orchestrator.errors import OrchestratorError

    for key, names, known in (("backbones", cfg.finetune.backbones, cfg.backbones),
                              ("tasks", cfg.finetune.tasks, cfg.all_tasks),
                              ("recipes", cfg.finetune.recipes.names(), cfg.backbones)):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise OrchestratorError(f"config: 'finetune.{key}' names {unknown}, not among the sweep's {key} "
                                    f"{list(known)}")


def expand_backbones(names: Iterable[str]) -> tuple[str, ...]:
    """Expand `preset:<name>` entries with tasks.PRESETS; other names pass through unchanged."""
    from orchestrator.errors import OrchestratorError
    from tasks import PRESETS

    out: list[str] = []
    for name in names:
        if name.startswith("preset:"):
            key = name[len("preset:"):]
            if key not in PRESETS:
                raise OrchestratorError(f"unknown backbone preset {key!r}; presets: {', '.join(sorted(PRESETS))}")
            out.extend(PRESETS[key])
        else:
            out.append(name)
    return tuple(dict.fromkeys(out))


def candidates_csv(rows: list[dict[str, Any]]) -> str:
    """The candidate table as CSV: the union of the rows' columns, in first-seen order."""
    import csv
    import io

    columns = list(dict.fromkeys(k for row in rows for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
