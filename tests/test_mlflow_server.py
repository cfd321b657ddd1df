"""`seabench run --tracking-uri http://…` against a real `mlflow server` (own SQLite backend, own artifact folder)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fakedata import make_fake_imagefolder

from orchestrator.commands.cli import main

START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {server.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"mlflow server did not answer {url} within {timeout:.0f} s")


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"{url}/health", server, START_TIMEOUT_S)
        yield url
    finally:
        # the server runs its workers as children: signal its whole (own) process group
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_sweep_and_report_through_a_tracking_server(
        ray_cluster: None, mlflow_server: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_fake_imagefolder(tmp_path / "task", classes=3, n_train=6, n_test=3, size=16)
    config = {"name": "served", "backbones": ["random:resnet10t@16"], "tasks": [f"imagefolder:{tmp_path / 'task'}"],
              "methods": ["linear", "sea"], "seeds": [0], "store": str(tmp_path / "store"),
              "trainer": {"epochs": 2, "batch_size": 8},
              "grid": {"lr": [0.8, 1.6], "weight_decay": [1e-6], "lamda": [0.1], "eta": [0.2], "alpha": [0.05]},
              "extraction": {"shard_size": 16, "dtype": "float32", "batch_size": 16}, "resources": {"cpu": 1}}
    path = tmp_path / "served.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "report"
    assert main(["run", "--config", str(path), "--tracking-uri", mlflow_server, "--out", str(out),
                 "--no-progress"]) == 0
    assert "2 computed, 0 failed" in capsys.readouterr().out

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("served")
    runs = client.search_runs([experiment.experiment_id], "tags.`seabench.role` = 'cell'")
    assert sorted(r.data.tags["method"] for r in runs) == ["linear", "sea"]
    table = pd.read_csv(out / "results.csv")
    by_id = {r.info.run_id: r for r in runs}
    assert set(table["run_id"]) == set(by_id)
    for row in table.itertuples():
        assert row.value == pytest.approx(by_id[row.run_id].data.metrics[f"{row.split}_{row.metric}"])
    assert (tmp_path / "artifacts").is_dir()   # the report was logged through the server's artifact proxy
