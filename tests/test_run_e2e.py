"""`seabench run` end to end on the session's Ray cluster: fake image tasks (one with a corrupt JPEG, left
out by extraction.skip_bad_images) → random-init backbones → extraction → Tune sweep → MLflow → report;
rerun does nothing; a SIGKILLed run resumes without duplicates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fakedata import make_fake_imagefolder, write_corrupt_image

from orchestrator.commands.cli import main
from orchestrator.sweep.tracking import SweepTracker

REPO = Path(__file__).resolve().parents[1]
BACKBONES = ["random:resnet10t@32", "random:resnet10t@16"]
METHODS = ["linear", "sea", "logreg"]
SEEDS = [0, 1]


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow puts a SQLite store's artifacts (the logged report) under ./mlruns: keep them out of the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def e2e_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 fake tasks × 2 random backbones × 3 methods × 2 seeds = 24 cells, tiny grid, 3 epochs."""
    root = tmp_path_factory.mktemp("e2e")
    tasks = []
    for name, classes in (("ta", 3), ("tb", 4)):
        make_fake_imagefolder(root / name, classes=classes, n_train=6, n_test=3, size=16)
        tasks.append(f"imagefolder:{root / name}")
    write_corrupt_image(root / "ta" / "train" / "class1" / "0002.jpg")   # left out: extraction.skip_bad_images
    config = {
        "name": "e2e", "backbones": BACKBONES, "tasks": tasks, "methods": METHODS, "seeds": SEEDS,
        "store": str(root / "store"), "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "trainer": {"epochs": 3, "batch_size": 16},
        "grid": {"lr": [0.8, 1.6], "weight_decay": [1e-6], "lamda": [0.1], "eta": [0.2], "alpha": [0.05],
                 "c": [0.1, 10.0]},
        "extraction": {"shard_size": 16, "dtype": "float32", "batch_size": 16, "skip_bad_images": True},
        "resources": {"cpu": 1}, "max_failures": 1, "report": {"out": str(root / "report")},
    }
    path = root / "e2e.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cell_runs(config: Path, name: str) -> dict[str, list]:
    cfg = yaml.safe_load(config.read_text())
    tracker = SweepTracker(cfg["tracking_uri"], name)
    tracker.start()
    out: dict[str, list] = {}
    for run in tracker.cell_runs():
        out.setdefault(run.data.tags["cell_id"], []).append(run)
    return out


