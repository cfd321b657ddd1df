"""SeA and its baselines as linear heads on frozen, L2-normalised features (pure PyTorch + numpy).

The names below are imported on first use, so `sea.methods` (the method registry, pure Python) is
read by configs and reports without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SCHEDULES": "methods", "HeadConfig": "config", "TrainResult": "config", "TrainSettings": "config",
    "Method": "methods", "get_method": "methods", "method_names": "methods", "ordered_methods": "methods",
    "register_method": "methods", "unregister_method": "methods",
    "input_gradient": "direction", "semantic_direction": "direction",
    "SeaError": "errors",
    "Halving": "halving", "head_epochs": "halving", "rungs": "halving",
    "DEFAULT_CS": "logreg", "LogRegResult": "logreg", "fit_logreg": "logreg", "refit_logreg": "logreg",
    "mean_per_class_accuracy": "metrics", "top1_accuracy": "metrics",
    "LOGREG": "selection", "SelectionResult": "selection", "select_and_refit": "selection",
    "initial_weight": "trainer", "predict": "trainer", "train_heads": "trainer",
    "validate_features": "validation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sea' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sea.{_EXPORTS[name]}"), name)
