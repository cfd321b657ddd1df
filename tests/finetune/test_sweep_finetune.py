"""A sweep with a finetune method: its cell runs through Ray Tune + Ray Train beside a SeA cell, is one MLflow
child run with the cell's fingerprint, candidate table and cost metrics, resumes as done, and the report's
fine-tuning claim counts it."""

from __future__ import annotations

import contextlib
import csv
import io
from dataclasses import replace
from pathlib import Path

import pytest
from sweepkit import runs_by_cell as cell_runs
from synthstore import write_task

from orchestrator.config import load_config
from orchestrator.report import build_report
from orchestrator.runs import CANDIDATES_ARTIFACT
from orchestrator.sweep import Cell, run_sweep
from orchestrator.sweep.fingerprint import cell_fingerprint, current_keys

BACKBONE = "random:resnet10t@32"
COST = ("select_wall_s", "refit_wall_s", "test_wall_s", "cell_wall_s", "cell_cpu_s", "cell_gpu_s")


def sweep_config(tmp_path: Path, task, **finetune: object):
    store = str(tmp_path / "store")
    write_task(store, BACKBONE, task.name, {"train": task.sizes["train"], "test": task.sizes["test"]},
               task.num_classes, dim=16)
    return load_config(data={
        "name": "ft-sweep", "backbones": [BACKBONE], "tasks": [task.name], "methods": ["sea", "finetune"],
        "seeds": [0], "store": store, "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "tune_dir": str(tmp_path / "tune"), "max_failures": 0, "trainer": {"epochs": 3, "batch_size": 16},
        "grid": {"lr": [0.8], "weight_decay": [1e-6], "lamda": [0.1], "eta": [0.2], "alpha": [0.05]},
        "finetune": {"epochs": 2, "batch_size": 4, "image_size": 32, "lr": [0.05], "weight_decay": [0.0, 1e-4],
                     "num_workers": 1, "max_failures": 0, **finetune}})


@pytest.fixture(scope="module")
def finished_sweep(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory):
    from fakedata import fake_task as _fake_task

    root = tmp_path_factory.mktemp("ft-sweep")
    # the image folder by a path relative to the driver's working directory, which Ray's workers do not share
    task = replace(_fake_task(root / "task", classes=3, n_train=8, n_test=3, size=16), name="imagefolder:task")
    cfg = sweep_config(root, task, keep="last", save_weights=True)
    with contextlib.chdir(root):   # for this module's tests, which read the task by its relative name
        summary = run_sweep(cfg, cfg.all_tasks, progress=False)
        yield cfg, task, summary, root


def test_the_finetune_cell_is_one_mlflow_run_with_fingerprint_candidates_and_costs(finished_sweep) -> None:
    cfg, task, summary, _ = finished_sweep
    assert (summary.completed, summary.failed) == (2, [])
    cell = Cell(BACKBONE, task.name, "finetune", 0)
    (run,) = cell_runs(cfg)[cell.cell_id]
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    assert run.info.status == "FINISHED" and tags["status"] == "ok" and tags["method"] == "finetune"
    keys = current_keys(cfg.store, [cell])
    assert tags["fingerprint"] == cell_fingerprint(cfg, cell, keys)
    assert tags["primary_metric"] == "top1" and tags["mode"] == "select" and "Ericsson" in tags["recipe"]
    assert {"val_top1", "val_mean_per_class", "test_top1", "test_mean_per_class", *COST} <= set(metrics)
    assert all(metrics[k] >= 0 for k in COST) and metrics["cell_wall_s"] >= metrics["select_wall_s"] > 0
    assert metrics["cell_gpu_s"] == 0.0
    assert tags["n_test"] == str(task.sizes["test"])   # the test split, evaluated once, whole
    # two epochs of 24 images in batches of 4 are 12 steps of the recipe's 5 000: flagged, and its predictions kept
    assert metrics["steps_run"] == 12 and metrics["steps_budget"] == 5000 and tags["flags"] == "under_trained"
    import pyarrow.parquet as pq
    from mlflow import MlflowClient as _Client

    from orchestrator.runs import PREDICTIONS_ARTIFACT

    table = pq.read_table(_Client(cfg.tracking_uri).download_artifacts(run.info.run_id, PREDICTIONS_ARTIFACT))
    assert table.column_names == ["index", "label", "pred"] and table.num_rows == task.sizes["test"]
    pred, label = table.column("pred").to_numpy(), table.column("label").to_numpy()
    assert 100 * float((pred == label).mean()) == pytest.approx(metrics["test_top1"])
    per_class = [float((pred[label == c] == c).mean()) for c in range(task.num_classes)]
    assert 100 * sum(per_class) / task.num_classes == pytest.approx(metrics["test_mean_per_class"])
    assert params["n_candidates"] == "2" and params["epochs"] == "2" and float(params["lr"]) == 0.05
    # a ResNet runs ssl-transfer's recipe: SGD is given weight decay / lr
    assert params["recipe"] == "ssl-transfer" and params["optimizer"] == "sgd-nesterov"
    assert float(params["optimizer_weight_decay"]) == pytest.approx(float(params["weight_decay"]) / 0.05)
    from mlflow import MlflowClient

    text = MlflowClient(cfg.tracking_uri).download_artifacts(run.info.run_id, CANDIDATES_ARTIFACT)
    rows = list(csv.DictReader(io.StringIO(Path(text).read_text())))
    assert [r["weight_decay"] for r in rows] == ["0.0", "0.0001"]
    assert sum(int(r["selected"]) for r in rows) == 1
    assert set(rows[0]) == {"candidate", "lr", "weight_decay", "val_top1", "val_mean_per_class", "epochs_run",
                            "stopped_early", "selected"}
    assert [r["stopped_early"] for r in rows] == ["0", "0"]   # finetune.asha is off by default
    chosen = next(r for r in rows if r["selected"] == "1")
    assert float(chosen["weight_decay"]) == float(params["weight_decay"])
    assert float(chosen["val_top1"]) == pytest.approx(metrics["val_top1"])


