"""Every method of the trainer against an outside float64 reference.

The reference is written from ../shared/docs/sea-method.md (linear, sea, fgsm) and the method
definitions and random stream documented in `sea.augment` (noise, mixup), with autograd,
nn.Linear and torch.optim.SGD; it imports nothing from `sea` and draws the same random numbers.
The trainer's float32 weights must equal it to 1e-5 relative after several steps, including a
last batch of one and K heads of mixed methods trained together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.usefixtures("one_torch_thread")

METHOD_INDEX = {"linear": 0, "sea": 1, "fgsm": 2, "noise": 3, "mixup": 4}   # the documented stream keys
C = 4


@dataclass(frozen=True)
class Head:
    """A head's hyper-parameters as plain numbers, so that the reference needs no `sea` type."""

    method: str
    lr: float = 1.6
    weight_decay: float = 1e-6
    eta: float = 0.8
    alpha: float = 0.01
    lamda: float = 0.1
    delta: float = 0.0


def _unit(v: torch.Tensor) -> torch.Tensor:
    """v/‖v‖ per row with no floor (a tiny gradient keeps its direction); a zero row stays zero."""
    top = v.abs().amax(1, keepdim=True)
    scaled = torch.where(top > 0, v / top, 0.0)
    return torch.where(top > 0, scaled / scaled.norm(dim=1, keepdim=True).clamp_min(1.0), 0.0)


