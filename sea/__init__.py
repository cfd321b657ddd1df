"""SeA and its baselines as linear heads on frozen, L2-normalised features (pure PyTorch + numpy)."""

from sea.config import HEAD_METHODS, METHOD_KNOBS, METHODS, SCHEDULES, HeadConfig, TrainResult, TrainSettings
from sea.direction import input_gradient, semantic_direction
from sea.errors import SeaError
from sea.halving import Halving, head_epochs, rungs
from sea.logreg import DEFAULT_CS, LogRegResult, fit_logreg, refit_logreg
from sea.metrics import mean_per_class_accuracy, top1_accuracy
from sea.selection import LOGREG, SelectionResult, select_and_refit
from sea.trainer import initial_weight, predict, train_heads
from sea.validation import validate_features

__all__ = [
    "DEFAULT_CS",
    "HEAD_METHODS",
    "LOGREG",
    "METHODS",
    "METHOD_KNOBS",
    "SCHEDULES",
    "Halving",
    "HeadConfig",
    "LogRegResult",
    "SeaError",
    "SelectionResult",
    "TrainResult",
    "TrainSettings",
    "fit_logreg",
    "head_epochs",
    "initial_weight",
    "input_gradient",
    "mean_per_class_accuracy",
    "predict",
    "refit_logreg",
    "rungs",
    "select_and_refit",
    "semantic_direction",
    "top1_accuracy",
    "train_heads",
    "validate_features",
]
