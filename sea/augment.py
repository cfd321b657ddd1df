"""The augmentation family: one small function per method, each declared in `sea.methods`.

Each augmenter sees one batch and a contiguous slice of heads that share its method, and returns
the features the SGD step is taken at (see `Augmented`) plus soft targets or None for one-hot.

The random numbers are a documented stream, so that an outside implementation can draw the same
ones. Per head, with `seq = numpy.random.SeedSequence([seed, stream])`, `stream` the method's id in
`sea.methods` (noise 3, mixup 4), and `seed` = `TrainSettings.seed`:

* noise: `torch.Generator(device).manual_seed(int(seq.generate_state(1, numpy.uint64)[0]))`, and
  per step one `torch.randn(B, d, generator=..., dtype=<training dtype>)`; x̃ = normalise(x + η·normalise(n));
* mixup: `numpy.random.default_rng(seq)`, and per step `m = rng.beta(η, η)`, then
  `perm = rng.permutation(B)`; x̃ = m·x + (1 − m)·x[perm], soft targets t = m·e_y + (1 − m)·e_y[perm],
  loss λ·CE((W x̃ − δt)/λ, t).

The stream depends on (seed, method) only: a head draws the same numbers alone or in a K-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sea.direction import EPS, fgsm_directions, normalise, projection_weights
from sea.methods import get_method, group_order


@dataclass
class HeadRandom:
    """The random streams of one head: torch for Gaussian noise, numpy for mixup's Beta and partner."""

    noise: torch.Generator
    mix: np.random.Generator

    @classmethod
    def create(cls, seed: int, method: str, device: torch.device) -> HeadRandom:
        sequence = np.random.SeedSequence([seed, get_method(method).stream])
        state = int(sequence.generate_state(1, dtype=np.uint64)[0])
        return cls(torch.Generator(device=device).manual_seed(state), np.random.default_rng(sequence))


class Workspace:
    """Buffers reused across steps: on the CPU a fresh multi-megabyte tensor per step costs more in
    page faults than the arithmetic that fills it."""

    def __init__(self, bf16: bool = False) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self.bf16 = bf16          # the B×d GEMMs (weight gradients, P·X, X·Xᵀ) in bfloat16

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf


