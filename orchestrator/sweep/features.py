"""What a trial reads: stored splits as arrays, ensembles' concatenated parts, and the protocol's phases.

Virtual backbones `ensemble:A+B[+…]` train on the concatenation of the stored features of the parts,
matched row by row (the store orders every unit by sample index; labels must agree). Each part is
L2-normalised before concatenation so that every backbone weighs equally whatever its feature scale;
the trainer L2-normalises the concatenation again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from orchestrator.errors import OrchestratorError
from orchestrator.extract import backbone_parts


class LoadedSplit(NamedTuple):
    """A stored split as a trial sees it; rows in `skipped` (images unreadable at extraction) are
    left out of every protocol phase, after the phases are cut, so the split stays the official one."""

    x: np.ndarray                 # n×d float32
    y: np.ndarray                 # n int64
    key: str                      # feature key (comma-joined for an ensemble)
    skipped: np.ndarray = np.zeros(0, dtype=np.int64)   # sorted row indices


# (backbone, task, stored split) -> LoadedSplit
SplitLoader = Callable[[str, str, str], LoadedSplit]


def unit_id(backbone: str, task: str, split: str) -> str:
    """How extraction summaries and trial contexts name a stored unit: "backbone|task|split"."""
    return f"{backbone}|{task}|{split}"


def _unit_normalised(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def load_features(load: SplitLoader, backbone: str, task: str, split: str) -> LoadedSplit:
    """Features of a stored or virtual (ensemble) backbone; the key is comma-joined for ensembles, and
    a row skipped in any part is skipped in the ensemble."""
    parts = backbone_parts(backbone)
    if len(parts) == 1:
        return LoadedSplit(*load(parts[0], task, split))
    loaded = [LoadedSplit(*load(part, task, split)) for part in parts]
    first_y = loaded[0].y
    for part, unit in zip(parts[1:], loaded[1:]):
        if unit.x.shape[0] != first_y.shape[0] or not np.array_equal(unit.y, first_y):
            raise OrchestratorError(
                f"ensemble {backbone!r}: {part} holds {unit.x.shape[0]} rows of {task}/{split} whose labels do not "
                f"match {parts[0]}'s {first_y.shape[0]}; re-extract both from the same data")
    x = np.concatenate([_unit_normalised(unit.x) for unit in loaded], axis=1).astype(np.float32)
    skipped = np.unique(np.concatenate([np.asarray(unit.skipped, dtype=np.int64) for unit in loaded]))
    return LoadedSplit(x, first_y, ",".join(unit.key for unit in loaded), skipped)


def phase_indices(task: str, phase: str, stored: dict[str, LoadedSplit]) -> list[tuple[str, np.ndarray]]:
    """(stored split, row indices) of a protocol phase (fit / val / trainval / test), less the rows whose
    image was unreadable at extraction: the rows `phase_rows` returns, in its order."""
    from tasks import protocol_split

    parts = protocol_split(task, phase, {s: unit.y for s, unit in stored.items()})
    return [(split, idx[~np.isin(idx, stored[split].skipped)] if len(stored[split].skipped) else idx)
            for split, idx in parts]


def phase_rows(task: str, phase: str, stored: dict[str, LoadedSplit]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a protocol phase (fit / val / trainval / test) gathered from the stored splits, less the
    rows whose image was unreadable at extraction."""
    parts = phase_indices(task, phase, stored)
    x = np.concatenate([stored[split].x[idx] for split, idx in parts])
    y = np.concatenate([stored[split].y[idx] for split, idx in parts])
    if not len(y):
        raise OrchestratorError(f"{task}: the {phase} rows are empty once unreadable images are left out; "
                                "fix the images and re-extract")
    return x, y
