"""What a stage asks of an autoscaling cluster (`--autoscaling`), and for how long it waits.

Each stage (extraction, the sweep) that needs a shape no live node holds yet asks Ray's autoscaler for it
(`ray.autoscaler.sdk.request_resources`) and withdraws the request when the stage ends, however it ends: a
request left in place keeps paid nodes up after the run. A shape that no node type of the autoscaler can
hold is refused before anything is asked; the node types come from the autoscaler's own config (the
monitor's `--autoscaling-config` on this machine, `~/ray_bootstrap_config.yaml` on a `ray up` head, or
$SEABENCH_NODE_TYPES — a cluster YAML's path or its mapping inline — where neither is visible, e.g. KubeRay). Nodes that never come end the stage after a
deadline (`--wait-for-nodes`, $SEABENCH_WAIT_FOR_NODES, default 30 min) with an error naming the shape.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.raycluster import alive_nodes, autoscaling, fits, request_resources

WAIT_ENV = "SEABENCH_WAIT_FOR_NODES"
NODE_TYPES_ENV = "SEABENCH_NODE_TYPES"
DEFAULT_WAIT_S = 1800.0
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds of "90", "90s", "30m", "1.5h"; anything else, or a negative value, is a ValueError."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(s|m|min|h)?\s*", str(text))
    if not found:
        raise ValueError(f"{text!r} is not a duration: give seconds (1800) or a number with s, m or h (30m)")
    return float(found.group(1)) * _UNITS[found.group(2) or ""]


def wait_seconds() -> float:
    """How long a stage waits for nodes of its shape to join ($SEABENCH_WAIT_FOR_NODES, default 30 min)."""
    text = os.environ.get(WAIT_ENV, "").strip()
    if not text:
        return DEFAULT_WAIT_S
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise OrchestratorError(f"${WAIT_ENV}: {exc}") from exc


def shape(bundle: dict[str, float]) -> str:
    """A resource shape as people read it: "1 CPU, 2 GPU"."""
    return ", ".join(f"{amount:g} {name}" for name, amount in bundle.items()
                     if amount > 0 and name not in ("memory", "object_store_memory")) or "nothing"


def types_of(config: dict[str, Any]) -> dict[str, dict[str, float]] | None:
    """Node type -> resources of an autoscaler config (a Ray cluster YAML): the types the autoscaler may
    launch (max_workers > 0) and the head's. None where a type leaves its resources to the cloud (AWS
    infers them from the instance type): the config then cannot say what fits."""
    available = config.get("available_node_types")
    if not isinstance(available, dict) or not available:
        return None
    head, cluster_max = config.get("head_node_type"), config.get("max_workers")
    found = {}
    for name, node_type in available.items():
        node_type = node_type or {}
        if name != head and (node_type.get("max_workers", cluster_max if cluster_max is not None else 1) or 0) <= 0:
            continue
        resources = node_type.get("resources")
        if not isinstance(resources, dict):
            return None
        found[str(name)] = {str(k): float(v) for k, v in resources.items() if isinstance(v, (int, float))}
    return found


def _load(path: str) -> dict[str, Any] | None:
    import yaml

    try:
        with open(os.path.expanduser(path)) as handle:
            loaded = yaml.safe_load(handle)   # JSON is YAML too: AutoscalingCluster writes JSON
    except (OSError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _inline(text: str) -> dict[str, Any] | None:
    import yaml

    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    return loaded if isinstance(loaded, dict) else None


def _monitor_config(gcs_address: str) -> str | None:
    """The `--autoscaling-config` of this cluster's autoscaler (its monitor process) if it runs on this
    machine, as on a `ray up` head or a `ray start --head --autoscaling-config` one."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        line = process.info.get("cmdline") or []
        if not any("monitor.py" in part for part in line) or f"--gcs-address={gcs_address}" not in line:
            continue
        for part in line:
            if part.startswith("--autoscaling-config="):
                return part.split("=", 1)[1]
    return None


