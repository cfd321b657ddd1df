"""Real components for the multi-node tests: moto's S3 server, a PostgreSQL server and an `mlflow server` on
127.0.0.1, a `ray.cluster_utils.Cluster` of real raylets, and `seabench` driver processes that join it.

Nothing here mocks: the store is read and written through s3fs against moto's HTTP server, MLflow runs
as its own server process, every node is a raylet with its own worker processes, and the driver is a
separate process started with `--address` and `--store s3://…`. The cluster is isolated from the test
session's local Ray (tests/conftest.py): `connect=False`, and only driver subprocesses join it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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


class MlflowServer:
    """`mlflow server` on 127.0.0.1 in its own process group: a SQLite store and an artifact folder in `folder`,
    or `backend` (a PostgreSQL URI, `Postgres.create_database`) and `artifacts` (`s3://BUCKET/…` on the moto
    server, whose environment `env` gives the server). `stop()` then `start()` again is a restarted tracking
    server: the same port, the same store."""

    def __init__(self, folder: Path, backend: str | None = None, artifacts: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.backend = backend or f"sqlite:///{folder / 'server.db'}"
        self.artifacts = artifacts or str(folder / "art")
        endpoint = (env or {}).get("AWS_ENDPOINT_URL")
        self.env = {**os.environ, **(env or {}), **({"MLFLOW_S3_ENDPOINT_URL": endpoint} if endpoint else {})}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = START_TIMEOUT_S) -> str:
        with (self.folder / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "1", "--backend-store-uri", self.backend, "--artifacts-destination", self.artifacts],
                cwd=self.folder, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self.healthy, timeout, f"mlflow server answering {self.url}/health")
        return self.url

    def healthy(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise RuntimeError(f"mlflow server exited with {code}; see {self.folder / 'server.log'}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server and its workers (its whole process group): SIGTERM, SIGKILL after 30 s."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):   # the group is gone already
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def mlflow_server(folder: Path, backend: str | None = None, artifacts: str | None = None,
                  env: dict[str, str] | None = None) -> Iterator[str]:
    """An MlflowServer for the block; yields its URL."""
    with MlflowServer(folder, backend, artifacts, env) as server:
        yield server.url


PG_USER = "seabench"
PG_TOOLS = ("initdb", "pg_ctl", "postgres")


def postgres_bin() -> Path | None:
    """The folder of initdb, pg_ctl and postgres: on PATH, else Debian's /usr/lib/postgresql/<newest>/bin."""
    on_path = shutil.which("pg_ctl")
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                    key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    for folder in ([Path(on_path).resolve().parent] if on_path else []) + debian:
        if all((folder / tool).is_file() for tool in PG_TOOLS):
            return folder
    return None


def _postgres_user() -> str | None:
    """Who runs postgres: this user, or when root (postgres refuses root) Debian's `postgres`, else `nobody`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return None


def postgres_missing() -> str:
    """Why no PostgreSQL server can be started here, "" when one can."""
    if postgres_bin() is None:
        return ("PostgreSQL not found (initdb, pg_ctl, postgres on PATH or in /usr/lib/postgresql/*/bin): "
                "apt-get install postgresql")
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg is not installed: pip install -e '.[test]' (psycopg[binary])"
    if os.geteuid() == 0 and (_postgres_user() is None or shutil.which("runuser") is None):
        return "running as root without a 'postgres' or 'nobody' user and runuser: postgres refuses to run as root"
    return ""


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL server on 127.0.0.1 (password authentication, user PG_USER)."""

    port: int
    password: str
    user: str = PG_USER

    def uri(self, database: str) -> str:
        """SQLAlchemy's URI with the psycopg (3) driver, as `mlflow server --backend-store-uri` takes it."""
        return f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URI."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                             dbname="postgres", autocommit=True, connect_timeout=10) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)


