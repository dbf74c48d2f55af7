"""Servers a test starts itself: free ports on 127.0.0.1, readiness awaited over HTTP, stopped by process group."""
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc, timeout_s: float = 180.0) -> None:
    """Until `url` answers (any HTTP status counts: an auth-protected server is up)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not come up in {timeout_s:.0f} s")


def stop_group(proc, grace_s: float = 20.0) -> None:
    """Stop a server and every process it started (one process group, led by its pid)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