def node_types() -> tuple[dict[str, dict[str, float]], str] | None:
    """(node type -> resources, where they were read) of this cluster's autoscaler, None where unknown."""
    import ray

    given = os.environ.get(NODE_TYPES_ENV, "").strip()
    candidates = [given] if given else []
    if ray.is_initialized():
        with contextlib.suppress(Exception):
            if (path := _monitor_config(ray.get_runtime_context().gcs_address)) is not None:
                candidates.append(path)
    candidates.append(BOOTSTRAP_CONFIG)
    for where in candidates:
        config = _inline(where) if where == given and where.startswith("{") else _load(where)
        if config is None and where == given:
            raise OrchestratorError(f"${NODE_TYPES_ENV}={given!r}: neither a readable Ray cluster YAML with "
                                    "available_node_types (e.g. cluster.yaml) nor such a mapping inline ({...})")
        if config is not None and (types := types_of(config)) is not None:
            return types, f"${NODE_TYPES_ENV}" if where == given and where.startswith("{") else where
    return None


def check_shape(bundle: dict[str, float], what: str, fix: str) -> None:
    """On an autoscaling cluster: refuse `bundle` (one `what`) if no node type the autoscaler can launch
    holds it, naming the types and `fix`; no-op where the types are unknown or the cluster is fixed."""
    if not autoscaling() or any(fits(bundle, n["Resources"]) for n in alive_nodes()):
        return
    known = node_types()
    if known is None:
        return
    types, where = known
    if not any(fits(bundle, resources) for resources in types.values()):
        listed = "; ".join(f"{name}: {shape(resources)}" for name, resources in types.items())
        raise OrchestratorError(f"{what} needs {shape(bundle)}, but no node type of the autoscaler holds it "
                                f"({listed}; from {where}): it would wait forever. {fix}")


def wait_for_nodes(bundle: dict[str, float], what: str, poll_s: float = 1.0) -> None:
    """Block until a live node holds `bundle`, up to the deadline (`wait_seconds()`); then an error naming
    the shape. Immediate where a node holds it already."""
    if any(fits(bundle, n["Resources"]) for n in alive_nodes()):
        return
    limit = wait_seconds()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        if any(fits(bundle, n["Resources"]) for n in alive_nodes()):
            return
    shapes = sorted({shape({k: v for k, v in n["Resources"].items() if k in ("CPU", "GPU")})
                     for n in alive_nodes()})
    raise OrchestratorError(
        f"no node holding {shape(bundle)} (one {what}) joined within {limit:g} s (--wait-for-nodes); nodes now: "
        f"{', '.join(shapes) or 'none'}. Check `ray status` and the autoscaler's log (monitor.log on the head) for "
        "launch failures or quota, or raise --wait-for-nodes")


@contextlib.contextmanager
def requested(bundles: list[dict[str, float]], what: str, one: str = "") -> Iterator[None]:
    """Ask the autoscaler for `bundles` while the block runs; withdraw the request however it ends. With
    `one` (what a bundle holds: "trial", …), also wait, up to --wait-for-nodes, until a live node holds one
    before the block starts. No-op on a fixed cluster."""
    if not autoscaling() or not bundles:
        yield
        return
    request_resources(bundles)
    print(f"{what}: asked the autoscaler for {len(bundles)} × {{{shape(bundles[0])}}}", file=sys.stderr, flush=True)
    try:
        if one and not any(fits(bundles[0], n["Resources"]) for n in alive_nodes()):
            print(f"{what}: no node holds one {one} of {{{shape(bundles[0])}}} yet; waiting for nodes to join (up to "
                  f"{wait_seconds():g} s, --wait-for-nodes)", file=sys.stderr, flush=True)
            wait_for_nodes(bundles[0], one)
        yield
    finally:
        with contextlib.suppress(Exception):   # the cluster may be gone already: nothing then to withdraw
            request_resources([])
            print(f"{what}: withdrew its request from the autoscaler", file=sys.stderr, flush=True)
