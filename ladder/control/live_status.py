"""What a running controller shows between saves of its progress: the step in progress, that step's metrics (and
the gate's), and the decisions so far. Written by the phase handlers, read by `status` (any thread)."""
from __future__ import annotations

import threading


class LiveStatus:
    """The live view of one ladder; every read and write holds its lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.step = 0
        self.latest: dict[str, float] = {}
        self.history: list[dict] = []  # rows of `ladder status`: one per decided version

    def at_step(self, step: int, metrics: dict[str, float] | None = None) -> None:
        """The rung is at `step`; `metrics` are that step's (none yet: the view is cleared)."""
        with self._lock:
            self.step, self.latest = step, dict(metrics or {})

    def add(self, metrics: dict[str, float]) -> None:
        with self._lock:
            self.latest = {**self.latest, **metrics}

    def resume(self, history: list[dict]) -> None:
        """The decisions a saved progress recorded (a resumed or restarted controller)."""
        with self._lock:
            self.history = list(history)

    def decided(self, row: dict) -> list[dict]:
        """Record a decision (replacing an earlier row of its version); the decisions so far."""
        with self._lock:
            self.history = [h for h in self.history if h["version"] != row["version"]] + [row]
            return list(self.history)

    def snapshot(self) -> tuple[int, dict[str, float], list[dict]]:
        with self._lock:
            return self.step, dict(self.latest), list(self.history)
