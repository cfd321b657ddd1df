"""Real components for the multi-node tests: moto's S3 server and an `mlflow server` on 127.0.0.1, a
`ray.cluster_utils.Cluster` of real raylets, and `seabench` driver processes that join it.

Nothing here mocks: the store is read and written through s3fs against moto's HTTP server, MLflow runs
as its own server process, every node is a raylet with its own worker processes, and the driver is a
separate process started with `--address` and `--store s3://…`. The cluster is isolated from the test
session's local Ray (tests/conftest.py): `connect=False`, and only driver subprocesses join it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
BUCKET = "seabench-test"
START_TIMEOUT_S = 180
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout: float, what: str, every: float = 0.5):
    """Poll `condition()` until it returns something truthy (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what} within {timeout:.0f} s")


@contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """moto's S3 server on 127.0.0.1 with one bucket; yields the environment that points s3fs and boto3 at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    env = {**S3_ENV, "AWS_ENDPOINT_URL": url, "AWS_ENDPOINT_URL_S3": url, "FSSPEC_S3_ENDPOINT_URL": url}
    try:
        boto3.client("s3", endpoint_url=url, **_keys()).create_bucket(Bucket=BUCKET)
        yield env
    finally:
        server.stop()


def _keys() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def s3_client(env: dict[str, str]):
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], **_keys())


def s3_objects(env: dict[str, str], prefix: str) -> dict[str, int]:
    """key -> size of every object under `prefix` (bounded: 100 pages)."""
    client, found, token = s3_client(env), {}, None
    for _ in range(100):
        page = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix, **({"ContinuationToken": token} if token else {}))
        found.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        token = page.get("NextContinuationToken")
        if not token:
            break
    return found


@contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination", str(folder / "art")],
        cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {server.returncode}; see {folder / 'server.log'}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    try:
        wait_until(healthy, START_TIMEOUT_S, f"mlflow server answering {url}/health")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()


@contextmanager
def ray_cluster(env: dict[str, str], workers: int, worker_resources: dict | None = None) -> Iterator[object]:
    """A head of 0 CPUs plus `workers` nodes of 1 CPU (and `worker_resources`), every raylet started
    with `env` (so that its workers reach the S3 server). Not connected: drivers join by address."""
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)   # raylets (and so their workers) inherit the environment they start in
    try:
        # Cluster() records its address in /tmp/ray/ray_current_cluster, where every later ray.init() on
        # this machine (this session's local cluster, anyone's) would find and join it: not ours.
        with mock.patch("ray._private.utils.write_ray_address"):
            cluster = Cluster(initialize_head=True, connect=False,
                              head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False,
                                              "gcs_server_port": free_port()})
        try:
            for _ in range(workers):
                add_worker(cluster, **(worker_resources or {}))
            yield cluster
        finally:
            with mock.patch("ray._common.utils.reset_ray_address"):   # nor delete someone else's
                cluster.shutdown()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def add_worker(cluster, num_gpus: int = 0, env: dict[str, str] | None = None):
    """A worker node of 1 CPU (and `num_gpus` declared GPUs), started in this process's environment plus `env`."""
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        return cluster.add_node(num_cpus=1, num_gpus=num_gpus)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def worker_ids(cluster) -> set[str]:
    return {node.node_id for node in cluster.worker_nodes}


@dataclass(frozen=True)
class Sweep:
    """A small sweep over a fake image folder (every cell a few seconds on one CPU)."""

    task: str
    seeds: tuple[int, ...] = (0, 1)
    methods: tuple[str, ...] = ("linear", "sea")

    def config(self, name: str, store: str, **extra) -> dict:
        return {"name": name, "backbones": ["random:resnet10t@16"], "tasks": [self.task],
                "methods": list(self.methods), "seeds": list(self.seeds), "store": store,
                "trainer": {"epochs": 3, "batch_size": 8},
                "grid": {"lr": [0.8, 1.6], "weight_decay": [1e-6], "lamda": [0.1], "eta": [0.2], "alpha": [0.05]},
                "extraction": {"shard_size": 4, "dtype": "float32", "batch_size": 4}, "resources": {"cpu": 1},
                **extra}


def driver_env(env: dict[str, str], home: Path, local: bool = False) -> dict[str, str]:
    """The driver's environment: the S3 endpoint, a private unit cache, no inherited Ray address (`local`:
    RAY_ADDRESS=local, so that a driver without --address starts its own cluster, never joins another)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "SEABENCH_"))}
    return {**base, **env, "SEABENCH_CACHE": str(home / "unit-cache"), "PYTHONUNBUFFERED": "1",
            **({"RAY_ADDRESS": "local"} if local else {})}


def seabench(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600,
             prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`seabench ARGS` as a separate driver process; output captured."""
    return subprocess.run([*prefix, sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def start_seabench(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    """`seabench ARGS` in the background, its output (merged) going to `log`."""
    handle = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, env=env, stdout=handle,
                            stderr=subprocess.STDOUT, text=True)


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def cell_runs(tracking_uri: str, experiment: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], "tags.`seabench.role` = 'cell'", max_results=1000)


def manifests(env: dict[str, str], prefix: str) -> dict[str, dict]:
    """key -> parsed `_manifest.json` of every unit under `prefix` in the bucket."""
    client = s3_client(env)
    return {key: json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
            for key in s3_objects(env, prefix) if key.endswith("_manifest.json")}


def results(report_dir: Path) -> dict[tuple, float]:
    """(cell, split, metric) -> value of a report's results.csv."""
    import pandas as pd

    table = pd.read_csv(report_dir / "results.csv")
    cols = [c for c in ("backbone", "task", "method", "seed", "split", "metric") if c in table.columns]
    return {tuple(row[c] for c in cols): float(row["value"]) for _, row in table.iterrows()}
