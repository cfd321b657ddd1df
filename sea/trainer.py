"""Trains K bias-free linear heads at once, in one pass over the data, without autograd.

Per step, for every head: clean logits z = W x (one GEMM for all K heads), the head's augmentation
(closed form, see `sea.direction` and `sea.augment`), then SGD with momentum on
L = (1/B) Σ λ·CE((W x̃_i − δ t_i)/λ, t_i), whose gradient is ∂L/∂W = (1/B) Σ (p_i − t_i) x̃_iᵀ.
SeA and mixup batches are re-weightings of the clean batch, x̃ = A x with A = diag(a) + diag(b)·P
(resp. m·I + (1−m)·perm, m being mixup's coefficient; λ is only ever the loss temperature), so
W x̃ = A z costs B·B·C and ∂L/∂W = (Aᵀ(p − t))ᵀ x / B joins the plain heads' gradients in one GEMM
over all those heads; only fgsm and noise form x̃ (k×B×d) explicitly. The update follows
torch.optim.SGD (dampening 0, no Nesterov, momentum μ): g += wd·W; buf = μ·buf + g; W -= lr·buf.

bf16: the B×d GEMMs that feed the update (weight gradients, P·X or X·Xᵀ) run in bfloat16; the logits,
every residual and the projection P stay float32 (at α = 0.01 a bf16 score would move the projection's
softmax logits by ≈ 0.4). It pays on CUDA; on CPU the same path runs (slower on most CPUs: a check of the
path, which is how CI runs it). Autocast contexts of the caller are switched off inside `train_heads`.

Determinism: W0 is nn.Linear(d, C, bias=False)'s default init drawn from a generator seeded by
`settings.seed` (the same for every head); each epoch shuffles with torch.randperm from a second
generator seeded by `settings.shuffle_seed` (default `settings.seed`; the last partial batch is kept); noise and mixup draw from a
per-head stream seeded by (seed, method), documented in `sea.augment`. Hence K heads trained together equal the same heads
trained one at a time, up to float rounding — and a head that survives a `prune` (successive
halving, `sea.halving`) trains as it does in the full batch: dropping heads only slices them out.
Checkpoints (`sea.config.TrainState`): every `checkpoint_every` epochs the whole training state goes to
`on_checkpoint`; `resume=` that state continues the same computation, bitwise.
Note that at large steps (lr ≈ 1, η ≈ 0.8) SeA's dynamics amplify rounding differences quickly
(float32 vs float64 can drift by percents within a few epochs); `TrainSettings(dtype="float64")` runs the same algorithm in double precision.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.functional import one_hot

from sea.augment import HeadRandom, StepContext, Workspace, bmm, group_of, group_position, matmul_into
from sea.config import (
    DEFAULT_SETTINGS,
    DTYPES,
    CheckpointCallback,
    HeadConfig,
    TrainResult,
    TrainSettings,
    TrainState,
    check_every,
    due,
)
from sea.direction import loss_residual
from sea.errors import SeaError
from sea.methods import HEAD_KNOBS, get_method
from sea.metrics import batched_scores
from sea.validation import (
    as_features,
    check_configs,
    check_val_classes,
    infer_num_classes,
    progress_bar,
    validate_features,
)

EpochCallback = Callable[[int, list["dict | None"]], "bool | None"]
# (epoch, val_history so far, caller indices still training) -> those that go on, or None for all
PruneCallback = Callable[[int, list[list["dict | None"]], list[int]], "list[int] | None"]

# learning-rate multiplier for epoch e of E
SCHEDULE_FACTORS: dict[str, Callable[[int, int], float]] = {
    "constant": lambda e, total: 1.0,
    "cosine": lambda e, total: 0.5 * (1.0 + math.cos(math.pi * e / total)),
}


def initial_weight(num_classes: int, dim: int, seed: int) -> torch.Tensor:
    """nn.Linear(dim, num_classes, bias=False).weight as torch.manual_seed(seed) would give it."""
    weight = torch.empty(num_classes, dim)
    torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=torch.Generator().manual_seed(seed))
    return weight


@dataclass
class _Heads:
    """The K heads in training order (grouped by augmentation), with per-head hyper-parameters."""

    order: list[int]                 # training position -> index in the caller's configs
    groups: list[tuple[str, slice]]  # contiguous runs of one augmentation
    n_shared: int                    # leading heads trained on re-weightings of the batch (incl. plain)
    params: dict[str, torch.Tensor]  # lr, weight_decay, eta, alpha, lamda, delta: K×1×1
    random: list[HeadRandom]
    workspace: Workspace
    augmenters: dict[str, Callable[..., Any]]   # group -> its augment function (sea.methods)

    @classmethod
    def build(cls, configs: Sequence[HeadConfig], seed: int, device: torch.device,
              dtype: torch.dtype = torch.float32, bf16: bool = False) -> _Heads:
        keys = [group_of(c.method, c.eta) for c in configs]
        order = sorted(range(len(configs)), key=lambda i: (group_position(keys[i]), i))
        params = {name: torch.tensor([getattr(configs[i], name) for i in order], dtype=dtype,
                                     device=device).view(-1, 1, 1) for name in HEAD_KNOBS}
        random = [HeadRandom.create(seed, configs[i].method, device) for i in order]
        augmenters = {key: get_method(key).augmenter() for key in set(keys) - {"linear"}}
        return cls(order, *_grouped([keys[i] for i in order]), params, random, Workspace(bf16), augmenters)

    def subset(self, positions: list[int]) -> _Heads:
        """The heads at these training positions (ascending): same relative order, their streams continue."""
        keys = [key for key, hs in self.groups for _ in range(hs.start, hs.stop)]
        index = torch.tensor(positions, device=self.params["lr"].device)
        return _Heads([self.order[p] for p in positions], *_grouped([keys[p] for p in positions]),
                      {name: p.index_select(0, index) for name, p in self.params.items()},
                      [self.random[p] for p in positions], self.workspace, self.augmenters)


def _grouped(keys: list[str]) -> tuple[list[tuple[str, slice]], int]:
    """Contiguous runs of one augmentation in training order, and how many leading heads share the batch."""
    groups: list[tuple[str, slice]] = []
    for pos, key in enumerate(keys):
        if groups and groups[-1][0] == key:
            groups[-1] = (key, slice(groups[-1][1].start, pos + 1))
        else:
            groups.append((key, slice(pos, pos + 1)))
    shared = [hs.stop for key, hs in groups if key == "linear" or get_method(key).mixing]
    return groups, max(shared, default=0)


def _step(weight: torch.Tensor, buf: torch.Tensor, x: torch.Tensor, y: torch.Tensor, heads: _Heads,
          lr: torch.Tensor, momentum: float) -> None:
    k, c, d = weight.shape
    b = x.shape[0]
    hp, ws = heads.params, heads.workspace
    onehot = one_hot(y, c).to(x.dtype)
    z = (x @ weight.view(k * c, d).T).view(b, k, c).transpose(0, 1).contiguous()   # K×B×C clean logits
    grad = ws.get("grad", weight.shape, weight)
    m = heads.n_shared
    # heads [0, m) train on x̃ = mix @ x (plain: mix = I), so ∂L/∂W = (mixᵀ r)ᵀ x: one GEMM for all
    q = torch.empty(m, b, c, dtype=z.dtype, device=z.device)
    ctx = StepContext(x, onehot, z, weight, hp["eta"], hp["alpha"], hp["lamda"], hp["delta"], heads.random, ws)
    for key, hs in heads.groups:
        lamda, delta = hp["lamda"][hs], hp["delta"][hs]
        if key == "linear":
            q[hs] = loss_residual(z[hs], onehot, lamda, delta)
            continue
        aug = heads.augmenters[key](ctx, hs)
        targets = onehot if aug.targets is None else aug.targets
        if aug.mix is not None:
            r = loss_residual(torch.bmm(aug.mix, z[hs]), targets, lamda, delta)
            q[hs] = torch.bmm(aug.mix.transpose(1, 2), r)
        else:
            r = loss_residual(torch.bmm(aug.features, weight[hs].transpose(1, 2)), targets, lamda, delta)
            grad[hs] = bmm(r.transpose(1, 2), aug.features, ws.bf16) / b
    if m:
        q /= b
        matmul_into(q.transpose(1, 2).reshape(m * c, b), x, grad[:m].view(m * c, d), ws.bf16)
    grad.addcmul_(weight, hp["weight_decay"])
    buf.mul_(momentum).add_(grad)           # buf starts at 0, so the first step gives buf = g
    weight.addcmul_(buf, lr, value=-1.0)


def predict(weights: torch.Tensor, x: Any) -> torch.Tensor:
    """argmax W x: labels (n,) for a C×d weight, (K, n) for K×C×d; x is any (n, d) array."""
    w = weights.detach()
    dim = w.shape[-1]
    feats = as_features(x, "prediction", dim).to(w.device, w.dtype)
    with torch.no_grad():
        return torch.matmul(feats, w.transpose(-1, -2)).argmax(-1)


def _scores(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor, num_classes: int,
            order: list[int], k: int) -> list[dict | None]:
    """Per caller index (k of them): the head's scores, None for a head no longer training."""
    # heads in chunks so that the K×n×C logits never exceed ~2**26 elements
    chunk = max(1, (1 << 26) // max(1, x.shape[0] * num_classes))
    pred = torch.cat([torch.matmul(x, w.transpose(1, 2)).argmax(-1) for w in weight.split(chunk)])
    out: list[dict | None] = [None] * k
    for i, scores in zip(order, batched_scores(pred, y, num_classes)):
        out[i] = scores
    return out


def train_heads(x_train: Any, y_train: Any, configs: Sequence[HeadConfig],
                settings: TrainSettings = DEFAULT_SETTINGS, num_classes: int | None = None,
                val: tuple[Any, Any] | None = None, on_epoch: EpochCallback | None = None,
                progress: bool = False, stop_after: int | None = None, prune: PruneCallback | None = None,
                val_epochs: Collection[int] | None = None, checkpoint_every: int = 0,
                on_checkpoint: CheckpointCallback | None = None, resume: dict | None = None) -> TrainResult:
    """Trains every configuration in `configs` in one pass over (x_train, y_train).

    Features are L2-normalised here. With `val`, each epoch appends per-config {"top1",
    "mean_per_class"} (percent, clean validation features) to `val_history`, None for a head that no
    longer trains and, when `val_epochs` (1-based) is given and there is no `on_epoch`, for every head
    at an epoch outside it (nothing reads that epoch: no validation pass is spent on it). `on_epoch(epoch,
    metrics)` is called after every epoch (epoch counts from 1; metrics is [] without `val`) and
    may return True to stop. `stop_after` ends training after that many epochs of the
    `settings.epochs`-epoch schedule (the horizon stays settings.epochs, as for an early stop).
    `prune(epoch, val_history, active)` (needs `val`; `sea.halving.RungPruner`) may return the caller
    indices of `active` that go on: the others stop there (`stopped_at`, their weights as they were) and
    leave the batch, so later epochs cost less; the survivors train exactly as in the full batch.
    `progress` shows a tqdm bar over epochs when stderr is a terminal. Every `checkpoint_every` epochs
    (0: never; not after the last) `on_checkpoint(state)` receives the training state as plain data
    (`sea.config.TrainState.to_dict`); `resume=state` continues from it and ends bitwise equal to the
    run never interrupted (the epochs before it are not trained, scored or passed to `on_epoch` again).
    """
    started = time.perf_counter()
    configs = check_configs(configs)
    if not isinstance(settings, TrainSettings):
        raise SeaError(f"settings must be a TrainSettings, got {type(settings).__name__}")
    last = settings.epochs if stop_after is None else stop_after
    if isinstance(last, bool) or not isinstance(last, int) or not 1 <= last <= settings.epochs:
        raise SeaError(f"stop_after={stop_after!r} is invalid: use an int in 1..settings.epochs "
                       f"({settings.epochs}), or None for the whole schedule")
    x, y = validate_features(x_train, y_train, name="train", num_classes=num_classes)
    xv = yv = None
    if val is not None:
        if not isinstance(val, (tuple, list)) or len(val) != 2:
            raise SeaError("val must be a pair (x_val, y_val)")
        xv, yv = validate_features(val[0], val[1], name="validation", num_classes=num_classes,
                                   dim=x.shape[1])
    num_classes = infer_num_classes(num_classes, y, *([yv] if yv is not None else []))
    if yv is not None:
        check_val_classes(y, yv)
    check_every(checkpoint_every)
    if prune is not None and yv is None:
        raise SeaError("prune ranks heads on validation: pass val=(x_val, y_val) with it")
    device = torch.device(settings.device)
    dtype = DTYPES[settings.dtype]
    heads = _Heads.build(configs, settings.seed, device, dtype, bf16=settings.bf16)
    k, (n, d) = len(configs), x.shape
    weight = initial_weight(num_classes, d, settings.seed).to(device, dtype).repeat(k, 1, 1)
    buf = torch.zeros_like(weight)
    x, y = x.to(device, dtype), y.to(device)
    if xv is not None:
        xv, yv = xv.to(device, dtype), yv.to(device)
    shuffle = torch.Generator().manual_seed(settings.seed if settings.shuffle_seed is None else settings.shuffle_seed)
    batch = x.new_empty(min(settings.batch_size, n), d)
    factor = SCHEDULE_FACTORS[settings.schedule]
    history: list[list[dict | None]] = []
    stopped = [last] * k                    # per caller index: the epochs it trained
    dropped: dict[int, torch.Tensor] = {}   # caller index -> its weights when a rung dropped it
    epochs_run = 0
    signature = {"configs": [c.as_dict() for c in configs], "rows": n, "dim": d, "classes": num_classes,
                 "last": last, "device": device.type, "bf16": heads.workspace.bf16,
                 **{f: getattr(settings, f) for f in ("epochs", "batch_size", "momentum", "schedule", "seed",
                                                       "shuffle_seed", "dtype")}}
    if resume is not None:
        state = TrainState.from_dict(resume, signature)
        position = {i: pos for pos, i in enumerate(heads.order)}
        heads = heads.subset(sorted(position[i] for i in state.active))
        if heads.order != state.active:
            raise SeaError("resume: the checkpoint's heads are not in this run's training order")
        state.restore_streams(shuffle, heads.random)
        weight, buf = state.weight.to(device, dtype), state.momentum.to(device, dtype)
        epochs_run, history, stopped = state.epoch, state.history, state.stopped
        dropped = {i: w.to(device, dtype) for i, w in state.dropped.items()}
    # precision is chosen per operation (see the module docstring), never by a caller's autocast
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        epochs = progress_bar(range(epochs_run, last), progress, f"{len(configs)} sea head(s)", "epoch")
        for epoch in epochs:
            perm = torch.randperm(n, generator=shuffle).to(device)
            lr = heads.params["lr"] * factor(epoch, settings.epochs)
            for idx in perm.split(settings.batch_size):
                # gathered per batch into one reused buffer: the batch stays in cache for the
                # whole step, and a fresh B×d tensor per step would cost page faults
                xb = torch.index_select(x, 0, idx, out=batch[: len(idx)])
                _step(weight, buf, xb, y.index_select(0, idx), heads, lr, settings.momentum)
            epochs_run = epoch + 1
            metrics: list[dict | None] = []
            if xv is not None:
                read = val_epochs is None or on_epoch is not None or epochs_run in val_epochs
                metrics = _scores(weight, xv, yv, num_classes, heads.order, k) if read else [None] * k
                history.append(metrics)
                if read and hasattr(epochs, "set_postfix"):
                    epochs.set_postfix(best_val_top1=f"{max(m['top1'] for m in metrics if m):.2f}")
            keep = None if prune is None else prune(epochs_run, history, list(heads.order))
            if keep is not None and len(set(keep)) < len(heads.order):
                kept = set(keep)
                for pos, i in enumerate(heads.order):
                    if i not in kept:
                        dropped[i], stopped[i] = weight[pos].clone(), epochs_run
                positions = [pos for pos, i in enumerate(heads.order) if i in kept]
                index = torch.tensor(positions, device=device)
                weight, buf, heads = weight.index_select(0, index), buf.index_select(0, index), heads.subset(positions)
            if on_epoch is not None and on_epoch(epochs_run, metrics):
                break
            if on_checkpoint is not None and due(epochs_run, checkpoint_every, last):
                on_checkpoint(TrainState.capture(epochs_run, weight, buf, heads.order, shuffle, heads.random,
                                                 history, stopped, dropped, signature).to_dict())
        if hasattr(epochs, "close"):
            epochs.close()
    final = {**dropped, **{i: weight[pos] for pos, i in enumerate(heads.order)}}
    for i in heads.order:   # an early stop (on_epoch) ends the survivors there
        stopped[i] = epochs_run
    weights = torch.stack([final[i] for i in range(k)]).cpu()
    return TrainResult(weights, configs, history, time.perf_counter() - started, epochs_run, stopped)
