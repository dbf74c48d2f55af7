"""Turning stage classes into Ray actors: resources and placement, the engine environment, restarts."""
from __future__ import annotations

import os
import time

from stages.engine import ENGINE_ENV, exit_if_a_worker_died


# glibc's malloc hands large freed blocks back to the OS at once, so every forward pass of an engine or the
# trainer maps its activations afresh and the kernel zeroes each page again (a judge call on the bench model:
# ~110k page faults, a quarter of its time). A fixed mmap threshold (32 MiB, glibc's largest) and a high trim
# threshold keep freed memory in the process for the next step. Other C libraries ignore the variable; a
# GLIBC_TUNABLES of the caller's own is passed on instead.
KEEP_FREED_MEMORY = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824"


class Timed:
    """For stage actors: `timed(method, *args)` runs a method and returns (its result, the seconds it took in
    this process), so the controller can tell stage work from its own overhead (dispatch, transfer)."""

    def timed(self, method: str, *args):
        t0 = time.perf_counter()
        try:
            out = getattr(self, method)(*args)
        except Exception:
            if getattr(self, "llm", None) is not None:  # an engine short of a worker ends its actor: it is replaced
                exit_if_a_worker_died(self.llm)
            raise
        return out, time.perf_counter() - t0


class ActorStartError(RuntimeError):
    """A stage actor whose constructor raised (a missing tokenizer, truncated weights, an unwritable cache, a path
    missing on its node): a restart on fresh actors would fail the same way. One line: the actor's class, its node,
    and the constructor's own error."""


class StopRequested(RuntimeError):
    """A stop was asked for: no stage actor (a replacement of a dead one included) starts after it."""


class StartGuard:
    """The stage actors a ladder has started, and whether it may start more. After `refuse()` (any stop) no actor
    starts; `kill_started()` (`stop --now`) kills every actor started so far, gate workers and replacements too,
    since each is tracked the moment it is spawned, and gives back every placement group held for them (a trainer
    group's ranks: Ray keeps a placement group until its job ends, whoever made it died)."""

    def __init__(self):
        import threading

        self._lock = threading.RLock()  # a start may hold a placement group from inside `start`
        self._refused = False
        self._started: dict[str, object] = {}  # actor id -> handle
        self._held: dict[str, object] = {}     # placement group id -> placement group

    def start(self, spawn_one):
        """`spawn_one()` (a spawn that returns a handle at once), tracked; StopRequested after a stop."""
        with self._lock:
            if self._refused:
                raise StopRequested("a stop was requested: no stage actor is started after it")
            actor = spawn_one()
            self._started[actor._actor_id.hex()] = actor
        return actor

    def refuse(self) -> None:
        with self._lock:
            self._refused = True

    @property
    def refused(self) -> bool:
        return self._refused

    def tracked(self) -> list:
        """The actors started and not yet killed or forgotten."""
        with self._lock:
            return list(self._started.values())

    def forget(self, handles) -> None:
        """Actors killed by their owner: no longer tracked."""
        with self._lock:
            for h in handles:
                self._started.pop(h._actor_id.hex(), None)

    def hold(self, pg):
        """Track a placement group a stage actor will use (given back by `kill_started`); after a stop it is given
        back at once and StopRequested raised."""
        with self._lock:
            if self._refused:
                give_back([pg])
                raise StopRequested("a stop was requested: no stage actor is started after it")
            self._held[pg.id.hex()] = pg
        return pg

    def let_go(self, pg) -> None:
        """A placement group given back by its user: no longer tracked."""
        with self._lock:
            self._held.pop(pg.id.hex(), None)

    def kill_started(self) -> None:
        """Refuse further starts, kill every tracked actor and give back every placement group held."""
        with self._lock:
            self._refused = True
            handles, held = list(self._started.values()), list(self._held.values())
            self._started.clear()
            self._held.clear()
        kill_all(handles)
        give_back(held)


