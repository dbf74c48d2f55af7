"""One controller per ladder: a lease in MLflow, a heartbeat tag on the job's parent run that the live controller
renews, and a fence (a generation counter on the ladder's experiment) that every progress save and alias move checks;
`run`, `submit` and `resume` refuse a ladder whose lease is alive, and a stale one is taken over.

Staleness is judged on the observer's own clock (as Kubernetes leader election does): a lease is stale once the
observer has watched its heartbeat stay unchanged for the lease's own stale time (`STALE_FACTOR` of its renewal period,
the spec's `mlflow.lease_renew_s`, written in the lease) of its own monotonic time (or its process is seen gone on this
host); the writer's timestamps are never compared with the reader's clock. Taking the lease bumps
the fence's generation; of two controllers that take it at once (two `resume`s of one job included) the one whose
write the fence holds after `SETTLE_S` runs and the other is refused. A controller whose generation is no longer the
fence's (its lease was taken over during an outage or a pause) gets `LeaseLost` before its next write."""
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
STALE_FACTOR = 3  # a lease unrenewed for 3 of its periods is stale
STALE_AFTER_S = STALE_FACTOR * RENEW_S
SETTLE_S = 1.0  # between writing a lease and reading the fence back: a write begun at the same time lands


class LeaseHeld(ValueError):
    """Another controller holds the ladder's lease; one line naming where it runs."""


class LeaseLost(RuntimeError):
    """This controller's lease was taken over: it writes nothing of the ladder from now on."""


@dataclass(frozen=True)
class Lease:
    token: str          # the controller's own (a Ray restart of it keeps it: built from the same arguments)
    job: str
    where: str          # "job <job> (<submission>) on <host>, pid <pid>"
    acquired_at: float  # the writer's clock: shown, never compared with another host's
    renewed_at: float
    host: str = ""      # where the controller's process runs ...
    pid: int = 0        # ... and its id: one on this host that is gone holds nothing, however recent
    beat: int = 0       # bumped at every renewal: what an observer watches change
    generation: int = 0  # the fence's generation this controller took
    renew_s: Optional[float] = None  # its renewal period (the spec's `mlflow.lease_renew_s`) ...
    stale_s: Optional[float] = None  # ... and how long it may go unrenewed before another takes it over

    def stale_after(self, default: float) -> float:
        """How long its heartbeat may stay unchanged before it is stale: as its writer says (older leases: default)."""
        return self.stale_s or default

    def gone(self) -> bool:
        """Its process is seen gone on this host (it holds nothing, however recent its heartbeat)."""
        if self.host == socket.gethostname() and self.pid:
            from cluster.processes import pid_alive

            return not pid_alive(self.pid)
        return False


_SEEN: dict[tuple[str, str], tuple[int, float]] = {}  # (run, token) -> (beat, when this process saw it change)
_SEEN_LOCK = threading.Lock()


def unchanged_for(run: str, lease: Lease) -> Optional[float]:
    """Seconds of this process' monotonic clock the lease's heartbeat has stayed as it is now; None when it has
    changed since last seen (alive). A lease seen for the first time has stayed so for 0 s."""
    now = time.monotonic()
    with _SEEN_LOCK:
        seen = _SEEN.get((run, lease.token))
        if seen is None or seen[0] != lease.beat:
            _SEEN[(run, lease.token)] = (lease.beat, now)
            return 0.0 if seen is None else None
        return now - seen[1]


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


def held_by_other(tracking, token: Optional[str] = None, stale_after_s: float = STALE_AFTER_S, watch_s: float = 0.0,
                  poll_s: float = 2.0) -> Optional[Lease]:
    """The lease of another controller of this ladder not seen stale (earliest taken first), else None. Watched for
    up to `watch_s`: until each either beats (alive: returned at once) or stays unchanged for its own stale time
    (`stale_after_s` for one that does not say) of this process' clock (stale); one still unsure counts as held."""
    start = time.monotonic()
    while True:
        alive, unsure = [], []
        for run, lease in leases(tracking):
            if lease.token == token or lease.gone():
                continue
            age = unchanged_for(run, lease)
            if age is None:
                alive.append(lease)
            elif age < lease.stale_after(stale_after_s):
                unsure.append(lease)
        held = alive or unsure
        if alive or not unsure or time.monotonic() >= start + watch_s:  # one still unsure then counts as held
            return min(held, key=lambda x: (x.acquired_at, x.token)) if held else None
        time.sleep(poll_s)


