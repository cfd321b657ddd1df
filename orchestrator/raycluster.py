"""Joining or starting the Ray cluster: one helper so every verb starts Ray the same way, plus what the
verbs ask of the cluster (its nodes, whether it may still grow, a function run on every node)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray

from orchestrator.errors import OrchestratorError

# `--autoscaling` (run, extract) sets it: the cluster's autoscaler may still add nodes, so a resource
# that no node has *yet* is asked for (ray.autoscaler.sdk.request_resources), not refused.
AUTOSCALING_ENV = "SEABENCH_AUTOSCALING"
NODE_CHECK_TIMEOUT_S = 300.0
RAY_ADDRESS_ENV = "RAY_ADDRESS"   # Ray's own variable: set by `ray job submit` for its driver, or by a user


def check_address(address: str | None) -> None:
    """Refuse Ray client addresses: in client mode Tune's driver-side logic (the MLflow callback, the
    sweep summary) runs on the head, not in this process, which then reports every cell as not run."""
    if address and address.startswith("ray://"):
        raise OrchestratorError(
            f"address {address!r}: Ray client (ray://) is not supported, since the sweep's driver (the MLflow "
            "logging, the summary) must run on the cluster. Submit the command as a job instead: "
            "`ray job submit --address http://HEAD:8265 --working-dir . -- seabench run … --address auto`")


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address`, else at $RAY_ADDRESS (what `ray job submit` gives its driver), else
    start a local Ray of this process's own (`address="local"`, the embedded default); no-op if already up.

    Never "whatever `ray start` left on this machine": Ray's own default joins the cluster named in its
    temporary folder's `ray_current_cluster`, which a crashed `ray start` leaves pointing at a dead
    cluster and which, on a shared workstation, may be a colleague's. Pass `--address auto` to join that
    one on purpose. The local cluster runs without the dashboard so nothing listens beyond loopback.
    """
    address = address or os.environ.get(RAY_ADDRESS_ENV) or None
    check_address(address)
    if ray.is_initialized():
        return
    try:
        if address and address != "local":
            _check_reachable(address)
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        joining = address and address != "local"
        where = f"the Ray cluster at {address!r}" if joining else "a local Ray cluster"
        hint = "check the address (e.g. 'auto' or 'HOST:6379')" if joining else "check free memory and /tmp space"
        raise OrchestratorError(f"cannot start or join {where}: {exc}; {hint}") from exc


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A HOST:PORT address must accept a TCP connection within `timeout_s`: Ray itself retries a dead GCS
    for minutes before it gives up. ('auto' and other forms are left to Ray.)"""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {address} ({exc})") from exc


def autoscaling() -> bool:
    """Whether the cluster may still grow (`--autoscaling`, i.e. $SEABENCH_AUTOSCALING=1)."""
    return os.environ.get(AUTOSCALING_ENV, "").strip().lower() not in ("", "0", "false", "no")


def request_resources(bundles: list[dict[str, float]]) -> None:
    """Ask an autoscaling cluster for these resource shapes (persistent until the next request; [] clears)."""
    if autoscaling():
        from ray.autoscaler.sdk import request_resources as request

        request(bundles=[{k: v for k, v in b.items() if v > 0} for b in bundles])


def alive_nodes() -> list[dict[str, Any]]:
    """The cluster's live nodes (ray.nodes() entries: NodeID, Resources, …)."""
    return [n for n in ray.nodes() if n.get("Alive")]


