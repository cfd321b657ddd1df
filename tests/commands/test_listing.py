"""`seabench list tasks|backbones`: every registry entry, with what is available locally."""

from __future__ import annotations

import json

from orchestrator.commands.cli import main
from tasks import BACKBONES, TASKS


def test_list_tasks_prints_every_task_with_classes_metric_and_local_sizes(tmp_path, capsys):
    assert main(["list", "tasks", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["name", "title", "classes", "metric"]
    for name, spec in TASKS.items():
        row = next(line for line in lines if line.split()[0] == name)
        assert str(spec.num_classes) in row and spec.metric in row
    digits = next(line for line in lines if line.startswith("digits "))
    assert "train=1438" in digits and "test=359" in digits
    cifar = next(line for line in lines if line.startswith("cifar10 "))
    assert "train=-" in cifar  # absent locally


def test_list_backbones_json_marks_the_offline_demo_weights_available(capsys):
    assert main(["list", "backbones", "--json"]) == 0
    rows = {row["name"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(rows) == set(BACKBONES)
    demo = rows["efficientnet-lite0"]
    assert demo["available"] is True and demo["feature_dim"] == 1280 and "demo" in demo["presets"]
    assert {"paper"} <= {p for row in rows.values() for p in row["presets"]}
