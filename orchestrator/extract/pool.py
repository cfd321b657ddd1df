"""Hand out jobs to a fixed set of restartable Ray actors, one job per idle actor, surviving actor deaths.

The driver keeps the queue: an actor gets its next job only when idle (`ray.wait`), so a slow
actor never hoards work, and the job of an actor that dies is put back at the head of the queue
for whichever actor is free first. Jobs are only ever re-run after an actor *death*; an exception
raised by the job itself is a real error and stops the run.
"""

from __future__ import annotations

import logging
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


def wait_until_ready(actors: Sequence[Any]) -> None:
    """Block until every actor has run its constructor (so start-up failures surface before any job)."""
    try:
        ray.get([actor.ready.remote() for actor in actors])
    except RayActorError as exc:
        raise OrchestratorError(f"extraction actor failed to start: {exc}") from exc


def run_jobs(
    actors: Sequence[Any],
    jobs: Sequence[Hashable],
    submit: Callable[[Any, Hashable], ray.ObjectRef],
    on_result: Callable[[Hashable, Any], None],
    max_attempts: int = MAX_ATTEMPTS,
) -> int:
    """Run every job on some actor (which must have a `ready()` method); returns how many were re-submitted.

    `submit(actor, job)` starts the job and returns its ObjectRef; `on_result(job, value)` runs on
    the driver as each job finishes, in completion order.
    """
    pending: deque[Hashable] = deque(jobs)
    idle: deque[Any] = deque(actors)
    in_flight: dict[ray.ObjectRef, tuple[Any, Hashable | None]] = {}  # job None = a restart probe
    attempts: Counter = Counter()
    resubmitted = 0
    while pending or any(job is not None for _, job in in_flight.values()):
        while idle and pending:
            actor, job = idle.popleft(), pending.popleft()
            in_flight[submit(actor, job)] = (actor, job)
        if not in_flight:
            raise OrchestratorError(f"every extraction actor died for good; {len(pending)} jobs left undone "
                                    "(see the Ray logs for why); re-run to resume")
        ready, _ = ray.wait(list(in_flight), num_returns=1)
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
        idle.append(actor)
    return resubmitted
