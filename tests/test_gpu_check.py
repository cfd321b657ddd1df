"""benchmarks/gpu_check.py: its smoke run (tiny shapes, CPU) runs every part's code and writes one JSON; a part
that raises is recorded as failed and fails the exit status; a part the budget cannot hold is skipped."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
PARTS = {"cuda_tests", "trainer", "extraction", "protocol_cell", "finetune"}


def gpu_check() -> ModuleType:
    """The script as a module (benchmarks/ is no package); registered first, as its dataclasses need."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        sys.modules["gpu_check"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["gpu_check"])
    return sys.modules["gpu_check"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("gpu-check") / "x.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=240, check=False)
    assert out.exists(), run.stdout + run.stderr
    return run, json.loads(out.read_text())


def test_the_smoke_run_exits_0_and_records_the_machine_and_every_part(smoke) -> None:
    run, report = smoke
    assert run.returncode == 0, run.stdout + run.stderr
    assert report["ok"] is True and report["failed"] == [] and report["smoke"] is True
    assert {"torch", "cpus", "python", "date", "git_commit", "device"} <= set(report["machine"])
    assert set(report["parts"]) == PARTS
    for name, part in report["parts"].items():
        assert part["status"] in ("ok", "skipped"), (name, part)
        assert part["seconds"] >= 0 and (part["status"] == "ok" or part["reason"])


def test_the_cpu_parts_run_and_give_plausible_figures(smoke) -> None:
    parts = smoke[1]["parts"]
    assert all(parts[name]["status"] == "ok" for name in PARTS - {"cuda_tests"})
    assert parts["trainer"]["float32_head_epochs_per_s"] > 0
    assert parts["extraction"]["images_per_s"] > 0
    cell = parts["protocol_cell"]
    assert cell["heads"] == gpu_check().SMOKE.grid_size
    assert cell["full"]["head_epochs"] == cell["heads"] * cell["epochs"] and cell["full"]["rungs"] == []
    assert cell["halving"]["rungs"] and 0 < cell["halving"]["head_epochs"] < cell["full"]["head_epochs"]
    assert isinstance(cell["same_selection"], bool) and cell["full_over_halving"] > 0
    assert 0 <= cell["full"]["test_top1"] <= 100 and 0 <= cell["halving"]["test_top1"] <= 100
    ft = parts["finetune"]
    assert min(ft["images_per_s"], ft["bare_images_per_s"], ft["compute_images_per_s"]) > 0
    assert ft["steps"] > 0 and (ft["backend"], ft["all_reduce"]) == ("gloo", 1.0)   # --device cpu: one gloo worker
    assert ft["cell"]["estimated_s"] > 0 and set(ft["cell_cost_ratio"]) == {"full", "halving"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without CUDA records")
def test_without_cuda_the_cuda_only_parts_say_they_need_it(smoke) -> None:
    parts = smoke[1]["parts"]
    assert parts["cuda_tests"]["status"] == "skipped" and "CUDA" in parts["cuda_tests"]["reason"]
    assert parts["cuda_tests"]["skipped"] > 0 and parts["cuda_tests"]["passed"] == 0
    assert "CUDA" in parts["trainer"]["not_run"]["bf16"]
    assert "CUDA" in parts["extraction"]["not_run"]["bf16-autocast"]
    assert "CUDA" in parts["finetune"]["not_run"]["nccl"] and "CUDA" in parts["finetune"]["not_run"]["bf16"]


def test_a_part_that_raises_is_recorded_as_failed_the_rest_still_run_and_the_exit_status_is_1(tmp_path) -> None:
    def broken(ctx) -> dict:
        raise ValueError("boom")

    out = tmp_path / "report.json"
    code = gpu_check().main(["--smoke", "--device", "cpu", "--out", str(out)],
                            parts={"broken": broken, "fine": lambda ctx: {"figure": 1.0}})
    report = json.loads(out.read_text())
    assert code == 1 and report["ok"] is False and report["failed"] == ["broken"]
    assert report["parts"]["broken"]["status"] == "failed" and report["parts"]["broken"]["error"] == "ValueError: boom"
    assert report["parts"]["fine"]["status"] == "ok" and report["parts"]["fine"]["figure"] == 1.0
    assert not list(tmp_path.glob(".*.tmp"))   # written atomically: no temporary file left behind


def test_a_part_the_budget_cannot_hold_is_skipped_for_budget(tmp_path) -> None:
    out = tmp_path / "report.json"
    ran = []
    code = gpu_check().main(["--device", "cpu", "--budget-s", "0", "--out", str(out)],
                            parts={"protocol_cell": lambda ctx: ran.append(1) or {}})
    part = json.loads(out.read_text())["parts"]["protocol_cell"]
    assert code == 0 and not ran and part["status"] == "skipped" and part["reason"].startswith("budget")
