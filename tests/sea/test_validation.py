"""Every bad input raises one SeaError naming the array, the row or value, and how to fix it."""

import numpy as np
import pytest

from sea import (
    HeadConfig,
    SeaError,
    TrainSettings,
    fit_logreg,
    select_and_refit,
    train_heads,
    validate_features,
)


def _good(n=20, d=4, c=3):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, d)).astype(np.float32), np.arange(n) % c


def test_good_input_comes_back_normalised():
    x, y = _good()
    feats, labels = validate_features(x, y)
    assert np.allclose(np.linalg.norm(feats.numpy(), axis=1), 1.0, atol=1e-6)
    assert labels.dtype.is_floating_point is False and labels.tolist() == y.tolist()


def _bad_features():
    x, y = _good()
    nan = x.copy()
    nan[7, 2] = np.nan
    zero = x.copy()
    zero[5] = 0
    return [
        (x[0], y, "must be 2-D"),
        (x, y[:, None], "labels must be 1-D"),
        (x, y[:-1], "20 feature rows but 19 labels"),
        (x[:0], y[:0], "empty"),
        (np.zeros((3, 0)), y[:3], "empty"),
        (nan, y, "row 7, column 2"),
        (x, np.where(np.arange(20) == 4, -1, y), "row 4 holds -1"),
        (x, y + 0.5, "integer class indices"),
        (x, y.astype(float) + np.where(np.arange(20) == 3, 0.25, 0), "row 3 holds 0.25"),
        (zero, y, "all-zero row(s), first at row 5"),
        ([["a", "b"]], [0], "must be a numeric array"),
    ]


@pytest.mark.parametrize("x, y, needle", _bad_features())
def test_bad_features_and_labels_raise_sea_error(x, y, needle):
    with pytest.raises(SeaError) as err:
        validate_features(x, y, name="train")
    assert needle in str(err.value) and "train" in str(err.value)


def test_label_at_or_above_num_classes_names_row_and_fix():
    x, y = _good()
    with pytest.raises(SeaError, match=r"label 2 at row 2 is >= num_classes=2; raise num_classes"):
        train_heads(x, y, [HeadConfig()], TrainSettings(epochs=1), num_classes=2)


def test_validation_dimension_mismatch_names_both_splits():
    x, y = _good()
    with pytest.raises(SeaError, match="validation features have dimension 3 but the training features have 4"):
        train_heads(x, y, [HeadConfig()], TrainSettings(epochs=1), val=(x[:, :3], y))


def test_test_dimension_mismatch_is_caught_after_selection():
    x, y = _good()
    with pytest.raises(SeaError, match="test features have dimension 5"):
        select_and_refit(x, y, x, y, lambda: (np.ones((4, 5)), y[:4]), [HeadConfig()], TrainSettings(epochs=1))


def test_validation_classes_unseen_in_train_are_rejected():
    x, y = _good()
    y_val = y.copy()
    y_val[0] = 7
    with pytest.raises(SeaError, match=r"1 class\(es\) never seen in train \(7\).*stratified"):
        train_heads(x, y, [HeadConfig()], TrainSettings(epochs=1), val=(x, y_val))
    with pytest.raises(SeaError, match="never seen in train"):
        fit_logreg(x, y, x, y_val, cs=[1.0])


@pytest.mark.parametrize("kwargs, needle", [
    ({"lr": -0.1}, "lr=-0.1 is invalid"),
    ({"lamda": 0.0}, "lamda=0.0 is invalid"),
    ({"lamda": -1.0}, "lamda=-1.0"),
    ({"alpha": 0.0}, "alpha=0.0 is invalid"),
    ({"method": "adversarial"}, "method='adversarial' is unknown; choose one of linear, sea"),
    ({"method": "logreg"}, "use fit_logreg"),
    ({"eta": -0.5}, "eta=-0.5"),
    ({"method": "mixup", "eta": 0.0}, "Beta(eta, eta)"),
    ({"weight_decay": float("nan")}, "finite number"),
])
def test_bad_head_hyper_parameters_raise(kwargs, needle):
    with pytest.raises(SeaError) as err:
        HeadConfig(**kwargs)
    assert needle in str(err.value)


@pytest.mark.parametrize("kwargs, needle", [
    ({"batch_size": 0}, "batch_size=0 is invalid"),
    ({"epochs": 0}, "epochs=0 is invalid"),
    ({"epochs": 1.5}, "epochs must be an int"),
    ({"momentum": 1.0}, "momentum=1.0"),
    ({"schedule": "step"}, "schedule='step' is unknown"),
    ({"dtype": "float16"}, "dtype='float16'"),
    ({"device": "tpu:x"}, "not a torch device"),
])
def test_bad_settings_raise(kwargs, needle):
    with pytest.raises(SeaError) as err:
        TrainSettings(**kwargs)
    assert needle in str(err.value)


def test_configs_must_be_a_non_empty_sequence_of_head_configs():
    x, y = _good()
    with pytest.raises(SeaError, match="no head configurations"):
        train_heads(x, y, [], TrainSettings(epochs=1))
    with pytest.raises(SeaError, match=r"configs\[0\] is a dict"):
        train_heads(x, y, [{"lr": 0.1}], TrainSettings(epochs=1))


def test_unknown_selection_metric_and_candidates_raise():
    x, y = _good()
    with pytest.raises(SeaError, match="metric='top5' is unknown"):
        select_and_refit(x, y, x, y, lambda: (x, y), [HeadConfig()], TrainSettings(epochs=1), metric="top5")
    with pytest.raises(SeaError, match="configs='svm' is unknown"):
        select_and_refit(x, y, x, y, lambda: (x, y), "svm", TrainSettings(epochs=1))


def test_huge_but_finite_features_are_normalised_not_rejected():
    x, y = _good()
    feats, _ = validate_features(x * 1e30, y)
    assert np.isfinite(feats.numpy()).all()
    assert np.allclose(feats.numpy(), validate_features(x, y)[0].numpy(), atol=1e-6)


def test_numpy_scalars_from_a_grid_become_plain_numbers():
    config = HeadConfig(lr=np.float32(0.5), eta=np.float64(0.2))
    settings = TrainSettings(epochs=np.int64(2), batch_size=np.int32(8))
    assert type(config.lr) is float and config.lr == 0.5 and type(config.eta) is float
    assert type(settings.epochs) is int and settings.batch_size == 8
