"""One sweep per experiment at a time: a lease on the sweep's parent run (and both opened race-safely).

MLflow has no compare-and-set, but a run's params are write-once: the store's primary key (run, key)
refuses a second value for a key, atomically, in SQLite and behind an `mlflow server` alike. So a
claim is the param `seabench.lease.<n>` = the claimant's identity (host, pid, random token, time):
whoever logs epoch n first holds the lease, a loser reads another token there and is refused, naming
the winner. The holder tags the parent `seabench.lease.owner` ("host pid token"), `.started`,
`.heartbeat` (epoch seconds, every HEARTBEAT_S, by a thread) and on release `.released` = its token.
A lease is live while unreleased with a heartbeat younger than STALE_S (hosts' clocks assumed in
sync); a stale one may be taken over (`--takeover`), a provably dead holder's (same host and pid
namespace, process gone: a SIGKILLed run) is reclaimed unasked. A holder taken over stops writing.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.runs import ROLE_TAG, SWEEP_ROLE, role_filter, search_runs

logger = logging.getLogger(__name__)

HEARTBEAT_S, STALE_S = 10.0, 60.0   # the holder's beat; a heartbeat older than STALE_S may be taken over
SETTLE_S = 1.0                      # by then a racing driver's new parent run is visible
HEARTBEAT_ENV, STALE_ENV = "SEABENCH_LEASE_HEARTBEAT_S", "SEABENCH_LEASE_STALE_S"
CLAIM_PARAM = "seabench.lease."   # + epoch: the write-once claim
OWNER_TAG, STARTED_TAG = "seabench.lease.owner", "seabench.lease.started"
HEARTBEAT_TAG, RELEASED_TAG = "seabench.lease.heartbeat", "seabench.lease.released"
TOKEN_TAG = "seabench.lease.token"   # on every cell run: the lease of the sweep that created it


@dataclass(frozen=True)
class Timing:
    heartbeat_s: float = HEARTBEAT_S
    stale_s: float = STALE_S

    @classmethod
    def from_env(cls) -> Timing:
        """The documented defaults, or $SEABENCH_LEASE_HEARTBEAT_S / $SEABENCH_LEASE_STALE_S."""
        timing = cls(_seconds(HEARTBEAT_ENV, HEARTBEAT_S), _seconds(STALE_ENV, STALE_S))
        if timing.stale_s > timing.heartbeat_s:
            return timing
        raise OrchestratorError(f"${STALE_ENV}={timing.stale_s:g} must exceed ${HEARTBEAT_ENV}={timing.heartbeat_s:g}: "
                                "a live holder would look stale between two beats")


def _seconds(env: str, default: float) -> float:
    text = os.environ.get(env, "")
    value = default if not text else float(text) if text.replace(".", "", 1).isdigit() else -1.0
    if not value > 0:
        raise OrchestratorError(f"${env}={text!r} is not a positive number of seconds; unset it or use e.g. "
                                f"{env}={default:g}")
    return value


@dataclass(frozen=True)
class Claim:
    """Who claimed an epoch. `proc` ("<pid namespace>:<start ticks>", "" without /proc) tells a dead holder."""

    token: str
    host: str
    pid: int
    started: float
    proc: str = ""

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return f"host {self.host} pid {self.pid} (since {since}, token {self.token})"


def _pid_namespace() -> str:
    return os.readlink("/proc/self/ns/pid") if os.path.islink("/proc/self/ns/pid") else ""


def _start_ticks(pid: int) -> str | None:
    """The process's start time since boot (field 22 of /proc/PID/stat); None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def own_claim() -> Claim:
    ticks, namespace = _start_ticks(os.getpid()), _pid_namespace()
    return Claim(secrets.token_hex(8), socket.gethostname(), os.getpid(), time.time(),
                 f"{namespace}:{ticks}" if namespace and ticks else "")


def holder_is_dead(claim: Claim) -> bool:
    """Provably dead: on this host and pid namespace, and its pid is gone (or is another, later process)."""
    namespace, _, ticks = claim.proc.rpartition(":")
    here = bool(namespace) and claim.host == socket.gethostname() and namespace == _pid_namespace()
    return here and _start_ticks(claim.pid) != ticks


@dataclass(frozen=True)
class LeaseState:
    epoch: int                 # the latest claimed epoch; 0: never claimed
    holder: Claim | None       # its claim
    heartbeat: float           # its last heartbeat (its claim time until it tags one)
    released: bool

    def live(self, timing: Timing) -> bool:
        return self.holder is not None and not self.released and time.time() - self.heartbeat <= timing.stale_s \
            and not holder_is_dead(self.holder)


