"""Where a fine-tuning cell's runs and checkpoints go — every Ray Train worker must reach them, so on a cluster
of several nodes a relative path is refused before anything trains — under names of the cell's own, and what
a finished cell keeps of them (finetune.keep)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.config import FinetuneConfig, load_config
from orchestrator.errors import OrchestratorError
from orchestrator.finetune import checkpoint_storage, release, run_folders, run_name
from orchestrator.sweep import Cell
from orchestrator.sweep.fingerprint import cell_fingerprint

FT = FinetuneConfig()


def test_one_node_keeps_them_beside_the_store_too_where_a_rerun_finds_them(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert checkpoint_storage(FT, "features", nodes=1) == str(tmp_path / "features-checkpoints")
    assert checkpoint_storage(FT, "s3://b/features", nodes=1) == "s3://b/features-checkpoints"


def test_a_cluster_puts_them_beside_the_feature_store_every_node_reaches(tmp_path: Path) -> None:
    assert checkpoint_storage(FT, "s3://bucket/seabench/features/", nodes=3) == \
        "s3://bucket/seabench/features-checkpoints"
    shared = tmp_path / "nfs" / "features"
    assert checkpoint_storage(FT, str(shared), nodes=2) == f"{shared}-checkpoints"


def test_finetune_storage_wins_and_a_relative_path_is_resolved_on_one_node(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert checkpoint_storage(replace(FT, storage="gs://b/ckpt"), "s3://x/f", nodes=4) == "gs://b/ckpt"
    assert checkpoint_storage(replace(FT, storage="ckpt"), "features", nodes=1) == str(tmp_path / "ckpt")


@pytest.mark.parametrize(("storage", "store", "named"), [("ckpt", "s3://b/f", "'ckpt' (finetune.storage)"),
                                                          (None, "features", "'features-checkpoints' (store)")])
def test_a_relative_path_on_a_cluster_is_refused_naming_the_key(storage, store, named) -> None:
    with pytest.raises(OrchestratorError) as err:
        checkpoint_storage(replace(FT, storage=storage), store, nodes=3)
    message = str(err.value)
    assert named in message and "3 nodes" in message and "s3://" in message and "finetune.storage" in message


def test_where_checkpoints_go_and_retries_do_not_change_a_finetune_cells_fingerprint(tmp_path: Path) -> None:
    base = {"name": "fp", "backbones": ["random:resnet10t@32"], "tasks": ["digits"], "methods": ["finetune"],
            "store": str(tmp_path / "store")}
    cell = Cell("random:resnet10t@32", "digits", "finetune", 0)

    def fingerprint(**finetune: object) -> str:
        return cell_fingerprint(load_config(data={**base, "finetune": finetune}), cell, {})

    same = fingerprint()
    assert fingerprint(storage="s3://b/ckpt", max_failures=5, cpus_per_worker=4, tasks=["digits"], keep="last",
                       save_weights=True) == same
    assert fingerprint(lr=[0.5]) != same and fingerprint(num_workers=2) != same and fingerprint(epochs=3) != same


def test_run_names_are_the_cells_own_with_its_fingerprint_and_fresh_without() -> None:
    task = "imagefolder:/data/" + "deep/" * 40 + "set"
    first, second = run_name("sweep", "efficientnet-lite0", task, 0), run_name("sweep", "efficientnet-lite0", task, 0)
    assert first != second and len(first) == 73 and first.startswith("sweep-ft-efficientnet-lite0-imagefolder_")
    assert "/" not in first and ":" not in first
    own = run_name("sweep", "efficientnet-lite0", task, 0, key="0123456789abcdef0123")
    assert own == run_name("sweep", "efficientnet-lite0", task, 0, key="0123456789abcdef0123")   # a rerun's
    assert own.endswith("-0123456789ab") and own != run_name("sweep", "efficientnet-lite0", task, 0, key="f" * 24)


@pytest.mark.parametrize(("keep", "left"), [("none", set()), ("best", {"c1"}), ("last", {"refit"})])
def test_a_finished_cell_keeps_only_what_finetune_keep_asks_for(tmp_path: Path, keep: str, left: set) -> None:
    folders = run_folders("cell", 3)
    for folder in [*folders.values(), "other-cell-refit"]:
        (tmp_path / folder / "checkpoint_000001").mkdir(parents=True)
    release(str(tmp_path), "cell", 3, selected=1, keep=keep)
    assert {p.name for p in tmp_path.iterdir()} == {folders[k] for k in left} | {"other-cell-refit"}


def test_an_unknown_keep_policy_is_refused_naming_the_key() -> None:
    with pytest.raises(OrchestratorError, match=r"finetune\.keep"):
        load_config(data={"name": "k", "backbones": ["random:resnet10t@32"], "tasks": ["digits"],
                          "methods": ["finetune"], "finetune": {"keep": "all"}})


def test_a_worker_group_no_node_holds_yet_waits_for_an_autoscaler_unless_no_node_type_holds_it(
        ray_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a fixed cluster a GPU worker group on a CPU-only cluster is an error; with --autoscaling it trains
    one candidate at a time once its placement group gets nodes, unless the autoscaler's types hold no worker."""
    from orchestrator.capacity import NODE_TYPES_ENV
    from orchestrator.finetune.trainer import _check_cluster
    from orchestrator.raycluster import AUTOSCALING_ENV

    gpu = replace(FT, gpus_per_worker=1.0)
    monkeypatch.delenv(AUTOSCALING_ENV, raising=False)
    monkeypatch.delenv(NODE_TYPES_ENV, raising=False)
    with pytest.raises(OrchestratorError, match=r"do not fit the Ray cluster \(CPU 2, GPU 0\)"):
        _check_cluster(gpu)
    monkeypatch.setenv(AUTOSCALING_ENV, "1")
    assert _check_cluster(gpu) == 1
    monkeypatch.setenv(NODE_TYPES_ENV, '{"available_node_types": {"cpu": {"resources": {"CPU": 8}}}}')
    with pytest.raises(OrchestratorError, match=r"a fine-tuning worker needs 1 CPU, 1 GPU, but no node type .*cpu: 8 CPU"):
        _check_cluster(gpu)
