"""The embedded default starts a Ray of its own: a stale `ray_current_cluster` (a crashed `ray start`) or
another cluster on the machine is never joined unless asked for (`--address auto` / $RAY_ADDRESS)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from orchestrator.errors import OrchestratorError

REPO = Path(__file__).resolve().parents[1]

# a port nothing listens on: the address a crashed `ray start` leaves in Ray's temporary folder
DEAD = "127.0.0.1:1"

_PROBE = """
import sys
import ray
from orchestrator.raycluster import init_ray
init_ray(num_cpus=1)
print("GCS", ray.get_runtime_context().gcs_address, ray.cluster_resources().get("CPU"))
ray.shutdown()
"""


@pytest.fixture
def ray_tmpdir():
    """A private Ray temporary folder (RAY_TMPDIR), short enough for Ray's socket paths."""
    root = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    try:
        yield Path(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    return {**env, "RAY_TMPDIR": str(tmp), "PYTHONPATH": str(REPO), **extra}


def test_a_stale_ray_current_cluster_is_not_joined(ray_tmpdir):
    (ray_tmpdir / "ray").mkdir()
    (ray_tmpdir / "ray" / "ray_current_cluster").write_text(DEAD)
    # what Ray's own default (address=None) does with that file: it tries to join the dead cluster
    joined = subprocess.run([sys.executable, "-c", "import ray; ray.init(num_cpus=1, include_dashboard=False)"],
                            env=_env(ray_tmpdir, RAY_gcs_rpc_server_connect_timeout_s="2",
                                     RAY_gcs_server_request_timeout_seconds="2"),
                            capture_output=True, text=True, timeout=240)
    assert joined.returncode != 0 and "Connecting to existing Ray cluster at address" in joined.stderr, \
        joined.stderr[-2000:]
    # seabench's default starts its own cluster beside the stale file, within seconds
    done = subprocess.run([sys.executable, "-c", _PROBE], env=_env(ray_tmpdir), capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(li for li in done.stdout.splitlines() if li.startswith("GCS "))
    address, cpus = line.split()[1:]
    assert address != DEAD and float(cpus) == 1.0


def test_ray_address_from_the_environment_is_joined_as_given(ray_tmpdir):
    """$RAY_ADDRESS (what `ray job submit` sets for its driver) is an explicit choice: it is joined, and a
    dead one is an error naming it, not a silent local cluster."""
    done = subprocess.run([sys.executable, "-c", _PROBE], env=_env(ray_tmpdir, RAY_ADDRESS=DEAD, RAY_gcs_rpc_server_connect_timeout_s="2",
                                                              RAY_gcs_server_request_timeout_seconds="2"),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode != 0 and "cannot start or join the Ray cluster at '127.0.0.1:1'" in done.stderr


def test_ray_client_addresses_are_refused_from_the_environment_too(monkeypatch):
    from orchestrator.raycluster import init_ray

    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    with pytest.raises(OrchestratorError, match="ray job submit"):
        init_ray()


def test_tune_storage_is_temporary_on_one_node_and_beside_the_store_on_a_cluster(tmp_path, monkeypatch) -> None:
    """Where head trials checkpoint: a restarted trial must find its checkpoint on whichever node it lands."""
    from orchestrator.raycluster import run_storage, shared_storage

    monkeypatch.chdir(tmp_path)
    with run_storage(None, "features", "sweep", nodes=1) as folder:   # one node: a temporary folder, removed
        assert Path(folder).is_dir() and Path(folder).is_absolute()
    assert not Path(folder).exists()
    with run_storage("tune", "features", "sweep", nodes=1) as given:   # tune_dir: used as it is, kept
        Path(given).mkdir()
    assert given == str(tmp_path / "tune") and Path(given).is_dir()
    store = tmp_path / "shared" / "features"   # a cluster: a folder of this run beside the (shared) store
    with run_storage(None, str(store), "sweep", nodes=3) as folder:
        assert Path(folder).parent == tmp_path / "shared" / "features-tune" and Path(folder).name.startswith("sweep-")
        (Path(folder) / "trial" / "checkpoint").mkdir(parents=True)
    assert not Path(folder).exists()
    assert shared_storage("s3://bucket/seabench/features-tune/x", "store", 3, "") == "s3://bucket/seabench/features-tune/x"


@pytest.mark.parametrize(("tune_dir", "store", "named"), [("tune", "s3://b/f", "'tune' (tune_dir)"),
                                                          (None, "features", "(store)")])
def test_a_relative_tune_folder_on_a_cluster_is_refused_naming_the_key(tune_dir, store, named) -> None:
    from orchestrator.raycluster import run_storage

    with pytest.raises(OrchestratorError) as err, run_storage(tune_dir, store, "sweep", nodes=3):
        pass
    assert named in str(err.value) and "3 nodes" in str(err.value) and "tune_dir" in str(err.value)
