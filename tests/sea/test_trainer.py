"""The batched, autograd-free trainer reproduces the published algorithm and trains K heads as one."""

import io
import sys

import pytest
import torch

from sea import HeadConfig, TrainSettings, initial_weight, predict, train_heads

N, D, C = 90, 12, 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(seed=0, n=N, d=D, c=C):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    x = centres[y] + 0.8 * torch.randn(n, d, generator=g)
    return x, y


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


MIXED = [
    HeadConfig(method="sea", lr=0.8, eta=0.8, alpha=0.05),
    HeadConfig(method="mixup", lr=0.4, eta=0.4, lamda=0.2),
    HeadConfig(method="linear", lr=1.6, weight_decay=1e-4),
    HeadConfig(method="noise", lr=0.8, eta=0.3, delta=0.1),
    HeadConfig(method="sea", lr=0.4, weight_decay=1e-5, eta=0.2, alpha=0.1, lamda=0.5, delta=0.2),
    HeadConfig(method="fgsm", lr=0.2, eta=0.5),
    HeadConfig(method="noise", lr=0.3, eta=1.0, lamda=0.3),
    HeadConfig(method="mixup", lr=0.8, eta=1.0),
    HeadConfig(method="sea", lr=0.8, eta=0.0),
]


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-10), ("float32", 1e-4)])
def test_k_heads_together_equal_the_same_heads_one_at_a_time(dtype, tolerance):
    x, y = _data(1)
    settings = TrainSettings(epochs=3, batch_size=16, seed=5, dtype=dtype)
    together = train_heads(x.double(), y, MIXED, settings)
    assert together.weights.shape == (len(MIXED), C, D)
    assert together.configs == tuple(MIXED)
    for k, config in enumerate(MIXED):
        alone = train_heads(x.double(), y, [config], settings).weights[0]
        assert _rel(together.weights[k], alone) < tolerance, config


SEA_GRID = [HeadConfig(method="sea", lr=lr, eta=eta, alpha=alpha) for lr, eta, alpha in
            ((0.8, 0.8, 0.05), (0.4, 0.2, 0.01), (1.6, 0.4, 0.1), (0.8, 0.8, 0.5))]


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-10), ("float32", 1e-4)])
def test_sea_heads_batched_through_the_shared_gram_equal_the_direct_single_head(dtype, tolerance):
    """With d > B a K-batch of SeA heads takes ‖P x‖ from the batch Gram matrix (k·B³), a single head from
    P x itself (B²·d): the two paths must agree."""
    from sea.augment import gram_is_cheaper

    x, y = _data(6, n=80, d=48)
    settings = TrainSettings(epochs=3, batch_size=16, seed=2, dtype=dtype)
    assert gram_is_cheaper(len(SEA_GRID), 16, 48) and not gram_is_cheaper(1, 16, 48)
    together = train_heads(x.double(), y, SEA_GRID, settings)
    for k, config in enumerate(SEA_GRID):
        alone = train_heads(x.double(), y, [config], settings).weights[0]
        assert _rel(together.weights[k], alone) < tolerance, config


def test_sea_with_zero_step_is_exactly_the_linear_head():
    x, y = _data(2)
    out = train_heads(x, y, [HeadConfig(method="sea", eta=0.0), HeadConfig(method="linear")],
                      TrainSettings(epochs=2, batch_size=32))
    assert torch.equal(out.weights[0], out.weights[1])


def test_augmented_heads_differ_from_the_plain_head():
    x, y = _data(2)
    methods = ["linear", "sea", "fgsm", "noise", "mixup"]
    out = train_heads(x, y, [HeadConfig(method=m, lr=0.5, eta=0.5) for m in methods],
                      TrainSettings(epochs=2, batch_size=32))
    for k in range(1, len(methods)):
        assert _rel(out.weights[k], out.weights[0]) > 1e-3, methods[k]


def test_initial_weight_is_nn_linear_default_init_for_the_seed():
    torch.manual_seed(7)
    expected = torch.nn.Linear(D, C, bias=False).weight.detach()
    assert torch.equal(initial_weight(C, D, 7), expected)


def test_one_epoch_at_zero_lr_leaves_every_head_at_the_shared_init():
    x, y = _data()
    out = train_heads(x, y, [HeadConfig(lr=0.0), HeadConfig(method="mixup", lr=0.0)], TrainSettings(epochs=1))
    assert torch.equal(out.weights[0], initial_weight(C, D, 0))
    assert torch.equal(out.weights[1], initial_weight(C, D, 0))


@pytest.mark.parametrize("n", [33, 65, 1])
def test_singleton_last_batch_gives_finite_weights(n):
    x, y = _data(3, n=n)
    methods = ["linear", "sea", "fgsm", "noise", "mixup"]
    out = train_heads(x, y, [HeadConfig(method=m) for m in methods], TrainSettings(epochs=2, batch_size=32),
                      num_classes=C)
    assert torch.isfinite(out.weights).all()


def test_diagonal_dominant_rows_at_tiny_alpha_stay_finite():
    x, y = _data(4)
    out = train_heads(x, y, [HeadConfig(alpha=1e-6, lr=1.6), HeadConfig(alpha=1e-4, eta=2.0)],
                      TrainSettings(epochs=3, batch_size=8))
    assert torch.isfinite(out.weights).all()


