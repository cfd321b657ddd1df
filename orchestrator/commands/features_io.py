"""Reading user-supplied feature files (`.npz` or `.pt`) for `seabench fit`."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from orchestrator.errors import OrchestratorError

REQUIRED_KEYS = ("features", "labels")


def _as_numpy(value: object, path: Path, key: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    raise OrchestratorError(
        f"{path}: key {key!r} holds a {type(value).__name__}; expected an array or tensor"
    )


def _load_npz(path: Path) -> dict[str, object]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise OrchestratorError(f"{path}: not a readable .npz archive ({exc})") from exc


def _load_pt(path: Path) -> dict[str, object]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise OrchestratorError(
            f"{path}: refused to load: the file needs arbitrary pickle, which can run code. "
            "Save plain tensors instead: torch.save({'features': X, 'labels': y}, path)"
        ) from exc
    except (RuntimeError, OSError, EOFError) as exc:
        raise OrchestratorError(f"{path}: not a readable torch file ({exc})") from exc
    if not isinstance(data, dict):
        raise OrchestratorError(
            f"{path}: holds a {type(data).__name__}; expected a dict with keys 'features' and 'labels'"
        )
    return data


LOADERS = {".npz": _load_npz, ".pt": _load_pt, ".pth": _load_pt}


def load_feature_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load `(features, labels)` from a `.npz` or `.pt` file holding those two keys."""
    path = Path(path)
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise OrchestratorError(
            f"{path}: unsupported file type {path.suffix!r}; use .npz (numpy.savez) or .pt (torch.save)"
        )
    if not path.is_file():
        raise OrchestratorError(f"{path}: no such file")
    data = loader(path)
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise OrchestratorError(
            f"{path}: missing key(s) {missing}; found {sorted(data)}. "
            "The file must hold 'features' (n x d) and 'labels' (n)"
        )
    features = _as_numpy(data["features"], path, "features")
    labels = _as_numpy(data["labels"], path, "labels")
    return features, labels
