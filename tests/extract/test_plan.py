"""orchestrator.extract.plan: units, their feature keys, and the parts of ensembles (no Ray)."""

from __future__ import annotations

import os

import pytest
from fakedata import write_image

import tasks
from orchestrator.extract.manifest import COMPUTE_BF16, COMPUTE_FLOAT32
from orchestrator.extract.plan import backbone_parts, compute_of, feature_key

BACKBONE = "random:resnet10t@32"


@pytest.fixture(scope="module")
def backbone() -> tasks.Backbone:
    return tasks.build_backbone(BACKBONE)


def _key(backbone: tasks.Backbone, task: str, compute: str = COMPUTE_FLOAT32) -> str:
    data = tasks.build_task(task, None, "train")
    return feature_key(backbone, task, "train", data, "float16", compute).key


def test_a_changed_image_with_the_same_count_and_labels_gives_a_new_key(make_fake_task, backbone) -> None:
    task = make_fake_task()
    before = _key(backbone, task.name)
    assert _key(backbone, task.name) == before                       # nothing changed: the same key
    image = sorted((task.path / "train" / "class1").glob("*.jpg"))[0]
    stat = image.stat()
    write_image(image, seed=4242, size=12)                            # another picture, same file name
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert _key(backbone, task.name) != before


def test_a_renamed_image_gives_a_new_key(make_fake_task, backbone) -> None:
    task = make_fake_task()
    before = _key(backbone, task.name)
    image = sorted((task.path / "train" / "class0").glob("*.jpg"))[-1]
    image.rename(image.with_name("9999.jpg"))
    assert _key(backbone, task.name) != before


def test_how_the_backbone_computed_is_part_of_the_key(make_fake_task, backbone) -> None:
    task = make_fake_task()
    assert _key(backbone, task.name, COMPUTE_FLOAT32) != _key(backbone, task.name, COMPUTE_BF16)
    assert compute_of(0) == COMPUTE_FLOAT32 and compute_of(0.5) == compute_of(1) == COMPUTE_BF16


def test_ensembles_are_read_from_their_stored_parts() -> None:
    assert backbone_parts("ensemble:a+b+c") == ("a", "b", "c")
    assert backbone_parts("efficientnet-lite0") == ("efficientnet-lite0",)


def test_the_extraction_code_and_libraries_are_part_of_every_feature_key(monkeypatch) -> None:
    from orchestrator.extract import plan

    digest = plan.extraction_code()
    assert len(digest) == 16
    plan.extraction_code.cache_clear()
    # a different set of modules (as if one had changed) gives another digest, hence another key
    monkeypatch.setattr(plan, "EXTRACTION_MODULES", plan.EXTRACTION_MODULES[:-1])
    assert plan.extraction_code() != digest
    plan.extraction_code.cache_clear()
    monkeypatch.setattr(plan, "EXTRACTION_LIBRARIES", (*plan.EXTRACTION_LIBRARIES, "timm"))
    assert plan.extraction_code() != digest
    plan.extraction_code.cache_clear()
    monkeypatch.undo()
    assert plan.extraction_code() == digest
    from orchestrator.extract import FeatureKey

    base = dict(backbone="bb", weights_sha256="w", timm_version="-", preprocessing={}, feature="pooled",
                task="digits", split="train", split_hash="0" * 16, dtype="float32")
    assert FeatureKey(**base, code=digest).key != FeatureKey(**base, code="other").key