def give_back(placement_groups) -> None:
    """Remove placement groups (one already removed is skipped)."""
    import ray

    for pg in placement_groups:
        try:
            ray.util.remove_placement_group(pg)
        except Exception:  # noqa: BLE001 - already removed, or Ray is gone with it
            pass


def actor_died(exc: BaseException) -> bool:
    """Ray's error for a call to an actor that died (or was killed) before it answered."""
    import ray

    return isinstance(exc, ray.exceptions.RayActorError)


def as_start_error(exc: BaseException) -> BaseException:
    """An `ActorStartError` in place of `exc` when `exc` is Ray's word that an actor died of an error in its
    constructor (Ray sets `actor_init_failed` on the `ActorDiedError` of a failed creation task); else `exc`."""
    import sys

    ray = sys.modules.get("ray")  # not imported: not a Ray error
    if ray is not None and isinstance(exc, ray.exceptions.RayActorError) and exc.actor_init_failed:
        return ActorStartError(start_failure(str(exc)))
    return exc


def real_error(exc: BaseException) -> BaseException:
    """The exception an actor method raised, in place of Ray's wrapper of it (`RayTaskError(OutOfMemoryError)`,
    whose text is a coloured `ray::Trainer.step() (pid=...)` header and a traceback); nested wrappers unwrapped.
    When Ray could not carry the exception itself, one built from its traceback's last line; else `exc`."""
    import re
    import sys

    ray = sys.modules.get("ray")
    while ray is not None and isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        if cause is None or cause is exc:
            lines = [x for x in re.sub(r"\x1b\[[0-9;]*m", "", getattr(exc, "traceback_str", "") or "").splitlines()
                     if x.strip()]
            return RuntimeError(lines[-1].strip()) if lines else exc
        exc = cause
    return exc


def raise_if_start_failed(exc: BaseException) -> None:
    """Raise `as_start_error(exc)` when it is an `ActorStartError`; a death at runtime returns."""
    err = as_start_error(exc)
    if err is not exc:
        raise err from None


