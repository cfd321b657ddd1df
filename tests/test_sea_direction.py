"""The closed-form SeA direction equals the autograd one and never produces NaN."""

import pytest
import torch
import torch.nn.functional as F

from sea import input_gradient, semantic_direction

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _problem(seed=0, b=12, d=9, c=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=1)
    w = torch.randn(c, d, generator=g, dtype=dtype)
    y = torch.randint(0, c, (b,), generator=g)
    return w, x, y


def _autograd_gradient(w, x, y, lamda, delta):
    x = x.clone().requires_grad_(True)
    logits = (x @ w.T - delta * F.one_hot(y, w.shape[0]).to(w.dtype)) / lamda
    (grad,) = torch.autograd.grad(lamda * F.cross_entropy(logits, y), x)
    return grad


def _autograd_direction(w, x, y, alpha, lamda, delta):
    """sea-method.md steps 1-3, with the diagonal masked before the softmax."""
    g = _autograd_gradient(w, x, y, lamda, delta)
    scores = F.normalize(g, dim=1) @ x.T / alpha
    scores.fill_diagonal_(-torch.inf)
    return F.normalize(torch.softmax(scores, dim=1) @ x, dim=1)


def test_input_gradient_equals_autograd():
    w, x, y = _problem()
    for lamda, delta in [(0.1, 0.0), (0.5, 0.3), (2.0, -0.2)]:
        torch.testing.assert_close(input_gradient(w, x, y, lamda, delta),
                                   _autograd_gradient(w, x, y, lamda, delta), rtol=1e-10, atol=1e-12)


def test_closed_form_direction_equals_autograd_for_several_temperatures():
    for seed, (alpha, lamda, delta) in enumerate([(0.01, 0.1, 0.0), (0.05, 0.2, 0.1), (1.0, 1.0, 0.5)]):
        w, x, y = _problem(seed)
        torch.testing.assert_close(semantic_direction(w, x, y, alpha, lamda, delta),
                                   _autograd_direction(w, x, y, alpha, lamda, delta), rtol=1e-9, atol=1e-10)


def test_gram_and_explicit_gradient_norms_agree_when_classes_outnumber_the_batch():
    w, x, y = _problem(b=4, c=30)      # C > B takes the explicit Wᵀr path
    torch.testing.assert_close(semantic_direction(w, x, y, 0.05), _autograd_direction(w, x, y, 0.05, 0.1, 0.0))


def test_batched_heads_with_their_own_temperatures_equal_single_heads():
    w, x, y = _problem(c=5)
    heads = torch.stack([w, 0.5 * w, -w])
    alphas, lamdas, deltas = [0.01, 0.1, 0.3], [0.1, 0.2, 1.0], [0.0, 0.2, -0.1]
    batched = semantic_direction(heads, x, y, alphas, lamdas, deltas)
    for k in range(3):
        torch.testing.assert_close(batched[k], semantic_direction(heads[k], x, y, alphas[k], lamdas[k], deltas[k]))


def test_directions_are_unit_rows_in_float32():
    w, x, y = _problem(dtype=torch.float32)
    d = semantic_direction(w, x, y)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(len(x)))


def test_batch_of_one_is_not_perturbed():
    w, x, y = _problem(b=1)
    assert torch.equal(semantic_direction(w, x, y), torch.zeros_like(x))


def test_row_whose_own_similarity_dominates_stays_finite():
    # x_0 points along its own gradient: ĝ_0·x_0 ≈ 0.7 while ĝ_0·x_j ≈ 0, so at α = 1e-4 the
    # reference script's "softmax, then drop the diagonal" underflows to 0/0 for that row
    w = torch.eye(4)
    x = torch.eye(4)[[1, 2, 3]]
    y = torch.tensor([0, 2, 3])
    g = F.normalize(input_gradient(w, x, y), dim=1)
    naive = torch.softmax(g @ x.T / 1e-4, dim=1) * (1 - torch.eye(3))
    assert torch.isnan(naive / naive.sum(1, keepdim=True)).any()      # the defect we avoid
    d = semantic_direction(w, x, y, alpha=1e-4)
    assert torch.isfinite(d).all()
    expected = _autograd_direction(w.double(), x.double(), y, 1e-4, 0.1, 0.0)
    torch.testing.assert_close(d, expected.float())


def test_perfectly_fit_rows_get_no_perturbation_and_no_nan():
    w = 1000.0 * torch.eye(4)
    x = torch.eye(4)
    y = torch.arange(4)
    y[3] = 0                                                           # one misfit row keeps a gradient
    d = semantic_direction(w, x, y, alpha=0.01, lamda=0.1)
    assert torch.isfinite(d).all()
    assert torch.equal(d[:3], torch.zeros(3, 4))
    torch.testing.assert_close(d[3].norm(), torch.tensor(1.0))
