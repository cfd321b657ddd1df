"""Configurations of the SeA trainer family: one `HeadConfig` per head, one `TrainSettings` per pass."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from sea.errors import SeaError

METHODS: tuple[str, ...] = ("linear", "sea", "fgsm", "noise", "mixup", "logreg")
HEAD_METHODS: tuple[str, ...] = METHODS[:5]
SCHEDULES: tuple[str, ...] = ("constant", "cosine")
_OPTIMISATION = ("lr", "weight_decay", "lamda", "delta")
# the HeadConfig fields each head method uses (the others do not change its training)
METHOD_KNOBS: dict[str, tuple[str, ...]] = {
    "linear": _OPTIMISATION,
    "sea": (*_OPTIMISATION, "eta", "alpha"),
    "fgsm": (*_OPTIMISATION, "eta"),
    "noise": (*_OPTIMISATION, "eta"),
    "mixup": (*_OPTIMISATION, "eta"),          # eta: the Beta(eta, eta) concentration
}
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


def _finite(owner: str, name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise SeaError(f"{owner}.{name} must be a finite number, got {value!r}")
    return float(value)


def _check(owner: str, name: str, value: float, ok: Callable[[float], bool], rule: str, fix: str) -> None:
    if not ok(_finite(owner, name, value)):
        raise SeaError(f"{owner}.{name}={value!r} is invalid: it must be {rule}; {fix}")


@dataclass(frozen=True)
class HeadConfig:
    """One classifier configuration in a K-batch; every head owns its hyper-parameters."""

    method: str = "sea"         # linear | sea | fgsm | noise | mixup
    lr: float = 1.6
    weight_decay: float = 1e-6
    eta: float = 0.8            # step (sea/fgsm/noise); for mixup: Beta(eta, eta) concentration
    alpha: float = 0.01         # projection temperature (sea)
    lamda: float = 0.1          # loss temperature λ ("lambda" is a Python keyword); mixup's coefficient is m
    delta: float = 0.0          # margin

    def __post_init__(self) -> None:
        if self.method not in HEAD_METHODS:
            hint = ("logreg is not a linear head: use fit_logreg or select_and_refit(configs='logreg')"
                    if self.method == "logreg" else f"choose one of {', '.join(HEAD_METHODS)}")
            raise SeaError(f"HeadConfig.method={self.method!r} is unknown; {hint}")
        own = "HeadConfig"
        for name in ("lr", "weight_decay", "eta", "alpha", "lamda", "delta"):
            # numpy scalars from a grid become plain floats (hashable, JSON- and MLflow-friendly)
            object.__setattr__(self, name, _finite(own, name, getattr(self, name)))
        _check(own, "lr", self.lr, lambda v: v >= 0, ">= 0", "use a positive learning rate such as 1.6")
        _check(own, "weight_decay", self.weight_decay, lambda v: v >= 0, ">= 0", "use e.g. 1e-6 or 0")
        _check(own, "eta", self.eta, lambda v: v >= 0, ">= 0", "eta=0 means no augmentation")
        if self.method == "mixup":
            _check(own, "eta", self.eta, lambda v: v > 0, "> 0 for mixup (it is the Beta(eta, eta) "
                   "concentration)", "use e.g. eta=0.2, or method='linear' for no mixing")
        _check(own, "alpha", self.alpha, lambda v: v > 0, "> 0 (a softmax temperature)", "use e.g. 0.01")
        _check(own, "lamda", self.lamda, lambda v: v > 0, "> 0 (a softmax temperature)", "use e.g. 0.1")
        _finite(own, "delta", self.delta)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainSettings:
    """Shared by all K heads of one pass over the data.

    schedule "cosine" is applied per epoch: epoch e (0-based) of E uses lr·½(1+cos(π e / E)),
    i.e. torch's CosineAnnealingLR(T_max=E, eta_min=0) stepped once per epoch.
    """

    epochs: int = 100
    batch_size: int = 256
    momentum: float = 0.9
    schedule: str = "constant"
    seed: int = 0
    # the batch order's own seed (None: `seed`); a refit repeated with another batch order changes only this
    shuffle_seed: int | None = None
    device: str = "cpu"
    bf16: bool = False          # CUDA only (ignored on CPU): bfloat16 GEMMs, float32 residuals (see trainer)
    # float64 exists for fidelity checks: SeA's dynamics amplify float32 rounding (see trainer)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise SeaError(f"TrainSettings.{name} must be an int, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.shuffle_seed is not None and (isinstance(self.shuffle_seed, bool)
                                              or not isinstance(self.shuffle_seed, numbers.Integral)):
            raise SeaError(f"TrainSettings.shuffle_seed must be an int or None, got {self.shuffle_seed!r}")
        if self.epochs < 1:
            raise SeaError(f"TrainSettings.epochs={self.epochs} is invalid: train for at least 1 epoch")
        if self.batch_size < 1:
            raise SeaError(f"TrainSettings.batch_size={self.batch_size} is invalid: use a batch size >= 1 "
                           "(the reference uses 256)")
        _check("TrainSettings", "momentum", self.momentum, lambda v: 0 <= v < 1, "in [0, 1)", "use e.g. 0.9")
        object.__setattr__(self, "momentum", float(self.momentum))
        if self.schedule not in SCHEDULES:
            raise SeaError(f"TrainSettings.schedule={self.schedule!r} is unknown; choose one of "
                           f"{', '.join(SCHEDULES)}")
        if self.dtype not in DTYPES:
            raise SeaError(f"TrainSettings.dtype={self.dtype!r} is unknown; choose one of {', '.join(DTYPES)}")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as err:
            raise SeaError(f"TrainSettings.device={self.device!r} is not a torch device: {err}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SeaError(f"TrainSettings.device={self.device!r}: CUDA is not available here; use 'cpu'")

    def as_dict(self) -> dict:
        return asdict(self)


# frozen, hence safe as a shared default argument
DEFAULT_SETTINGS = TrainSettings()


@dataclass
class TrainResult:
    weights: torch.Tensor                       # K x C x d in settings.dtype (float32 by default), on CPU
    configs: tuple[HeadConfig, ...]
    # per epoch, per config: {"top1", "mean_per_class"}, or None where not measured (the head stopped at
    # a halving rung before that epoch, or nothing read that epoch's validation)
    val_history: list[list[dict | None]] = field(default_factory=list)
    seconds: float = 0.0
    stopped_epoch: int = 0                      # epochs actually run
    stopped_at: list[int] = field(default_factory=list)   # per config: epochs it trained (a rung, if dropped)