def looks_alive(tracking, stale_after_s: float = STALE_AFTER_S) -> Optional[Lease]:
    """A quick hint for commands (`status`, the checks before a start), on the writer's clock: a lease renewed within
    `stale_after_s` of this host's time, and not later than that (a writer's clock far ahead is not trusted). Never
    what decides: the controller's own `acquire` watches on its own clock."""
    now = time.time()
    for _, lease in leases(tracking):
        if not lease.gone() and abs(now - lease.renewed_at) < lease.stale_after(stale_after_s):
            return lease
    return None


def refusal(name: str, lease: Lease) -> LeaseHeld:
    return LeaseHeld(f"ladder {name!r} is already running: {lease.where} (its lease is renewed every "
                     f"{lease.renew_s or RENEW_S:g} s); see `ladder status {name}` or stop it with `ladder stop {name}`")


def check_free(tracking, token: Optional[str] = None, stale_after_s: float = STALE_AFTER_S) -> None:
    """Refuse, in one line, a ladder another controller seems to run now (`looks_alive`: a hint, before a start)."""
    other = looks_alive(tracking, stale_after_s)
    if other is not None and other.token != token:
        raise refusal(tracking.name, other)


def read_fence(tracking) -> tuple[int, str]:
    """(generation, token) of the ladder's fence: the controller that took its lease last; (0, "") before any."""
    text = tracking.client.get_experiment(tracking.experiment_id).tags.get(Tag.FENCE, "")
    try:
        found = json.loads(text)
        return int(found["generation"]), str(found["token"])
    except (ValueError, TypeError, KeyError):
        return 0, ""


def twice(write: Callable[[], None]) -> None:
    """A tag's first write, made by two controllers at once: a SQL store inserts the row once (the other gets a
    unique-key error) and updates it after that; the loser writes again."""
    try:
        write()
    except Exception:
        time.sleep(0.1)
        write()


