"""Processes on this node: whether one still runs (a local job's driver, an engine actor that was killed)."""
from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs: a killed process that its parent has not reaped yet (a zombie, as a
    killed actor is for a moment after Ray reports it dead, or an orphan where nothing reaps) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):  # gone meanwhile; without /proc (not Linux) the signal check stands
        return not os.path.isdir("/proc")