def matmul_into(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """a @ b written into `out`; with bf16 the product runs in bfloat16 and is stored in out's dtype."""
    if bf16:
        return out.copy_(torch.mm(a.to(torch.bfloat16), b.to(torch.bfloat16)))
    return torch.mm(a, b, out=out)


def bmm(a: torch.Tensor, b: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """a @ b for batches of matrices; with bf16 in bfloat16, returned in a's dtype."""
    if bf16:
        return torch.bmm(a.to(torch.bfloat16), b.to(torch.bfloat16)).to(a.dtype)
    return torch.bmm(a, b)


@dataclass
class StepContext:
    """What one step knows before the update: the batch, the clean logits and every head's state."""

    x: torch.Tensor           # B×d, L2-normalised
    onehot: torch.Tensor      # B×C
    z: torch.Tensor           # K×B×C clean logits at the current W
    weight: torch.Tensor      # K×C×d
    eta: torch.Tensor         # K×1×1, likewise alpha, lamda (loss temperature λ), delta
    alpha: torch.Tensor
    lamda: torch.Tensor
    delta: torch.Tensor
    random: list[HeadRandom]
    workspace: Workspace


@dataclass
class Augmented:
    """The features a step trains on, in one of two forms, and soft targets (None: one-hot labels).

    `mix` (k×B×B): x̃ = mix @ x, a re-weighting of the batch; the trainer then needs neither x̃ nor
    a B×d×C product per head (W x̃ = mix @ z, and the gradient folds into one shared GEMM).
    `features` (k×B×d): x̃ given explicitly, for perturbations outside the span of the batch.
    """

    mix: torch.Tensor | None = None
    features: torch.Tensor | None = None
    targets: torch.Tensor | None = None


def sea_step(ctx: StepContext, heads: slice) -> Augmented:
    x = ctx.x
    b, d = x.shape
    if b < 2:                                     # a batch of one has no other example to move toward
        return Augmented(mix=torch.ones(heads.stop - heads.start, 1, 1, dtype=x.dtype, device=x.device))
    proj, ok = projection_weights(ctx.z[heads], ctx.weight[heads], ctx.onehot, ctx.alpha[heads],
                                  ctx.lamda[heads], ctx.delta[heads])
    k, ws = proj.shape[0], ctx.workspace
    if gram_is_cheaper(k, b, d):
        # only ‖Σ_j P_ij x_j‖ and x_i·Σ_j P_ij x_j are needed: from the batch's Gram matrix G = X Xᵀ, shared
        # by all k heads, they cost k·B³ (‖P x‖² = pᵀ G p) instead of k·B²·d
        gram = matmul_into(x, x.T, ws.get("gram", (b, b), x), ws.bf16)
        pg = matmul_into(proj.reshape(k * b, b), gram, ws.get("sea", (k * b, b), x), ws.bf16).view(k, b, b)
        m_norm = torch.linalg.vecdot(pg, proj).clamp_min_(0).sqrt_()
        x_dot_m = torch.linalg.vecdot(proj, gram)
    else:
        mixed = matmul_into(proj.reshape(k * b, b), x, ws.get("sea", (k * b, d), x), ws.bf16).view(k, b, d)
        m_norm = torch.linalg.vector_norm(mixed, dim=-1)                                # ‖Σ_j P_ij x_j‖
        x_dot_m = mixed.mul_(x).sum(-1)                                                  # x_i·Σ_j P_ij x_j
    x_sq = torch.linalg.vector_norm(x, dim=-1).square()  # no B×d temporary (page faults cost more than math)
    # x̃ = (x + η d)/‖x + η d‖ with d = mixed/‖mixed‖, written as a re-weighting of the batch
    step = ctx.eta[heads].view(k, 1) * ok / m_norm.clamp_min(EPS)
    inv = (x_sq + step * (2 * x_dot_m + step * m_norm.square())).clamp_min(0).sqrt().clamp_min(EPS).reciprocal()
    mix = (step * inv).unsqueeze(-1) * proj
    mix.diagonal(dim1=1, dim2=2).add_(inv)
    return Augmented(mix=mix)


def gram_is_cheaper(k: int, b: int, d: int) -> bool:
    """k heads on a batch of b rows of dimension d: one Gram matrix (b²·d) plus k·b³, or k·b²·d?"""
    return b * b * d + k * b ** 3 < k * b * b * d


def fgsm_step(ctx: StepContext, heads: slice) -> Augmented:
    g_hat = fgsm_directions(ctx.z[heads], ctx.weight[heads], ctx.onehot, ctx.lamda[heads], ctx.delta[heads])
    return Augmented(features=normalise(ctx.x + ctx.eta[heads] * g_hat))


def noise_step(ctx: StepContext, heads: slice) -> Augmented:
    b, d = ctx.x.shape
    # drawn and transformed in one reused buffer: K×B×d fresh temporaries per step cost more than the math
    n = ctx.workspace.get("noise", (heads.stop - heads.start, b, d), ctx.x)
    for row, r in zip(n, ctx.random[heads]):
        row.normal_(generator=r.noise)            # the numbers torch.randn(b, d, generator=r.noise) gives
    n.div_(torch.linalg.vector_norm(n, dim=-1, keepdim=True).clamp_min_(EPS))
    n.mul_(ctx.eta[heads]).add_(ctx.x)
    return Augmented(features=n.div_(torch.linalg.vector_norm(n, dim=-1, keepdim=True).clamp_min_(EPS)))


def mixup_step(ctx: StepContext, heads: slice) -> Augmented:
    # one mixing coefficient m per head and step (Zhang et al.), partner = a permutation of the batch
    b = ctx.x.shape[0]
    etas = ctx.eta[heads].flatten().tolist()
    draws = [(r.mix.beta(eta, eta), r.mix.permutation(b)) for r, eta in zip(ctx.random[heads], etas)]
    coef = torch.tensor([m for m, _ in draws], dtype=ctx.x.dtype, device=ctx.x.device).view(-1, 1, 1)
    partner = torch.as_tensor(np.stack([perm for _, perm in draws]), device=ctx.x.device)   # k×B
    mix = (1 - coef) * torch.nn.functional.one_hot(partner, b).to(ctx.x.dtype)
    mix.diagonal(dim1=1, dim2=2).add_(coef.view(-1, 1))
    return Augmented(mix=mix, targets=torch.matmul(mix, ctx.onehot))


def group_of(method: str, eta: float) -> str:
    """Heads are trained in groups; 'linear' is the unperturbed group, first in every K-batch."""
    return "linear" if method == "linear" or (get_method(method).eta_is_step and eta == 0) else method


def group_position(key: str) -> int:
    """Where a group trains in a K-batch (`sea.methods.group_order`)."""
    return group_order().index(key)