def start_failure(text: str) -> str:
    """Ray's creation-task error text (a header, then the constructor's traceback) in one line: `<Class> (node
    <ip>) could not start: <the raised exception's type and first line>`."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # Ray colours the task's name
    # `ray::Class.__init__()`, or for a named actor `ray::<name>:Class.__init__()`
    who = re.search(r"ray::(?:[^\s:]+:)?(\w+)\.__init__\(\)(?: \(pid=\d+, ip=([\w.:-]+))?", text)
    lines = text.splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    raised = next((line for line in lines[frames[-1] + 1:] if line and not line[0].isspace()), None) \
        if frames else None
    what = raised or lines[0].split("creation task, ")[-1]
    name = f"{who.group(1)}" + (f" (node {who.group(2)})" if who.group(2) else "") if who else "a stage actor"
    return f"{name} could not start: {what.strip()[:300]}"


class StepTimeout(RuntimeError):
    """A stage actor that did not answer within `resources.step_timeout_s`: treated as a dead one (replaced, its
    part redone, within `worker_replacements`), or the rung fails with this one line."""


def get_within(ref, deadline: float, role: str, timeout_s: float):
    """`ray.get(ref)` until `deadline` (time.monotonic()); StepTimeout naming the role and the timeout after it."""
    import ray

    try:
        return ray.get(ref, timeout=None if deadline == float("inf") else max(0.0, deadline - time.monotonic()))
    except ray.exceptions.GetTimeoutError:
        raise StepTimeout(f"a {role} worker did not answer within resources.step_timeout_s ({timeout_s:g} s)") \
            from None


def wait_ready(actors: list[tuple[str, object, object]], placement_timeout_s: float,
               load_timeout_s: float | None = None, poll_s: float = 2.0) -> None:
    """Block until every actor of `actors` ((role, handle, its `RoleResources`)) is up. One that Ray has placed on
    no node for `placement_timeout_s` fails it: `PlacementError` naming the role, what it asks for and what the
    cluster has. An actor placed and still loading its model is waited for up to `load_timeout_s` (StepTimeout
    after it); one whose constructor raised fails it with `ActorStartError`."""
    import ray

    from cluster.placement import PlacementError, placed, unplaced_message

    pending = {handle.__ray_ready__.remote(): (role, handle, res) for role, handle, res in actors}
    unplaced_since: dict = {}
    placed_since: dict = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=poll_s)
        for ref in done:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                raise_if_start_failed(exc)
                raise
            pending.pop(ref)
        now = time.monotonic()
        for ref, (role, handle, res) in pending.items():
            if placed(handle):
                unplaced_since.pop(ref, None)
                if load_timeout_s is not None and now - placed_since.setdefault(ref, now) > load_timeout_s:
                    raise StepTimeout(f"a {role} worker did not load its model within resources.step_timeout_s "
                                      f"({load_timeout_s:g} s)")
            elif now - unplaced_since.setdefault(ref, now) > placement_timeout_s:
                raise PlacementError(unplaced_message(role, res, placement_timeout_s))


def spawn(cls, *args, resources=None, name: str | None = None, namespace: str | None = None,
          detached: bool = False, max_restarts: int = 0, max_task_retries: int = 0, max_concurrency: int = 1,
          options: dict | None = None, **kwargs):
    """Start `cls(*args, **kwargs)` as a Ray actor whose process has the engine environment.

    `resources` is the role's `RoleResources` (CPUs, GPUs, custom resources, node labels); `options`, Ray
    options of the caller's own (a placement group's scheduling strategy), override them. A named actor that is
    not detached is still owned by its creator: it dies with it.
    """
    import ray

    from cluster.placement import actor_options

    env = {**ENGINE_ENV, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
           "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", KEEP_FREED_MEMORY)}
    env.setdefault("OMP_NUM_THREADS", os.environ.get("LADDER_THREADS", str(os.cpu_count() or 1)))
    opts = dict(runtime_env={"env_vars": env}, max_restarts=max_restarts, max_task_retries=max_task_retries,
                max_concurrency=max_concurrency)
    opts.update({**actor_options(resources), **(options or {})})
    if name:
        opts.update(name=name, namespace=namespace, get_if_exists=False)
    if detached:
        opts.update(lifetime="detached")
    return ray.remote(cls).options(**opts).remote(*args, **kwargs)


def kill_all(handles, wait_s: float = 30.0) -> None:
    """Kill the actors, wait (up to `wait_s`) until Ray reports each dead, then sweep the temp folders that
    engines on this node left behind."""
    import time

    import ray

    from cluster.processes import pid_alive
    from stages.engine import sweep_engine_tmp

    handles = list(handles)
    pids = local_pids(handles)
    for h in handles:
        try:
            ray.kill(h)
        except Exception:  # already dead
            pass
    deadline = time.monotonic() + wait_s
    for h in handles:
        while time.monotonic() < deadline:  # a killed actor may still answer a call or two
            try:
                ray.get(h.__ray_ready__.remote(), timeout=max(0.1, deadline - time.monotonic()))
            except ray.exceptions.RayActorError:
                break  # dead, as asked
            except Exception:  # Ray is slow to answer: the next sweep gets this one's folder
                break
            time.sleep(0.2)
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)  # Ray calls an actor dead before its process has exited
    sweep_engine_tmp()


def local_pids(handles) -> list[int]:
    """Process ids of the actors that run on this node, from Ray's actor table (empty where it cannot say)."""
    import ray

    if not ray.is_initialized():  # get_runtime_context() would start a Ray (a bare `ray.init()`, joining any)
        return []
    try:
        from ray._private.state import actors as actor_table

        node = ray.get_runtime_context().get_node_id()
        infos = [actor_table(actor_id=h._actor_id.hex()) for h in handles]
        return [i["Pid"] for i in infos if i and i.get("Pid") and i["Address"]["NodeID"] == node]
    except Exception:  # an internal table of Ray's: without it, later sweeps get the folders
        return []
