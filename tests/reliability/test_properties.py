"""Property tests (hypothesis): the SeA trainer and direction never return NaN — on any shape and
any finite or non-finite input they give finite results or raise SeaError — and configs round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.config import SweepConfig
from sea import HeadConfig, SeaError, TrainSettings, semantic_direction, train_heads

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def problems(draw):
    n = draw(st.integers(1, 12))
    d = draw(st.integers(1, 6))
    c = draw(st.integers(1, 4))
    x = np.array(draw(st.lists(floats, min_size=n * d, max_size=n * d)), dtype=np.float32).reshape(n, d)
    y = np.array(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), dtype=np.int64)
    return x, y, c


@st.composite
def head_configs(draw):
    method = draw(st.sampled_from(["linear", "sea", "fgsm", "noise", "mixup"]))
    return HeadConfig(
        method=method,
        lr=draw(st.sampled_from([1e-3, 0.4, 1.6, 50.0])),
        weight_decay=draw(st.sampled_from([0.0, 1e-6, 1e-2])),
        eta=draw(st.sampled_from([0.05, 0.8, 5.0])),
        alpha=draw(st.sampled_from([1e-6, 0.01, 10.0])),
        lamda=draw(st.sampled_from([1e-4, 0.1, 10.0])),
        delta=draw(st.sampled_from([0.0, 0.5])),
    )


@FAST
@given(problems(), st.lists(head_configs(), min_size=1, max_size=3), st.integers(1, 5))
def test_trainer_returns_finite_weights_or_raises_sea_error(problem, configs, batch_size):
    x, y, c = problem
    try:
        result = train_heads(x, y, configs, TrainSettings(epochs=2, batch_size=batch_size, seed=1),
                             num_classes=c)
    except SeaError as exc:
        assert str(exc)  # a message, never an empty error
        return
    assert torch.isfinite(result.weights).all()


@FAST
@given(st.integers(1, 9), st.integers(1, 6), st.integers(1, 5),
       st.sampled_from([1e-8, 1e-4, 0.01, 1.0, 100.0]), st.sampled_from([1e-4, 0.1, 10.0]),
       st.floats(0.0, 1e4), st.integers(0, 2**31 - 1))
def test_semantic_direction_is_finite_unit_or_zero(b, d, c, alpha, lamda, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    w = scale * torch.randn(c, d, generator=g)
    y = torch.randint(0, c, (b,), generator=g)
    direction = semantic_direction(w, x, y, alpha=alpha, lamda=lamda)
    assert torch.isfinite(direction).all()
    norms = direction.norm(dim=1)
    assert torch.all((norms < 1e-6) | ((norms - 1).abs() < 1e-4))


def test_non_finite_features_raise_sea_error_naming_the_row():
    x = np.ones((4, 3), np.float32)
    x[2, 1] = np.inf
    with pytest.raises(SeaError, match="2"):
        train_heads(x, np.array([0, 1, 0, 1]), [HeadConfig()], TrainSettings(epochs=1))


@FAST
@given(epochs=st.integers(1, 500), batch=st.integers(1, 4096), seeds=st.lists(st.integers(0, 99), min_size=1,
       max_size=4, unique=True), mode=st.sampled_from(["select", "reference"]),
       lr=st.lists(st.floats(1e-3, 10.0), min_size=1, max_size=4))
def test_config_round_trips_through_a_plain_dict(epochs, batch, seeds, mode, lr):
    data = {"name": "prop", "backbones": ["random:resnet10t@32"], "tasks": ["digits"],
            "methods": ["linear", "sea"], "seeds": seeds, "mode": mode,
            "trainer": {"epochs": epochs, "batch_size": batch}, "grid": {"lr": lr}}
    cfg = SweepConfig.from_dict(data)
    assert SweepConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.trainer.epochs == epochs and list(cfg.seeds) == seeds
