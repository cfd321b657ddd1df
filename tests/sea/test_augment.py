"""Each augmentation builds exactly the features its formula says, for every head of its group."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sea import HeadConfig, TrainSettings, input_gradient, semantic_direction, train_heads
from sea.augment import HeadRandom, StepContext, Workspace, group_of
from sea.methods import get_method, group_order

B, D, C = 10, 7, 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _context(method, etas, seed=0, b=B):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(b, D, generator=g, dtype=torch.float64), dim=1)
    y = torch.randint(0, C, (b,), generator=g)
    w = torch.randn(len(etas), C, D, generator=g, dtype=torch.float64)
    k = len(etas)

    def col(values):
        return torch.tensor(values, dtype=torch.float64).view(-1, 1, 1)

    ctx = StepContext(x, F.one_hot(y, C).double(), torch.matmul(x, w.transpose(1, 2)), w, col(etas),
                      col([0.05] * k), col([0.2] * k), col([0.1] * k),
                      [HeadRandom.create(seed, method, torch.device("cpu")) for _ in etas], Workspace())
    return ctx, x, y, w


def test_sea_reweighting_equals_normalised_step_along_the_semantic_direction():
    ctx, x, y, w = _context("sea", [0.8, 0.3])
    aug = get_method("sea").augmenter()(ctx, slice(0, 2))
    for k, eta in enumerate([0.8, 0.3]):
        d = semantic_direction(w[k], x, y, alpha=0.05, lamda=0.2, delta=0.1)
        torch.testing.assert_close(aug.mix[k] @ x, F.normalize(x + eta * d, dim=1))


def test_sea_leaves_a_batch_of_one_alone():
    ctx, x, _, _ = _context("sea", [0.8], b=1)
    aug = get_method("sea").augmenter()(ctx, slice(0, 1))
    torch.testing.assert_close(aug.mix[0] @ x, x)


def test_fgsm_steps_along_the_raw_normalised_gradient():
    ctx, x, y, w = _context("fgsm", [0.5])
    aug = get_method("fgsm").augmenter()(ctx, slice(0, 1))
    g = F.normalize(input_gradient(w[0], x, y, lamda=0.2, delta=0.1), dim=1)
    torch.testing.assert_close(aug.features[0], F.normalize(x + 0.5 * g, dim=1))


def test_noise_is_a_renormalised_gaussian_step_from_the_head_generator():
    ctx, x, _, _ = _context("noise", [0.4], seed=3)
    aug = get_method("noise").augmenter()(ctx, slice(0, 1))
    n = torch.randn(B, D, generator=HeadRandom.create(3, "noise", torch.device("cpu")).noise, dtype=torch.float64)
    torch.testing.assert_close(aug.features[0], F.normalize(x + 0.4 * F.normalize(n, dim=1), dim=1))


def test_mixup_mixes_features_and_labels_with_one_beta_coefficient_and_a_permutation():
    ctx, x, y, _ = _context("mixup", [0.4], seed=5)
    aug = get_method("mixup").augmenter()(ctx, slice(0, 1))
    rng = HeadRandom.create(5, "mixup", torch.device("cpu")).mix
    lam, perm = rng.beta(0.4, 0.4), rng.permutation(B)
    torch.testing.assert_close(aug.mix[0] @ x, lam * x + (1 - lam) * x[perm])
    onehot = F.one_hot(y, C).double()
    torch.testing.assert_close(aug.targets[0], lam * onehot + (1 - lam) * onehot[perm])
    assert np.allclose(aug.targets[0].sum(1).numpy(), 1.0)


def test_zero_step_heads_join_the_plain_group_and_groups_have_a_fixed_order():
    assert group_of("sea", 0.0) == group_of("fgsm", 0.0) == group_of("noise", 0.0) == "linear"
    assert group_of("mixup", 0.5) == "mixup" and group_of("sea", 0.1) == "sea"
    # the plain heads, then those whose augmentation re-weights the batch (they share one GEMM), then the others
    assert group_order() == ("linear", "sea", "mixup", "fgsm", "noise")


def test_result_order_follows_the_callers_configs_whatever_the_grouping():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, D, generator=g), torch.randint(0, C, (40,), generator=g)
    configs = [HeadConfig(method="noise", eta=0.3), HeadConfig(method="linear"), HeadConfig(method="sea", lr=0.3)]
    settings = TrainSettings(epochs=2, batch_size=16, dtype="float64")
    forward = train_heads(x.double(), y, configs, settings).weights
    backward = train_heads(x.double(), y, configs[::-1], settings).weights
    torch.testing.assert_close(forward, backward.flip(0))
