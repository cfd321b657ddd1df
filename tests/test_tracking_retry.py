"""Tracking writes through a store's outage: which errors are an outage, the bounded back-off, and the
backlog that keeps writes until the store answers (a fake clock: no test here sleeps)."""

from __future__ import annotations

import sqlite3

import pytest

from orchestrator.errors import OrchestratorError
from orchestrator.tracking_retry import (
    LOCKED,
    UNREACHABLE,
    Backlog,
    RetryPolicy,
    TrackingUnavailable,
    call_with_retry,
    delays,
    outage_reason,
    store_answers,
)


class FakeTime:
    """A clock that only `sleep` moves."""

    def __init__(self) -> None:
        self.now, self.slept = 0.0, []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.slept.append(seconds)
        self.now += seconds


def _raised(exc: BaseException, cause: BaseException | None = None) -> BaseException:
    """`exc` as it is caught: raised, from `cause` if given."""
    try:
        if cause is not None:
            raise exc from cause
        raise exc
    except BaseException as caught:
        return caught


def test_back_off_doubles_from_half_a_second_up_to_its_cap():
    waits = delays(0.5, 15.0)
    assert [next(waits) for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]


def test_a_server_that_does_not_answer_is_an_outage():
    import requests
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    answer = requests.Response()
    answer.status_code = 502
    unreachable = [
        ConnectionRefusedError(111, "Connection refused"),
        requests.exceptions.ConnectionError("Max retries exceeded with url: /api/2.0/mlflow/runs/create"),
        # what MLflow's client raises once its own retries are spent
        MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/create failed with exception "
                        "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded"),
        MlflowException("API request to endpoint /api/2.0/mlflow/runs/create failed with error code 503 != 200. "
                        "Response body: 'Service Unavailable'"),
        RestException({"error_code": "INTERNAL_ERROR", "message": "(psycopg.OperationalError) connection lost"}),
        MlflowException("(sqlalchemy.exc.OperationalError) server closed the connection unexpectedly",
                        error_code=TEMPORARILY_UNAVAILABLE),
        requests.exceptions.HTTPError("502 Server Error", response=answer),   # the artifact proxy's answer
        _raised(RuntimeError("wrapped"), TimeoutError("timed out")),
    ]
    for exc in unreachable:
        assert outage_reason(exc) == UNREACHABLE, repr(exc)


def test_psycopg_operational_error_is_an_outage():
    psycopg = pytest.importorskip("psycopg", reason="pip install -e '.[test]' (psycopg) for PostgreSQL stores")
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect("host=127.0.0.1 port=1 dbname=x user=x connect_timeout=2")
    assert outage_reason(caught.value) == UNREACHABLE


def test_bad_requests_and_local_sqlite_errors_are_not_outages(tmp_path):
    from mlflow.exceptions import MlflowException, RestException

    bad = [
        ValueError("lr must be positive"),
        RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Run 'x' not found"}),
        RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "Changing param values is not allowed"}),
        MlflowException("API request to endpoint /api/2.0/mlflow/runs/get failed with error code 404 != 200"),
        MlflowException("experiment 'x' is deleted"),   # MLflow's default error code says 500: not an answer
    ]
    for exc in bad:
        assert outage_reason(exc) == "", repr(exc)
    # MLflow calls every SQL error TEMPORARILY_UNAVAILABLE; a local SQLite file's only passing trouble is its lock
    con = sqlite3.connect(tmp_path / "x.db")
    with pytest.raises(sqlite3.OperationalError) as missing:
        con.execute("SELECT * FROM runs")
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    wrapped = _raised(MlflowException(str(missing.value), error_code=TEMPORARILY_UNAVAILABLE), missing.value)
    assert outage_reason(wrapped) == ""
    assert outage_reason(sqlite3.OperationalError("database is locked")) == LOCKED


def test_an_outage_is_retried_with_back_off_until_the_store_answers():
    fake, calls = FakeTime(), []

    def call() -> str:
        calls.append(fake.now)
        if fake.now < 10:
            raise ConnectionRefusedError(111, "Connection refused")
        return "run-1"

    assert call_with_retry(call, "create", "http://db", RetryPolicy(retry_s=120), sleep=fake.sleep,
                           clock=fake.clock) == "run-1"
    assert fake.slept == [0.5, 1.0, 2.0, 4.0, 8.0] and len(calls) == 6


def test_an_outage_past_the_retry_window_names_the_store_the_call_and_the_setting():
    fake = FakeTime()

    def down() -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(TrackingUnavailable, match=r"http://db did not answer for 20 s \(log_batch: .*Connection "
                                                  r"refused\).*SEABENCH_TRACKING_RETRY_S") as caught:
        call_with_retry(down, "log_batch", "http://db", RetryPolicy(retry_s=20), sleep=fake.sleep, clock=fake.clock)
    assert isinstance(caught.value, OrchestratorError)
    assert fake.now == pytest.approx(20.0) and max(fake.slept) <= 15.0   # bounded: never past the window