@contextmanager
def postgres_server(timeout: float = START_TIMEOUT_S) -> Iterator[Postgres]:
    """A PostgreSQL server on 127.0.0.1 and a free port, its data in a temporary folder (under /tmp, owned by the
    unprivileged user that runs it when this is root: pytest's tmp_path is root's alone); no Unix socket;
    stopped (`pg_ctl stop -m fast`, then SIGKILL) and removed at the end. Raises with postgres_missing()'s reason."""
    missing = postgres_missing()
    if missing:
        raise RuntimeError(missing)
    tools, user = postgres_bin(), _postgres_user()
    folder = Path(tempfile.mkdtemp(prefix="seabench-pg-"))
    data, log, secret = folder / "data", folder / "server.log", folder / "password"
    password = secrets.token_hex(16)
    secret.write_text(password + "\n")
    if user:
        owner = pwd.getpwnam(user)
        for path in (folder, secret):
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def pg(tool: str, *args: str, wait: float = 120) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", user, "--"] if user else []
        return subprocess.run([*prefix, str(tools / tool), *args], cwd=folder, capture_output=True, text=True,
                              timeout=wait)

    port = free_port()
    try:
        made = pg("initdb", "-D", str(data), "-U", PG_USER, "--pwfile", str(secret), "--auth=scram-sha-256",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        if made.returncode:
            raise RuntimeError(f"initdb failed ({made.returncode}): {made.stdout[-2000:]}{made.stderr[-2000:]}")
        # durability is not what a test needs: fsync off; -k '': no Unix socket, TCP on 127.0.0.1 only
        options = f"-h 127.0.0.1 -p {port} -k '' -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        started = pg("pg_ctl", "start", "-D", str(data), "-l", str(log), "-w", "-t", str(int(timeout)), "-o",
                     options, wait=timeout + 30)
        if started.returncode:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed ({started.returncode}): {started.stderr[-2000:]}\n{tail}")
        yield Postgres(port, password)
    finally:
        pid_file = data / "postmaster.pid"
        if pid_file.exists():
            pg("pg_ctl", "stop", "-D", str(data), "-m", "fast", "-t", "30", wait=60)
        if pid_file.exists():   # it did not stop in time
            with contextlib.suppress(ValueError, ProcessLookupError, OSError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def ray_cluster(env: dict[str, str], workers: int, worker_resources: dict | None = None) -> Iterator[object]:
    """A head of 0 CPUs plus `workers` nodes of 1 CPU (and `worker_resources`), every raylet started
    with `env` (so that its workers reach the S3 server). Not connected: drivers join by address."""
    from ray.cluster_utils import Cluster

    # raylets (and so their workers) inherit the environment they start in: `env` while the cluster lives
    with environment(env):
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


def add_worker(cluster, num_gpus: int = 0, env: dict[str, str] | None = None):
    """A worker node of 1 CPU (and `num_gpus` declared GPUs), started in this process's environment plus `env`,
    with a unit cache of its own ($SEABENCH_CACHE, `node_cache(node)`), as separate machines would have: so
    "each unit decoded once per node" is exercised per node, and no test reads the user's ~/.cache."""
    import tempfile

    env = {"SEABENCH_CACHE": tempfile.mkdtemp(prefix="seabench-node-cache-"), **(env or {})}
    with environment(env):   # a raylet (and so its workers) inherits the environment it starts in
        node = cluster.add_node(num_cpus=1, num_gpus=num_gpus)
    NODE_CACHES[node.node_id] = Path(env["SEABENCH_CACHE"])
    return node


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """This process's environment plus `env` while the block runs, restored after."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


NODE_CACHES: dict[str, Path] = {}   # node id -> that node's unit cache folder


def node_cache(node_id: str) -> Path:
    return NODE_CACHES[node_id]


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
    return subprocess.run([*prefix, sys.executable, "-m", "orchestrator.commands.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def start_seabench(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    """`seabench ARGS` in the background, its output (merged) going to `log`."""
    handle = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "orchestrator.commands.cli", *args], cwd=cwd, env=env, stdout=handle,
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
