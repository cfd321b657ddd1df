"""Selection uses validation only, refits on train+validation, and touches the test split once, last."""

import numpy as np
import pytest

from sea import HeadConfig, SelectionResult, TrainSettings, predict, select_and_refit, train_heads

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _blobs(n, seed, c=3, d=6):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(c, d))
    y = np.arange(n) % c
    return (centres[y] + 0.7 * rng.normal(size=(n, d))).astype(np.float32), y


class _Loader:
    def __init__(self, data, log):
        self.data, self.log, self.calls = data, log, 0

    def __call__(self):
        self.calls += 1
        self.log.append("test")
        return self.data


CANDIDATES = [HeadConfig(method="linear", lr=1e-4), HeadConfig(method="linear", lr=0.4),
              HeadConfig(method="sea", lr=0.4, eta=0.2)]


def test_heads_selected_on_validation_then_refit_then_tested_once():
    (x, y), (xv, yv), test = _blobs(60, 1), _blobs(30, 2), _blobs(30, 3)
    settings = TrainSettings(epochs=5, batch_size=16)
    log: list[str] = []
    loader = _Loader(test, log)
    result = select_and_refit(x, y, xv, yv, loader, CANDIDATES, settings,
                              on_epoch=lambda e, m: log.append(f"epoch{e}"))
    assert isinstance(result, SelectionResult)
    assert loader.calls == 1 and log[-1] == "test" and log.count("test") == 1
    assert len(result.val_metrics) == 3 and result.best_config is CANDIDATES[result.best_index]
    tops = [m["top1"] for m in result.val_metrics]
    assert result.best_index == tops.index(max(tops)) and result.best_index != 0   # lr 1e-4 learns nothing
    refit = train_heads(np.concatenate([x, xv]), np.concatenate([y, yv]), [result.best_config], settings)
    expected = 100 * float((predict(refit.weights[0], test[0]).numpy() == test[1]).mean())
    assert result.test_top1 == pytest.approx(expected)
    assert 0 <= result.test_mean_per_class <= 100 and result.seconds > 0


def test_mean_per_class_metric_can_drive_selection():
    (x, y), (xv, yv), test = _blobs(60, 1), _blobs(30, 2), _blobs(30, 3)
    result = select_and_refit(x, y, xv, yv, lambda: test, CANDIDATES[:2], TrainSettings(epochs=3),
                              metric="mean_per_class")
    scores = [m["mean_per_class"] for m in result.val_metrics]
    assert result.best_index == scores.index(max(scores))


@pytest.mark.parametrize("candidates", ["logreg", ("logreg", (0.01, 1.0, 100.0))])
def test_logreg_selects_c_on_validation_and_refits(candidates):
    (x, y), (xv, yv), test = _blobs(60, 1), _blobs(30, 2), _blobs(30, 3)
    loader = _Loader(test, [])
    result = select_and_refit(x, y, xv, yv, loader, candidates, TrainSettings())
    assert loader.calls == 1
    assert result.best_config["method"] == "logreg"
    assert result.best_config["c"] == result.val_metrics[result.best_index]["c"]
    assert {"c", "top1", "mean_per_class"} <= set(result.val_metrics[0])
    assert result.test_top1 > 80
