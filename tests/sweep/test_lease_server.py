"""One sweep per experiment at a time, against a real `mlflow server` on 127.0.0.1 (the fixture of
tests/test_mlflow_server.py) with `seabench run` driver processes on the session's Ray cluster: two
concurrent runs → the second refused within seconds naming the holder, nothing deleted; a SIGKILLed holder →
`--takeover` once its heartbeat is stale finishes the sweep with exactly one FINISHED run per cell."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_mlflow_server
import yaml
from fakedata import make_fake_imagefolder

from orchestrator.commands.cli import main

REPO = Path(__file__).resolve().parents[2]
LEASE_ENV = {"SEABENCH_LEASE_HEARTBEAT_S": "0.5", "SEABENCH_LEASE_STALE_S": "4"}
mlflow_server = test_mlflow_server.mlflow_server   # the one server fixture, reused


def write_config(root: Path, name: str, seeds: list[int]) -> Path:
    """1 fake task × 1 random backbone × (linear, sea) × seeds, 2 epochs, one cell at a time."""
    make_fake_imagefolder(root / "task", classes=3, n_train=6, n_test=3, size=16)
    config = {"name": name, "backbones": ["random:resnet10t@16"], "tasks": [f"imagefolder:{root / 'task'}"],
              "methods": ["linear", "sea"], "seeds": seeds, "store": str(root / "store"),
              "trainer": {"epochs": 2, "batch_size": 8}, "search": {"max_concurrent": 1},
              "grid": {"lr": [0.8], "weight_decay": [1e-6], "lamda": [0.1], "eta": [0.2], "alpha": [0.05]},
              "extraction": {"shard_size": 16, "dtype": "float32", "batch_size": 16}, "resources": {"cpu": 1},
              "report": {"out": str(root / "report")}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def argv(config: Path, server: str, *extra: str) -> list[str]:
    import ray

    return ["run", "--config", str(config), "--tracking-uri", server, "--address",
            ray.get_runtime_context().gcs_address, "--no-progress", *extra]


def driver_env(lease_env: dict[str, str] = LEASE_ENV) -> dict[str, str]:
    return {**os.environ, **lease_env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def start_driver(args: list[str], cwd: Path, log: Path, lease_env: dict[str, str] = LEASE_ENV) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "orchestrator.commands.cli", *args], cwd=cwd, env=driver_env(lease_env),
                                stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def runs(server: str, name: str, role: str = "cell") -> list:
    """Every run of the role, deleted ones included; [] while the experiment does not exist yet."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri=server)
    found = client.get_experiment_by_name(name)
    return client.search_runs([found.experiment_id], f"tags.`seabench.role` = '{role}'", ViewType.ALL,
                              max_results=1000) if found else []


def wait_for(condition, child: subprocess.Popen, log: Path, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert child.poll() is None, f"the holder exited with {child.returncode} before {what}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.3)


def holds_lease(server: str, name: str) -> bool:
    parents = runs(server, name, "sweep")
    return any("seabench.lease.heartbeat" in p.data.tags and "seabench.lease.released" not in p.data.tags
               for p in parents)


def finished(server: str, name: str) -> int:
    return sum(r.info.status == "FINISHED" for r in runs(server, name))


@pytest.mark.slow
def test_a_second_run_of_a_live_sweep_is_refused_within_seconds_and_deletes_nothing(
        ray_cluster: None, mlflow_server: str, tmp_path: Path) -> None:
    """The holder is paused (SIGSTOP) while the second runs start, so that its tiny sweep cannot end first;
    with the default timings its lease stays fresh for 60 s. Both second runs (plain and --takeover)
    start at once and must be refused, naming the holder."""
    config = write_config(tmp_path, "contended", seeds=[0, 1])
    holder_log = tmp_path / "holder.log"
    holder = start_driver(argv(config, mlflow_server), tmp_path, holder_log, lease_env={})
    try:
        wait_for(lambda: holds_lease(mlflow_server, "contended"), holder, holder_log, 300, "the lease was taken")
        before = {r.info.run_id for r in runs(mlflow_server, "contended")}
        os.killpg(holder.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            seconds = {extra: subprocess.Popen([sys.executable, "-m", "orchestrator.commands.cli",
                                                *argv(config, mlflow_server, *extra)], cwd=tmp_path,
                                               env=driver_env({}), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                               text=True) for extra in ((), ("--takeover",))}
            answers = {extra: (*child.communicate(timeout=120), child.returncode) for extra, child in seconds.items()}
            took = time.monotonic() - started
        finally:
            os.killpg(holder.pid, signal.SIGCONT)
        print(f"both second runs refused within {took:.1f} s")
        for extra, refusal in (((), "is being swept by host"), (("--takeover",), "--takeover refused")):
            out, err, code = answers[extra]
            assert code == 2, out + err
            assert refusal in err and f"pid {holder.pid} " in err and "since" in err and "heartbeat" in err
            assert "extract:" not in out   # refused before Ray and extraction
        assert took < 60, f"the refusals took {took:.0f} s"
        assert holder.wait(timeout=600) == 0, holder_log.read_text()
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait(timeout=60)
    cells = runs(mlflow_server, "contended")
    assert all(r.info.lifecycle_stage == "active" for r in cells + runs(mlflow_server, "contended", "sweep"))
    assert before <= {r.info.run_id for r in cells}   # nothing the holder wrote was deleted
    assert sorted(r.data.tags["cell_id"] for r in cells) == sorted(
        f"random:resnet10t@16|imagefolder:{tmp_path / 'task'}|{m}|{s}" for m in ("linear", "sea") for s in (0, 1))
    assert all(r.info.status == "FINISHED" for r in cells)


@pytest.mark.slow
def test_a_killed_holder_is_taken_over_once_stale_and_every_cell_finishes_once(
        ray_cluster: None, mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    config = write_config(tmp_path, "orphaned", seeds=[0, 1, 2])
    holder_log = tmp_path / "holder.log"
    holder = start_driver(argv(config, mlflow_server), tmp_path, holder_log)
    try:
        wait_for(lambda: finished(mlflow_server, "orphaned") >= 1, holder, holder_log, 300, "a cell finished")
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)
    done_before = {r.data.tags["cell_id"]: r.info.run_id for r in runs(mlflow_server, "orphaned")
                   if r.info.status == "FINISHED"}
    assert 1 <= len(done_before) < 6, "the sweep finished before it could be killed: give it more work"
    (parent,) = runs(mlflow_server, "orphaned", "sweep")
    stale_at = float(parent.data.tags["seabench.lease.heartbeat"]) + float(LEASE_ENV["SEABENCH_LEASE_STALE_S"])
    time.sleep(max(0.0, stale_at + 0.5 - time.time()))

    for key, value in LEASE_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING", logger="orchestrator.sweep.lease"):
        assert main(argv(config, mlflow_server, "--takeover")) == 0
    assert f"pid {holder.pid} " in caplog.text   # the note names the lease it took
    cells = [r for r in runs(mlflow_server, "orphaned") if r.info.lifecycle_stage == "active"]
    by_cell = {}
    for run in cells:
        by_cell.setdefault(run.data.tags["cell_id"], []).append(run)
    assert len(by_cell) == 6 and all(len(v) == 1 and v[0].info.status == "FINISHED" for v in by_cell.values())
    assert all(by_cell[cell][0].info.run_id == run_id for cell, run_id in done_before.items())
    (parent,) = runs(mlflow_server, "orphaned", "sweep")
    assert parent.data.tags["seabench.lease.released"] == parent.data.tags["seabench.lease.owner"].split()[-1]
