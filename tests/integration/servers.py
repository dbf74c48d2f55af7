"""Servers a test starts itself: free ports on 127.0.0.1, readiness awaited over HTTP, stopped by process group."""
import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def refusing_port():
    """A port of 127.0.0.1 held bound, never listening, for the block: a connection to it is refused, and no server
    another test starts meanwhile can take it (a free port let go of was once taken by an auth-protected one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


class ServerExited(AssertionError):
    """The server's process ended before it answered (a port taken meanwhile: it cannot listen there)."""


def wait_http(url: str, proc, timeout_s: float = 180.0, expect: bytes = b"") -> None:
    """Until `url` answers: any HTTP status counts (an auth-protected server is up), or, with `expect`, only a 200
    whose body starts with it, so that another server that took the port meanwhile (a Ray dashboard, whose token
    authentication answers 401) is not taken for this one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerExited(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as res:
                if res.read(len(expect)) == expect:
                    return
        except urllib.error.HTTPError:
            if not expect:
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not come up in {timeout_s:.0f} s")


def stop_group(proc, grace_s: float = 20.0) -> None:
    """Stop a server and every process it started (one process group, led by its pid)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM if grace_s > 0 else signal.SIGKILL)
    try:
        proc.wait(max(grace_s, 0.1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)


class MlflowServer:
    """`mlflow server` on 127.0.0.1 over a SQLite store and proxied artifacts in `store`; stopped and started
    again on the same port and store (an outage) by process group."""

    def __init__(self, store: Path, mlflow_bin: str, port: int = 0):
        self.store, self.bin, self.chosen, self.port = Path(store), mlflow_bin, not port, port or free_port()
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MlflowServer":
        """Start it and wait for its own answer (`/health`: OK). A free port let go of can be taken before the server
        binds it (a Ray head's processes bind ports of the system's choosing; one answered a run's MLflow calls with
        401): at its first start the server then moves to another free port; a restart keeps its port."""
        for attempt in range(3):
            self.proc = subprocess.Popen(
                [self.bin, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{self.store / 'mlflow.db'}",
                 "--artifacts-destination", str(self.store / "art")],
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no idle job consumers on 2 cores
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                wait_http(f"{self.url}/health", self.proc, expect=b"OK")
            except ServerExited:
                if not self.chosen or attempt == 2:
                    raise
                self.port = free_port()
                continue
            self.chosen = False  # from now on its URL is known to the tests: a restart keeps the port
            return self

    def stop(self, grace_s: float = 20.0) -> None:
        """Stop it and every process it started (grace_s=0: SIGKILL at once, a crash)."""
        if self.proc is not None:
            stop_group(self.proc, grace_s)
