"""Joining or starting the Ray cluster: one helper so every verb starts Ray the same way."""

from __future__ import annotations

import ray

from orchestrator.errors import OrchestratorError


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address`, or start a local one (the embedded default); no-op if already up.

    The local cluster runs without the dashboard so nothing listens beyond loopback.
    """
    if ray.is_initialized():
        return
    try:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray cluster"
        hint = "check the address (e.g. 'auto' or 'ray://head:10001')" if address else "check free memory and /tmp space"
        raise OrchestratorError(f"cannot start or join {where}: {exc}; {hint}") from exc


def cluster_gpus() -> float:
    """GPUs the running cluster offers (0.0 on a CPU-only cluster)."""
    return float(ray.cluster_resources().get("GPU", 0.0))


def cluster_cpus() -> float:
    """CPUs currently free on the running cluster (at least 1 so a busy cluster still gets one actor)."""
    return max(1.0, float(ray.available_resources().get("CPU", 0.0)))
