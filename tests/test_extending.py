"""docs/extending.md, followed: a dataset and a backbone (tests/plugins/toy_data.py) and a method
(tests/plugins/toy_method.py), each added outside seabench's code and named in a config's `plugins`, go
through `seabench run` on the session's Ray cluster — extraction actors, Tune trials and the report. The
report-section recipe is followed by tests/report/test_section_registry.py."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from orchestrator.commands.cli import main

PLUGINS = Path(__file__).resolve().parent / "plugins"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)   # MLflow's artifacts of a SQLite store land under ./mlruns


def test_a_plugin_dataset_backbone_and_method_run_end_to_end(ray_cluster: None, tmp_path: Path, capsys) -> None:
    config = {
        "name": "extending", "backbones": ["toy-resnet"], "tasks": ["digits-mini"], "methods": ["linear", "dropout"],
        "seeds": [0], "plugins": [str(PLUGINS / "toy_data.py"), str(PLUGINS / "toy_method.py")],
        "store": str(tmp_path / "store"), "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "trainer": {"epochs": 3, "batch_size": 32},
        "grid": {"lr": [0.8], "weight_decay": [1e-6], "lamda": [0.1], "dropout": {"eta": [0.1, 0.3]}},
        "extraction": {"shard_size": 64, "dtype": "float32", "batch_size": 32}, "resources": {"cpu": 1},
        "max_failures": 0, "report": {"out": str(tmp_path / "report")},
    }
    path = tmp_path / "extending.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "2 cells; 0 already complete, 2 computed, 0 failed" in printed
    results = pd.read_csv(tmp_path / "report" / "results.csv")
    assert set(results["method"]) == {"linear", "dropout"} and set(results["task"]) == {"digits-mini"}
    assert set(results["backbone"]) == {"toy-resnet"}
    assert "dropout" in (tmp_path / "report" / "leaderboard.md").read_text()


def test_the_recipes_in_docs_extending_name_the_files_that_check_them() -> None:
    text = DOCS.read_text()
    for heading in ("## A dataset", "## A backbone", "## A method", "## A report section"):
        assert heading in text
    named = set(re.findall(r"`(tests/[\w/]+\.py)`", text))
    assert {"tests/plugins/toy_data.py", "tests/plugins/toy_method.py", "tests/test_extending.py",
            "tests/report/test_section_registry.py"} <= named
    assert all((DOCS.parents[1] / p).is_file() for p in named)
