"""A dataset and a backbone added from outside `tasks`, as docs/extending.md says: one `TaskSpec` with its
loader, one `BackboneSpec`. Loaded as a plugin (`plugins:` in a config) by the driver and by every Ray worker
that reads the task: the extraction actors and the sweep's trials.

`digits-mini`: the first 120 training and 60 test images of scikit-learn's digits (the registered `digits`
task's own split), no data root; `toy-resnet`: a random-init ResNet-10t at 16 px.
"""

from __future__ import annotations

from pathlib import Path

from tasks import TASKS, BackboneSpec, TaskData, TaskSpec, get_task, register_backbone, register_task
from tasks.imagedata import ArrayImages

SIZES = {"train": 120, "test": 60}


def load_digits_mini(task_root: Path | None, split: str, download: bool) -> TaskData:
    full = get_task("digits").loader(task_root, split, download)
    n = SIZES[split]
    return TaskData(ArrayImages(full.images.array[:n], f"digits-mini:{split}"), full.targets[:n], full.classes)


if "digits-mini" not in TASKS:   # a plugin may be imported again under another name: registering twice is refused
    register_task(TaskSpec("digits-mini", "scikit-learn digits, first 120 train / 60 test images", 10, "top1",
                           ("train", "test"), "carve", "", "ships inside scikit-learn", load_digits_mini,
                           downloadable=False, needs_root=False, hflip=False))
register_backbone(BackboneSpec("toy-resnet", "resnet10t", "random:0", input_size=16))
