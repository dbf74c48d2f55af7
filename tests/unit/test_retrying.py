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


def test_an_answer_cut_off_by_a_dying_server_is_retried(monkeypatch):
    monkeypatch.setattr("ladder.registry.retrying.time.sleep", lambda s: None)
    cut = RuntimeError("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/get failed with exception "
                       "('Connection broken: IncompleteRead(0 bytes read, 7908 more expected)', "
                       "IncompleteRead(0 bytes read, 7908 more expected))")
    fn, calls = flaky(2, cut)
    assert with_retry(fn, budget_s=60) == "ok" and calls["n"] == 3


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


@pytest.fixture
def artifact_server(monkeypatch):
    """An MLflow artifact server stand-in (HTTP on this host) that is up (`/health`) and fails every upload with the
    status given, as `mlflow server` does on a full artifact disk (a bare 500); MLflow's client retries once."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    status = {"upload": 500}

    class Handler(BaseHTTPRequestHandler):
        def answer(self, code: int, text: str):
            self.send_response(code)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text.encode())

        def do_GET(self):
            self.answer(200, "OK") if self.path == "/health" else self.answer(404, "")

        def do_PUT(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.answer(status["upload"], "Internal Server Error" if status["upload"] == 500 else "")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", status
    server.shutdown()


@pytest.mark.parametrize("code", [500, 507])
def test_a_full_artifact_store_is_said_at_once_not_retried_as_unreachable(artifact_server, tmp_path, code):
    """Issue 35, 10: a full artifact disk on the MLflow server (a plain `mlflow server` answers the upload with a bare
    500, which MLflow's client retries into 'too many 500 error responses'; others say 507) was retried for the whole
    budget and reported as 'MLflow unreachable'. It is one line at once, naming the server and the store."""
    import time

    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

    from ladder.registry.retrying import MlflowStoreFailed

    server, status = artifact_server
    status["upload"] = code
    repo = HttpArtifactRepository(f"{server}/api/2.0/mlflow-artifacts/artifacts/1/run/artifacts")
    (tmp_path / "weights.bin").write_bytes(b"w" * 1000)
    t0 = time.monotonic()
    with pytest.raises(MlflowStoreFailed) as err:
        with_retry(lambda: repo.log_artifact(str(tmp_path / "weights.bin"), "checkpoints"), 20, "log_artifact")
    message = str(err.value)
    assert time.monotonic() - t0 < 10 and "\n" not in message
    assert message.startswith("MLflow could not store the write (log_artifact): ")
    assert (f"the server at {server} is up but failed the artifact upload" if code == 500
            else "its store is out of space") in message


def test_a_server_that_answers_nothing_is_still_an_outage():
    """The 500s of an upload are a store failure only while the server answers its health check."""
    from ladder.registry.retrying import store_failure

    gone = RuntimeError("API request to http://127.0.0.1:9/api/2.0/mlflow-artifacts/artifacts/1/r/a failed with "
                        "exception ...: Max retries exceeded with url: ... (Caused by ResponseError('too many 500 "
                        "error responses'))")
    assert store_failure(gone) is None and transient(gone)
    assert store_failure(OSError(28, "No space left on device")) is None  # this machine's disk: its writer says it