def test_validation_history_and_early_stop():
    x, y = _data(5)
    seen = []

    def stop_after_two(epoch, metrics):
        seen.append((epoch, metrics))
        return epoch == 2

    out = train_heads(x, y, MIXED[:3], TrainSettings(epochs=5, batch_size=16), val=(x[:30], y[:30]),
                      on_epoch=stop_after_two)
    assert out.stopped_epoch == 2 and [e for e, _ in seen] == [1, 2]
    assert len(out.val_history) == 2 and len(out.val_history[0]) == 3
    assert seen[-1][1] == out.val_history[-1]
    for metrics in out.val_history[-1]:
        assert set(metrics) == {"top1", "mean_per_class"} and 0 <= metrics["top1"] <= 100
    pred = predict(out.weights[2], x[:30])
    assert out.val_history[-1][2]["top1"] == pytest.approx(float((pred == y[:30]).double().mean() * 100))


def test_without_validation_the_callback_gets_empty_metrics_and_history_is_empty():
    x, y = _data(5)
    calls = []
    out = train_heads(x, y, [HeadConfig()], TrainSettings(epochs=2), on_epoch=lambda e, m: calls.append(m))
    assert calls == [[], []] and out.val_history == [] and out.stopped_epoch == 2


def test_predict_shapes_for_one_and_k_heads():
    x, y = _data()
    out = train_heads(x.numpy(), y.numpy(), [HeadConfig(method="linear"), HeadConfig()], TrainSettings(epochs=2))
    assert predict(out.weights, x).shape == (2, N)
    assert predict(out.weights[0], x).shape == (N,)
    assert out.weights.dtype == torch.float32 and out.weights.device.type == "cpu"


def test_linear_head_learns_separable_data():
    x, y = _data(6)
    out = train_heads(x, y, [HeadConfig(method="linear", lr=0.4)], TrainSettings(epochs=20, batch_size=16))
    assert (predict(out.weights[0], x) == y).double().mean() > 0.9


def test_progress_bar_stays_silent_without_a_terminal(capsys):
    x, y = _data()
    train_heads(x, y, [HeadConfig()], TrainSettings(epochs=2), progress=True)
    assert capsys.readouterr().err == ""


def test_progress_bar_over_epochs_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    x, y = _data()
    train_heads(x, y, [HeadConfig()], TrainSettings(epochs=2), val=(x, y), progress=True)
    assert "2/2" in terminal.getvalue() and "best_val_top1" in terminal.getvalue()


def _bf16_problem():
    g = torch.Generator().manual_seed(7)
    centres = torch.randn(10, 96, generator=g)
    y = torch.randint(0, 10, (1200,), generator=g)
    x = centres[y] + 2.5 * torch.randn(1200, 96, generator=g)
    return (x[400:], y[400:]), (x[:400], y[:400])


BF16_HEADS = [HeadConfig(method=m) for m in ("linear", "sea", "fgsm", "noise", "mixup")] + [
    HeadConfig(method="sea", eta=0.2, alpha=0.05)]
# after 2 epochs (26 steps): SeA at η = 0.8 and fgsm amplify rounding (see sea.trainer), the rest do not
BF16_WEIGHT_TOLERANCE = {"linear": 1e-2, "sea": 5e-2, "fgsm": 5e-2, "noise": 1e-2, "mixup": 1e-2}
BF16_ACCURACY_POINTS = 2.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float32_equals_cpu():
    x, y = _data(7)
    cpu = train_heads(x, y, MIXED, TrainSettings(epochs=2, batch_size=16)).weights
    gpu = train_heads(x, y, MIXED, TrainSettings(epochs=2, batch_size=16, device="cuda")).weights
    for k, config in enumerate(MIXED):
        # noise heads draw from a CUDA generator on CUDA: another stream than the CPU's
        if config.method != "noise":
            assert _rel(gpu[k], cpu[k]) < 1e-4, config


DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                              reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_stays_within_the_stated_tolerance_of_float32_for_every_method(device):
    (x, y), (xt, yt) = _bf16_problem()
    settings = TrainSettings(epochs=2, batch_size=64, device=device)
    f32 = train_heads(x, y, BF16_HEADS, settings).weights
    bf16 = train_heads(x, y, BF16_HEADS, TrainSettings(epochs=2, batch_size=64, device=device, bf16=True)).weights
    assert not torch.equal(f32, bf16)                  # bf16 really ran
    for k, config in enumerate(BF16_HEADS):
        assert _rel(bf16[k], f32[k]) < BF16_WEIGHT_TOLERANCE[config.method], config
        acc32 = float((predict(f32[k], xt) == yt).double().mean()) * 100
        acc16 = float((predict(bf16[k], xt) == yt).double().mean()) * 100
        assert abs(acc16 - acc32) <= BF16_ACCURACY_POINTS, config


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_keeps_the_residuals_and_projection_in_float32_under_a_callers_autocast(device):
    (x, y), _ = _bf16_problem()
    settings = TrainSettings(epochs=1, batch_size=64, device=device, bf16=True)
    plain = train_heads(x, y, BF16_HEADS, settings).weights
    with torch.autocast(device, dtype=torch.bfloat16):
        inside = train_heads(x, y, BF16_HEADS, settings).weights
    assert torch.equal(plain, inside)
