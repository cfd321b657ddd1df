"""The method registry: every method seabench trains is declared once, by one `Method` entry.

An entry says everything the rest of the code asks about a method, so that a new augmentation is one
function (`sea.augment`'s contract: `(StepContext, slice) -> Augmented`) plus one `register_method`:

* `name`: its name in configs, MLflow tags and the report;
* `stream`: the id of its random stream (a head's numbers come from `SeedSequence([seed, stream])`,
  documented in `sea.augment`); fixed forever, never shared, so a result stays reproducible when
  methods are added;
* `axes`: the hyper-parameters a sweep searches for it (for a head: `HeadConfig` fields);
* `grid`: its own protocol values for an axis whose meaning is its own (mixup's η is a Beta
  concentration), else `PROTOCOL_GRID`'s;
* `augment`: for a head, the function that perturbs a batch, a callable or "module:function" (imported
  when a pass first trains it); None for the plain head;
* `kind`: "head" (trained in the K-batched pass, `sea.train_heads`), "probe" (logreg's L-BFGS) or
  "finetune" (backbone and head on images, run by the orchestrator);
* `mixing`: its `augment` returns a re-weighting of the batch (`Augmented.mix`); such heads train
  first in a K-batch, where their weight gradients share one GEMM;
* `eta_is_step`: η = 0 makes it the plain head, trained in the plain group.

The registration order is the report's order. Pure Python: importing it imports no torch.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sea.errors import SeaError

KINDS = ("head", "probe", "finetune")
# a head's hyper-parameters: the fields of `sea.HeadConfig` besides its method
HEAD_KNOBS = ("lr", "weight_decay", "eta", "alpha", "lamda", "delta")
# the knobs every head's loss reads; a head's own knobs are its other axes
_LOSS_KNOBS = ("lr", "weight_decay", "lamda", "delta")
SCHEDULES: tuple[str, ...] = ("constant", "cosine")   # a head pass's lr schedule (sea.TrainSettings.schedule)
OPTIMISATION_AXES = ("lr", "weight_decay", "lamda")   # the baseline searches exactly these; SeA adds η, α
PROTOCOL_GRID: Mapping[str, tuple[float, ...]] = MappingProxyType({
    "lr": (0.4, 0.8, 1.6, 3.2),
    "weight_decay": (1e-6, 1e-5, 1e-4),
    "lamda": (0.05, 0.1, 0.2),
    "eta": (0.1, 0.2, 0.4, 0.8),
    "alpha": (0.01, 0.05, 0.1),
    "c": tuple(10.0 ** k for k in range(-4, 5)),   # log-spaced 1e-4 … 1e4 (sea.fit_logreg's default)
})


@dataclass(frozen=True)
class Method:
    name: str
    stream: int
    axes: tuple[str, ...]
    kind: str = "head"
    augment: Callable[..., Any] | str | None = None
    mixing: bool = False
    eta_is_step: bool = False
    grid: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    @property
    def knobs(self) -> tuple[str, ...]:
        """The `HeadConfig` fields a head's training reads (the others do not change its numbers)."""
        if self.kind != "head":
            return ()
        return (*_LOSS_KNOBS, *(a for a in self.axes if a not in _LOSS_KNOBS))

    def augmenter(self) -> Callable[..., Any] | None:
        if not isinstance(self.augment, str):
            return self.augment
        module, _, name = self.augment.partition(":")
        return getattr(importlib.import_module(module), name)


_REGISTRY: dict[str, Method] = {}


def _check(method: Method, replace: bool) -> None:
    where = f"method {method.name!r}"
    if not isinstance(method.name, str) or not method.name.isidentifier() or method.name != method.name.lower():
        raise SeaError(f"{where}: a method name is a lower-case identifier (it becomes a config key)")
    if method.kind not in KINDS:
        raise SeaError(f"{where}: kind {method.kind!r} is not one of {KINDS}")
    if method.name in _REGISTRY and not replace:
        raise SeaError(f"{where} is already registered; pass replace=True to redefine it")
    taken = {m.stream: m.name for m in _REGISTRY.values() if m.name != method.name}
    if isinstance(method.stream, bool) or not isinstance(method.stream, int) or method.stream < 0:
        raise SeaError(f"{where}: stream must be an int >= 0, got {method.stream!r}")
    if method.stream in taken:
        raise SeaError(f"{where}: random stream {method.stream} is {taken[method.stream]!r}'s; use an unused "
                       f"id such as {max(m.stream for m in _REGISTRY.values()) + 1}")
    unknown = [a for a in method.axes if method.kind == "head" and a not in HEAD_KNOBS]
    if unknown:
        raise SeaError(f"{where}: axes {unknown} are not HeadConfig fields ({', '.join(HEAD_KNOBS)})")
    if method.kind != "head" and (method.augment is not None or method.mixing or method.eta_is_step):
        raise SeaError(f"{where}: augment / mixing / eta_is_step apply to kind 'head' only")
    if method.mixing and method.augment is None:
        raise SeaError(f"{where}: mixing=True needs an augment function that returns Augmented.mix")
    stray = sorted(set(method.grid) - set(method.axes))
    if stray:
        raise SeaError(f"{where}: grid values for {stray}, which are not among its axes {method.axes}")


