"""What an extraction asks of the cluster's nodes: how many actors of what shape, and whether every node
that may run one sees the data, the weights and the store the driver sees.

Actors ask for what the settings say (`num_gpus_per_actor`, `cpus_per_actor`); their number comes from
the plan (its shards) and the node types, not from what happens to be free when the run starts. On an
autoscaling cluster (`--autoscaling`) the shapes are requested from the autoscaler (capacity.requested,
withdrawn when the backbone's extraction ends), so a cluster scaled to zero grows; elsewhere a shape that no node could ever hold is an error naming the nodes.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import ray

import tasks
from orchestrator.errors import OrchestratorError
from orchestrator.raycluster import alive_nodes, autoscaling, fits, on_each_node

log = logging.getLogger(__name__)

JOBS_PER_ACTOR = 2       # on a growing cluster: one actor per this many shards…
MAX_GROWN_ACTORS = 8     # …at most this many (cluster.yaml's max_workers) unless extraction.num_actors says


@dataclass(frozen=True)
class ActorPlan:
    count: int
    num_gpus: float          # per actor
    num_cpus: float
    note: str = ""           # why the plan differs from the settings (no GPU in a fixed cluster)
    placeable: int = 0       # actors the cluster's live nodes hold now

    @property
    def bundle(self) -> dict[str, float]:
        return {"CPU": self.num_cpus, "GPU": self.num_gpus}


def plan_actors(jobs: int, num_gpus: float, num_cpus: float, num_actors: int | None) -> ActorPlan:
    """The extraction actors for `jobs` shards: as many as the cluster's nodes hold (at most one per shard),
    or on an autoscaling cluster enough for the plan; `num_actors` overrides the count."""
    grows = autoscaling()
    nodes = alive_nodes()
    note = ""
    if num_gpus > 0 and not grows and not any(n["Resources"].get("GPU", 0) for n in nodes):
        note = "the Ray cluster has no GPU (and --autoscaling is off): extraction actors run on CPU"
        num_gpus = 0.0
    bundle = {"CPU": num_cpus, "GPU": num_gpus}
    capacity = sum(fits(bundle, n["Resources"]) for n in nodes)
    if capacity == 0 and not grows:
        shapes = ", ".join(f"{n['NodeID'][:8]}: {n['Resources'].get('CPU', 0):g} CPU, {n['Resources'].get('GPU', 0):g} GPU"
                           for n in nodes)
        raise OrchestratorError(
            f"no node of the Ray cluster can hold an extraction actor of {num_cpus:g} CPU and {num_gpus:g} GPU "
            f"(nodes: {shapes}); lower --cpus-per-actor / extraction.num_gpus_per_actor, add a node, or pass "
            "--autoscaling if the cluster's autoscaler adds such nodes")
    if num_actors is not None:
        count = min(num_actors, jobs)
    elif grows:
        count = min(jobs, max(capacity, min(MAX_GROWN_ACTORS, math.ceil(jobs / JOBS_PER_ACTOR))))
    else:
        count = min(jobs, capacity)
    return ActorPlan(max(1, count), num_gpus, num_cpus, note, capacity)


def _missing_here(specs: Sequence[tasks.BackboneSpec], task_names: Sequence[str], data_root: str | None,
                  store_probe: str | None) -> list[str]:
    """Runs on a node: every input of the extraction that this node cannot see."""
    from tasks.weights import missing_weights

    missing = [f"weights for {spec.name}: {where} is missing" for spec in specs
               if (where := missing_weights(spec)) is not None]
    missing += [str(m) for m in tasks.preflight([], task_names, data_root)]
    if store_probe is not None and not os.path.exists(store_probe):
        missing.append(f"the feature store {os.path.dirname(store_probe)} (a folder on the driver's disk, "
                       "not shared with this node)")
    return missing


def check_nodes(specs: Sequence[tasks.BackboneSpec], task_names: Sequence[str], data_root: str | None,
                store_root: str | None, bundle: dict[str, float]) -> None:
    """On a cluster of several nodes: every node that could run an actor of `bundle` (other than the
    driver's) must see the data, the weights and a local store; else an error naming the node and path.

    A local store is probed with a file the driver writes there; a node on a shared mount sees it."""
    here = ray.get_runtime_context().get_node_id()
    nodes = [n["NodeID"] for n in alive_nodes() if n["NodeID"] != here and fits(bundle, n["Resources"]) > 0]
    if not nodes:
        return
    probe = None
    if store_root is not None:
        os.makedirs(store_root, exist_ok=True)
        probe = os.path.join(store_root, f".seabench-probe-{uuid.uuid4().hex[:12]}")
        with open(probe, "w") as handle:
            handle.write("written by the driver; a node that cannot see it does not share this store\n")
    try:
        found = on_each_node(_missing_here, list(specs), list(task_names), data_root, probe, nodes=nodes)
    finally:
        if probe is not None:
            os.remove(probe)
    problems = [f"node {node}: {what}" for node, missing in found.items() for what in missing]
    if problems:
        raise OrchestratorError(
            "inputs that Ray worker nodes cannot see (a path on the driver's machine only?):\n  "
            + "\n  ".join(problems)
            + "\nput them on a shared mount at the same path, or use URIs every node reads (s3://…, gs://…) "
              "for data_root, imagefolder: roots, $SEABENCH_WEIGHTS and the store")
