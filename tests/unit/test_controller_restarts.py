"""A controller that Ray restarts after its process died: each restart is counted in the saved progress and waited
for with backoff (no tight restart loop), and the death after `controller_restarts` restarts is recorded as the
ladder failed instead of a `running` nobody works on. In-process controllers on MLflow (SQLite), no Ray."""
import ladder.control.lifetime
from ladder.progress import Phase, State


class Crash(BaseException):
    """The controller's process dies here (nothing of the controller's own cleanup runs)."""


def life(registry, restarted: bool, trained: list):
    """One life of the job's controller (Ray builds a restart from the same arguments): it trains, and dies."""
    from ladder.control.controller import LadderController
    from ladder.spec import parse_spec

    spec = parse_spec({"name": registry.name, "student": {"base": "m"}, "controller_restarts": 3,
                       "judge": {"initial": {"kind": "model", "path": "m"}}, "task": {"source": {"kind": "builtin"}}})
    ctl = LadderController(spec, job="job", lease_token="tok")
    ctl.registry, ctl.prepare, ctl.restarted = registry, (lambda: None), restarted

    def dies(c, p):
        trained.append(p.restarts)
        raise Crash()
    ctl.HANDLERS = {Phase.TRAIN: dies}
    try:
        return ctl.run()
    except Crash:
        return None


def test_restarts_back_off_and_the_last_death_is_recorded_failed(registry, monkeypatch):
    """Issue 35, 9: Ray restarted a controller that died (an OOM at the same step) at once, each time, and after
    its last restart nothing recorded `failed`: the progress said running for ever."""
    waits, trained = [], []
    monkeypatch.setattr(ladder.control.lifetime, "sleep", waits.append)
    assert life(registry, False, trained) is None  # the job's start, then a death mid-step
    for _ in range(3):  # Ray's restarts (controller_restarts: 3)
        assert life(registry, True, trained) is None
    assert trained == [0, 1, 2, 3] and waits == [5.0, 10.0, 20.0]
    final = life(registry, True, trained)  # the one more restart Ray gives: it records, and trains nothing
    assert trained == [0, 1, 2, 3] and waits == [5.0, 10.0, 20.0]
    assert final["state"] == "failed" and final["error"].startswith(
        "ControllerDied: the ladder's controller process died 4 times (controller_restarts is 3)")
    saved = registry.load_progress("job")
    assert saved.state is State.FAILED and saved.restarts == 4


def test_a_resume_counts_restarts_afresh(registry, monkeypatch):
    from ladder.control.lifetime import after_restart
    from ladder.progress import Progress

    monkeypatch.setattr(ladder.control.lifetime, "sleep", lambda s: None)
    p = Progress("x", "job", state=State.RUNNING, restarts=3)
    assert after_restart(p, restarted=False, allowed=3).restarts == 0  # `ladder resume`: a new life, none counted
    assert after_restart(p.to(restarts=8), restarted=True, allowed=10).restarts == 9