class LeaseKeeper:
    """The lease of one controller on its job's parent run: taken (the fence's generation bumped), renewed in the
    background, checked before every write of the ladder's state (`check`), released."""

    def __init__(self, tracking, parent_run: str, job: str, token: str, where: str, renew_s: float = RENEW_S,
                 stale_after_s: float = STALE_AFTER_S, on_lost: Optional[Callable[[], None]] = None,
                 settle_s: float = SETTLE_S):
        self.tracking, self.parent_run, self.renew_s, self.stale_after_s = tracking, parent_run, renew_s, stale_after_s
        self.settle_s = settle_s
        self.lease = Lease(token, job, where, time.time(), time.time(), socket.gethostname(), os.getpid(),
                           renew_s=renew_s, stale_s=stale_after_s)
        self.on_lost = on_lost or (lambda: None)
        self._released = threading.Event()
        self._writing = threading.Lock()  # a renewal and the release never interleave

    def acquire(self) -> None:
        """Take the lease once no other is alive (one is watched until it beats or goes stale on this process'
        clock); LeaseHeld when another's is alive, or when another took the fence at the same moment, last."""
        other = held_by_other(self.tracking, self.lease.token, self.stale_after_s,
                              watch_s=self.stale_after_s + self.renew_s, poll_s=max(0.05, min(2.0, self.renew_s / 3)))
        if other is not None:
            raise refusal(self.tracking.name, other)
        now, generation = time.time(), read_fence(self.tracking)[0] + 1
        self.lease = Lease(**{**asdict(self.lease), "acquired_at": now, "renewed_at": now, "generation": generation})
        self._write()
        self._write_fence(generation)
        time.sleep(self.settle_s)  # one taken at the same moment is written by now: the fence holds one of them
        if not self.holds():
            self.release()
            winner = [lease for _, lease in leases(self.tracking) if lease.token == read_fence(self.tracking)[1]]
            raise refusal(self.tracking.name, winner[0] if winner else self.lease)
        self._write()  # a same-job rival may have written the run's tag after ours
        self._thread = threading.Thread(target=self._renew, name="ladder-lease", daemon=True)
        self._thread.start()

    def _write_fence(self, generation: int) -> None:
        text = json.dumps({"generation": generation, "token": self.lease.token, "where": self.lease.where})
        twice(lambda: self.tracking.client.set_experiment_tag(self.tracking.experiment_id, Tag.FENCE, text))

    def holds(self) -> bool:
        """Whether the fence still names this controller's generation."""
        return read_fence(self.tracking) == (self.lease.generation, self.lease.token)

    def check(self) -> None:
        """Before a write of the ladder's state (progress, aliases, checkpoints): LeaseLost once it was taken over."""
        if not self.holds():
            raise LeaseLost(f"ladder {self.tracking.name!r}: this controller's lease (generation "
                            f"{self.lease.generation}) was taken over by another; it writes nothing more")

    def _write(self) -> None:
        text = json.dumps(asdict(self.lease))
        twice(lambda: self.tracking.client.set_tag(self.parent_run, Tag.LEASE, text))

    def _renew(self) -> None:
        while not self._released.wait(self.renew_s):
            try:
                with self._writing:  # `release` waits for a renewal in flight: none writes the lease after it
                    if self._released.is_set():
                        return
                    lost = not self.holds()
                    if not lost:
                        self.lease = Lease(**{**asdict(self.lease), "renewed_at": time.time(),
                                              "beat": self.lease.beat + 1})
                        self._write()
                if lost:
                    self.on_lost()  # another controller took it over (ours had gone stale): this one stops
                    return
            except Exception:  # MLflow briefly away: renewed at the next beat, or found stale by others
                continue

    def release(self) -> None:
        self._released.set()
        # a renewal in flight ends first (none writes the lease after it is cleared); one stuck on MLflow is not
        # waited for past its own stale time: the lease it may leave behind goes stale
        if self._writing.acquire(timeout=self.stale_after_s):
            try:
                self._clear()
            finally:
                self._writing.release()

    def _clear(self) -> None:
        try:
            current = self.tracking.client.get_run(self.parent_run).data.tags.get(Tag.LEASE, "")
            if current and json.loads(current).get("token") == self.lease.token:
                self.tracking.client.set_tag(self.parent_run, Tag.LEASE, "")
        except Exception:  # on the way out: a lease left behind goes stale
            pass


def refuse_if_running(spec) -> None:
    """`run`, `submit` and `resume` of a ladder whose lease looks alive: refused in one line, before anything
    starts (the controller's own `acquire` decides)."""
    from ladder.registry.store import tracking_uri_for
    from ladder.registry.tracking import Tracking

    tracking = Tracking.find(spec.name, tracking_uri_for(spec))
    if tracking is not None:
        check_free(tracking)


def take_lease(tracking, parent_run: str, job: str, token: str, submission: Optional[str],
               on_lost: Callable[[], None], new: bool = False, renew_s: Optional[float] = None) -> LeaseKeeper:
    """A controller's lease on its job's parent run, taken (a stale one taken over) and renewed until released, and
    checked by `tracking` before each write of the ladder's state; LeaseHeld naming where the ladder runs when
    another controller's is alive (a new job refused so has its parent run ended, marked refused)."""
    stale_s = STALE_AFTER_S if renew_s is None else STALE_FACTOR * renew_s
    keeper = LeaseKeeper(tracking, parent_run, job, token, here(job, submission), renew_s or RENEW_S, stale_s,
                         on_lost, SETTLE_S)
    try:
        keeper.acquire()
    except LeaseHeld as exc:
        if new:
            try:
                tracking.fail_run(parent_run, f"refused: {exc}")
            except Exception:  # the refusal is what matters
                pass
        raise
    tracking.fence = keeper.check
    return keeper
