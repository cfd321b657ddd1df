"""Ray's own autoscaler on one machine: a head started by `ray start --head --autoscaling-config` with
Ray's fake multi-node provider (`provider.type: fake_multinode`, $RAY_FAKE_CLUSTER=1), whose monitor
launches and removes real raylets as a cloud provider would, by node type, min/max workers and idle timeout.

Ray 2.60's wheel lacks `fake_multi_node/example.yaml`, which `ray.cluster_utils.AutoscalingCluster` reads,
and that class runs `ray stop --force` (every Ray process of the machine); so the config is written here.
The head and everything it launches run in a private pid namespace (`unshare --fork --pid --mount-proc
--kill-child`): killing the namespace's first process ends them all, nothing else on the machine is touched.
The GCS listens on a free port (the provider's `gcs_address`, not 6379) and the session lives in a private
temporary folder (so `ray_current_cluster` is written there, not in /tmp/ray for every later ray.init).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from clusterkit import free_port, wait_until

START_TIMEOUT_S = 120
# the head and its drivers use Ray's token authentication (on by default in Ray 2.60; the token is the
# user's ~/.ray/auth_token), which a joining driver enables only when told
AUTH_ENV = {"RAY_AUTH_MODE": "token"}


@dataclass(frozen=True)
class AutoscalingHead:
    address: str
    temp_dir: Path
    config: Path

    def worker_raylets(self) -> int:
        """Worker nodes whose raylet process runs now (the provider kills a removed node's processes)."""
        import psutil

        count = 0
        for process in psutil.process_iter(["name", "cmdline"]):
            line = process.info.get("cmdline") or []
            if (process.info.get("name") == "raylet" and f"--temp_dir={self.temp_dir}" in line
                    and "--head" not in line):
                count += 1
        return count

    def monitor_log(self) -> str:
        """What the autoscaler's monitor wrote (node launches and removals, by type)."""
        logs = self.temp_dir / "session_latest" / "logs"
        return "".join(p.read_text(errors="replace") for p in sorted(logs.glob("monitor*")) if p.is_file())


def provider_config(gcs_address: str, worker_types: dict, idle_timeout_s: float) -> dict:
    """A fake multi-node cluster config: a head of 0 CPUs for the driver, `worker_types` to launch."""
    head = {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}
    return {"cluster_name": "seabench-fake", "max_workers": sum(t.get("max_workers", 0) for t in worker_types.values()),
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": gcs_address},
            "available_node_types": {"ray.head.default": head, **worker_types}, "head_node_type": "ray.head.default",
            "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": idle_timeout_s / 60.0, "docker": {},
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": []}


def _namespaces_work() -> bool:
    unshare = shutil.which("unshare")
    return bool(unshare) and subprocess.run([unshare, "--fork", "--pid", "--mount-proc", "--kill-child", "true"],
                                            capture_output=True).returncode == 0


@contextmanager
def autoscaling_head(worker_types: dict, idle_timeout_s: float = 15.0,
                     env: dict[str, str] | None = None) -> Iterator[AutoscalingHead]:
    """A head with Ray's autoscaler and the fake multi-node provider, in a pid namespace of its own."""
    if not _namespaces_work():
        pytest.skip("needs `unshare --fork --pid --mount-proc` (root, or user namespaces) to run Ray's autoscaler "
                    "apart from the rest of the machine")
    import ray._private.services

    ip, port = ray._private.services.get_node_ip_address(), free_port()
    temp_dir = Path(tempfile.mkdtemp(prefix="rayfake-", dir="/tmp"))   # short: Ray's socket paths have a limit
    config = temp_dir / "autoscaler.yaml"
    config.write_text(json.dumps(provider_config(f"{ip}:{port}", worker_types, idle_timeout_s)))
    head_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    head_env.update({**(env or {}), **AUTH_ENV, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
    log = (temp_dir / "head.log").open("wb")
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        ["unshare", "--fork", "--pid", "--mount-proc", "--kill-child", ray_cli, "start", "--head", "--block",
         f"--port={port}", "--num-cpus=0", "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp_dir}",
         f"--autoscaling-config={config}"],
        env=head_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def up() -> bool:
        if head.poll() is not None:
            raise RuntimeError(f"ray start --head exited with {head.returncode}: see {temp_dir / 'head.log'}")
        try:
            socket.create_connection((ip, port), timeout=1).close()
        except OSError:
            return False
        return "Ray runtime started" in (temp_dir / "head.log").read_text(errors="replace")

    try:
        wait_until(up, START_TIMEOUT_S, f"the autoscaling head answering on {ip}:{port}")
        yield AutoscalingHead(f"{ip}:{port}", temp_dir, config)
    finally:
        head.kill()   # the namespace's first process: the kernel ends every process in it
        head.wait(timeout=30)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
