"""The L-BFGS logistic-regression probe matches scikit-learn's LogisticRegression on load_digits."""

import numpy as np
import pytest

from sea import DEFAULT_CS, LogRegResult, SeaError, fit_logreg, refit_logreg, top1_accuracy

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

SWEEP = (1e-2, 1.0, 1e2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=0.25, stratify=y_rest,
                                                      random_state=0)
    return x_train, y_train, x_val, y_val, x_test, y_test


@pytest.fixture(scope="module")
def ours(digits):
    x_train, y_train, x_val, y_val, _, _ = digits
    return fit_logreg(x_train, y_train, x_val, y_val, cs=SWEEP)


def _sklearn(c, x, y):
    return LogisticRegression(C=c, max_iter=2000).fit(x, y)


def test_validation_curve_tracks_sklearn_at_every_c(digits, ours):
    x_train, y_train, x_val, y_val, _, _ = digits
    assert [c for c, _ in ours.val_curve] == list(SWEEP)
    for c, top1 in ours.val_curve:
        reference = 100 * _sklearn(c, x_train, y_train).score(x_val, y_val)
        assert abs(top1 - reference) <= 1.0, c


def test_selected_model_is_within_one_point_of_sklearn_at_the_same_c(digits, ours):
    x_train, y_train, _, _, x_test, y_test = digits
    reference = 100 * _sklearn(ours.c, x_train, y_train).score(x_test, y_test)
    assert abs(top1_accuracy(ours.predict(x_test), y_test) - reference) <= 1.0
    assert ours.c == max(ours.val_curve, key=lambda item: item[1])[0]


def test_refit_on_train_and_validation_matches_sklearn(digits, ours):
    x_train, y_train, x_val, y_val, x_test, y_test = digits
    x_all, y_all = np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val])
    refit = refit_logreg(x_all, y_all, ours.c, warm_path=SWEEP)
    reference = 100 * _sklearn(ours.c, x_all, y_all).score(x_test, y_test)
    assert abs(top1_accuracy(refit.predict(x_test), y_test) - reference) <= 1.0


def test_result_has_bias_and_the_contract_fields(ours):
    assert isinstance(ours, LogRegResult)
    assert ours.weight.shape == (10, 64) and ours.bias.shape == (10,)
    assert ours.bias.abs().sum() > 0
    assert [s["c"] for s in ours.val_scores] == list(SWEEP)
    assert ours.val_top1 == max(top1 for _, top1 in ours.val_curve)


def test_default_grid_is_sklearn_style_log_spaced():
    assert DEFAULT_CS[0] == pytest.approx(1e-4) and DEFAULT_CS[-1] == pytest.approx(1e4)
    assert np.allclose(np.diff(np.log10(DEFAULT_CS)), 1.0)


@pytest.mark.parametrize("cs, needle", [([], "cs is empty"), ([1.0, -1.0], "C=-1.0"), ([0.0], "C > 0")])
def test_bad_regularisation_grid_is_rejected(digits, cs, needle):
    x_train, y_train, x_val, y_val, _, _ = digits
    with pytest.raises(SeaError, match=needle):
        fit_logreg(x_train, y_train, x_val, y_val, cs=cs)


def _objective(weight, bias, x, y, c):
    """scikit-learn's multinomial L2 objective: ½‖W‖² + C·Σ cross-entropy (the bias not penalised)."""
    logits = x @ weight.T + bias
    logits = logits - logits.max(1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return 0.5 * float((weight ** 2).sum()) - c * float(log_p[np.arange(len(y)), y].sum())


@pytest.mark.parametrize("c", [0.1, 1.0, 10.0])
def test_the_objective_and_the_weights_are_sklearns_at_a_tolerance_that_catches_a_doubled_penalty(digits, c):
    """Same minimiser as scikit-learn's LogisticRegression(C) — weights, centred bias and objective — at a
    tolerance that a doubled penalty (sklearn at C/2) or a penalised bias (a constant feature, no intercept)
    each miss by more than tenfold."""
    x, y = digits[0].astype(np.float64), digits[1]
    ours = fit_logreg(digits[0], y, digits[2], digits[3], cs=[c], max_iter=1000)
    w, b = ours.weight.double().numpy(), ours.bias.double().numpy()
    sk = LogisticRegression(C=c, tol=1e-12, max_iter=100_000).fit(x, y)
    half = LogisticRegression(C=c / 2, tol=1e-12, max_iter=100_000).fit(x, y)
    ones = np.hstack([x, np.ones((len(x), 1))])
    biased = LogisticRegression(C=c, tol=1e-12, max_iter=100_000, fit_intercept=False).fit(ones, y)

    def gap(weight, bias):   # relative distance to sklearn's minimiser (the bias up to softmax's shift)
        return (np.linalg.norm(weight - sk.coef_) + np.linalg.norm((bias - bias.mean()) - (sk.intercept_ - sk.intercept_.mean()))) \
            / np.linalg.norm(sk.coef_)

    tolerance = 2e-3
    assert gap(w, b) < tolerance
    assert gap(half.coef_, half.intercept_) > 10 * tolerance                 # a doubled penalty is caught
    assert gap(biased.coef_[:, :-1], biased.coef_[:, -1]) > 10 * tolerance   # so is a penalised bias
    reference = _objective(sk.coef_, sk.intercept_, x, y, c)   # L-BFGS stops at a gradient of 1e-5: close, not equal
    assert _objective(w, b, x, y, c) == pytest.approx(reference, rel=1e-5)
    assert _objective(half.coef_, half.intercept_, x, y, c) > reference * (1 + 1e-4)
