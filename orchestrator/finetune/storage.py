"""Where a fine-tuning cell keeps its runs, under names of its own, and what is left of them when it is done.

A cell's runs are named after the cell and its fingerprint (`run_name`): the candidates' Tune experiment
`<name>-select`, each candidate's Ray Train run `<name>-c<i>`, the refit `<name>-refit`, all under the
checkpoint storage (`checkpoint_storage`), which outlives the sweep. A rerun of an interrupted cell therefore
finds them: Tune restores the experiment (finished candidates are not retrained), and Ray Train resumes a run
of the same name and storage from its last checkpoint (the loop continues from that epoch). A changed cell has
another fingerprint, hence other names: nothing stale is resumed. When the cell has its results, `release`
deletes its folders except what `finetune.keep` asks for: `none`; `best`, the selected candidate's run (trained
on fit, best on validation); `last`, the refit's (trained on train + validation: the model that was tested).
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any

from orchestrator.names import ray_run_name


def run_name(sweep: str, backbone: str, task: str, seed: int, key: str = "") -> str:
    """The head of a cell's run names (told apart by their tail: -c<i>, -select, -refit). `key`, the cell's
    fingerprint, makes them the cell's own, so that a rerun resumes them; without one they are fresh each call.
    Only the descriptive part is cut short."""
    return f"{ray_run_name(f'{sweep}-ft-{backbone}-{task}-s{seed}')[:60]}-{(key or uuid.uuid4().hex)[:12]}"


def checkpoint_storage(ft: Any, store: str, nodes: int) -> str:
    """Where a cell's runs and checkpoints live: `finetune.storage` when set, else `<store>-checkpoints` beside
    the feature store (every node reaches it, and it outlives the sweep: what a rerun resumes from). A relative
    path is refused on a cluster of `nodes` > 1."""
    from orchestrator.raycluster import shared_storage

    where, key = (ft.storage, "finetune.storage") if ft.storage else (f"{store.rstrip('/')}-checkpoints", "store")
    return shared_storage(where, key, nodes, "Set finetune.storage to a URI every node reaches "
                          "(s3://BUCKET/seabench/checkpoints) or a shared mount")


def run_folders(name: str, n_candidates: int) -> dict[str, str]:
    """The folder names of a cell's runs under the checkpoint storage: select, c<i>, refit."""
    return {"select": ray_run_name(f"{name}-select"), "refit": ray_run_name(f"{name}-refit"),
            **{f"c{i}": ray_run_name(f"{name}-c{i}") for i in range(n_candidates)}}


def release(checkpoints: str, name: str, n_candidates: int, selected: int, keep: str) -> list[str]:
    """Delete the cell's run folders except the one `keep` names; returns the folders kept (relative)."""
    import pyarrow.fs

    from orchestrator.raycluster import storage_args

    path, filesystem = storage_args(checkpoints)
    filesystem = filesystem or pyarrow.fs.LocalFileSystem()
    folders = run_folders(name, n_candidates)
    kept = {"none": set(), "best": {f"c{selected}"}, "last": {"refit"}}[keep]
    for who, folder in folders.items():
        if who in kept:
            continue
        target = f"{path.rstrip('/')}/{folder}"
        if filesystem.get_file_info(target).type != pyarrow.fs.FileType.NotFound:
            filesystem.delete_dir(target)
    return [folders[k] for k in sorted(kept)]


def export_weights(result: Any, state_file: str) -> str:
    """The refit's fine-tuned weights (its last checkpoint's model) as a safetensors file in a temporary folder
    on this node, for the driver to log as the cell's artifact `finetuned.safetensors`; returns its path."""
    import torch
    from safetensors.torch import save_file

    with result.checkpoint.as_directory() as folder:
        model = torch.load(Path(folder) / state_file, map_location="cpu", weights_only=True)["model"]
    out = Path(tempfile.mkdtemp(prefix="seabench-weights-")) / "finetuned.safetensors"
    save_file({k: v.detach().contiguous().clone() for k, v in model.items()}, str(out))
    return str(out)
