"""Stops that are kept: a stop asked of the controller (through Ray) is saved to MLflow before it is acted on, so a
controller that Ray restarts keeps it; a resumed job's restarted controller keeps a stop asked after the resume; a
graceful stop followed by `stop --now` escalates. In-process controllers on real MLflow (SQLite), no Ray."""
import time

import pytest

from ladder.progress import Phase, Progress, State


class Crash(BaseException):
    """The controller's process dies here (nothing of the controller's own cleanup runs)."""


def controller(registry, resume=False, token="tok", restarted=False):
    from ladder.control.controller import LadderController
    from ladder.spec import parse_spec

    spec = parse_spec({"name": registry.name, "student": {"base": "m"},
                       "judge": {"initial": {"kind": "model", "path": "m"}}, "task": {"source": {"kind": "builtin"}}})
    ctl = LadderController(spec, job="job", resume=resume, lease_token=token)
    ctl.registry, ctl.prepare, ctl.restarted = registry, (lambda: None), restarted
    return ctl


@pytest.fixture(autouse=True)
def no_restart_wait(monkeypatch):
    """A restart by Ray waits before it goes on (`lifetime.after_restart`); not here."""
    monkeypatch.setattr("ladder.control.lifetime.sleep", lambda s: None)


def until(check, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def crash_after(act):
    def handler(c, p):
        act(c, p)
        raise Crash()
    return handler


def run_crashing(ctl) -> None:
    try:
        ctl.run()
    except Crash:
        pass


def restarted_run(registry, trained: list, resume=False) -> dict:
    """Ray's restart of the controller: built again from the same arguments (the same lease token)."""
    again = controller(registry, resume=resume, restarted=True)
    again.HANDLERS = {Phase.TRAIN: lambda c, p: trained.append(p.step) or p.to(phase=Phase.DONE,
                                                                               state=State.COMPLETED)}
    return again.run()


def test_a_stop_asked_through_ray_is_kept_by_the_controller_ray_restarts(registry):
    """Issue 35, 3: `controller.stop.remote()` (Ctrl-C, `ray job stop`), then the process dies mid-step; without the
    stop saved first, the restarted controller went on training (and completed)."""
    first = controller(registry)
    first.HANDLERS = {Phase.TRAIN: crash_after(lambda c, p: c.stop())}
    run_crashing(first)
    trained = []
    final = restarted_run(registry, trained)
    assert trained == [] and final["state"] == "stopped", final


def test_a_resumed_jobs_restarted_controller_keeps_a_stop_asked_after_the_resume(registry):
    """Issue 35, 3: `resume`, `ladder stop` (a request in MLflow), the controller SIGKILLed mid-step: Ray restarts it
    with `resume=True` again; without the fix it cleared the request as a fresh resume does, and trained on."""
    run = registry.start_ladder_run(controller(registry).spec, "job")
    registry.save_progress(Progress(registry.name, "job", state=State.STOPPED, parent_run=run))
    registry.request_stop(run, now=False)  # the stop the job was stopped by, before the resume: cleared by it
    resumed = controller(registry, resume=True)
    resumed.HANDLERS = {Phase.TRAIN: crash_after(lambda c, p: registry.request_stop(p.parent_run, now=False))}
    run_crashing(resumed)
    trained = []
    final = restarted_run(registry, trained, resume=True)
    assert trained == [] and final["state"] == "stopped", final


def test_stop_then_stop_now_escalates(registry):
    """Issue 35, 3: `ladder stop` while a step hangs (a worker SIGSTOPped), then `ladder stop --now`: the step is
    aborted within seconds. Without the fix the second request was ignored (a stop was already set) and the CLI
    waited its 900 s."""
    seen = []

    def hanging_step(c, p):
        registry.request_stop(p.parent_run, now=False)
        seen.append(until(c.stopping))
        registry.request_stop(p.parent_run, now=True)
        seen.append(until(c.aborted))
        return p.to(state=State.STOPPED)
    ctl = controller(registry)
    ctl.HANDLERS = {Phase.TRAIN: hanging_step}
    final = ctl.run()
    assert seen == [True, True] and final["state"] == "stopped", (seen, final)


def test_a_graceful_stop_asked_after_stop_now_does_not_undo_it(registry):
    """`ladder stop --now`, then a plain `ladder stop` (or `ray job stop`) before the controller has read the first:
    the request stays `now` (a stop only escalates). Without the fix the second overwrote it with `graceful`."""
    run = registry.client.create_run(registry.experiment_id).info.run_id
    registry.request_stop(run, now=True)
    registry.request_stop(run, now=False)
    assert registry.stop_request(run) == "now"
    registry.clear_stop_request(run)
    registry.request_stop(run, now=False)
    registry.request_stop(run, now=True)
    assert registry.stop_request(run) == "now"
