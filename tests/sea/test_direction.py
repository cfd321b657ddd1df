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


def _exact_unit(v):
    top = v.abs().amax(1, keepdim=True)
    scaled = torch.where(top > 0, v / top, 0.0)
    return torch.where(top > 0, scaled / scaled.norm(dim=1, keepdim=True).clamp_min(1.0), 0.0)


def _oracle(w, x, y, alpha, lamda, log_space=False):
    """float64 autograd: ĝ_i of λ·CE written as λ·log(1 + Σ_{c≠y} exp(u_c − u_y)) (no p_y − 1 cancellation),
    then steps 2-3 of sea-method.md. `log_space` differentiates log Σ_{c≠y} exp(u_c − u_y) instead: the same
    direction per row (the loss is an increasing function of it), without float64's own underflow of the
    gradient once the margin exceeds ≈ 745·λ."""
    x = x.clone().requires_grad_(True)
    u = x @ w.T / lamda
    others = torch.logsumexp((u - u.gather(1, y[:, None])).scatter(1, y[:, None], -torch.inf), dim=1)
    (g,) = torch.autograd.grad((others if log_space else lamda * F.softplus(others)).sum(), x)
    g_hat = _exact_unit(g)
    scores = g_hat @ x.detach().T / alpha
    scores.fill_diagonal_(-torch.inf)
    return F.normalize(torch.softmax(scores, dim=1) @ x.detach(), dim=1) * (g_hat.norm(dim=1, keepdim=True) > 0), g_hat


def _confident_head(scale):
    """A confident head: its rows point at the class centres of easy data, with norm 8·scale."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 32, generator=g, dtype=torch.float64)
    y = torch.arange(48) % 6
    x = F.normalize(centres[y] + 0.3 * torch.randn(48, 32, generator=g, dtype=torch.float64), dim=1)
    w = centres / centres.norm(dim=1, keepdim=True) * 8.0
    return scale * w, x, y


@pytest.mark.parametrize("scale", [1, 2, 5, 10, 20])
@pytest.mark.parametrize("alpha", [0.01, 0.1])
def test_float32_directions_equal_the_float64_oracle_on_confident_heads(scale, alpha):
    """A margin above ≈ 45·λ made ‖Wᵀr‖² underflow in float32 and the row lose its direction."""
    from sea.direction import fgsm_directions

    w, x, y = _confident_head(scale)
    lamda = 0.2                                  # margins up to ≈ 600·λ at ×20: float64's oracle still resolves them
    expected, g_hat = _oracle(w, x, y, alpha, lamda)
    assert (expected.norm(dim=1) > 0.99).all()   # every row has a direction
    d = semantic_direction(w.float(), x.float(), y, alpha=alpha, lamda=lamda)
    torch.testing.assert_close(d.double(), expected, rtol=0, atol=2e-4)
    one = torch.ones(1, 1, 1)
    fgsm = fgsm_directions((x.float() @ w.float().T)[None], w.float()[None], F.one_hot(y, 6).float()[None],
                           lamda * one, 0 * one)[0]
    torch.testing.assert_close(fgsm.double(), g_hat, rtol=0, atol=1e-5)


def test_directions_stay_exact_beyond_float64s_own_underflow():
    w, x, y = _confident_head(40)                # margins up to ≈ 2 400·λ at λ = 0.1
    expected, _ = _oracle(w, x, y, 0.05, 0.1, log_space=True)
    assert (_oracle(w, x, y, 0.05, 0.1)[0].norm(dim=1) == 0).any()    # the plain float64 gradient underflows
    d = semantic_direction(w.float(), x.float(), y, alpha=0.05, lamda=0.1)
    torch.testing.assert_close(d.double(), expected, rtol=0, atol=2e-4)


def test_a_row_has_no_direction_only_when_its_gradient_is_exactly_zero():
    x = F.normalize(torch.randn(5, 3, generator=torch.Generator().manual_seed(1)), dim=1)
    y = torch.tensor([0, 1, 0, 1, 0])
    one_class = semantic_direction(torch.randn(1, 3), x, torch.zeros(5, dtype=torch.long))   # r = p − e = 0
    assert torch.equal(one_class, torch.zeros(5, 3))
    assert torch.equal(semantic_direction(torch.zeros(2, 3), x, y), torch.zeros(5, 3))        # W = 0: g = 0
    # two classes: ĝ_i = ±(w_0 − w_1)/‖w_0 − w_1‖ whatever the margin, so the head's scale must not matter
    for scale in (1e-30, 1.0, 1e30):
        w = scale * torch.tensor([[1.0, -2.0, 0.5], [0.3, 1.0, -1.0]])
        d = semantic_direction(w, x, y, alpha=0.05)
        torch.testing.assert_close(d, semantic_direction(w / scale, x, y, alpha=0.05), rtol=0, atol=1e-5)
        torch.testing.assert_close(d.norm(dim=1), torch.ones(5))
