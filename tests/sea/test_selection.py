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


# ---------------------------------------------------------------- robust selection and the stability flag


@pytest.fixture(scope="module")
def digits_split():
    """Real data: scikit-learn's 1 797 digits (64-d pixel features), shuffled once, 1000 / 400 / 397."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = x[perm].astype(np.float32), y[perm]
    return (x[:1000], y[:1000]), (x[1000:1400], y[1000:1400]), (x[1400:], y[1400:])


# one stable configuration and three whose learning rate makes SeA chaotic on these features: their
# validation accuracy jumps by points from one epoch to the next (measured: 2-5 points over 5 epochs)
STABLE = HeadConfig(method="sea", lr=0.4, eta=0.2)
UNSTABLE_GRID = [STABLE, *(HeadConfig(method="sea", lr=lr, eta=0.2) for lr in (25.6, 51.2, 102.4))]


def test_last_epoch_selection_is_a_lottery_that_last_k_and_the_flag_catch(digits_split):
    """Over 30 seeds, `last` picks a chaotic learning rate for its lucky final epoch several times and its
    refit then scores lower than the stable pick of `last_k`; the flag fires on a refit that lost what
    selection found, and never on the stable picks (their refit on more data lands above the train-only head).

    In float64: the chaos amplifies rounding, and float32's differs between CPUs (kernel paths), so in float32
    which seeds win and lose moved from one machine to the next (in float32 the flag fired on the machine
    this test was written on and on none of 9 lottery wins on the next); float64's rounding is nine orders
    smaller (here: 13 lottery wins, 3 flagged)."""
    (x, y), (xv, yv), test = digits_split
    lottery, flagged = [], 0
    for seed in range(30):
        settings = TrainSettings(epochs=20, batch_size=64, seed=seed, dtype="float64")
        last = select_and_refit(x, y, xv, yv, lambda: test, UNSTABLE_GRID, settings, select_on="last")
        assert last.select_k == 1 and last.select_on == "last"
        if last.best_index == 0:
            continue
        robust = select_and_refit(x, y, xv, yv, lambda: test, UNSTABLE_GRID, settings, select_on="last_k")
        assert robust.select_k == 5   # max(5, ⌈0.1·20⌉)
        lottery.append((last, robust))
        flagged += last.refit_unstable
        assert not (robust.best_index == 0 and robust.refit_unstable)
        for result in (last, robust):   # the flag is exactly the stated rule
            lost = result.selected_test_top1 - result.test_top1
            assert result.refit_unstable == (lost > max(result.val_spread, result.refit_noise))
    assert len(lottery) >= 4, "the chaotic learning rates should win the last epoch now and then"
    assert sum(robust.best_index == 0 for _, robust in lottery) >= 0.75 * len(lottery)
    assert flagged >= 1
    assert np.mean([r.test_top1 for _, r in lottery]) > np.mean([last.test_top1 for last, _ in lottery]) + 1.0
    # the chaotic candidate's own validation jitter is what last_k averages out
    assert np.mean([last.val_spread for last, _ in lottery]) > 2 * np.mean([r.val_spread for _, r in lottery])


def test_last_k_statistic_is_the_mean_of_the_last_k_epochs():
    (x, y), (xv, yv), test = _blobs(60, 1), _blobs(30, 2), _blobs(30, 3)
    result = select_and_refit(x, y, xv, yv, lambda: test, CANDIDATES, TrainSettings(epochs=8, batch_size=16),
                              select_on="last_k", k=3)
    assert result.select_k == 3 and len(result.val_history) == 8
    for i, scores in enumerate(result.val_metrics):
        for name in ("top1", "mean_per_class"):
            assert scores[name] == pytest.approx(np.mean([epoch[i][name] for epoch in result.val_history[-3:]]))
    window = [epoch[result.best_index]["top1"] for epoch in result.val_history[-3:]]
    assert result.val_spread == pytest.approx(max(window) - min(window))


def test_one_test_pass_scores_the_refit_and_the_selected_head():
    (x, y), (xv, yv), test = _blobs(60, 1), _blobs(30, 2), _blobs(30, 3)
    loader = _Loader(test, [])
    settings = TrainSettings(epochs=4, batch_size=16)
    result = select_and_refit(x, y, xv, yv, loader, CANDIDATES, settings)
    assert loader.calls == 1
    selected = train_heads(x, y, [result.best_config], settings).weights[0]
    expected = 100 * float((predict(selected, test[0]).numpy() == test[1]).mean())
    assert result.selected_test_top1 == pytest.approx(expected)
    assert result.test_predictions["pred_selected"].tolist() == predict(selected, test[0]).tolist()
    assert result.test_labels.tolist() == test[1].tolist()
    refit_train = 100 * float((predict(result.refit_weights, np.concatenate([x, xv])).numpy()
                               == np.concatenate([y, yv])).mean())
    assert result.refit_train_top1 == pytest.approx(refit_train)


def test_refits_differ_in_batch_order_only_and_report_their_mean():
    (x, y), (xv, yv), test = _blobs(61, 1), _blobs(30, 2), _blobs(30, 3)
    settings = TrainSettings(epochs=3, batch_size=16, momentum=0.5)
    one = select_and_refit(x, y, xv, yv, lambda: test, CANDIDATES, settings)
    three = select_and_refit(x, y, xv, yv, lambda: test, CANDIDATES, settings, refits=3)
    assert len(three.refit_tests) == 3 and three.refit_tests[0] == one.refit_tests[0]
    assert three.test_top1 == pytest.approx(np.mean([r["top1"] for r in three.refit_tests]))
    assert set(three.test_predictions) == {"pred", "pred_selected", "pred_refit_1", "pred_refit_2"}
    # refit 1 is the same head trained on another batch order: same init, other shuffle seed
    other = train_heads(np.concatenate([x, xv]), np.concatenate([y, yv]), [three.best_config],
                        TrainSettings(epochs=3, batch_size=16, momentum=0.5, shuffle_seed=1_000_003))
    assert three.test_predictions["pred_refit_1"].tolist() == predict(other.weights[0], test[0]).tolist()
    assert not torch_equal(other.weights[0], three.refit_weights)


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_paired_noise_and_the_flag_rule():
    import torch

    from sea.selection import is_refit_unstable, paired_noise

    y = torch.tensor([0, 0, 0, 1])
    a = torch.tensor([0, 0, 0, 1])            # all right
    b = torch.tensor([1, 0, 0, 1])            # one of four wrong
    assert paired_noise(a, b, y, "top1") == pytest.approx(200 * 0.25)          # sqrt(1 · (1/4)²)
    # mean per-class: the wrong example weighs 1/(2 classes · 3 examples)
    assert paired_noise(a, b, y, "mean_per_class") == pytest.approx(200 / 6)
    assert paired_noise(a, a, y, "top1") == 0.0
    assert is_refit_unstable(refit=80.0, selected=90.0, spread=3.0, noise=5.0)
    assert not is_refit_unstable(refit=86.0, selected=90.0, spread=3.0, noise=5.0)   # within the test noise
    assert not is_refit_unstable(refit=86.0, selected=90.0, spread=4.5, noise=1.0)   # within the run's jitter
    assert not is_refit_unstable(refit=99.0, selected=90.0, spread=1.0, noise=1.0)   # more data helped
    assert not is_refit_unstable(refit=80.0, selected=float("nan"), spread=1.0)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"select_on": "best"}, "select_on='best' is unknown"),
    ({"select_on": "last_k", "k": 9}, "k=9 is more than the 4 training epochs"),
    ({"select_on": "last_k", "k": 0}, "k=0 is invalid"),
    ({"refits": 0}, "refits=0 is invalid"),
])
def test_bad_selection_settings_name_the_knob(kwargs, fragment):
    from sea import SeaError

    (x, y), (xv, yv), test = _blobs(30, 1), _blobs(15, 2), _blobs(15, 3)
    with pytest.raises(SeaError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        select_and_refit(x, y, xv, yv, lambda: test, CANDIDATES[:1], TrainSettings(epochs=4), **kwargs)