def test_other_errors_are_raised_at_once():
    fake, calls = FakeTime(), []

    def refused() -> None:
        calls.append(1)
        raise ValueError("Changing param values is not allowed")

    with pytest.raises(ValueError):
        call_with_retry(refused, "log_batch", "http://db", RetryPolicy(), sleep=fake.sleep, clock=fake.clock)
    assert calls == [1] and fake.slept == []


def test_a_call_that_already_gave_up_inside_is_not_retried_again():
    fake, calls = FakeTime(), []

    def inner_gave_up() -> None:   # e.g. start() calling cell_runs(), both retried
        calls.append(1)
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as exc:
            raise TrackingUnavailable("http://db did not answer for 120 s (cell_runs)") from exc

    with pytest.raises(TrackingUnavailable, match=r"\(cell_runs\)"):
        call_with_retry(inner_gave_up, "start", "http://db", RetryPolicy(), sleep=fake.sleep, clock=fake.clock)
    assert calls == [1] and fake.slept == []


def test_retry_and_wait_windows_come_from_the_environment(monkeypatch):
    assert RetryPolicy.from_env() == RetryPolicy(120.0, 600.0)
    monkeypatch.setenv("SEABENCH_TRACKING_RETRY_S", "5")
    monkeypatch.setenv("SEABENCH_TRACKING_WAIT_S", "0")
    assert RetryPolicy.from_env() == RetryPolicy(5.0, 0.0)
    monkeypatch.setenv("SEABENCH_TRACKING_WAIT_S", "soon")
    with pytest.raises(OrchestratorError, match=r"\$SEABENCH_TRACKING_WAIT_S='soon' is not a number of seconds"):
        RetryPolicy.from_env()


class Store:
    """A tracking store that is up or down; `written` is what it took, in order."""

    def __init__(self) -> None:
        self.up, self.written, self.tries = True, [], 0

    def write(self, label: str):
        def write() -> str:
            self.tries += 1
            if not self.up:
                raise TrackingUnavailable(f"down while writing {label}")
            self.written.append(label)
            return label

        return write


def test_backlog_keeps_writes_while_the_store_is_down_and_replays_them_in_order():
    store = Store()
    backlog = Backlog("http://db", RetryPolicy(), probe=lambda uri: store.up)
    assert backlog.submit("cell a", store.write("a")) == "a"
    store.up = False
    assert backlog.submit("cell b", store.write("b")) is None   # tried, kept
    tries = store.tries
    assert backlog.submit("cell c", store.write("c")) is None   # kept without a try: the probe says down
    assert store.tries == tries and backlog.labels() == ["cell b", "cell c"]
    store.up = True
    assert backlog.submit("cell d", store.write("d")) == "d"
    assert store.written == ["a", "b", "c", "d"] and len(backlog) == 0


def test_a_replay_stops_at_the_first_outage_and_keeps_the_order():
    store = Store()
    backlog = Backlog("http://db", RetryPolicy(), probe=lambda uri: True)
    store.up = False
    for label in "abc":
        backlog.submit(label, store.write(label))
    assert backlog.labels() == ["a", "b", "c"]
    flaky = store.write("b")

    def b_then_down() -> str:
        store.up = False
        return flaky()

    store.up = True
    backlog.kept[1] = ("b", b_then_down)
    assert backlog.replay() is False
    assert store.written == ["a"] and backlog.labels() == ["b", "c"]


def test_drain_waits_for_the_store_and_logs_everything_kept():
    fake, store = FakeTime(), Store()
    backlog = Backlog("http://db", RetryPolicy(wait_s=600), probe=lambda uri: fake.now >= 45)
    store.up = False
    backlog.submit("cell a", store.write("a"))
    store.up = True   # the write itself would pass: the probe decides when it is tried
    backlog.drain(sleep=fake.sleep, clock=fake.clock)
    assert store.written == ["a"] and 45 <= fake.now < 80


def test_drain_gives_up_after_its_window_naming_the_store_and_every_write_it_kept():
    fake, store = FakeTime(), Store()
    backlog = Backlog("http://db", RetryPolicy(wait_s=300), probe=lambda uri: False)
    store.up = False
    for label in ("cell bb|digits|sea|0", "failed cell bb|digits|linear|1"):
        backlog.submit(label, store.write(label))
    with pytest.raises(TrackingUnavailable, match=r"http://db did not answer within 300 s at the sweep's end; 2 "
                                                  r"result\(s\).*cell bb\|digits\|sea\|0, failed cell "
                                                  r"bb\|digits\|linear\|1\. Start the tracking server and rerun"):
        backlog.drain(sleep=fake.sleep, clock=fake.clock)
    assert fake.now == pytest.approx(300.0) and max(fake.slept) <= 30.0


def test_drain_of_an_empty_backlog_returns_at_once():
    fake = FakeTime()
    Backlog("http://db", RetryPolicy(), probe=lambda uri: False).drain(sleep=fake.sleep, clock=fake.clock)
    assert fake.slept == []


def test_the_probe_asks_an_http_server_for_its_health_and_trusts_other_stores():
    import socket

    with socket.socket() as sock:   # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert store_answers(f"http://127.0.0.1:{port}", timeout=1) is False
    assert store_answers("sqlite:///mlflow.db") is True
