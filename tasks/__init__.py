"""Downstream tasks (datasets, official splits, metrics) and backbones (timm + weights + adapters)."""

from tasks.backbones import (
    BACKBONES,
    PRESETS,
    Backbone,
    BackboneSpec,
    build_backbone,
    get_backbone,
    list_backbones,
    register_backbone,
)
from tasks.datasets import (
    IMAGEFOLDER_PREFIX,
    TASKS,
    TaskSpec,
    build_task,
    get_task,
    list_tasks,
    protocol_split,
    register_task,
    task_root,
)
from tasks.errors import TaskError
from tasks.imagedata import TaskData
from tasks.preflight import Missing, preflight
from tasks.sizes import OFFICIAL_SIZES, official_sizes
from tasks.splits import (
    VAL_FRACTION,
    VAL_SEED,
    per_class_split,
    stored_split_hash,
    validation_indices,
)
from tasks.staging import absolute, is_uri, stage

__all__ = [
    "BACKBONES",
    "IMAGEFOLDER_PREFIX",
    "OFFICIAL_SIZES",
    "PRESETS",
    "TASKS",
    "VAL_FRACTION",
    "VAL_SEED",
    "Backbone",
    "BackboneSpec",
    "Missing",
    "TaskData",
    "TaskError",
    "TaskSpec",
    "absolute",
    "build_backbone",
    "build_task",
    "get_backbone",
    "get_task",
    "is_uri",
    "list_backbones",
    "list_tasks",
    "official_sizes",
    "per_class_split",
    "preflight",
    "protocol_split",
    "register_backbone",
    "register_task",
    "stage",
    "stored_split_hash",
    "task_root",
    "validation_indices",
]
