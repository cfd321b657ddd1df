"""Tracking writes that ride out an outage of the MLflow store: retried with bounded back-off, then kept
in memory until the store answers again.

An outage (`outage_reason`) is SQLite's "database is locked" (another writer), or a store that does not
answer: a tracking server that refuses connections, times out or answers 5xx, and a SQL store's
OperationalError (PostgreSQL restarting). Anything else — a bad request, a deleted experiment — is
raised at once. MLflow's own client already retries HTTP (connection errors and 408/429/5xx answers,
`MLFLOW_HTTP_REQUEST_MAX_RETRIES`=7 with back-off factor 2: about 2 minutes); what reaches seabench
is what it gave up on, or what it never retries (SQL stores, the artifact proxy's answers).

`call_with_retry` retries an outage with exponential back-off (0.5 s doubling to 15 s) until
$SEABENCH_TRACKING_RETRY_S (default 120 s) have passed since the call began (a call that MLflow's client
is itself retrying when the time runs out finishes first), then raises `TrackingUnavailable`. A
`Backlog` keeps whole writes that raised it (a cell's record) in memory, in order, and replays them once
the store answers again: before the next write, and at the sweep's end, where `drain` waits up to
$SEABENCH_TRACKING_WAIT_S (default 600 s) for it and then fails naming the store and every write it
still holds.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from orchestrator.errors import OrchestratorError

logger = logging.getLogger(__name__)

RETRY_ENV, WAIT_ENV = "SEABENCH_TRACKING_RETRY_S", "SEABENCH_TRACKING_WAIT_S"
RETRY_S, WAIT_S = 120.0, 600.0          # per call; at the sweep's end, for what is still kept
FIRST_DELAY_S, MAX_DELAY_S = 0.5, 15.0  # the back-off between two tries
HEALTH_TIMEOUT_S = 2.0
LOCKED, UNREACHABLE = "locked", "unreachable"
# exception classes (by name, anywhere in the cause chain) that mean the store did not answer
_UNREACHABLE_TYPES = {"ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "RetryError",
                      "NewConnectionError", "MaxRetryError", "ProtocolError", "OperationalError"}
T = TypeVar("T")


class TrackingUnavailable(OrchestratorError):
    """The tracking store did not answer (or stayed locked) for a whole retry window."""


@dataclass(frozen=True)
class RetryPolicy:
    retry_s: float = RETRY_S   # how long one call retries an outage
    wait_s: float = WAIT_S     # how long the sweep's end waits for the store to write what it kept

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """The documented defaults, or $SEABENCH_TRACKING_RETRY_S / $SEABENCH_TRACKING_WAIT_S."""
        return cls(_seconds(RETRY_ENV, RETRY_S), _seconds(WAIT_ENV, WAIT_S))


def _seconds(env: str, default: float) -> float:
    text = os.environ.get(env, "")
    try:
        value = float(text) if text else default
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise OrchestratorError(f"${env}={text!r} is not a number of seconds (0 or more); unset it or use e.g. "
                                f"{env}={default:g}")
    return value


def delays(first: float = FIRST_DELAY_S, cap: float = MAX_DELAY_S) -> Iterator[float]:
    """The back-off: first, 2·first, 4·first, … up to cap, then cap for ever."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, cap)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _status(exc: BaseException) -> int:
    """The HTTP status an exception carries: a server's error answer (MLflow's RestException, a requests
    HTTPError of the artifact proxy), or MLflow's TEMPORARILY_UNAVAILABLE (a SQL store's OperationalError)."""
    response = getattr(exc, "response", None)
    if isinstance(getattr(response, "status_code", None), int):
        return response.status_code
    code = getattr(exc, "error_code", "")
    if code == "TEMPORARILY_UNAVAILABLE" or (code and type(exc).__name__ == "RestException"):
        return int(exc.get_http_status_code())
    return 0


def outage_reason(exc: BaseException) -> str:
    """LOCKED, UNREACHABLE, or "" for an error that retrying cannot cure."""
    links = list(_chain(exc))
    if any("database is locked" in str(link) for link in links):
        return LOCKED
    if any(type(link).__module__ == "sqlite3" for link in links):
        return ""   # a local file is there or not: only its lock passes (MLflow calls every SQL error transient)
    for link in links:
        text = str(link)
        if isinstance(link, (ConnectionError, TimeoutError)) or type(link).__name__ in _UNREACHABLE_TYPES \
                or _status(link) >= 500:
            return UNREACHABLE
        # MLflow's client, once its own retries are spent: "API request to <url> failed with exception …",
        # or a non-JSON answer: "API request to endpoint <path> failed with error code 503 != 200"
        if text.startswith("API request to ") and " failed with " in text:
            code = text.split(" failed with error code ", 1)[1][:3] if " failed with error code " in text else ""
            return UNREACHABLE if not code.isdigit() or int(code) >= 500 else ""
    return ""


