"""Retries through MLflow outages: transient errors are retried with backoff until a budget, other errors are not,
and the outbox delivers writes in order without making the caller wait."""
import threading

import pytest

from ladder.registry.retrying import MlflowUnavailable, Outbox, transient, with_retry

DOWN = ConnectionError("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/get failed with exception "
                       "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded with url")


def flaky(failures: int, exc=DOWN):
    calls = {"n": 0}

    def fn():
        calls["n"] += 1
        if calls["n"] <= failures:
            raise exc
        return "ok"
    return fn, calls


def test_transient_errors_are_retried_until_they_pass(monkeypatch):
    monkeypatch.setattr("ladder.registry.retrying.time.sleep", lambda s: None)
    fn, calls = flaky(3)
    assert with_retry(fn, budget_s=60) == "ok" and calls["n"] == 4


def test_a_spent_budget_ends_in_one_line(monkeypatch):
    clock = {"t": 0.0}
    monkeypatch.setattr("ladder.registry.retrying.time.monotonic", lambda: clock["t"])
    monkeypatch.setattr("ladder.registry.retrying.time.sleep", lambda s: clock.__setitem__("t", clock["t"] + s))
    fn, calls = flaky(10**6)
    with pytest.raises(MlflowUnavailable, match=r"MLflow unreachable for 20 s \(get_run\)") as err:
        with_retry(fn, budget_s=20, what="get_run")
    assert "\n" not in str(err.value) and 3 <= calls["n"] <= 6  # backoff 1, 2, 4, 8 ... within 20 s


def test_a_wrong_request_is_not_retried():
    fn, calls = flaky(1, ValueError("RESOURCE_DOES_NOT_EXIST: run 'x' not found"))
    with pytest.raises(ValueError):
        with_retry(fn, budget_s=60)
    assert calls["n"] == 1 and not transient(ValueError("INVALID_PARAMETER_VALUE"))


def test_the_outbox_delivers_in_order_without_waiting(monkeypatch):
    monkeypatch.setattr("ladder.registry.retrying.time.sleep", lambda s: None)
    gate, got = threading.Event(), []
    box = Outbox(budget_s=60)
    box.put("first", lambda: (gate.wait(10), got.append(1)))
    fn, calls = flaky(2)
    box.put("second", lambda: got.append(fn()))   # MLflow "down" twice, then back
    box.put("third", lambda: got.append(3))
    assert got == []  # put returned while the first write still waits
    gate.set()
    box.flush()
    assert got == [1, "ok", 3] and box.retries == 2


def test_the_outbox_reports_what_it_gave_up_on():
    box = Outbox(budget_s=0)
    box.put("log metrics", flaky(10**6)[0])
    with pytest.raises(MlflowUnavailable, match="log metrics"):
        box.flush()
    with pytest.raises(MlflowUnavailable):
        box.put("later", lambda: None)
