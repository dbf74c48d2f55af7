"""A ladder controlled from outside its controller: find it by name, report its status, stop it, resume it.

Everything reads the ladder's saved progress in MLflow; where a Ray cluster is given, liveness comes from
Ray itself (the controller actor and the stage actors, named `<ladder>` and `<ladder>.<job>.<role>.*`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from ladder.progress import Progress, State


class LadderNotFound(ValueError):
    """No ladder of that name in the MLflow store; one line."""


@dataclass(frozen=True)
class LadderAccess:
    """How the commands reach a ladder: its MLflow store and, optionally, its Ray cluster."""
    tracking_uri: str
    address: object                        # cluster.connect.Address
    workdir: str = ".ladder"


def open_registry(name: str, where: LadderAccess):
    from ladder.registry.registry import Registry

    reg = Registry.find(name, where.tracking_uri)
    if reg is None:
        raise LadderNotFound(f"no ladder named {name!r} in MLflow at {where.tracking_uri}")
    return reg


def saved_progress(reg) -> Progress:
    progress = reg.load_progress()
    if progress is None:
        raise LadderNotFound(f"ladder {reg.name!r} has no saved progress (it never started a job)")
    return progress


def alive_actors(where: LadderAccess, name: str) -> Optional[list[str]]:
    """Names of the ladder's live actors on the cluster (None when no cluster address is known)."""
    if where.address.local:
        return None
    from ray.util.state import list_actors

    from cluster.connect import explain

    try:
        actors = list_actors(address=where.address.api_server(), filters=[("state", "=", "ALIVE")], limit=10000,
                             raise_on_missing_output=False)
    except Exception as exc:
        raise explain(exc, where.address.raw) from None
    return [a.name for a in actors if a.name == name or (a.name or "").startswith(f"{name}.")]


def local_job_of(reg, progress: Progress) -> Optional[dict]:
    from cluster.submit import local_running

    return local_running(reg.load_spec(progress.parent_run))


def controller_alive(where: LadderAccess, reg, progress: Progress) -> Optional[bool]:
    """Is the ladder's controller alive? From Ray when a cluster is given; from the local job record else."""
    actors = alive_actors(where, reg.name)
    if actors is not None:
        return reg.name in actors
    from cluster.submit import local_running

    from ladder.control.lease import looks_alive

    spec = reg.load_spec(progress.parent_run)
    return True if local_running(spec) or looks_alive(reg) else None  # a controller renews its lease


def died_locally(where: LadderAccess, reg, progress: Progress) -> Optional[str]:
    """How a running ladder's local background job died: the process recorded for the submission its progress names
    is gone (and no controller renews the lease, `controller_alive`); None when it is not known to have died."""
    if not where.address.local or not progress.active:
        return None
    from cluster.processes import pid_alive
    from cluster.submit import local_job

    job = local_job(reg.load_spec(progress.parent_run))
    if job is None or job.get("submission") != progress.submission or pid_alive(job["pid"]):
        return None
    return f"its local job's process (pid {job['pid']}) is gone"


def live_status(name: str, where: LadderAccess) -> Optional[dict]:
    """The live controller's own status, where the cluster's address lets this process join it as a driver
    (a dashboard URL does not); None when there is no such controller."""
    if where.address.local or where.address.is_http:
        return None
    import ray

    from cluster.connect import connect

    if not ray.is_initialized():
        connect(where.address)
    try:
        controller = ray.get_actor(name, namespace="ladder")
        return ray.get(controller.status.remote(), timeout=30)
    except Exception:  # no such actor, or it is ending
        return None