def call_with_retry(call: Callable[[], T], what: str, store: str, policy: RetryPolicy, *,
                    sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> T:
    """`call()`, retried on an outage with back-off for `policy.retry_s` from now; then TrackingUnavailable."""
    deadline, waits = clock() + policy.retry_s, delays()
    while True:
        try:
            return call()
        except TrackingUnavailable:
            raise   # an inner call (cell_runs inside start) already retried for a whole window
        except Exception as exc:  # MlflowException, requests' and urllib3's errors, sqlalchemy's: classified
            reason = outage_reason(exc)
            if not reason:
                raise
            left = deadline - clock()
            if left <= 0:
                raise TrackingUnavailable(_gave_up(store, what, reason, policy.retry_s, exc)) from exc
            delay = min(next(waits), left)
            logger.warning("MLflow store %s %s during %s (%s); retrying in %.1f s", store,
                           "locked" if reason == LOCKED else "not answering", what, _short(exc), delay)
            sleep(delay)


def retried(method: Callable[..., T]) -> Callable[..., T]:
    """A method of an object with `tracking_uri` and `retry` (a RetryPolicy), its outages retried."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        return call_with_retry(lambda: method(self, *args, **kwargs), method.__name__, self.tracking_uri, self.retry)

    return wrapper


def _gave_up(store: str, what: str, reason: str, seconds: float, exc: BaseException) -> str:
    if reason == LOCKED:
        return (f"{store} stayed locked for {seconds:.0f} s ({what}): another process holds the SQLite file; stop "
                "it, or use an MLflow server (--tracking-uri http://…) for concurrent sweeps. Rerunning resumes "
                "where this stopped")
    return (f"{store} did not answer for {seconds:.0f} s ({what}: {_short(exc)}); check that the tracking "
            f"server and its database are up (${RETRY_ENV} sets how long a call retries)")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("…" if len(text) > 300 else "")


def store_answers(store: str, timeout: float = HEALTH_TIMEOUT_S) -> bool:
    """A cheap probe: an http(s) tracking server's /health answers 200 (other stores: assumed to answer,
    their next call tells). Spares a write the minutes MLflow's client retries a server that is down."""
    if not store.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(f"{store.rstrip('/')}/health", timeout=timeout) as answer:
            return answer.status == 200
    except OSError:
        return False


@dataclass
class Backlog:
    """Writes kept while the store was down, replayed in order once it answers. A write must be safe to
    replay (seabench's cell writes find the run a lost answer created, and re-log idempotently)."""

    store: str
    policy: RetryPolicy
    kept: list[tuple[str, Callable[[], object]]] = field(default_factory=list)   # (label, write)
    probe: Callable[[str], bool] = store_answers

    def __len__(self) -> int:
        return len(self.kept)

    def labels(self) -> list[str]:
        return [label for label, _ in self.kept]

    def submit(self, label: str, write: Callable[[], T]) -> T | None:
        """`write()` now — after what is kept, if the store answers — or kept for later (returns None)."""
        if self.kept and not (self.probe(self.store) and self.replay()):
            self._keep(label, write, "the store is still down")
            return None
        try:
            return write()
        except TrackingUnavailable as exc:
            self._keep(label, write, str(exc))
            return None

    def _keep(self, label: str, write: Callable[[], object], why: str) -> None:
        self.kept.append((label, write))
        logger.warning("MLflow store %s: %s kept in memory (%d kept), logged once it answers again: %s",
                       self.store, label, len(self.kept), why)

    def replay(self) -> bool:
        """Write what is kept, in order, up to the first outage; returns whether nothing is left."""
        while self.kept:
            label, write = self.kept[0]
            try:
                write()
            except TrackingUnavailable:
                return False
            self.kept.pop(0)
            logger.warning("MLflow store %s answers again: %s logged (%d still kept)", self.store, label,
                           len(self.kept))
        return True

    def drain(self, *, sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        """Wait up to `policy.wait_s` for the store to take everything kept; else raise naming each write."""
        deadline, waits = clock() + self.policy.wait_s, delays(cap=30.0)
        if self.kept:
            logger.warning("MLflow store %s: waiting up to %.0f s to log %d kept write(s)", self.store,
                           self.policy.wait_s, len(self.kept))
        while self.kept:
            if self.probe(self.store) and self.replay():
                return
            left = deadline - clock()
            if left <= 0:
                raise TrackingUnavailable(
                    f"{self.store} did not answer within {self.policy.wait_s:.0f} s at the sweep's end; "
                    f"{len(self.kept)} result(s) computed by this run could not be logged and are lost: "
                    f"{', '.join(self.labels())}. Start the tracking server and rerun the same command: the "
                    f"sweep resumes and computes them again (${WAIT_ENV} sets how long the end waits)")
            sleep(min(next(waits), left))
