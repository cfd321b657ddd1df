"""Property tests (hypothesis): valid input trains — finite weights that moved, above chance on
separable data — whatever its shape or scale; each invalid input raises SeaError naming it; SeA
directions are unit rows exactly where the gradient exists; configs round-trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.config import SweepConfig
from sea import HeadConfig, SeaError, TrainSettings, initial_weight, predict, semantic_direction, train_heads

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
METHODS = ["linear", "sea", "fgsm", "noise", "mixup"]

floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def problems(draw):
    n, d, c = draw(st.integers(1, 12)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    x = np.array(draw(st.lists(floats, min_size=n * d, max_size=n * d)), dtype=np.float32).reshape(n, d)
    y = np.array(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), dtype=np.int64)
    return x, y, c


@st.composite
def extreme_configs(draw):
    method = draw(st.sampled_from(METHODS))
    return HeadConfig(method=method, lr=draw(st.sampled_from([1e-3, 0.4, 1.6, 50.0])),
                      weight_decay=draw(st.sampled_from([0.0, 1e-6, 1e-2])),
                      eta=draw(st.sampled_from([0.05, 0.8, 5.0])), alpha=draw(st.sampled_from([1e-6, 0.01, 10.0])),
                      lamda=draw(st.sampled_from([1e-4, 0.1, 10.0])), delta=draw(st.sampled_from([0.0, 0.5])))


@FAST
@given(problems(), st.lists(extreme_configs(), min_size=1, max_size=3), st.integers(1, 5))
def test_any_finite_features_train_to_finite_weights_unless_a_row_is_all_zero(problem, configs, batch_size):
    x, y, c = problem
    settings_ = TrainSettings(epochs=2, batch_size=batch_size, seed=1)
    zero_rows = np.flatnonzero(~x.any(axis=1))
    if len(zero_rows):
        with pytest.raises(SeaError, match=f"all-zero row.*first at row {zero_rows[0]}"):
            train_heads(x, y, configs, settings_, num_classes=c)
        return
    result = train_heads(x, y, configs, settings_, num_classes=c)
    assert torch.isfinite(result.weights).all()


@st.composite
def sensible_configs(draw):
    method = draw(st.sampled_from(METHODS))
    low_eta = 0.05 if method == "mixup" else 0.0
    return HeadConfig(method=method, lr=draw(st.floats(0.2, 3.2)), weight_decay=draw(st.sampled_from([0.0, 1e-5])),
                      eta=draw(st.floats(low_eta, 0.8)), alpha=draw(st.floats(0.01, 1.0)),
                      lamda=draw(st.floats(0.05, 1.0)), delta=draw(st.floats(0.0, 0.2)))


@FAST
@given(st.integers(2, 5), st.integers(0, 3), st.integers(24, 60), st.integers(1, 64),
       st.lists(sensible_configs(), min_size=1, max_size=4), st.integers(0, 2**16),
       st.sampled_from([1e-3, 1.0, 1e4]))
def test_valid_input_trains_above_chance_on_separable_data(c, extra_dims, n, batch, configs, seed, scale):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    centres = np.eye(c, c + extra_dims)
    x = (scale * (centres[y] + 0.1 * rng.normal(size=(n, c + extra_dims)))).astype(np.float32)
    result = train_heads(x, y, configs, TrainSettings(epochs=8, batch_size=batch, seed=seed))
    start = initial_weight(c, c + extra_dims, seed)
    chance = 1 / c
    for k, config in enumerate(configs):
        w = result.weights[k]
        assert torch.isfinite(w).all() and not torch.equal(w, start), config
        accuracy = float((predict(w, x) == torch.as_tensor(y)).double().mean())
        assert accuracy >= chance + 0.5 * (1 - chance), (config, accuracy)


def _nan_at(draw):
    row, col = draw(st.integers(0, 7)), draw(st.integers(0, 2))
    x = np.ones((8, 3), np.float32)
    x[row, col] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return {"x": x}, f"train features contain 1 non-finite value.*row {row}, column {col}"


def _bad_label(draw):
    row = draw(st.integers(0, 7))
    y = np.arange(8) % 2
    y[row] = draw(st.sampled_from([-1, -7]))
    return {"y": y}, f"train labels must be >= 0, row {row}"


def _label_over_c(draw):
    row = draw(st.integers(0, 7))
    y = np.arange(8) % 2
    y[row] = 5
    return {"y": y, "num_classes": 2}, f"train label 5 at row {row} is >= num_classes=2"


def _head_field(draw):
    field, bad = draw(st.sampled_from([
        ("lr", -0.1), ("lr", math.nan), ("weight_decay", -1e-6), ("eta", -0.5), ("eta", math.inf),
        ("alpha", 0.0), ("alpha", -0.01), ("lamda", 0.0), ("lamda", "0.1"), ("delta", math.nan), ("lr", True)]))
    return {"head": {field: bad}}, f"HeadConfig.{field}"


def _settings_field(draw):
    field, bad = draw(st.sampled_from([
        ("epochs", 0), ("epochs", 2.5), ("batch_size", 0), ("batch_size", True), ("momentum", 1.0),
        ("momentum", -0.1), ("schedule", "linear"), ("dtype", "float16"), ("device", "tpu:0"), ("seed", "1")]))
    return {"settings": {field: bad}}, f"TrainSettings.{field}"


INVALID = {
    "non-finite feature": _nan_at,
    "negative label": _bad_label,
    "label beyond num_classes": _label_over_c,
    "head field": _head_field,
    "settings field": _settings_field,
    "mixup without mixing": lambda draw: ({"head": {"method": "mixup", "eta": 0.0}}, "HeadConfig.eta"),
    "unknown method": lambda draw: ({"head": {"method": draw(st.sampled_from(["seaa", "logreg", ""]))}},
                                    "HeadConfig.method"),
    "features not 2-D": lambda draw: ({"x": np.ones(8, np.float32)}, "train features must be 2-D"),
    "labels of another length": lambda draw: ({"y": np.zeros(draw(st.integers(1, 7)), np.int64)},
                                              "train has 8 feature rows but"),
    "fractional labels": lambda draw: ({"y": np.full(8, 0.5)}, "train labels must be integer"),
    "validation of another dimension": lambda draw: ({"val": (np.ones((4, 5), np.float32), np.zeros(4, np.int64))},
                                                     "validation features have dimension 5"),
    "validation class unseen in train": lambda draw: ({"val": (np.ones((4, 3), np.float32), np.full(4, 1))},
                                                      "validation labels contain 1 class"),
    "num_classes": lambda draw: ({"num_classes": draw(st.sampled_from([0, -2, 1.5]))}, "num_classes"),
    "empty configs": lambda draw: ({"configs": []}, "configs is empty"),
    "not a HeadConfig": lambda draw: ({"configs": [{"method": "sea"}]}, r"configs\[0\] is a dict"),
    "stop_after": lambda draw: ({"stop_after": draw(st.sampled_from([0, 4, -1]))}, "stop_after"),
}


@FAST
@given(st.sampled_from(sorted(INVALID)), st.data())
def test_each_invalid_input_raises_sea_error_naming_it(case, data):
    changes, named = INVALID[case](data.draw)
    x = changes.get("x", np.eye(8, 3, dtype=np.float32) + 1.0)
    y = changes.get("y", np.arange(8) % 2 if case != "validation class unseen in train" else np.zeros(8, np.int64))
    with pytest.raises(SeaError, match=named):
        configs = changes["configs"] if "configs" in changes else [
            HeadConfig(**{"method": "sea", **changes.get("head", {})})]
        train_heads(x, y, configs, TrainSettings(**{"epochs": 3, **changes.get("settings", {})}),
                    num_classes=changes.get("num_classes"), val=changes.get("val"),
                    stop_after=changes.get("stop_after"))


@FAST
@given(st.integers(1, 9), st.integers(1, 6), st.integers(1, 5),
       st.sampled_from([1e-8, 1e-4, 0.01, 1.0, 100.0]), st.sampled_from([1e-4, 0.1, 10.0]),
       st.floats(0.0, 1e4), st.integers(0, 2**31 - 1))
def test_semantic_direction_is_a_unit_row_wherever_the_gradient_exists(b, d, c, alpha, lamda, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
    w = (scale * torch.randn(c, d, generator=g, dtype=torch.float64)).float()
    y = torch.randint(0, c, (b,), generator=g)
    norms = semantic_direction(w, x, y, alpha=alpha, lamda=lamda).norm(dim=1)
    # no direction only for a batch of one, one class (r = 0) or a zero head (Wᵀr = 0)
    has_gradient = b >= 2 and c >= 2 and bool(w.any())
    if has_gradient and c == 2 and d >= 1:
        has_gradient = bool((w[0] != w[1]).any())
    expected = torch.ones(b) if has_gradient else torch.zeros(b)
    torch.testing.assert_close(norms, expected, rtol=0, atol=1e-5)


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
