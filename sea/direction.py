"""The SeA perturbation in closed form, without autograd.

For the bias-free linear head and the loss L = (1/B) Σ λ·CE((W x_i − δ e_{y_i})/λ, y_i) (λ: the
loss temperature `lamda`):

* the input gradient is g_i = Wᵀ r_i / B with r_i = p_i − e_{y_i}, p_i = softmax((W x_i − δ e_{y_i})/λ);
* the projection score ĝ_i·x_j = r_i·z_j / ‖Wᵀ r_i‖ with z_j = W x_j, the logits already computed,
  and ‖Wᵀ r_i‖² = r_iᵀ (W Wᵀ) r_i — so the B×B similarity costs B·B·C instead of B·B·d;
* P_ij = softmax over j ≠ i of the scores / α (diagonal masked with −inf *before* the softmax,
  so a row whose own similarity dominates cannot underflow to 0/0), d_i = normalise(Σ_j P_ij x_j).

Only the direction of g_i matters, so it is formed from r_i scaled by a positive factor: the
residual divided by its largest off-target entry (computed in log space, `scaled_residual`) and W
divided by its largest entry. Neither can underflow or overflow, so a row's direction is exact in
float32 however confidently the head classifies it (a naive ‖Wᵀ r‖² underflows once the logit
margin exceeds ≈ 45·λ). A row has no direction only when Wᵀ r is exactly zero: one class (r = 0),
a head whose weights are all zero, or a batch of one (nothing to project on); it then gets a zero
direction, i.e. no perturbation, never NaN. All internals are batched over K heads sharing one X.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# F.normalize's floor: a zero vector stays zero instead of becoming NaN
EPS = 1e-12


def normalise(v: torch.Tensor) -> torch.Tensor:
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(EPS)


def unit(v: torch.Tensor) -> torch.Tensor:
    """v/‖v‖ exactly, however small or large ‖v‖ (rows are scaled by their max-abs first); 0 stays 0."""
    top = v.abs().amax(-1, keepdim=True)
    scaled = v / torch.where(top > 0, top, 1.0)
    return scaled / torch.linalg.vector_norm(scaled, dim=-1, keepdim=True).clamp_min(1.0)


def loss_residual(z: torch.Tensor, targets: torch.Tensor, lamda: torch.Tensor,
                  delta: torch.Tensor) -> torch.Tensor:
    """∂(λ·CE((z − δt)/λ, t))/∂z = softmax((z − δt)/λ) − t; λ cancels. z: k×B×C, λ, δ: k×1×1."""
    return torch.softmax(torch.addcmul(z, delta, targets, value=-1.0).div_(lamda), dim=-1).sub_(targets)


def direction_residual(z: torch.Tensor, onehot: torch.Tensor, lamda: torch.Tensor,
                       delta: torch.Tensor) -> torch.Tensor:
    """p − e like `loss_residual`, but the target entry is −Σ_{c≠y} p_c rather than p_y − 1.

    For a well-fit row p_y − 1 cancels catastrophically (in float32 p_y rounds to 1 and the entry
    vanishes), which tilts the *normalised* gradient; the sum keeps full relative accuracy.
    """
    off = torch.softmax(torch.addcmul(z, delta, onehot, value=-1.0).div_(lamda), dim=-1)
    off = off.masked_fill_(onehot.bool(), 0.0)
    return off.sub_(onehot * off.sum(-1, keepdim=True))


def scaled_residual(z: torch.Tensor, onehot: torch.Tensor, lamda: torch.Tensor,
                    delta: torch.Tensor) -> torch.Tensor:
    """(p − e) / max_{c≠y} p_c: the residual's direction, with its largest off-target entry exactly 1.

    Off-target entries are exp(u_c − max_{c'≠y} u_c') for u = (z − δe)/λ, the target entry minus
    their sum: nothing underflows, however large the margin (p − e itself is zero in float32 once
    the margin exceeds ≈ 104·λ). With one class the residual is zero.
    """
    if z.shape[-1] < 2:
        return torch.zeros_like(z)
    u = torch.addcmul(z, delta, onehot, value=-1.0).div_(lamda).masked_fill_(onehot.bool(), -torch.inf)
    off = u.sub_(u.amax(-1, keepdim=True)).exp_()
    return off.sub_(onehot * off.sum(-1, keepdim=True))


def _weight_scale(weight: torch.Tensor) -> torch.Tensor:
    """max|W| per head (k×1×1), 1 for an all-zero head."""
    top = weight.abs().amax(dim=(1, 2), keepdim=True)
    return torch.where(top > 0, top, 1.0)


def gradient_sq_norms(residual: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """‖Wᵀ r_i‖² for every row (k×B), by the cheaper of the C×C Gram matrix and the explicit product."""
    b, c = residual.shape[1:]
    if c <= b:
        gram = torch.bmm(weight, weight.transpose(1, 2))                    # k×C×C
        return (torch.bmm(residual, gram) * residual).sum(-1).clamp_min(0)
    return torch.bmm(residual, weight).square().sum(-1)


def projection_weights(z: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, alpha: torch.Tensor,
                       lamda: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """P (k×B×B, rows sum to 1 over j ≠ i) and the rows with a direction (k×B), for B ≥ 2."""
    k = z.shape[0]
    residual = scaled_residual(z, targets, lamda, delta)
    scale = _weight_scale(weight)
    # ĝ_i·x_j = r̃_i·(z_j/s) / ‖(W/s)ᵀ r̃_i‖ with s = max|W|: no under- or overflow for any head size
    sq = gradient_sq_norms(residual, weight / scale)
    ok = sq > 0
    inv = torch.where(ok, sq.clamp_min(torch.finfo(sq.dtype).tiny).rsqrt(), 0.0) / alpha.view(k, 1)
    scores = torch.bmm(residual.mul_(inv.unsqueeze(-1)), (z / scale).transpose(1, 2))   # ĝ_i·x_j / α
    scores.diagonal(dim1=1, dim2=2).fill_(-torch.inf)
    return torch.softmax(scores, dim=-1), ok


def sea_directions(z: torch.Tensor, weight: torch.Tensor, x: torch.Tensor, targets: torch.Tensor,
                   alpha: torch.Tensor, lamda: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Unit semantic directions d (k×B×d) for k heads on one batch x (B×d) with logits z = x Wᵀ (k×B×C)."""
    k, b, _ = z.shape
    if b < 2:
        return x.new_zeros(k, b, x.shape[1])
    weights, ok = projection_weights(z, weight, targets, alpha, lamda, delta)
    mixed = (weights.reshape(k * b, b) @ x).view(k, b, x.shape[1])
    return normalise(mixed) * ok.unsqueeze(-1)


def fgsm_directions(z: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, lamda: torch.Tensor,
                    delta: torch.Tensor) -> torch.Tensor:
    """ĝ_i = g_i/‖g_i‖ exactly (k×B×d; zero where Wᵀ r_i = 0): the 1/B factor vanishes in the normalisation."""
    residual = scaled_residual(z, targets, lamda, delta)
    return unit(torch.bmm(residual, weight / _weight_scale(weight)))


def _heads(weight: torch.Tensor) -> tuple[torch.Tensor, bool]:
    return (weight.unsqueeze(0), True) if weight.dim() == 2 else (weight, False)


def _per_head(value: float | Sequence[float] | torch.Tensor, k: int, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1, 1, 1).expand(k, 1, 1)


def input_gradient(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lamda: float = 0.1,
                   delta: float = 0.0) -> torch.Tensor:
    """g_i = ∂L/∂x_i = Wᵀ(p_i − e_{y_i})/B for W (C×d, or K×C×d with per-head λ, δ); returns B×d or K×B×d."""
    w, single = _heads(weight)
    k, c, _ = w.shape
    onehot = torch.nn.functional.one_hot(y.long(), c).to(w.dtype)
    z = torch.matmul(x.to(w.dtype), w.transpose(1, 2))
    residual = direction_residual(z, onehot, _per_head(lamda, k, w), _per_head(delta, k, w))
    g = torch.bmm(residual, w) / x.shape[0]
    return g[0] if single else g


def semantic_direction(weight: torch.Tensor, x: torch.Tensor, y: torch.Tensor, alpha: float = 0.01,
                       lamda: float = 0.1, delta: float = 0.0) -> torch.Tensor:
    """Unit SeA directions d_i = normalise(Σ_{j≠i} P_ij x_j) at the current W, for L2-normalised x (B×d).

    W is C×d (returns B×d) or K×C×d with scalar or per-head α, λ, δ (returns K×B×d). Zero rows mean
    "no perturbation" (a batch of one, or Wᵀ r exactly zero).
    """
    w, single = _heads(weight)
    k, c, _ = w.shape
    xs = x.to(w.dtype)
    onehot = torch.nn.functional.one_hot(y.long(), c).to(w.dtype)
    z = torch.matmul(xs, w.transpose(1, 2))
    d = sea_directions(z, w, xs, onehot, _per_head(alpha, k, w), _per_head(lamda, k, w),
                       _per_head(delta, k, w))
    return d[0] if single else d
