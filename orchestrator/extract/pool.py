"""Hand out jobs to a fixed set of restartable Ray actors, one job per idle actor, surviving actor deaths.

The driver keeps the queue: an actor gets its next job only when idle (`ray.wait`), so a slow
actor never hoards work, and the job of an actor that dies is put back at the head of the queue
for whichever actor is free first. Jobs are only ever re-run after an actor *death*; an exception
raised by the job itself is a real error and stops the run.

An actor gets work only once it has answered `ready()`: actors that the cluster cannot place yet (an
autoscaler is still bringing their node up, or the cluster is full) hold no job meanwhile, and those
that never start are simply not used. Once the first actor is ready, jobs wait up to `start_grace_s`
for the others, so that work spreads over every node that is coming up instead of going to the
first actor to finish loading its model.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from orchestrator.errors import OrchestratorError

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a job that kills its actor this many times is poison (e.g. out of memory), not bad luck


class JobFailed(OrchestratorError):
    """A job raised: `job` is the job, `cause` the exception it raised inside the actor."""

    def __init__(self, job: Hashable, cause: BaseException) -> None:
        super().__init__(f"job {job} failed: {cause}")
        self.job, self.cause = job, cause


def _probe(actor: Any) -> ray.ObjectRef:
    # Retried by Ray until the restarted actor answers, or fails for good once its restarts are spent.
    return actor.ready.options(max_task_retries=-1).remote()


def run_jobs(
    actors: Sequence[Any],
    jobs: Sequence[Hashable],
    submit: Callable[[Any, Hashable], ray.ObjectRef],
    on_result: Callable[[Hashable, Any], None],
    max_attempts: int = MAX_ATTEMPTS,
    on_ready: Callable[[Any, Any], None] | None = None,
    start_grace_s: float = 0.0,
) -> int:
    """Run every job on some actor (which must have a `ready()` method); returns how many were re-submitted.

    `submit(actor, job)` starts the job and returns its ObjectRef; `on_result(job, value)` runs on
    the driver as each job finishes, in completion order; `on_ready(actor, value)` each time an
    actor answers `ready()` (once started, and again after each restart).
    """
    pending: deque[Hashable] = deque(jobs)
    idle: deque[Any] = deque()
    # job None = a readiness probe: every actor starts with one, and gets one again after a restart
    in_flight: dict[ray.ObjectRef, tuple[Any, Hashable | None]] = {_probe(actor): (actor, None) for actor in actors}
    attempts: Counter = Counter()
    resubmitted = 0
    first_ready: float | None = None
    started: set[int] = set()      # ids of the actors that answered ready() at least once
    while pending or any(job is not None for _, job in in_flight.values()):
        waited = first_ready is None or time.monotonic() - first_ready >= start_grace_s
        while idle and pending and (waited or len(started) == len(actors)):
            actor, job = idle.popleft(), pending.popleft()
            in_flight[submit(actor, job)] = (actor, job)
        if not in_flight:
            raise OrchestratorError(f"every extraction actor died for good; {len(pending)} jobs left undone "
                                    "(see the Ray logs for why); re-run to resume")
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=None if waited else 0.5)
        if not ready:
            continue
        actor, job = in_flight.pop(ready[0])
        try:
            value = ray.get(ready[0])
        except RayActorError as exc:
            if getattr(exc, "actor_init_failed", False):
                raise OrchestratorError(f"extraction actor failed to start: {exc}") from exc
            if job is None:
                log.warning("actor lost for good after its restarts: %s", exc)
                continue
            attempts[job] += 1
            if attempts[job] >= max_attempts:
                raise OrchestratorError(f"job {job} killed its actor {attempts[job]} times; last error: {exc}") from exc
            log.warning("actor died during job %s; re-submitting it (attempt %d)", job, attempts[job] + 1)
            pending.appendleft(job)
            resubmitted += 1
            in_flight[_probe(actor)] = (actor, None)
            continue
        except RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, Exception) else exc
            raise JobFailed(job, cause) from cause
        if job is not None:
            on_result(job, value)
        else:
            started.add(id(actor))
            first_ready = time.monotonic() if first_ready is None else first_ready
            if on_ready is not None:
                on_ready(actor, value)
        idle.append(actor)
    return resubmitted