def register_method(method: Method, replace: bool = False) -> Method:
    """Add (or, with replace=True, redefine) a method; it is then trainable, searchable and reported."""
    if method.name in BUILT_IN:
        raise SeaError(f"method {method.name!r} is built in; register the variant under a name of its own")
    _check(method, replace)
    _REGISTRY[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a method added by `register_method` (a built-in one cannot be removed)."""
    if name in BUILT_IN:
        raise SeaError(f"method {name!r} is built in and cannot be unregistered")
    _REGISTRY.pop(name, None)


def get_method(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SeaError(f"method {name!r} is unknown; {hint}registered: {', '.join(_REGISTRY)}") from None


def method_names(kind: str | None = None) -> tuple[str, ...]:
    """Registered methods in registration (= report) order, optionally of one kind."""
    return tuple(n for n, m in _REGISTRY.items() if kind is None or m.kind == kind)


def ordered_methods(methods: Iterable[str]) -> list[str]:
    """These method names in the registry's order; unregistered names (old runs) sorted after."""
    present = set(methods)
    return [m for m in _REGISTRY if m in present] + sorted(present - set(_REGISTRY))


def grid_values(method: str, axis: str) -> tuple[float, ...]:
    """The protocol's values of one axis for one method: its own if it declares them."""
    own = get_method(method).grid
    return tuple(own[axis]) if axis in own else PROTOCOL_GRID[axis]


def import_plugins(plugins: Iterable[str]) -> None:
    """Import what registers methods (`register_method` at import time): a config's `plugins`, `seabench fit
    --plugin`. Each is a module name or a `.py` file (relative to the working directory); every process that
    trains or reads a plugin's method imports them, the sweep's workers too. Importing one twice does nothing."""
    for plugin in plugins:
        if not isinstance(plugin, str) or not plugin:
            raise SeaError(f"plugin {plugin!r}: give a module name or a .py file")
        # a file's module is named after its resolved path too: two extras.py in two folders are two plugins
        where = str(Path(plugin).resolve())
        name = (f"sea_plugin_{Path(plugin).stem}_{hashlib.sha256(where.encode()).hexdigest()[:8]}"
                if plugin.endswith(".py") else plugin)
        if name in sys.modules:
            continue
        try:
            if plugin.endswith(".py"):
                spec = importlib.util.spec_from_file_location(name, where)
                if spec is None or not Path(plugin).is_file():
                    raise ImportError(f"no file {Path(plugin).resolve()}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
            else:
                importlib.import_module(plugin)
        except ImportError as exc:
            raise SeaError(f"plugin {plugin!r} cannot be imported ({exc}); it must be importable where seabench "
                           "runs and on every Ray node (installed, on PYTHONPATH, or a .py file on a shared path)") from None


def group_order() -> tuple[str, ...]:
    """The groups of a K-batch in training order: the plain heads, the mixing ones, then the others."""
    heads = [m for m in _REGISTRY.values() if m.kind == "head" and m.augment is not None]
    return ("linear", *(m.name for m in heads if m.mixing), *(m.name for m in heads if not m.mixing))


_BUILT_IN = (
    Method("linear", 0, OPTIMISATION_AXES),
    Method("sea", 1, (*OPTIMISATION_AXES, "eta", "alpha"), augment="sea.augment:sea_step", mixing=True,
           eta_is_step=True),
    Method("fgsm", 2, (*OPTIMISATION_AXES, "eta"), augment="sea.augment:fgsm_step", eta_is_step=True),
    Method("noise", 3, (*OPTIMISATION_AXES, "eta"), augment="sea.augment:noise_step", eta_is_step=True),
    # η is mixup's Beta(η, η) concentration, not a step length: its own protocol values
    Method("mixup", 4, (*OPTIMISATION_AXES, "eta"), augment="sea.augment:mixup_step", mixing=True,
           grid={"eta": (0.2, 0.5, 1.0, 2.0)}),
    Method("logreg", 5, ("c",), kind="probe"),                  # inverse L2 strength of the L-BFGS probe
    # backbone + head on images; its lr and weight decay come from each backbone's recipe
    Method("finetune", 6, ("lr", "weight_decay"), kind="finetune"),
)
for _method in _BUILT_IN:
    _REGISTRY[_method.name] = _method
BUILT_IN = frozenset(m.name for m in _BUILT_IN)