def test_keep_last_leaves_the_refit_alone_and_save_weights_logs_its_weights(finished_sweep) -> None:
    from mlflow import MlflowClient
    from safetensors.torch import load_file

    cfg, task, _, root = finished_sweep
    (left,) = (root / "store-checkpoints").iterdir()   # the candidates' runs and Tune experiment are gone
    assert left.name.endswith("-refit") and list(left.glob("checkpoint_*/state.pt"))
    (run,) = cell_runs(cfg)[Cell(BACKBONE, task.name, "finetune", 0).cell_id]
    weights = load_file(MlflowClient(cfg.tracking_uri).download_artifacts(run.info.run_id, "finetuned.safetensors",
                                                                           str(root)))
    assert weights["head.weight"].shape == (task.num_classes, 512)   # resnet10t's 512 pooled features
    # both candidates (fit: 2 epochs of the 16 images validation leaves, 4 per batch) and the refit, from scratch
    assert run.data.metrics["steps_trained"] == 2 * 8 + run.data.metrics["steps_run"] == 28


def test_each_epoch_of_each_run_is_a_point_of_its_curves_in_mlflow(finished_sweep) -> None:
    """Candidates: validation metrics, train loss, lr and images/s per epoch (step = epoch); the refit the same
    without validation (its eval phase is the test split, read once); the selected candidate's last point is
    the cell's validation score."""
    from mlflow import MlflowClient

    cfg, task, _, _ = finished_sweep
    (run,) = cell_runs(cfg)[Cell(BACKBONE, task.name, "finetune", 0).cell_id]
    client = MlflowClient(cfg.tracking_uri)

    def curve(key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]

    for who in ("c0", "c1"):
        for key in ("val_top1", "val_mean_per_class", "train_loss", "lr", "images_per_s"):
            points = curve(f"curve/{who}/{key}")
            assert [step for step, _ in points] == [1, 2], (who, key, points)
            assert all(value >= 0 for _, value in points)
        assert all(0 <= v <= 100 for _, v in curve(f"curve/{who}/val_top1"))
        (_, lr1), (_, lr2) = curve(f"curve/{who}/lr")
        # the recipe's cosine schedule over the run's 12 steps, after each epoch: half-way down, then 0
        assert lr1 == pytest.approx(0.05 / 2, rel=0.2) and lr2 == pytest.approx(0.0, abs=1e-9)
    assert [s for s, _ in curve("curve/refit/train_loss")] == [1, 2] and curve("curve/refit/val_top1") == []
    chosen = "c0" if float(run.data.params["weight_decay"]) == 0.0 else "c1"
    assert curve(f"curve/{chosen}/val_top1")[-1][1] == pytest.approx(run.data.metrics["val_top1"])


