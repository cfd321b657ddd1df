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
from tasks.imagedata import TaskData, load_image
from tasks.splits import (
    VAL_FRACTION,
    VAL_SEED,
    per_class_split,
    split_hash,
    stored_split_hash,
    validation_indices,
)

__all__ = [
    "BACKBONES",
    "IMAGEFOLDER_PREFIX",
    "PRESETS",
    "TASKS",
    "VAL_FRACTION",
    "VAL_SEED",
    "Backbone",
    "BackboneSpec",
    "TaskData",
    "TaskError",
    "TaskSpec",
    "build_backbone",
    "build_task",
    "get_backbone",
    "get_task",
    "list_backbones",
    "list_tasks",
    "load_image",
    "per_class_split",
    "protocol_split",
    "register_backbone",
    "register_task",
    "split_hash",
    "stored_split_hash",
    "task_root",
    "validation_indices",
]