def read_state(client: Any, run_id: str) -> LeaseState:
    """The lease as the parent run records it now."""
    data = client.get_run(run_id).data
    epochs = {int(k[len(CLAIM_PARAM):]): v for k, v in data.params.items()
              if k.startswith(CLAIM_PARAM) and k[len(CLAIM_PARAM):].isdigit()}
    if not epochs:
        return LeaseState(0, None, 0.0, True)
    epoch = max(epochs)
    try:
        holder = Claim(**json.loads(epochs[epoch]))
    except (ValueError, TypeError) as exc:   # written by hand
        raise OrchestratorError(f"MLflow run {run_id}: param {CLAIM_PARAM}{epoch} is no lease claim ({exc})") from exc
    tags = data.tags
    mine = tags.get(OWNER_TAG, "").rsplit(" ", 1)[-1] == holder.token   # tags of this epoch, not an older one
    beat = tags.get(HEARTBEAT_TAG, "") if mine else ""
    heartbeat = float(beat) if beat.replace(".", "", 1).isdigit() else holder.started
    return LeaseState(epoch, holder, heartbeat, tags.get(RELEASED_TAG) == holder.token)


def check_free(state: LeaseState, experiment: str, timing: Timing, takeover: bool, token: str = "") -> str:
    """Raise, naming the holder and the way out, unless this sweep may claim the next epoch; returns a
    note when it takes a lease over ("" when the lease is free or already its own)."""
    holder = state.holder
    if holder is None or state.released or holder.token == token:
        return ""
    age, held = time.time() - state.heartbeat, f"experiment {experiment!r} is being swept by {holder.describe()}"
    if holder_is_dead(holder):
        return f"reclaimed the lease of {holder.describe()}: that process is gone"
    if age <= timing.stale_s:
        beat = f"its last heartbeat was {age:.0f} s ago, stale after {timing.stale_s:g} s"
        if takeover:
            raise OrchestratorError(f"--takeover refused: {held}; {beat}, so it is alive. Stop that sweep, "
                                    f"or, if its machine is gone, retry --takeover in {timing.stale_s - age + 1:.0f} s")
        raise OrchestratorError(f"{held}; {beat}. Wait for it to finish (one sweep per experiment at a time), or "
                                "if it is gone (its machine died), rerun with --takeover once its heartbeat is stale")
    if not takeover:
        raise OrchestratorError(f"{held}; its last heartbeat was {age:.0f} s ago (stale after {timing.stale_s:g} s): "
                                "if that sweep no longer runs, rerun with --takeover to take the lease over")
    return f"took over the lease of {holder.describe()}, silent for {age:.0f} s"