def status(name: str, where: LadderAccess) -> dict:
    """State, rung, step, phase, latest metrics, pending decision and job of one ladder: from the live
    controller when it can be reached, else from the progress it saved in MLflow."""
    reg = open_registry(name, where)
    p = saved_progress(reg)
    latest = reg.latest_metrics(p.rung_run)
    live = controller_alive(where, reg, p)
    died = died_locally(where, reg, p) if live is None else None
    out = {**p.summary(), "ladder": name, "latest": latest, "live": False if died else live, "source": "mlflow"}
    if died:
        out["state"] = f"died: {died} (saved as {p.state.value}); resume with `ladder resume {name}`"
    elif p.active and live is False:
        out["state"] = f"{p.state.value} (controller gone: resume with `ladder resume {name}`)"
    own = live_status(name, where) if live is not False else None
    if own is not None:
        out.update({k: own[k] for k in ("state", "phase", "rung", "step", "candidate", "error", "pending_decision",
                                        "submission") if k in own}, latest=own["latest"] or out["latest"],
                   source="controller", live=True)
    return out


def request_stop(name: str, where: LadderAccess, now: bool = False, timeout_s: float = 900.0,
                 poll_s: float = 1.0) -> dict:
    """Ask the ladder to stop (through MLflow, read by its controller), then wait until its progress says
    stopped and, on a cluster, until no actor of the ladder is alive."""
    reg = open_registry(name, where)
    p = saved_progress(reg)
    if not p.active:
        raise ValueError(f"ladder {name!r} is not running (state {p.state.value})")
    reg.request_stop(p.parent_run, now)
    deadline = time.monotonic() + timeout_s
    local_job = local_job_of(reg, p) if where.address.local else None
    if where.address.local and local_job is None and not controller_alive(where, reg, p):
        return gone_stopped(reg, p)  # no process and no live lease: nobody would act on the request
    while time.monotonic() < deadline:
        p = reg.load_progress(p.job)
        actors = alive_actors(where, name)
        if local_job is not None and not p.active:
            from cluster.processes import pid_alive

            actors = [name] if pid_alive(local_job["pid"]) else []  # its embedded Ray ends with its process
        if not p.active and not actors:
            return {"ladder": name, "job": p.job, "state": p.state.value, "rung": p.rung, "step": p.step,
                    "actors_alive": actors}
        if p.active and actors is not None and name not in actors and p.state is not State.STOPPING:
            break  # nobody is left to act on the request: the controller is gone
        time.sleep(poll_s)
    raise ValueError(f"ladder {name!r} did not stop within {timeout_s:.0f} s (state {p.state.value})")


def gone_stopped(reg, p: Progress) -> dict:
    """A local ladder whose process is gone (no job process, no fresh lease): recorded stopped at once, as its
    controller would have (resume goes on from its last checkpoint)."""
    p = p.to(state=State.STOPPED)
    reg.save_progress(p)
    return {"ladder": reg.name, "job": p.job, "state": p.state.value, "rung": p.rung, "step": p.step,
            "actors_alive": [], "note": "its process was gone"}


def resumable(name: str, where: LadderAccess, adopt_spec: bool = False):
    """The spec and job of a stopped or crashed ladder; one line when there is nothing to resume, or when its saved
    spec was edited since the ladder started (unless `adopt_spec`: then the edited spec is the ladder's now)."""
    reg = open_registry(name, where)
    p = saved_progress(reg)
    if p.state is State.COMPLETED:
        raise ValueError(f"ladder {name!r} has completed; nothing to resume")
    from ladder.control.lease import check_free

    check_free(reg)  # a controller renews its lease: one anywhere, on any Ray, is found so
    if p.active and controller_alive(where, reg, p):
        raise ValueError(f"ladder {name!r} is already running (job {p.job}, {p.state.value})")
    spec = reg.load_spec(p.parent_run)
    started = reg.spec_changed(p.parent_run, spec)
    if started and not adopt_spec:
        raise ValueError(f"ladder {name!r}: its saved spec.json was changed since it started (sha256 "
                         f"{spec.sha256()[:12]}, started with {started[:12]}); resume --adopt-spec to run it as saved")
    if started:
        reg.save_spec(p.parent_run, spec)  # adopted: the hash a later resume checks against
    return spec, p.job


def pending_version(name: str, where: LadderAccess) -> str:
    reg = open_registry(name, where)
    p = saved_progress(reg)
    if p.state is not State.AWAITING_PROMOTION or not p.candidate:
        raise ValueError(f"ladder {name!r} has no decision pending (state {p.state.value}); name a version "
                         f"to override an earlier decision")
    return p.candidate
