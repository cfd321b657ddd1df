"""`seabench status` and the fingerprint end to end, on the session's Ray cluster: real image folders, a
random-init backbone, real extraction, Tune, MLflow (SQLite). An identical rerun computes nothing, one
rewritten image reruns only the cells of its units, the carve's seed changed in code reruns every cell —
and `seabench status` says each of these beforehand, without starting Ray or writing anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fakedata import make_fake_imagefolder, write_image

from orchestrator.commands.cli import main
from orchestrator.config import load_config
from orchestrator.sweep import run_sweep

BACKBONE = "random:resnet10t@16"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def swept(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 carve tasks (no val/ folder) × 1 backbone × (linear, logreg) × 1 seed = 4 cells, run once."""
    root = tmp_path_factory.mktemp("status")
    tasks = []
    for name in ("ta", "tb"):
        make_fake_imagefolder(root / name, classes=2, n_train=4, n_test=2, size=16)
        tasks.append(f"imagefolder:{root / name}")
    config = {
        "name": "status", "backbones": [BACKBONE], "tasks": tasks, "methods": ["linear", "logreg"], "seeds": [0],
        "store": str(root / "store"), "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "trainer": {"epochs": 1, "batch_size": 8}, "max_failures": 0, "resources": {"cpu": 1},
        "grid": {"lr": [0.8], "weight_decay": [1e-6], "lamda": [0.1], "c": [1.0]},
        "extraction": {"shard_size": 16, "dtype": "float32", "batch_size": 8}, "report": {"out": str(root / "report")},
    }
    (root / "status.yaml").write_text(yaml.safe_dump(config))
    cwd = os.getcwd()
    os.chdir(root)   # MLflow puts a SQLite store's artifacts under ./mlruns
    try:
        assert main(["run", "--config", "status.yaml", "--no-progress"]) == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture(autouse=True)
def _in_root(swept: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(swept)


def status(capsys: pytest.CaptureFixture, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["status", "--config", "status.yaml", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def rerun(capsys: pytest.CaptureFixture) -> str:
    """`seabench run`: extraction (of what changed), sweep, report."""
    capsys.readouterr()
    assert main(["run", "--config", "status.yaml", "--no-progress"]) == 0
    return capsys.readouterr().out


def sweep_again() -> tuple[int, int]:
    """The sweep alone on the units the store holds (no extraction, no report): (skipped, computed)."""
    cfg = load_config("status.yaml")
    summary = run_sweep(cfg, cfg.all_tasks, progress=False)
    assert not summary.failed
    return summary.skipped, summary.completed


def to_compute(report: dict) -> dict[str, dict]:
    return {row["cell_id"]: row for row in report["cells"] if row["state"] == "to compute"}


def test_an_identical_rerun_computes_nothing_and_status_says_so(swept: Path, capsys: pytest.CaptureFixture) -> None:
    report = status(capsys)
    assert (report["reused"], report["to_compute"], report["units_to_extract"]) == (4, 0, [])
    assert sweep_again() == (4, 0)
    capsys.readouterr()
    assert main(["status", "--config", "status.yaml"]) == 0
    text = capsys.readouterr().out
    assert text.count("  reused ") == 4 and "4 reused, 0 to compute; 0 of 4 units to extract" in text


def test_one_rewritten_image_reruns_only_the_cells_of_its_units(swept: Path, capsys: pytest.CaptureFixture) -> None:
    image = swept / "ta" / "train" / "class1" / "0001.jpg"
    write_image(image, seed=99, size=16)
    later = image.stat().st_mtime_ns + 10**10   # a new mtime even on a coarse-grained filesystem
    os.utime(image, ns=(later, later))
    report = status(capsys)
    pending = to_compute(report)
    assert sorted(pending) == sorted(f"{BACKBONE}|imagefolder:{swept / 'ta'}|{m}|0" for m in ("linear", "logreg"))
    assert all(f"features.{BACKBONE}|train" in row["changed"] and f"features.{BACKBONE}|test" not in row["changed"]
               for row in pending.values())
    assert report["units_to_extract"] == [f"{BACKBONE}|imagefolder:{swept / 'ta'}|train"]
    assert "4 cells; 2 already complete, 2 computed, 0 failed" in rerun(capsys)
    assert status(capsys)["reused"] == 4


def test_the_carve_seed_changed_in_code_reruns_every_cell(swept: Path, capsys: pytest.CaptureFixture) -> None:
    import tasks.splits

    with pytest.MonkeyPatch.context() as patch:   # on the driver, as an edit of the constant would be
        patch.setattr(tasks.splits, "VAL_SEED", tasks.splits.VAL_SEED + 5)
        report = status(capsys)
        assert report["reused"] == 0 and len(to_compute(report)) == 4
        assert all(row["changed"]["carve.seed"] == [0, 5] for row in report["cells"])
        assert sweep_again() == (0, 4)
    assert status(capsys)["reused"] == 4   # the runs of the seed in the code stay, and are reused


def test_status_names_new_cells_and_a_missing_store_and_starts_no_ray(swept: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    grown = to_compute(status(capsys, "--set", "seeds=[0, 1]"))
    assert len(grown) == 4 and all(c.endswith("|1") and row["why"] == "new cell" for c, row in grown.items())
    changed = to_compute(status(capsys, "--set", "trainer.epochs=2"))
    assert {c.split("|")[-2] for c in changed} == {"linear"}   # logreg reads no trainer setting
    # against the cell's latest run, which another test of this module may have run with another carve seed
    assert all({"trainer.epochs", "protocol.k"} <= set(row["changed"]) <= {"trainer.epochs", "protocol.k", "carve.seed"}
               for row in changed.values())
    # a fresh interpreter: nothing imports Ray, and an absent MLflow store is not created
    absent = swept / "absent.db"
    code = ("import sys; from orchestrator.commands.cli import main; "
            f"rc = main(['status', '--config', 'status.yaml', '--tracking-uri', 'sqlite:///{absent}']); "
            "assert rc == 0 and 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=swept, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("no stored run") == 4 and "0 reused, 4 to compute" in done.stdout
    assert not absent.exists()