class Lease:
    """This sweep's hold on one parent run: acquire, heartbeat, fence, release."""

    def __init__(self, client: Any, run_id: str, experiment: str, timing: Timing | None = None) -> None:
        self.client, self.run_id, self.experiment = client, run_id, experiment
        self.timing = timing or Timing.from_env()
        self.claim = own_claim()
        self.token = self.claim.token
        self.held, self.lost, self.lost_to, self._checked = False, False, "", 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:   # Tune pickles its callbacks (this among them); the copy never runs
        return {**self.__dict__, "_stop": None, "_thread": None}

    def acquire(self, takeover: bool = False) -> None:
        """Claim the next epoch, or raise naming the holder (idempotent: a retried call keeps its claim)."""
        if self.held:
            return
        state = read_state(self.client, self.run_id)
        note = check_free(state, self.experiment, self.timing, takeover, self.token)
        if state.holder is None or state.holder.token != self.token:
            key = f"{CLAIM_PARAM}{state.epoch + 1}"
            try:
                self.client.log_param(self.run_id, key, json.dumps(asdict(self.claim), sort_keys=True))
            except Exception as exc:  # another claimant's value is there, or the store failed (nothing claimed)
                if "database is locked" in str(exc) or read_state(self.client, self.run_id).epoch == state.epoch:
                    raise
            won = read_state(self.client, self.run_id)
            if won.holder is None or won.holder.token != self.token:
                raise OrchestratorError(f"experiment {self.experiment!r}: another sweep claimed the lease at the same "
                                        f"moment, {won.holder.describe() if won.holder else '?'}; it runs the sweep")
        if note:
            logger.warning("experiment %r: %s", self.experiment, note)
        self.client.set_tag(self.run_id, OWNER_TAG, f"{self.claim.host} {self.claim.pid} {self.token}")
        self.client.set_tag(self.run_id, STARTED_TAG, f"{self.claim.started:.3f}")
        self.client.set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.3f}")
        self.held, self._checked = True, time.time()
        self._thread = threading.Thread(target=self._beat, name="seabench-lease-heartbeat", daemon=True)
        self._thread.start()

    def verify(self) -> bool:
        """Whether the lease is still this sweep's; once lost, it stays lost."""
        if self.held and not self.lost:
            state = read_state(self.client, self.run_id)
            if state.holder is None or state.holder.token != self.token or state.released:
                self.lost, self.lost_to = True, state.holder.describe() if state.holder else "?"
                logger.error("experiment %r: lease taken over by %s; this sweep stops", self.experiment, self.lost_to)
            self._checked = time.time()
        return self.held and not self.lost

    def ensure_held(self) -> None:
        """Before a cell run is created: refuse once the lease is lost (checked afresh after a long pause)."""
        if self.held and not self.lost and time.time() - self._checked > self.timing.stale_s / 2:
            self.verify()
        if self.lost:
            raise OrchestratorError(f"experiment {self.experiment!r}: this sweep's lease was taken over by "
                                    f"{self.lost_to}; it stopped, the new holder computes the remaining cells")

    def _beat(self) -> None:
        while not self._stop.wait(self.timing.heartbeat_s):
            try:
                if not self.verify():
                    return
                self.client.set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.3f}")
            except Exception as exc:  # a locked or unreachable store: the next beat tries again
                logger.warning("experiment %r: lease heartbeat failed (%s); retrying in %g s",
                               self.experiment, exc, self.timing.heartbeat_s)

    def stop(self) -> None:
        """Stop the heartbeat (bounded wait); the lease stays claimed until `release` or it goes stale."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timing.heartbeat_s + 30)

    def release(self) -> None:
        """Stop the heartbeat and mark the lease released, if it is still this sweep's (idempotent)."""
        self.stop()
        if not self.held:
            return
        try:
            if self.verify():
                self.client.set_tag(self.run_id, RELEASED_TAG, self.token)
        except Exception as exc:
            logger.warning("experiment %r: could not release the lease (%s); it goes stale after %g s",
                           self.experiment, exc, self.timing.stale_s)
        self.held = False


def open_experiment(client: Any, name: str, attempts: int = 5) -> str:
    """The experiment's id, created if missing; a create that loses to another process looks it up again."""
    from mlflow.exceptions import MlflowException

    for _ in range(attempts):
        found = client.get_experiment_by_name(name)
        if found is not None and found.lifecycle_stage != "deleted":
            return found.experiment_id
        if found is not None:
            raise OrchestratorError(f"MLflow experiment {name!r} is deleted; restore it "
                                    "(mlflow experiments restore) or choose another sweep name")
        try:
            return client.create_experiment(name)
        except MlflowException as exc:   # "already exists" / a unique constraint: created at the same moment
            if "already exists" not in str(exc) and "UNIQUE constraint" not in str(exc):
                raise
            logger.info("MLflow experiment %r was created at the same moment elsewhere; looking again", name)
    raise OrchestratorError(f"MLflow experiment {name!r}: create_experiment says it exists but {attempts} "
                            "lookups did not find it; check the tracking store")


def _newest(runs: list) -> str:
    """The most recently started parent run (the one the report reads), "" when there is none."""
    return max(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id)).info.run_id if runs else ""


def open_sweep(client: Any, name: str) -> tuple[str, str]:
    """(experiment id, parent run id), created if missing. A parent run younger than SETTLE_S may have a
    twin from a racing driver in flight: every driver waits until the set has settled, all keep the
    newest, and a creator whose run lost deletes it."""
    experiment_id, mine, parents = open_experiment(client, name), "", []
    for _ in range(5):   # bounded: a skewed clock makes a run look young for ever
        parents = search_runs(client, experiment_id, role_filter(SWEEP_ROLE))
        if not parents:
            mine = mine or client.create_run(experiment_id, run_name="sweep", tags={ROLE_TAG: SWEEP_ROLE}).info.run_id
            continue
        age = time.time() - max(r.info.start_time or 0 for r in parents) / 1000
        if age >= SETTLE_S:
            break
        time.sleep(min(SETTLE_S, SETTLE_S - age))
    chosen = _newest(parents) or mine
    if mine and chosen != mine:
        client.delete_run(mine)
    return experiment_id, chosen


def check_experiment(client: Any, experiment: str, timing: Timing, takeover: bool) -> None:
    """Raise, naming the holder, when a live sweep holds the experiment's lease; reads only."""
    found = client.get_experiment_by_name(experiment)
    parents = search_runs(client, found.experiment_id, role_filter(SWEEP_ROLE)) if found is not None else []
    if parent := _newest(parents):
        check_free(read_state(client, parent), experiment, timing, takeover)
