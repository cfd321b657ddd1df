"""`seabench plan`: a sweep sized before it runs, with or without its data. Every expected number below is
computed by hand from the config in the test (grid sizes, split sizes, recipe), never by the code under test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fakedata import make_fake_imagefolder

from orchestrator.commands.cli import main

REPO = Path(__file__).resolve().parents[2]
A, B = "random:resnet10t@16", "random:mobilenetv3_small_100@16"
ENSEMBLE = f"ensemble:{A}+{B}"


@pytest.fixture(scope="module")
def fake_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes × (5 train, 2 test) images, no val/: a carve task of 15 + 6 images (val 1 per class)."""
    root = tmp_path_factory.mktemp("plan-task")
    make_fake_imagefolder(root, classes=3, n_train=5, n_test=2, size=12)
    return root


def small_config(tmp_path: Path, fake_folder: Path, **changes: object) -> Path:
    """3 backbones (2 stored + their ensemble) × 3 tasks (digits and the fake folder on disk, cifar10 absent)
    × (linear, sea, logreg, finetune) × 2 seeds."""
    config = {
        "name": "plan-small", "backbones": [A, B, ENSEMBLE], "tasks": ["digits", f"imagefolder:{fake_folder}", "cifar10"],
        "methods": ["linear", "sea", "logreg", "finetune"], "seeds": [0, 1], "data_root": str(tmp_path / "data"),
        "store": str(tmp_path / "store"), "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "grid": {"lr": [0.4, 0.8], "weight_decay": [1e-6], "lamda": [0.1], "eta": [0.2, 0.4, 0.8], "alpha": [0.01, 0.1],
                 "c": [0.1, 1.0, 10.0]},
        "protocol": {"refits": 2}, "trainer": {"epochs": 10, "batch_size": 64},
        "extraction": {"dtype": "float32"},
        "finetune": {"steps": 7, "batch_size": 16, "lr": [0.01, 0.03], "weight_decay": [0.0, 1e-4],
                     "backbones": [A], "tasks": ["digits", "cifar10"]},
        **changes,
    }
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def plan_json(capsys: pytest.CaptureFixture, config: Path, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["plan", "--config", str(config), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_small_sweep_is_counted_as_computed_by_hand(tmp_path, fake_folder, capsys):
    out = plan_json(capsys, small_config(tmp_path, fake_folder))
    # 3 backbones × 3 tasks × 2 seeds per head method; finetune: 1 backbone × 2 tasks × 2 seeds
    assert out["cells"]["per_method"] == {"linear": 18, "sea": 18, "logreg": 18, "finetune": 4}
    assert out["cells"]["total"] == 58
    # grids: linear lr 2 × wd 1 × λ 1 = 2, sea 2 × η 3 × α 2 = 12, logreg 3 Cs; + 2 refits (logreg: 1)
    assert {m: p["heads"] for m, p in out["method_plans"].items()} == {"linear": 4, "sea": 14, "logreg": 4}
    assert {m: p["head_epochs"] for m, p in out["method_plans"].items()} == {"linear": 40, "sea": 140, "logreg": 0}
    assert out["heads"] == {"total": 18 * (4 + 14 + 4), "per_method": {"linear": 72, "sea": 252, "logreg": 72}}
    assert out["head_epochs"]["total"] == 18 * (40 + 140)
    # digits 1438 + 359 (data), the folder 15 + 6 (data), cifar10 50000 + 10000 (registry)
    per_task = 1797 + 21 + 60000
    assert out["images"]["per_backbone"] == {A: per_task, B: per_task, ENSEMBLE: 0}
    assert out["images"]["sources"] == {"digits": "data", f"imagefolder:{fake_folder}": "data", "cifar10": "registry"}
    assert out["feature_dims"] == {A: 512, B: 1024, ENSEMBLE: 1536}
    assert out["feature_bytes"]["per_backbone"] == {A: per_task * 512 * 4, B: per_task * 1024 * 4, ENSEMBLE: 0}
    sizes = {t["task"]: t["phases"] for t in out["tasks"]}
    assert sizes["digits"] == {"fit": 1151, "val": 287, "trainval": 1438, "test": 359}
    assert sizes[f"imagefolder:{fake_folder}"] == {"fit": 12, "val": 3, "trainval": 15, "test": 6}
    assert sizes["cifar10"] == {"fit": 40000, "val": 10000, "trainval": 50000, "test": 10000}
    (ft,) = out["finetune"]
    assert (ft["backbone"], ft["candidates"], ft["cells"], ft["runs"]) == (A, 4, 4, 4 * (4 + 1))
    assert ft["optimizer_steps"] == 4 * 5 * 7   # steps mode: every run trains 7 steps
    assert (ft["optimizer"], ft["warmup_steps"], ft["layer_decay"], ft["steps"]) == ("sgd-nesterov", 0, None, 7)
    assert out["mlflow_runs"] == {"parent": 1, "cells": 58, "total": 59}
    assert {k: out["done"][k] for k in ("done", "stale", "missing")} == {"done": 0, "stale": 0, "missing": 58}
    assert not (tmp_path / "mlflow.db").exists()   # no tracking store: none is created
    assert "estimate_s" not in out


def test_fine_tuning_by_epochs_counts_each_phase_steps(tmp_path, fake_folder, capsys):
    out = plan_json(capsys, small_config(tmp_path, fake_folder), "--set", "finetune.epochs=2")
    # per epoch ⌊rows / 16⌋ steps: digits fit 1151 → 71, trainval 1438 → 89; cifar10 40000 → 2500, 50000 → 3125
    per_seed = (4 * 2 * 71 + 2 * 89) + (4 * 2 * 2500 + 2 * 3125)
    assert out["finetune"][0]["optimizer_steps"] == 2 * per_seed


def test_search_and_reference_modes_count_their_heads(tmp_path, fake_folder, capsys):
    config = small_config(tmp_path, fake_folder, methods=["linear", "sea", "logreg"])
    out = plan_json(capsys, config, "--set", "search.algorithm=random", "--set", "search.num_samples=5")
    # 5 trials + the refit cell's re-selection + 2 refits, 10 epochs each; logreg stays a grid
    assert {m: p["heads"] for m, p in out["method_plans"].items()} == {"linear": 8, "sea": 8, "logreg": 4}
    assert out["head_epochs"]["per_method"] == {"linear": 18 * 80, "sea": 18 * 80, "logreg": 0}
    out = plan_json(capsys, config, "--set", "mode=reference")
    assert {m: p["heads"] for m, p in out["method_plans"].items()} == {"linear": 1, "sea": 1, "logreg": 1}
    assert out["head_epochs"]["per_method"] == {"linear": 180, "sea": 180, "logreg": 0}


def test_a_halved_grid_is_sized_by_successive_halving(tmp_path, fake_folder, capsys):
    config = small_config(tmp_path, fake_folder, backbones=[A], tasks=["digits"], methods=["linear", "logreg"],
                          grid={"lr": [0.4, 0.8, 1.6], "weight_decay": [1e-6, 1e-5, 1e-4], "lamda": [0.1]},
                          trainer={"epochs": 100}, protocol={"refits": 1}, search={"halving": {"factor": 3}})
    plans = plan_json(capsys, config)["method_plans"]
    # 9 heads, 100 epochs, factor 3: first rung 100 // 3² = 11, rungs 11, 33, 99: 9·11 + 3·22 + 1·66 + 1·1
    assert plans["linear"]["selection_epochs"] == 232
    assert plans["linear"]["head_epochs"] == 232 + 100
    assert plans["logreg"]["head_epochs"] == 0   # L-BFGS: nothing to halve
    assert plan_json(capsys, config, "--set", "search.halving=null")["method_plans"]["linear"]["head_epochs"] == 1000


def test_the_paper_config_is_sized_without_its_data_and_without_ray_or_mlflow(tmp_path):
    code = ("import json, sys; from orchestrator.commands.cli import main; rc = main(sys.argv[1:]); "
            "print(json.dumps({'rc': rc, 'ray': 'ray' in sys.modules, 'mlflow': 'mlflow' in sys.modules}), "
            "file=sys.stderr)")
    args = ["plan", "--config", str(REPO / "configs" / "paper.yaml"), "--json", "--set", f"data_root={tmp_path / 'none'}",
            "--set", f"store={tmp_path / 'store'}", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert json.loads(done.stderr.strip().splitlines()[-1]) == {"rc": 0, "ray": False, "mlflow": False}, done.stderr
    out = json.loads(done.stdout)
    assert {"cells", "heads", "head_epochs", "images", "finetune", "feature_bytes", "mlflow_runs", "done"} <= set(out)
    assert out["cells"]["total"] == 924 == 11 * 4 * 7 * 3
    # benchmark-protocol.md's grid: lr 4 × wd 3 × λ 3 = 36; SeA × η 4 × α 3; fgsm/noise/mixup × η 4; 9 Cs
    grids = {"linear": 36, "sea": 36 * 12, "fgsm": 36 * 4, "noise": 36 * 4, "mixup": 36 * 4, "logreg": 9}
    assert {m: p["selection"] for m, p in out["method_plans"].items()} == grids
    assert out["heads"]["total"] == 132 * (sum(grids.values()) + 6)   # one refit per cell and head method
    assert out["head_epochs"]["total"] == 132 * 100 * (sum(grids.values()) - 9 + 5)
    images = 10000 + 8677 + 16185 + 60000 + 60000 + 11788 + 5640 + 8189 + 101000 + 7349 + 39700
    assert set(out["images"]["per_backbone"].values()) == {images} and set(out["images"]["sources"].values()) == {"registry"}
    assert out["feature_bytes"]["total"] == images * 2 * (768 + 768 + 2048 + 2048)   # float16
    # the ViTs run MAE's recipe (4 base lrs × wd 0.05), the ResNets ssl-transfer's (4 lrs × 5 wds); 5000 steps each
    assert [(f["backbone"], f["recipe"]) for f in out["finetune"]] == [
        ("mocov3-vit-b16", "mae"), ("mae-vit-b16", "mae"), ("mocov2-r50-800ep", "ssl-transfer"),
        ("swav-r50-800ep", "ssl-transfer")]
    assert [(f["cells"], f["runs"], f["optimizer_steps"]) for f in out["finetune"]] == \
        [(33, 33 * 5, 33 * 5 * 5000)] * 2 + [(33, 33 * 21, 33 * 21 * 5000)] * 2
    assert out["mlflow_runs"]["total"] == 925
    assert (out["done"]["done"], out["done"]["missing"]) == (0, 924)
    assert not (tmp_path / "mlflow.db").exists()


def test_calibrate_times_each_stage_and_says_how(tmp_path, fake_folder, capsys):
    config = small_config(tmp_path, fake_folder, backbones=[A], tasks=[f"imagefolder:{fake_folder}"],
                          finetune={"steps": 3, "batch_size": 4, "lr": [0.01], "weight_decay": [0.0]})
    out = plan_json(capsys, config, "--calibrate")
    est = out["estimate_s"]
    assert est["calibration_s"] < 30
    assert all(est[s] > 0 for s in ("extract", "heads", "finetune"))
    assert est["total"] == pytest.approx(est["extract"] + est["heads"] + est["finetune"])
    assert set(est["basis"]["extract"]) == {A} and set(est["basis"]["finetune"]) == {A}
    assert set(est["basis"]["heads"]) == {"linear|512", "sea|512", "logreg|512"}
    assert "16 px" in est["basis"]["extract"][A]["timed"]
    capsys.readouterr()
    assert main(["plan", "--config", str(config), "--calibrate"]) == 0
    text = capsys.readouterr().out
    assert "estimate on this machine" in text and "basis:" in text


def test_the_text_plan_is_a_table_of_the_same_numbers(tmp_path, fake_folder, capsys):
    capsys.readouterr()
    assert main(["plan", "--config", str(small_config(tmp_path, fake_folder))]) == 0
    text = capsys.readouterr().out
    assert "cifar10" in text and "registry" in text and "MLflow runs: 1 parent + 58 cell runs = 59" in text
    assert any(line.split()[:2] == ["sea", "18"] for line in text.splitlines())


def test_plan_shows_the_recipe_each_backbone_will_fine_tune_with(tmp_path, fake_folder, capsys):
    vit = "random:test_vit@16"
    config = small_config(tmp_path, fake_folder, backbones=[A, vit], tasks=["digits"], methods=["finetune"],
                          finetune={"steps": 7, "recipes": {vit: {"layer_decay": 0.75, "warmup_steps": 2}}})
    resnet, transformer = plan_json(capsys, config)["finetune"]
    assert (resnet["backbone"], resnet["recipe"], resnet["optimizer"], resnet["warmup_steps"], resnet["layer_decay"],
            resnet["steps"], resnet["candidates"], resnet["weight_decay_over_lr"]) == \
        (A, "ssl-transfer", "sgd-nesterov", 0, None, 7, 20, True)
    assert (transformer["backbone"], transformer["recipe"], transformer["optimizer"], transformer["warmup_steps"],
            transformer["layer_decay"], transformer["steps"], transformer["candidates"], transformer["label_smoothing"],
            transformer["drop_path"]) == (vit, "mae", "adamw", 2, 0.75, 7, 4, 0.1, 0.1)
    assert "Ericsson" in resnet["source"] and "Masked Autoencoders" in transformer["source"]
    capsys.readouterr()
    assert main(["plan", "--config", str(config)]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert rows[A][1:3] == ["ssl-transfer", "sgd-nesterov"] and rows[vit][1:3] == ["mae", "adamw"]
    after_lr = rows[vit][rows[vit].index("×b/256") + 1:][:8]   # wd, warmup, layer decay, smoothing, drop-path, …
    assert after_lr == ["0.05", "2", "0.75", "0.1", "0.1", "7", "64", "4"]
    config = small_config(tmp_path, fake_folder, backbones=[A], tasks=["digits"], methods=["finetune"],
                          finetune={"layer_decay": 0.7})
    assert main(["plan", "--config", str(config)]) == 2
    assert "'finetune.layer_decay' does not apply to backbone 'random:resnet10t@16'" in capsys.readouterr().err


def test_a_config_that_does_not_validate_is_the_configs_own_error(tmp_path, fake_folder, capsys):
    config = small_config(tmp_path, fake_folder, trainer={"epoch": 5})
    capsys.readouterr()
    assert main(["plan", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "trainer.epoch" in err and "epochs" in err and str(config) in err


def test_stored_runs_are_done_stale_missing_or_unchecked(tmp_path, fake_folder, capsys):
    from mlflow import MlflowClient

    from orchestrator.runs import CELL_ROLE, ROLE_TAG

    methods = {"methods": ["linear"], "seeds": [0]}
    config = small_config(tmp_path, fake_folder, backbones=[A], tasks=[f"imagefolder:{fake_folder}"], **methods)
    capsys.readouterr()
    assert main(["status", "--config", str(config), "--json"]) == 0   # the fingerprints a run would compare
    (cell,) = json.loads(capsys.readouterr().out)["cells"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("plan-small", artifact_location=str(tmp_path / "artifacts"))
    seeds_cell = cell["cell_id"].replace("|0", "|1")
    cifar_cell = f"{A}|cifar10|linear|0"
    for cell_id, fingerprint in ((cell["cell_id"], cell["fingerprint"]), (seeds_cell, "0" * 24), (cifar_cell, "1" * 24)):
        run = client.create_run(experiment, tags={ROLE_TAG: CELL_ROLE, "cell_id": cell_id, "fingerprint": fingerprint,
                                                  "status": "ok"})
        client.set_terminated(run.info.run_id, "FINISHED")
    both = small_config(tmp_path, fake_folder, backbones=[A], tasks=[f"imagefolder:{fake_folder}", "cifar10"],
                        methods=["linear"], seeds=[0, 1, 2])
    done = plan_json(capsys, both)["done"]
    # the folder's seed 0: current; its seed 1: another fingerprint; seed 2: no run; cifar10 (no data): seed 0
    # has a run that cannot be fingerprinted here, seeds 1 and 2 none
    assert {k: done[k] for k in ("done", "stale", "missing", "unchecked")} == \
        {"done": 1, "stale": 1, "missing": 3, "unchecked": 1}


def test_a_missing_file_store_is_absent_and_never_created(tmp_path):
    from orchestrator.commands.status import tracking_store_absent

    assert tracking_store_absent(str(tmp_path / "mlruns")) and tracking_store_absent(f"file://{tmp_path / 'mlruns'}")
    assert tracking_store_absent(f"sqlite:///{tmp_path / 'none.db'}")
    assert not tracking_store_absent("http://127.0.0.1:5000")
    assert not (tmp_path / "mlruns").exists()
