"""Top-1 and mean per-class accuracy, in percent; mean per-class counts only classes present in y."""

import numpy as np
import pytest
import torch

from sea import SeaError, mean_per_class_accuracy, top1_accuracy
from sea.metrics import batched_scores


def test_top1_is_a_percentage():
    assert top1_accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == pytest.approx(75.0)
    assert top1_accuracy(torch.tensor([3]), np.array([3])) == 100.0


def test_mean_per_class_weights_every_class_equally():
    y = np.array([0, 0, 0, 0, 1])
    pred = np.array([0, 0, 0, 0, 0])
    assert top1_accuracy(pred, y) == pytest.approx(80.0)
    assert mean_per_class_accuracy(pred, y) == pytest.approx(50.0)


def test_mean_per_class_ignores_classes_absent_from_labels():
    y = np.array([0, 2, 2])
    pred = np.array([1, 2, 0])          # class 1 is predicted but never true; class 3 does not exist
    assert mean_per_class_accuracy(pred, y, num_classes=4) == pytest.approx(25.0)


def test_batched_scores_equal_the_single_metrics():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (50,), generator=g)
    pred = torch.randint(0, 5, (3, 50), generator=g)
    for k, scores in enumerate(batched_scores(pred, y, 5)):
        assert scores["top1"] == pytest.approx(top1_accuracy(pred[k], y))
        assert scores["mean_per_class"] == pytest.approx(mean_per_class_accuracy(pred[k], y))


@pytest.mark.parametrize("pred, y", [([0, 1], [0]), ([], [])])
def test_mismatched_or_empty_inputs_raise(pred, y):
    with pytest.raises(SeaError):
        top1_accuracy(pred, y)