def test_run_writes_one_run_per_cell_and_a_report_that_matches_mlflow(
        ray_cluster: None, e2e_config: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--config", str(e2e_config), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "24 cells; 0 already complete, 24 computed, 0 failed" in printed
    runs = cell_runs(e2e_config, "e2e")
    assert len(runs) == 24 and all(len(v) == 1 for v in runs.values())
    assert all(v[0].info.status == "FINISHED" and v[0].data.tags["status"] == "ok" for v in runs.values())

    report = Path(yaml.safe_load(e2e_config.read_text())["report"]["out"])
    assert f"report: {report / 'leaderboard.html'}" in printed
    for name in ("results.csv", "leaderboard.md", "leaderboard.html"):
        assert (report / name).is_file()
    # the corrupt image is left out of both backbones' cells of task ta, and said so
    assert "2 unreadable image(s) skipped" in printed   # one per backbone
    html = (report / "leaderboard.html").read_text()
    assert "Skipped images" in html and "2 unreadable image(s) left out" in html
    runs_ta = [v[0] for k, v in runs.items() if "|imagefolder:" in k and k.split("|")[1].endswith("/ta")]
    assert runs_ta and all(r.data.tags["skipped_images"] == "1" for r in runs_ta)
    table = pd.read_csv(report / "results.csv")
    by_id = {v[0].info.run_id: v[0] for v in runs.values()}
    assert set(table["run_id"]) == set(by_id)
    for row in table.itertuples():
        assert row.value == pytest.approx(by_id[row.run_id].data.metrics[f"{row.split}_{row.metric}"])
    # the extraction cost is on record: per cell (its units, from their manifests) and per unit (parent run)
    assert all(v[0].data.metrics["extract_s"] > 0 and v[0].data.metrics["extract_images"] > 0 for v in runs.values())
    from mlflow import MlflowClient

    client = MlflowClient(yaml.safe_load(e2e_config.read_text())["tracking_uri"])
    parent = client.get_run(next(iter(runs.values()))[0].data.tags["mlflow.parentRunId"])
    units = pd.read_csv(client.download_artifacts(parent.info.run_id, "units.csv", str(report)))
    assert len(units) == 2 * 2 * 2 and (units["extract_s"] > 0).all()   # 2 backbones × 2 tasks × train/test
    assert sum(1 for m in parent.data.metrics if m.startswith("extract_s/")) == len(units)

    # idempotent: nothing is extracted or trained again, the runs stay the same
    assert main(["run", "--config", str(e2e_config), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "24 already complete, 0 computed" in printed and "cached" in printed
    assert {k: v[0].info.run_id for k, v in cell_runs(e2e_config, "e2e").items()} == \
           {k: v[0].info.run_id for k, v in runs.items()}


def _finished(config: Path, name: str) -> int:
    try:
        return sum(1 for v in cell_runs(config, name).values() for r in v if r.info.status == "FINISHED")
    except Exception:  # the store may be locked or not yet created by the child: poll again
        return 0


@pytest.mark.slow
def test_sigkilled_run_resumes_without_recomputing_or_duplicating(
        ray_cluster: None, e2e_config: Path, capsys: pytest.CaptureFixture) -> None:
    import ray

    address = ray.get_runtime_context().gcs_address
    argv = ["run", "--config", str(e2e_config), "--set", "name=e2e-kill", "--address", address, "--no-progress"]
    child = subprocess.Popen([sys.executable, "-m", "orchestrator.commands.cli", *argv], cwd=e2e_config.parent,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 420
        while _finished(e2e_config, "e2e-kill") < 2:
            assert child.poll() is None, f"seabench run exited early with {child.returncode}"
            assert time.monotonic() < deadline, "no cell finished in time"
            time.sleep(0.5)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    before = cell_runs(e2e_config, "e2e-kill")
    done_before = {k: v[0].info.run_id for k, v in before.items() if v[0].info.status == "FINISHED"}
    assert 2 <= len(done_before) < 24

    assert main([*argv[:-3], "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"{len(done_before)} already complete, {24 - len(done_before)} computed" in printed
    after = cell_runs(e2e_config, "e2e-kill")
    assert len(after) == 24 and all(len(v) == 1 and v[0].info.status == "FINISHED" for v in after.values())
    assert all(after[k][0].info.run_id == run_id for k, run_id in done_before.items())


def test_optional_tasks_run_only_where_their_data_is_present(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from orchestrator.commands.run import available_tasks
    from orchestrator.config import load_config

    make_fake_imagefolder(tmp_path / "here", classes=2, n_train=2, n_test=1, size=8)
    present = f"imagefolder:{tmp_path / 'here'}"
    cfg = load_config(data={"name": "o", "backbones": ["x"], "tasks": ["digits"],
                            "optional_tasks": ["aircraft", present], "data_root": str(tmp_path / "none")})
    assert available_tasks(cfg) == ["digits", present]
    assert "optional task 'aircraft' skipped: its data is not present" in capsys.readouterr().err


def test_extract_then_run_with_default_settings_extracts_once(
        ray_cluster: None, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`seabench extract` and `seabench run` share one set of extraction defaults: the run reuses every unit."""
    make_fake_imagefolder(tmp_path / "t", classes=2, n_train=4, n_test=2, size=16)
    task, store = f"imagefolder:{tmp_path / 't'}", str(tmp_path / "store")
    assert main(["extract", "--backbone", BACKBONES[0], "--task", task, "--store", store, "--no-progress"]) == 0
    capsys.readouterr()
    config = {"name": "once", "backbones": [BACKBONES[0]], "tasks": [task], "methods": ["linear"], "seeds": [0],
              "store": store, "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
              "trainer": {"epochs": 1, "batch_size": 8}, "grid": {"lr": [0.8], "weight_decay": [1e-6], "lamda": [0.1]},
              "resources": {"cpu": 1}, "report": {"out": str(tmp_path / "report")}}
    (tmp_path / "once.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(tmp_path / "once.yaml"), "--no-progress"]) == 0
    assert "extract: 2 units (2 cached), 0 images" in capsys.readouterr().out
