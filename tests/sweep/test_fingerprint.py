"""orchestrator.sweep.fingerprint: a cell's fingerprint changes with everything that determines its result."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sweepkit import make_config

from orchestrator.sweep.cells import Cell
from orchestrator.sweep.fingerprint import cell_fingerprint, cell_units, current_keys

CELL = Cell("bb", "dtd", "sea", 0)


def test_fingerprint_is_stable_and_changes_with_every_input(store: str, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, store, tasks=["dtd"])
    keys = current_keys(store, [CELL])
    assert sorted(keys) == sorted(cell_units(CELL)) == ["bb|dtd|test", "bb|dtd|train", "bb|dtd|val"]
    base = cell_fingerprint(cfg, CELL, keys)
    assert cell_fingerprint(cfg, CELL, dict(reversed(list(keys.items())))) == base
    assert cell_fingerprint(replace(cfg, resources=replace(cfg.resources, cpu=2.0)), CELL, keys) == base
    variants = {
        "epochs": replace(cfg, trainer=replace(cfg.trainer, epochs=4)),
        "schedule": replace(cfg, trainer=replace(cfg.trainer, schedule="cosine")),
        "mode": replace(cfg, mode="reference"),
        "grid": make_config(tmp_path, store, tasks=["dtd"], grid={"lr": [0.1], "eta": [0.2]}),
        "search": replace(cfg, search=replace(cfg.search, algorithm="random")),
        "gpu": replace(cfg, resources=replace(cfg.resources, gpu=0.5)),
    }
    changed = {name: cell_fingerprint(c, CELL, keys) for name, c in variants.items()}
    assert all(f != base for f in changed.values()) and len(set(changed.values())) == len(changed)
    assert cell_fingerprint(cfg, CELL, {**keys, "bb|dtd|test": "f" * 24}) != base     # other test features
    assert cell_fingerprint(cfg, replace(CELL, seed=1), keys) != base
    assert len(base) == 24 and all(ch in "0123456789abcdef" for ch in base)


def test_an_ensemble_cell_reads_every_part(store: str) -> None:
    cell = Cell("ensemble:bb+cc", "digits", "linear", 0)
    assert cell_units(cell) == ["bb|digits|train", "bb|digits|test", "cc|digits|train", "cc|digits|test"]
    assert sorted(current_keys(store, [cell])) == sorted(cell_units(cell))


def test_a_halved_grid_cell_has_its_own_fingerprint_keyed_by_the_resolved_rungs(store: str, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, store, tasks=["dtd"], trainer={"epochs": 20, "batch_size": 32})
    keys = current_keys(store, [CELL])
    full = cell_fingerprint(cfg, CELL, keys)
    assert not any(name.startswith("search.") for name in full.parts)   # off: the parts are those of before

    def halved(**halving):
        return cell_fingerprint(make_config(tmp_path, store, tasks=["dtd"], trainer={"epochs": 20, "batch_size": 32},
                                            search={"halving": halving}), CELL, keys)

    three, two, first2 = halved(factor=3), halved(factor=2), halved(factor=3, min_epochs=2)
    assert len({full, three, two, first2}) == 4
    # 2 candidates in the tiny grid: the default first rung is 20 // 3 = 6, keyed by value
    assert three.parts["search.halving.min_epochs"] == 6 and halved(factor=3, min_epochs=6) == three
    assert three.parts["search.halving.factor"] == 3