class Reference:
    """One head trained as the method's definition reads, batch by batch, in float64."""

    def __init__(self, head: Head, dim: int, num_classes: int, seed: int, momentum: float,
                 noise_dtype: torch.dtype):
        self.head, self.num_classes, self.noise_dtype = head, num_classes, noise_dtype
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(dim, num_classes, bias=False).double()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=head.lr, momentum=momentum,
                                   weight_decay=head.weight_decay)
        sequence = np.random.SeedSequence([seed, METHOD_INDEX[head.method]])
        self.noise = torch.Generator().manual_seed(int(sequence.generate_state(1, dtype=np.uint64)[0]))
        self.mix = np.random.default_rng(sequence)

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        h = self.head
        return h.lamda * F.cross_entropy((self.model(x) - h.delta * targets) / h.lamda, targets)

    def input_gradient_direction(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.clone().requires_grad_(True)
        h = self.head
        # the same CE as log(1 + Σ_{c≠y} exp(u_c − u_y)): autograd without the p_y − 1 cancellation
        u = (self.model(x) - h.delta * F.one_hot(y, self.num_classes).double()) / h.lamda
        others = (u - u.gather(1, y[:, None])).scatter(1, y[:, None], -torch.inf)
        (g,) = torch.autograd.grad(h.lamda * F.softplus(torch.logsumexp(others, dim=1)).mean(), x)
        return _unit(g)

    def augmented(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, b = self.head, len(y)
        onehot = F.one_hot(y, self.num_classes).double()
        if h.method == "sea" and b > 1:
            g_hat = self.input_gradient_direction(x, y)
            scores = g_hat @ x.T / h.alpha
            scores.fill_diagonal_(-torch.inf)
            d = F.normalize(torch.softmax(scores, dim=1) @ x, dim=1) * (g_hat.norm(dim=1, keepdim=True) > 0)
            return F.normalize(x + h.eta * d, dim=1), onehot
        if h.method == "fgsm":
            return F.normalize(x + h.eta * self.input_gradient_direction(x, y), dim=1), onehot
        if h.method == "noise" and h.eta > 0:
            n = torch.randn(b, x.shape[1], generator=self.noise, dtype=self.noise_dtype).double()
            return F.normalize(x + h.eta * F.normalize(n, dim=1), dim=1), onehot
        if h.method == "mixup":
            m, perm = self.mix.beta(h.eta, h.eta), torch.as_tensor(self.mix.permutation(b))
            return m * x + (1 - m) * x[perm], m * onehot + (1 - m) * onehot[perm]
        return x, onehot

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        features, targets = self.augmented(x, y)
        self.opt.zero_grad()
        self.loss(features, targets).backward()
        self.opt.step()


def reference_train(x, y, head: Head, *, epochs: int, batch_size: int, seed: int, num_classes: int = C,
                    momentum: float = 0.9, schedule: str = "constant", stop_after: int | None = None,
                    noise_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """W after training: shuffled by torch.randperm from a generator seeded by `seed` each epoch, the
    last partial batch kept, lr·½(1 + cos(π e/epochs)) in epoch e for the cosine schedule."""
    x = F.normalize(torch.as_tensor(x).double(), dim=1)
    y = torch.as_tensor(y).long()
    ref = Reference(head, x.shape[1], num_classes, seed, momentum, noise_dtype)
    shuffle = torch.Generator().manual_seed(seed)
    for epoch in range(epochs if stop_after is None else stop_after):
        factor = 0.5 * (1 + math.cos(math.pi * epoch / epochs)) if schedule == "cosine" else 1.0
        for group in ref.opt.param_groups:
            group["lr"] = head.lr * factor
        for idx in torch.randperm(len(y), generator=shuffle).split(batch_size):
            with torch.no_grad():
                xb = x[idx]
            ref.step(xb, y[idx])
    return ref.model.weight.detach()


def data(seed=0, n=49, d=12, c=C, spread=0.8):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    return centres[y] + spread * torch.randn(n, d, generator=g), y


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def ours(head: Head):
    from sea import HeadConfig

    return HeadConfig(**vars(head))


PER_METHOD = [
    Head("linear", lr=1.6, weight_decay=1e-4),
    Head("linear", lr=0.8, lamda=0.2, delta=0.2),
    Head("sea"),                                                         # the paper's defaults
    Head("sea", lr=0.4, weight_decay=1e-3, eta=0.8, alpha=0.05, delta=0.1),
    Head("fgsm", lr=1.6, eta=0.3, lamda=0.2, delta=-0.1),
    Head("fgsm", lr=0.8, eta=0.8),
    Head("noise", lr=0.8, eta=0.3, delta=0.1),
    Head("noise", lr=1.6, eta=1.0, lamda=0.3),
    Head("mixup", lr=0.4, eta=0.4, lamda=0.2),
    Head("mixup", lr=1.6, eta=1.0, delta=0.1),
]


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
@pytest.mark.parametrize("head", PER_METHOD, ids=lambda h: h.method)
def test_each_method_equals_the_float64_reference_including_a_last_batch_of_one(head, schedule):
    from sea import TrainSettings, train_heads

    x, y = data()                                  # 49 rows, batch 16: the last batch of each epoch is one row
    settings = TrainSettings(epochs=3, batch_size=16, seed=3, schedule=schedule)
    weights = train_heads(x, y, [ours(head)], settings, num_classes=C).weights[0]
    expected = reference_train(x, y, head, epochs=3, batch_size=16, seed=3, schedule=schedule)
    assert rel(weights, expected) < 1e-5


MIXED = [
    Head("sea", lr=0.8, eta=0.8, alpha=0.05),
    Head("mixup", lr=0.4, eta=0.4, lamda=0.2),
    Head("linear", lr=1.6, weight_decay=1e-4),
    Head("noise", lr=0.8, eta=0.3, delta=0.1),
    Head("sea", lr=0.4, weight_decay=1e-5, eta=0.2, alpha=0.1, lamda=0.5, delta=0.2),
    Head("fgsm", lr=0.2, eta=0.5),
    Head("noise", lr=0.3, eta=1.0, lamda=0.3),
    Head("mixup", lr=0.8, eta=1.0),
    Head("sea", lr=0.8, eta=0.0),
]


@pytest.mark.parametrize("n, d", [(49, 12), (81, 48)])     # d > B: the SeA heads share the batch Gram matrix
def test_k_heads_of_mixed_methods_trained_together_each_equal_their_reference(n, d):
    from sea import TrainSettings, train_heads

    x, y = data(1, n=n, d=d)
    together = train_heads(x, y, [ours(h) for h in MIXED], TrainSettings(epochs=3, batch_size=16, seed=5),
                           num_classes=C).weights
    for k, head in enumerate(MIXED):
        expected = reference_train(x, y, head, epochs=3, batch_size=16, seed=5)
        assert rel(together[k], expected) < 1e-5, head


@pytest.mark.parametrize("momentum, batch_size", [(0.0, 7), (0.5, 32), (0.95, 10)])
def test_other_momenta_and_batch_sizes_equal_the_reference(momentum, batch_size):
    """Not only the paper's momentum 0.9 and batch 16: plain SGD, a half and a heavy momentum, with batches of
    7 (49 rows split evenly), 32 (a last batch of 17) and 10 (a last batch of 9)."""
    from sea import TrainSettings, train_heads

    x, y = data(2)
    settings = TrainSettings(epochs=3, batch_size=batch_size, seed=7, momentum=momentum)
    together = train_heads(x, y, [ours(h) for h in MIXED], settings, num_classes=C).weights
    for k, head in enumerate(MIXED):
        expected = reference_train(x, y, head, epochs=3, batch_size=batch_size, seed=7, momentum=momentum)
        assert rel(together[k], expected) < 1e-5, (head, momentum, batch_size)
    other = reference_train(x, y, MIXED[0], epochs=3, batch_size=batch_size, seed=7, momentum=0.9)
    assert rel(together[0], other) > 1e-3   # the momentum is really used: 0.9 gives other weights


@pytest.mark.parametrize("head", [Head("sea", lr=0.8, delta=0.1), Head("noise", eta=0.5), Head("mixup", eta=0.3)],
                         ids=lambda h: h.method)
def test_float64_training_equals_the_reference_to_rounding(head):
    from sea import TrainSettings, train_heads

    x, y = data(2)
    settings = TrainSettings(epochs=3, batch_size=16, seed=3, dtype="float64")
    weights = train_heads(x.double(), y, [ours(head)], settings, num_classes=C).weights[0]
    assert weights.dtype == torch.float64
    expected = reference_train(x, y, head, epochs=3, batch_size=16, seed=3, noise_dtype=torch.float64)
    assert rel(weights, expected) < 1e-10


def test_a_wrong_method_is_caught_by_the_reference():
    """The comparison has teeth: mixup on hard labels, or noise of another scale, is far off."""
    from sea import TrainSettings, train_heads

    x, y = data(4)
    settings = TrainSettings(epochs=2, batch_size=16, seed=1)
    for head, wrong in [(Head("mixup", eta=0.4), Head("linear")), (Head("noise", eta=0.5), Head("noise", eta=0.6)),
                        (Head("sea", eta=0.5), Head("fgsm", eta=0.5))]:
        weights = train_heads(x, y, [ours(head)], settings, num_classes=C).weights[0]
        assert rel(weights, reference_train(x, y, wrong, epochs=2, batch_size=16, seed=1)) > 1e-3


def test_refit_after_an_early_stop_keeps_the_selected_runs_schedule():
    """Selection with a cosine schedule over 6 epochs, stopped after 3: the refit anneals over the same
    6-epoch horizon and stops after the same 3 epochs (not a 3-epoch cosine of its own)."""
    from sea import TrainSettings, select_and_refit

    x, y = data(5, n=98)
    x, y, xv, yv = x[:65], y[:65], x[65:], y[65:]
    candidates = [Head("sea", lr=0.4, eta=0.2), Head("linear", lr=0.8)]
    settings = TrainSettings(epochs=6, batch_size=16, seed=2, schedule="cosine")
    result = select_and_refit(x, y, xv, yv, lambda: (xv, yv), [ours(h) for h in candidates], settings,
                              num_classes=C, on_epoch=lambda epoch, metrics: epoch == 3)
    assert result.stopped_epoch == 3
    best = candidates[result.best_index]
    x_all, y_all = torch.cat([F.normalize(x, dim=1), F.normalize(xv, dim=1)]), torch.cat([y, yv])
    expected = reference_train(x_all, y_all, best, epochs=6, batch_size=16, seed=2, schedule="cosine",
                               stop_after=3)
    assert rel(result.refit_weights, expected) < 1e-5
    shorter = reference_train(x_all, y_all, best, epochs=3, batch_size=16, seed=2, schedule="cosine")
    assert rel(result.refit_weights, shorter) > 1e-3


def test_the_reference_itself_follows_the_paper_defaults_to_a_trained_head():
    """Sanity of the outside reference: at the defaults it learns easy data (so it is not vacuous)."""
    x, y = data(6, n=120, spread=0.3)
    w = reference_train(x, y, replace(Head("sea"), eta=0.2), epochs=10, batch_size=32, seed=0)
    pred = (F.normalize(x.double(), dim=1) @ w.T).argmax(1)
    assert float((pred == y).double().mean()) > 0.9
