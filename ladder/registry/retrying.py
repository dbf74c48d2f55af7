"""MLflow calls that outlive an MLflow outage: a client that retries with backoff, and an outbox that lets the
step loop go on while MLflow is away and delivers every metric, once, when it is back.

MLflow's own HTTP client already retries each request for a few minutes (its defaults); these add a budget of
the ladder's choosing on top, one clear error when it is spent, and training that does not wait for MLflow.
Retried metric batches carry their original timestamps, so the store drops the copies of a batch that did arrive.
"""
from __future__ import annotations

import queue
import re
import threading
import time
from typing import Callable, Optional

from ladder.errors import first_line

TRANSIENT = ("Max retries exceeded", "Connection refused", "ConnectionError", "ConnectTimeout", "ReadTimeout",
             "Remote end closed", "Connection aborted", "Connection reset", "TEMPORARILY_UNAVAILABLE",
             # a server killed while it wrote an answer: the body ends short
             "Connection broken", "IncompleteRead", "ChunkedEncodingError",
             "status code 502", "status code 503", "status code 504", "database is locked")


# a store out of space, as a server (HTTP 507), a file store (ENOSPC) or a database on a full disk says it
FULL = ("No space left on device", "Errno 28", "ENOSPC", "error code 507", "507 Server Error", "Insufficient Storage",
        "too many 507 error responses", "database or disk is full")
# a plain `mlflow server` answers a failed artifact write (a full disk too) with a bare HTTP 500, which MLflow's
# client retries until it gives this
UPLOAD_FAILED = ("/mlflow-artifacts/artifacts/", "too many 500 error responses")


class MlflowUnavailable(RuntimeError):
    """MLflow stayed unreachable for the whole retry budget (one line)."""


class MlflowStoreFailed(RuntimeError):
    """MLflow is up but cannot store what it is given (a full artifact disk); retrying does not help (one line)."""


def store_failure(exc: BaseException) -> Optional[str]:
    """Why MLflow could not store a write, where it is not an outage: the error says the store is out of space, or
    the server answers its health check while it failed an artifact upload on each of its client's retries. An error
    of this machine's own file system (one with an errno) is left as it is: whoever wrote the file names it."""
    if getattr(exc, "errno", None):
        return None
    text = f"{type(exc).__name__}: {exc}"
    if any(marker in text for marker in FULL):
        return "its store is out of space (No space left on device / HTTP 507): free space where it keeps artifacts"
    server = re.search(r"(https?://[^/\s]+)/api/", text)
    if server and all(marker in text for marker in UPLOAD_FAILED) and answers(server.group(1)):
        return (f"the server at {server.group(1)} is up but failed the artifact upload on every retry (HTTP 500): its "
                f"artifact store is full or cannot be written (the server's log says which)")
    return None


def answers(server: str, timeout_s: float = 5.0) -> bool:
    """Whether an MLflow server answers its health check."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{server}/health", timeout=timeout_s) as response:
            return response.status == 200
    except Exception:
        return False


def transient(exc: BaseException) -> bool:
    """An error that says MLflow is away (connection, timeout, 5xx), not that the request is wrong."""
    text = f"{type(exc).__name__}: {exc}"
    return any(marker in text for marker in TRANSIENT)


def with_retry(fn: Callable, budget_s: float, what: str = "MLflow call", on_retry: Optional[Callable] = None):
    """`fn()`, retried with exponential backoff (1 s up to 30 s) on transient errors for `budget_s` seconds."""
    deadline, delay = time.monotonic() + budget_s, 1.0
    while True:
        try:
            return fn()
        except Exception as exc:
            failure = store_failure(exc)
            if failure is not None:  # said at once: retrying would not free the disk
                raise MlflowStoreFailed(f"MLflow could not store the write ({what}): {failure}") from None
            if not transient(exc):
                raise
            if time.monotonic() + delay > deadline:
                waited = f" for {budget_s:.0f} s" if budget_s >= 1 else ""
                raise MlflowUnavailable(f"MLflow unreachable{waited} ({what}): {first_line(exc, 200)}") \
                    from None
            if on_retry is not None:
                on_retry()
            time.sleep(delay)
            delay = min(30.0, delay * 2)


class RetryingClient:
    """An `MlflowClient` whose every call is retried through outages (see `with_retry`)."""

    def __init__(self, client, budget_s: float):
        self._client, self.budget_s = client, budget_s

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: with_retry(lambda: attr(*args, **kwargs), self.budget_s, name)


class Outbox:
    """MLflow writes (metric batches, small artifacts) delivered in order by a background thread: `put`
    never waits for MLflow. `flush` waits until everything put so far is in."""

    def __init__(self, budget_s: float):
        self.budget_s = budget_s
        self._queue: queue.Queue = queue.Queue()
        self._error: Optional[BaseException] = None
        self.retries = 0
        self._thread = threading.Thread(target=self._run, name="mlflow-outbox", daemon=True)
        self._thread.start()

    def put(self, what: str, deliver: Callable[[], None]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((what, deliver))

    def flush(self) -> None:
        """Wait until every write put so far is in MLflow (raises what the delivery thread gave up on)."""
        self._queue.join()
        if self._error is not None:
            raise self._error

    def _count_retry(self) -> None:
        self.retries += 1

    def _run(self) -> None:
        while True:
            what, deliver = self._queue.get()
            try:
                if self._error is None:
                    with_retry(deliver, self.budget_s, what, self._count_retry)
            except BaseException as exc:  # kept for the step loop: the next put or flush raises it
                self._error = exc
            finally:
                self._queue.task_done()


def mlflow_problem(exc: Exception) -> str:
    """An MLflow client error in one line that says what to do."""
    text = str(exc)
    if "401" in text or "not authenticated" in text:
        return ("MLflow refused the request: not authenticated (set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD)")
    if "403" in text or "PERMISSION_DENIED" in text:
        return "MLflow refused the request: permission denied for this user"
    failure = store_failure(exc)
    if failure is not None:
        return f"MLflow could not store it: {failure}"
    if transient(exc):
        return f"MLflow unreachable: {first_line(exc, 160)}"
    return f"MLflow: {first_line(exc, 200)}"
