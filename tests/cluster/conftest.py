"""Fixtures of the multi-node tests: one moto S3 server, one PostgreSQL server and one MLflow server (on that
PostgreSQL, its artifacts on that S3) for the whole session, shared by every cluster test module; each module
its own simulated cluster (real raylets).

Sharing keeps the suite's time down (an `mlflow server` on PostgreSQL takes ~15 s to start). The price is a
convention: every test uses experiment names and S3 key prefixes of its own (fixed, ft-cluster, zero, loss,
restart, …), so that no test sees another's runs or objects.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

pytest.importorskip("moto.server", reason="pip install -e '.[test]' (moto[server]) for the cluster tests")
pytest.importorskip("s3fs", reason="pip install -e '.[test]' (s3fs) for the cluster tests")

from clusterkit import (  # after the skips above
    BUCKET,
    MlflowServer,
    Postgres,
    postgres_missing,
    postgres_server,
    s3_server,
)

ARTIFACTS = f"s3://{BUCKET}/mlflow-artifacts"


@pytest.fixture(scope="session")
def s3_env() -> Iterator[dict[str, str]]:
    """moto's S3 server on 127.0.0.1 with the bucket BUCKET; the environment that points s3fs and boto3 at it."""
    with s3_server() as env:
        yield env


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL server on 127.0.0.1 (skipped, with the reason, where its binaries or psycopg are missing)."""
    missing = postgres_missing()
    if missing:
        pytest.skip(missing)
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def tracking_server(s3_env: dict[str, str], request: pytest.FixtureRequest,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """The `mlflow server` every cluster test logs to: PostgreSQL's database `mlflow`, artifacts on the S3
    server. Without PostgreSQL here (no binaries or no psycopg) it falls back to SQLite, with a warning."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    missing = postgres_missing()
    if missing:
        warnings.warn(f"cluster tests: MLflow on SQLite, not PostgreSQL ({missing})", stacklevel=1)
        backend = None
    else:
        backend = request.getfixturevalue("postgres").create_database("mlflow")
    with MlflowServer(folder, backend, ARTIFACTS, s3_env) as server:
        yield server


@pytest.fixture(scope="session")
def tracking(tracking_server: MlflowServer) -> str:
    """The shared MLflow server's URL (a test that stops the server starts it again before it ends)."""
    return tracking_server.url