def fits(bundle: dict[str, float], resources: dict[str, float]) -> int:
    """How many `bundle`s a node of total `resources` holds."""
    counts = [int(resources.get(name, 0.0) // amount) for name, amount in bundle.items() if amount > 0]
    return min(counts) if counts else 1 << 30


def on_each_node(function: Callable[..., Any], *args: Any, nodes: list[str]) -> dict[str, Any]:
    """`function(*args)` run once on each of `nodes` (node ids), as a zero-CPU task pinned there. A node that
    leaves meanwhile (scaled down, reclaimed: Ray may list it alive for a few seconds after) is skipped,
    with a note, and left out of the answer; a live node that fails or does not answer is an error."""
    import sys

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(function)
    refs = {node: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(*args)
            for node in nodes}
    _, late = ray.wait(list(refs.values()), num_returns=len(refs), timeout=NODE_CHECK_TIMEOUT_S)
    answers, failed, slow = {}, {}, []
    for node, ref in refs.items():
        if ref in late:
            slow.append(node)
            ray.cancel(ref, force=True)
            continue
        try:
            answers[node] = ray.get(ref)
        except Exception as exc:   # unschedulable (its node went), or the function's own error
            failed[node] = exc
    from ray.exceptions import NodeDiedError, TaskUnschedulableError, WorkerCrashedError

    gone = (TaskUnschedulableError, NodeDiedError, WorkerCrashedError)   # the node, not the check, failed
    alive = {n["NodeID"] for n in alive_nodes()} - {n for n, e in failed.items() if isinstance(e, gone)}
    for node in [n for n in [*slow, *failed] if n not in alive]:
        print(f"note: Ray node {node} left the cluster before its check; skipped (its work goes to the others)",
              file=sys.stderr, flush=True)
    slow, failed = [n for n in slow if n in alive], {n: e for n, e in failed.items() if n in alive}
    if failed:
        node, exc = next(iter(failed.items()))
        raise OrchestratorError(f"the check of Ray node {node} failed: {task_error(exc)}") from exc
    if slow:
        raise OrchestratorError(f"Ray nodes {slow} did not answer a check within {NODE_CHECK_TIMEOUT_S:.0f} s; "
                                "see `ray status` and the nodes' logs")
    return answers


def node_id() -> str:
    """The Ray node id of this process ("" outside Ray)."""
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def on_driver_node(func: Callable[..., Any], calls: list[tuple[Any, tuple]], limit: int,
                   stopping: Any = None) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """`func(*args)` for each (key, args) of `calls` as a Ray task on the driver's node (where the Tune
    folders are), holding no CPU itself, at most `limit` at once; yields (key, result, None) or (key, None,
    the task's exception) as each finishes. Leaving early — the consumer's exception, closing the generator,
    or `stopping` (a threading.Event) set — cancels the tasks still running."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    remote = ray.remote(func).options(num_cpus=0, max_retries=0, scheduling_strategy=here)
    waiting, running = list(calls), {}
    try:
        while (waiting or running) and not (stopping is not None and stopping.is_set()):
            while waiting and len(running) < limit:
                key, args = waiting.pop(0)
                running[remote.remote(*args)] = key
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)   # bounded: `stopping` is seen
            for ref in ready:
                key = running.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # the task's error (RayTaskError, also an instance of its cause)
                    yield key, None, exc
                    continue
                yield key, result, None
    finally:
        for ref in running:
            ray.cancel(ref, force=True)   # its Tune driver's trials and Ray Train workers die with it


def task_error(exc: BaseException) -> str:
    """A failed task's message: its own exception (a RayTaskError carries it as `cause`), without Ray's wrapper."""
    cause = getattr(exc, "cause", None)
    exc = cause if isinstance(cause, BaseException) else exc
    return f"{type(exc).__name__}: {exc}"


def storage_args(storage: str) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for a Tune or Ray Train RunConfig: a URI through the fsspec
    filesystem the feature store uses (the same endpoint and credentials), wrapped for pyarrow; a local path
    as it is (None: Ray's own local filesystem)."""
    if "://" not in storage or storage.startswith("file://"):
        return storage.removeprefix("file://"), None
    import fsspec
    import pyarrow.fs

    fs, path = fsspec.core.url_to_fs(storage)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def shared_storage(where: str, key: str, nodes: int, fix: str) -> str:
    """`where` as Ray needs it — a URI as it is, a local path absolute — for folders that every node of a
    cluster of `nodes` must reach (checkpoints a restarted worker reads on another node). A relative path on
    a cluster is refused naming `key` (the config key it came from) and `fix`."""
    from tasks import is_uri

    if is_uri(where):
        return where
    if nodes > 1 and not os.path.isabs(os.path.expanduser(where)):
        raise OrchestratorError(
            f"{where!r} ({key}) is a relative path, but this Ray cluster has {nodes} nodes: each node would "
            f"write its checkpoints to its own disk and a trial or worker restarted on another node would find "
            f"nothing. {fix}")
    return str(Path(where).expanduser().resolve())


@contextlib.contextmanager
def run_storage(given: str | None, store: str, name: str, nodes: int) -> Iterator[str]:
    """Tune's trial folders for one sweep, where head trials checkpoint (a restarted trial resumes from its
    latest, on any node): `given` (tune_dir), kept; else on one node a temporary folder, on a cluster of
    `nodes` > 1 a folder of this run under `<store>-tune` beside the feature store (every node reaches the
    store: the preflight checks it); either removed when the sweep ends."""
    fix = "Set tune_dir to a URI every node reaches (s3://BUCKET/seabench/tune) or a shared mount"
    if given:
        yield shared_storage(given, "tune_dir", nodes, fix)
        return
    if nodes > 1:
        folder = shared_storage(f"{store.rstrip('/')}-tune/{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
                                "store", nodes, fix)
    else:
        folder = tempfile.mkdtemp(prefix="seabench-tune-")
    try:
        yield folder
    finally:
        remove_folder(folder)


def remove_folder(folder: str) -> None:
    """Removes a folder, local or a URI, and all it holds; one that is not there is no error."""
    if "://" not in folder or folder.startswith("file://"):
        shutil.rmtree(folder.removeprefix("file://"), ignore_errors=True)
        return
    import fsspec

    fs, path = fsspec.core.url_to_fs(folder)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)


def remove_orphaned_placement_groups() -> int:
    """Remove the placement groups whose creator, an actor, is dead: Ray keeps them until the job ends. Ray
    Train's PlacementGroupCleaner would remove its controller's, but it asks the state API, which needs the
    dashboard seabench does not start — so the worker group of a candidate that Tune stopped (ASHA kills its
    trial, and the controller with it) would hold its CPUs and GPUs for the rest of the run. Returns how many."""
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    nil = ray.ActorID.nil().binary()
    removed = 0
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        data = gcs_pb2.PlacementGroupTableData.FromString(raw)
        if (data.creator_actor_dead and data.creator_actor_id not in (b"", nil) and not data.is_detached
                and data.state != gcs_pb2.PlacementGroupTableData.REMOVED):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(data.placement_group_id)))
            removed += 1
    return removed
