"""Configurations of the SeA trainer family: one `HeadConfig` per head, one `TrainSettings` per pass; what a
pass returns (`TrainResult`) and, between two of its epochs, its checkpoint (`TrainState`).

TrainState, what `train_heads` hands to `on_checkpoint` and resumes from, is everything a later epoch
reads: the epoch reached, the weights and momentum buffers of the heads still training (in training order,
`active` naming them by caller index), the batch-order generator, every training head's random streams
(torch noise generator state, numpy mixup bit-generator state), the validation history, and halving's
record (each head's stop epoch, the dropped heads' weights). Resuming
from it continues the very same computation, so the run ends bitwise equal to one never interrupted (same
device type, same thread count: the usual conditions of torch's determinism).

`TrainState.to_dict` is plain data — tensors, ints, floats, strings, None, lists and dicts — so it saves
with `torch.save` and loads back with `torch.load(weights_only=True)`. A `signature` (configs, the settings
that change numbers, the data's shape) travels with it: resuming another run's state is an error.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from sea.augment import HeadRandom
from sea.errors import SeaError
from sea.methods import HEAD_KNOBS, SCHEDULES, get_method, method_names

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

    method: str = "sea"         # a head of sea.methods: linear | sea | fgsm | noise | mixup | …
    lr: float = 1.6
    weight_decay: float = 1e-6
    eta: float = 0.8            # step (sea/fgsm/noise); for mixup: Beta(eta, eta) concentration
    alpha: float = 0.01         # projection temperature (sea)
    lamda: float = 0.1          # loss temperature λ ("lambda" is a Python keyword); mixup's coefficient is m
    delta: float = 0.0          # margin

    def __post_init__(self) -> None:
        heads = method_names("head")
        if self.method not in heads:
            known = self.method in method_names()
            hint = ("logreg is not a linear head: use fit_logreg or select_and_refit(configs='logreg')"
                    if self.method == "logreg" else f"{self.method} is not a linear head ({get_method(self.method).kind})"
                    if known else f"choose one of {', '.join(heads)} (sea.methods registers more)")
            raise SeaError(f"HeadConfig.method={self.method!r} is {'not a head' if known else 'unknown'}; {hint}")
        own = "HeadConfig"
        for name in HEAD_KNOBS:
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
    bf16: bool = False          # bfloat16 GEMMs, float32 residuals (see trainer): pays on CUDA, runs on CPU too
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


STATE_VERSION = 1
CheckpointCallback = Callable[[dict], None]


def check_every(value: object, name: str = "checkpoint_every") -> int:
    """Raises SeaError unless `value` is an int >= 0 (0: no checkpoints)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SeaError(f"{name}={value!r} is invalid: checkpoint every N epochs with an int N >= 1, or 0 for never")
    return value


def due(epoch: int, every: int, last: int) -> bool:
    """A checkpoint after this epoch (1-based): every `every` epochs, never after the last (nothing is left)."""
    return every > 0 and epoch % every == 0 and epoch < last


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True)


@dataclass
class TrainState:
    epoch: int                       # epochs completed
    weight: torch.Tensor             # heads still training, in training order: A×C×d
    momentum: torch.Tensor           # their SGD momentum buffers
    active: list[int]                # caller index of each of them
    shuffle: torch.Tensor            # the batch-order generator's state
    noise: list[torch.Tensor]        # per active head: its noise generator's state
    mix: list[dict]                  # per active head: its mixup bit generator's state
    history: list[list[dict | None]]
    stopped: list[int]               # per caller index: epochs trained (meaningful for dropped heads)
    dropped: dict[int, torch.Tensor]   # caller index -> weights where a rung dropped it
    signature: dict

    @classmethod
    def capture(cls, epoch: int, weight: torch.Tensor, momentum: torch.Tensor, active: list[int],
                shuffle: torch.Generator, random: list[HeadRandom], history: list[list[dict | None]],
                stopped: list[int], dropped: dict[int, torch.Tensor], signature: dict) -> TrainState:
        """A copy of the live state (later epochs mutate the live tensors in place)."""
        return cls(epoch, _cpu(weight), _cpu(momentum), list(active), shuffle.get_state(),
                   [_cpu(r.noise.get_state()) for r in random], [r.mix.bit_generator.state for r in random],
                   [list(e) for e in history], list(stopped), {i: _cpu(w) for i, w in dropped.items()}, signature)

    def to_dict(self) -> dict:
        return {"version": STATE_VERSION, "epoch": self.epoch, "weight": self.weight, "momentum": self.momentum,
                "active": self.active, "shuffle": self.shuffle, "noise": self.noise, "mix": self.mix,
                "history": self.history, "stopped": self.stopped, "dropped_index": list(self.dropped),
                "dropped_weight": list(self.dropped.values()), "signature": self.signature}

    @classmethod
    def from_dict(cls, state: object, signature: dict) -> TrainState:
        """The state `to_dict` gave, checked against this run's `signature` (SeaError on any mismatch)."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise SeaError(f"resume: not a sea training state of version {STATE_VERSION} (got "
                           f"{type(state).__name__}); pass what on_checkpoint received, or None to start afresh")
        theirs = state.get("signature", {})
        differ = sorted(k for k in {*signature, *theirs} if signature.get(k) != theirs.get(k))
        if differ:
            raise SeaError(f"resume: the checkpoint belongs to another run (it differs in {', '.join(differ)}); "
                           "resume only the run that wrote it, or start afresh")
        return cls(state["epoch"], state["weight"], state["momentum"], list(state["active"]), state["shuffle"],
                   list(state["noise"]), list(state["mix"]), [list(e) for e in state["history"]],
                   list(state["stopped"]), dict(zip(state["dropped_index"], state["dropped_weight"])), theirs)

    def restore_streams(self, shuffle: torch.Generator, random: list[HeadRandom]) -> None:
        """Puts the saved generator states into this run's generators (the heads in `active` order)."""
        shuffle.set_state(self.shuffle)
        for r, noise, mix in zip(random, self.noise, self.mix, strict=True):
            r.noise.set_state(noise)
            r.mix.bit_generator.state = mix