@pytest.mark.slow
def test_asha_stops_the_candidate_whose_validation_falls_behind_after_its_first_epoch(
        ray_cluster: None, tmp_path: Path) -> None:
    """finetune.asha: candidates one at a time (one takes both CPUs); the second (lr 1e-5: it barely moves) is
    behind the first after epoch 1 on digits, so Tune's ASHA stops it there; the first trains its 2 epochs."""
    from mlflow import MlflowClient

    cfg = load_config(data={
        "name": "ft-asha", "backbones": [BACKBONE], "tasks": ["digits"], "methods": ["finetune"], "seeds": [0],
        "store": str(tmp_path / "store"), "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "tune_dir": str(tmp_path / "tune"), "max_failures": 0,
        "finetune": {"epochs": 2, "batch_size": 32, "image_size": 16, "lr": [0.1, 1e-5], "weight_decay": [0.0],
                     "num_workers": 1, "cpus_per_worker": 2, "max_failures": 0, "asha": True}})
    summary = run_sweep(cfg, cfg.all_tasks, progress=False)
    assert (summary.completed, summary.failed) == (1, [])
    (run,) = next(iter(cell_runs(cfg).values()))
    text = MlflowClient(cfg.tracking_uri).download_artifacts(run.info.run_id, CANDIDATES_ARTIFACT)
    rows = list(csv.DictReader(io.StringIO(Path(text).read_text())))
    client = MlflowClient(cfg.tracking_uri)
    first = {who: [m.value for m in client.get_metric_history(run.info.run_id, f"curve/{who}/val_top1") if m.step == 1]
             for who in ("c0", "c1")}
    assert first["c0"][0] > first["c1"][0], first   # the precondition: behind at epoch 1 (ASHA's first rung)
    assert [(r["epochs_run"], r["stopped_early"], r["selected"]) for r in rows] == [("2", "0", "1"), ("1", "1", "0")]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "curve/c1/val_top1")] == [1]
    # the stopped candidate's worker group gave its CPUs back (the refit above needed both); nothing is left held
    from ray.util import placement_group_table

    assert [p["bundles"] for p in placement_group_table().values() if p["state"] != "REMOVED"] == []


def test_the_finetune_cell_trains_while_the_heads_tuner_runs(finished_sweep) -> None:
    """Started before the heads' Tuner, on the same cluster: it began before the SeA cell ended (run one
    after the other, it would begin after)."""
    cfg, task, _, _ = finished_sweep
    runs = cell_runs(cfg)
    (ft,) = runs[Cell(BACKBONE, task.name, "finetune", 0).cell_id]
    (sea,) = runs[Cell(BACKBONE, task.name, "sea", 0).cell_id]
    assert ft.info.start_time < sea.info.end_time < ft.info.end_time


def test_a_rerun_trains_nothing_and_a_changed_recipe_recomputes_only_finetune(finished_sweep) -> None:
    cfg, task, _, _ = finished_sweep
    again = run_sweep(cfg, cfg.all_tasks, progress=False)
    assert (again.skipped, again.completed) == (2, 0)
    assert all(len(runs) == 1 for runs in cell_runs(cfg).values())
    changed = replace(cfg, finetune=replace(cfg.finetune, epochs=3))
    keys = current_keys(cfg.store, [Cell(BACKBONE, task.name, m, 0) for m in ("sea", "finetune")])
    for method, moves in (("finetune", True), ("sea", False)):
        cell = Cell(BACKBONE, task.name, method, 0)
        assert (cell_fingerprint(changed, cell, keys) != cell_fingerprint(cfg, cell, keys)) == moves


def test_the_reports_claim_counts_the_sweeps_own_finetune_cell(finished_sweep) -> None:
    cfg, task, _, root = finished_sweep
    paths = build_report(cfg.name, root / "report", tracking_uri=cfg.tracking_uri)
    runs = cell_runs(cfg)
    sea, ft = (runs[Cell(BACKBONE, task.name, m, 0).cell_id][0].data.metrics["test_top1"] for m in ("sea", "finetune"))
    # one seed, one task: within when SeA's test top-1 is at most 1 point below fine-tuning's
    assert (paths.finetune_compared, paths.finetune_within) == (1, int(sea - ft >= -1.0))
    md = paths.leaderboard_md.read_text()
    assert f"fine-tuning on {paths.finetune_within} of 1 tasks compared" in md
    section = md.split("## SeA vs fine-tuning")[1]
    assert "Source: this sweep's own finetune cells" in section
    assert f"| {task.name} | {BACKBONE} | top1 | 1 |" in section   # one seed paired: no interval yet
