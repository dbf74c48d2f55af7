"""One controller per ladder: a lease in MLflow, a heartbeat tag on the job's parent run that the live controller
renews; `run`, `submit` and `resume` refuse a ladder whose lease is fresh, and a stale one is taken over.

A lease is fresh while renewed within `STALE_AFTER_S` (three renewals); the controller renews it every `RENEW_S`.
Two controllers that write theirs at once both read back after `SETTLE_S`: the earlier keeps it, the later gives up
(earlier by the writers' clocks: hosts are assumed to keep time within a second)."""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from ladder.registry.tags import Tag

RENEW_S = 30.0
STALE_AFTER_S = 3 * RENEW_S
SETTLE_S = 1.0  # between writing a lease and reading the others back: a write begun at the same time lands


class LeaseHeld(ValueError):
    """Another controller holds the ladder's lease; one line naming where it runs."""


@dataclass(frozen=True)
class Lease:
    token: str          # the controller's own (a Ray restart of it keeps it: built from the same arguments)
    job: str
    where: str          # "job <job> (<submission>) on <host>, pid <pid>"
    acquired_at: float
    renewed_at: float
    host: str = ""      # where the controller's process runs ...
    pid: int = 0        # ... and its id: one on this host that is gone holds nothing, however recent

    def fresh(self, now: Optional[float] = None, stale_after_s: float = STALE_AFTER_S) -> bool:
        if self.host == socket.gethostname() and self.pid:
            from cluster.processes import pid_alive

            if not pid_alive(self.pid):
                return False
        return (now or time.time()) - self.renewed_at < stale_after_s


def here(job: str, submission: Optional[str]) -> str:
    return f"job {job}" + (f" ({submission})" if submission else "") + f" on {socket.gethostname()}, pid {os.getpid()}"


def leases(tracking) -> list[tuple[str, Lease]]:
    """(parent run, lease) of every job of the ladder that holds one (newest 100 jobs)."""
    found = []
    for run in tracking.ladder_runs():
        text = run.data.tags.get(Tag.LEASE)
        if text:
            try:
                found.append((run.info.run_id, Lease(**json.loads(text))))
            except (ValueError, TypeError):  # not ours to read: ignored, as a stale one
                continue
    return found


def held_by_other(tracking, token: Optional[str] = None, stale_after_s: float = STALE_AFTER_S) -> Optional[Lease]:
    """The fresh lease of another controller of this ladder (earliest taken first), else None."""
    now = time.time()
    others = [lease for _, lease in leases(tracking) if lease.token != token and lease.fresh(now, stale_after_s)]
    return min(others, key=lambda x: (x.acquired_at, x.token)) if others else None


def refusal(name: str, lease: Lease) -> LeaseHeld:
    ago = max(0.0, time.time() - lease.renewed_at)
    return LeaseHeld(f"ladder {name!r} is already running: {lease.where} (its lease was renewed {ago:.0f} s ago); "
                     f"see `ladder status {name}` or stop it with `ladder stop {name}`")


def check_free(tracking, token: Optional[str] = None, stale_after_s: float = STALE_AFTER_S) -> None:
    """Refuse, in one line, a ladder another controller runs now (a fresh lease)."""
    other = held_by_other(tracking, token, stale_after_s)
    if other is not None:
        raise refusal(tracking.name, other)


class LeaseKeeper:
    """The lease of one controller on its job's parent run: taken, renewed in the background, released."""

    def __init__(self, tracking, parent_run: str, job: str, token: str, where: str, renew_s: float = RENEW_S,
                 stale_after_s: float = STALE_AFTER_S, on_lost: Optional[Callable[[], None]] = None,
                 settle_s: float = SETTLE_S):
        self.tracking, self.parent_run, self.renew_s, self.stale_after_s = tracking, parent_run, renew_s, stale_after_s
        self.settle_s = settle_s
        self.lease = Lease(token, job, where, time.time(), time.time(), socket.gethostname(), os.getpid())
        self.on_lost = on_lost or (lambda: None)
        self._released = threading.Event()

    def acquire(self) -> None:
        """Take the lease (a stale one of another is taken over); LeaseHeld when another controller's is fresh,
        or when another took it at the same moment, earlier."""
        check_free(self.tracking, self.lease.token, self.stale_after_s)
        now = time.time()
        self.lease = Lease(**{**asdict(self.lease), "acquired_at": now, "renewed_at": now})
        self._write()
        time.sleep(self.settle_s)  # one taken at the same moment is written by now: the earlier one keeps it
        other = held_by_other(self.tracking, self.lease.token, self.stale_after_s)
        if other is not None and (other.acquired_at, other.token) < (self.lease.acquired_at, self.lease.token):
            self.release()
            raise refusal(self.tracking.name, other)
        threading.Thread(target=self._renew, name="ladder-lease", daemon=True).start()

    def _write(self) -> None:
        self.tracking.client.set_tag(self.parent_run, Tag.LEASE, json.dumps(asdict(self.lease)))

    def _renew(self) -> None:
        while not self._released.wait(self.renew_s):
            try:
                current = self.tracking.client.get_run(self.parent_run).data.tags.get(Tag.LEASE, "")
                if current and json.loads(current).get("token") != self.lease.token:
                    self.on_lost()  # another controller took it over (ours had gone stale): this one stops
                    return
                self.lease = Lease(**{**asdict(self.lease), "renewed_at": time.time()})
                self._write()
            except Exception:  # MLflow briefly away: renewed at the next beat, or found stale by others
                continue

    def release(self) -> None:
        self._released.set()
        try:
            current = self.tracking.client.get_run(self.parent_run).data.tags.get(Tag.LEASE, "")
            if current and json.loads(current).get("token") == self.lease.token:
                self.tracking.client.set_tag(self.parent_run, Tag.LEASE, "")
        except Exception:  # on the way out: a lease left behind goes stale
            pass


def refuse_if_running(spec) -> None:
    """`run`, `submit` and `resume` of a ladder whose lease is fresh: refused in one line, before anything starts."""
    from ladder.registry.store import tracking_uri_for
    from ladder.registry.tracking import Tracking

    tracking = Tracking.find(spec.name, tracking_uri_for(spec))
    if tracking is not None:
        check_free(tracking)


def take_lease(tracking, parent_run: str, job: str, token: str, submission: Optional[str],
               on_lost: Callable[[], None], new: bool = False) -> LeaseKeeper:
    """A controller's lease on its job's parent run, taken (a stale one taken over) and renewed until released;
    LeaseHeld naming where the ladder runs when another controller's is fresh (a new job refused so has its
    parent run ended, marked refused)."""
    keeper = LeaseKeeper(tracking, parent_run, job, token, here(job, submission), on_lost=on_lost)
    try:
        keeper.acquire()
    except LeaseHeld as exc:
        if new:
            try:
                tracking.fail_run(parent_run, f"refused: {exc}")
            except Exception:  # the refusal is what matters
                pass
        raise
    return keeper
