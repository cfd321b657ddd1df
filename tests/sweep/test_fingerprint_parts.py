"""orchestrator.sweep.fingerprint: what enters a cell's fingerprint (and what only schedules does not), and
the named parts recorded beside it."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sweepkit import make_config

from orchestrator.config import load_config
from orchestrator.extract import FeatureKey, FeatureStore
from orchestrator.sweep.cells import Cell
from orchestrator.sweep.fingerprint import (
    LIBRARIES,
    cell_fingerprint,
    cell_fingerprints,
    changed_parts,
    current_keys,
    parts_tag,
)

SEA, LOGREG = Cell("bb", "digits", "sea", 0), Cell("bb", "digits", "logreg", 0)


def _fp(cfg, cell: Cell, keys: dict[str, str]) -> str:
    return str(cell_fingerprint(cfg, cell, keys))


def test_scheduling_keys_do_not_change_the_fingerprint(store: str, tmp_path: Path) -> None:
    keys = current_keys(store, [SEA])
    for algorithm in ("grid", "random"):
        cfg = make_config(tmp_path, store, search={"algorithm": algorithm})
        base = _fp(cfg, SEA, keys)
        scheduled = replace(cfg, search=replace(cfg.search, max_concurrent=3, max_concurrent_cells=9),
                            resources=replace(cfg.resources, cpu=2.0), max_failures=5, num_cpus=7,
                            trainer=replace(cfg.trainer, checkpoint_every=3))
        assert _fp(scheduled, SEA, keys) == base, algorithm
    searched = make_config(tmp_path, store, search={"algorithm": "random"})
    assert _fp(replace(searched, search=replace(searched.search, num_samples=3)), SEA, keys) != _fp(searched, SEA, keys)


def test_protocol_keys_change_a_heads_fingerprint_an_explicit_default_k_does_not(store: str, tmp_path: Path) -> None:
    keys = current_keys(store, [SEA, LOGREG])
    cfg = make_config(tmp_path, store, trainer={"epochs": 30, "batch_size": 32})   # default k = max(5, 3) = 5
    base = _fp(cfg, SEA, keys)
    assert _fp(replace(cfg, protocol=replace(cfg.protocol, k=5)), SEA, keys) == base
    variants = [replace(cfg.protocol, k=6), replace(cfg.protocol, select_on="last"), replace(cfg.protocol, refits=3)]
    prints = {_fp(replace(cfg, protocol=p), SEA, keys) for p in variants}
    assert base not in prints and len(prints) == 3
    # logreg has no curve to select on; reference mode selects nothing
    assert _fp(replace(cfg, protocol=variants[0]), LOGREG, keys) == _fp(cfg, LOGREG, keys)
    reference = replace(cfg, mode="reference")
    assert _fp(replace(reference, protocol=variants[2]), SEA, keys) == _fp(reference, SEA, keys)


def test_logreg_ignores_the_trainer_settings_that_lbfgs_never_reads(store: str, tmp_path: Path) -> None:
    keys = current_keys(store, [SEA, LOGREG])
    cfg = make_config(tmp_path, store)
    trained = replace(cfg, trainer=replace(cfg.trainer, epochs=7, batch_size=8, momentum=0.5, schedule="cosine",
                                           bf16=True))
    assert _fp(trained, LOGREG, keys) == _fp(cfg, LOGREG, keys)
    assert _fp(replace(cfg, trainer=replace(cfg.trainer, epochs=7)), SEA, keys) != _fp(cfg, SEA, keys)
    assert _fp(replace(cfg, resources=replace(cfg.resources, gpu=1.0)), LOGREG, keys) != _fp(cfg, LOGREG, keys)


FT = "random:resnet10t@16"   # a fine-tuning cell's backbone must be one the registry knows: its recipe is its family's


def _unit(store: FeatureStore, split: str, dtype: str, split_hash: str, n: int = 12) -> str:
    """A stored unit of (FT, digits, split) with this dtype and image identity; returns its key."""
    fkey = FeatureKey(backbone=FT, weights_sha256="w", timm_version="-", preprocessing={}, feature="pooled",
                      task="digits", split=split, split_hash=split_hash, dtype=dtype)
    manifest, _ = store.open_unit(fkey, n, 4, 100)
    store.write_shard(fkey, manifest, 0, np.arange(n), np.arange(n) % 2, np.ones((n, 4), np.float32))
    return fkey.key


def test_finetune_is_keyed_by_its_images_not_by_the_extraction_dtype(tmp_path: Path) -> None:
    store = FeatureStore(str(tmp_path / "store"))
    as_stored = {dtype: {f"{FT}|digits|{s}": _unit(store, s, dtype, f"images-{s}") for s in ("train", "test")}
                 for dtype in ("float16", "float32")}
    rewritten = {**as_stored["float16"], f"{FT}|digits|train": _unit(store, "train", "float16", "other-images")}
    assert as_stored["float16"] != as_stored["float32"]   # the dtype is part of every feature key
    cfg = load_config(data={"name": "ft", "backbones": [FT], "tasks": ["digits"], "methods": ["sea", "finetune"],
                            "store": str(tmp_path / "store"), "seeds": [0]})
    finetune, sea = Cell(FT, "digits", "finetune", 0), Cell(FT, "digits", "sea", 0)
    half, full, moved = (_fp(cfg, finetune, keys) for keys in (as_stored["float16"], as_stored["float32"], rewritten))
    assert half == full and moved != half
    assert _fp(cfg, sea, as_stored["float16"]) != _fp(cfg, sea, as_stored["float32"])
    assert _fp(replace(cfg, extraction=replace(cfg.extraction, dtype="float32")), finetune, as_stored["float16"]) == half
    # read once for all cells, the same fingerprints
    together = cell_fingerprints(cfg, [finetune, sea], as_stored["float32"])
    assert together[finetune.cell_id] == full and together[sea.cell_id] == _fp(cfg, sea, as_stored["float32"])


def test_the_parts_name_every_input_and_say_which_one_changed(store: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    keys = current_keys(store, [SEA])
    cfg = make_config(tmp_path, store)
    before = cell_fingerprint(cfg, SEA, keys)
    parts = json.loads(parts_tag(before))
    expected = {"features.bb|train", "features.bb|test", "trainer.epochs", "protocol.k", "carve.seed",
                "carve.fraction", "code.sea", "code.trial", "code.features", "code.splits", "code.datasets",
                *(f"lib.{name}" for name in LIBRARIES)}
    assert expected <= set(parts) and parts["carve.seed"] == 0 and parts["features.bb|train"] == keys["bb|digits|train"]
    assert all(len(str(v)) <= 24 for v in parts.values())
    # the carve's seed is read by value when the fingerprint is computed (on the driver)
    monkeypatch.setattr("tasks.splits.VAL_SEED", 7)
    after = cell_fingerprint(cfg, SEA, keys)
    assert after != before and changed_parts(before.parts, after.parts) == {"carve.seed": (0, 7)}
    epochs = cell_fingerprint(replace(cfg, trainer=replace(cfg.trainer, epochs=4)), SEA, keys)
    # the default window k = min(epochs, 5) follows the epochs: both are named
    assert changed_parts(after.parts, epochs.parts) == {"trainer.epochs": (3, 4), "protocol.k": (3, 4)}
    # dtd has an official validation split: no carve enters its cells
    dtd = Cell("bb", "dtd", "sea", 0)
    assert not any(p.startswith("carve.") for p in cell_fingerprint(cfg, dtd, current_keys(store, [dtd])).parts)


def test_a_fingerprint_is_its_digest_as_a_string_and_survives_pickling(store: str, tmp_path: Path) -> None:
    fingerprint = cell_fingerprint(make_config(tmp_path, store), SEA, current_keys(store, [SEA]))
    assert json.dumps({"c": fingerprint}) == json.dumps({"c": str(fingerprint)}) and len(fingerprint) == 24
    copy = pickle.loads(pickle.dumps(fingerprint))
    assert copy == fingerprint and copy.parts == fingerprint.parts
    assert parts_tag("plain") == ""
