"""Stop means stop: once a stop is requested no stage actor starts (a replacement of a dead rollout or judge worker
included), `stop --now` kills every stage actor the ladder started (gate workers too, tracked when spawned), and a
refused start stops the ladder where its progress was saved. A local Ray of this module's own, tiny actors."""
from types import SimpleNamespace

import pytest
from local_ray import dead, module_ray  # tests/unit/local_ray.py

from ladder.progress import Phase, State
from stages.actors import StopRequested


class Worker:
    def __init__(self, *args):
        pass

    def timed(self, method, items, *args):
        return [0.5 for _ in items], 0.0

    def step(self):
        raise MemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")


@pytest.fixture(scope="module")
def ray_local():
    yield from module_ray(__name__)


def judge_spec():
    from ladder.spec import parse_spec

    return parse_spec({"name": "s", "student": {"base": "m"}, "judge": {"initial": {"kind": "model", "path": "m"}},
                       "task": {"source": {"kind": "builtin"}}, "judge_pool": {"workers": 2},
                       "resources": {"judge": {"cpus": 0}}})


def test_stop_now_kills_the_gate_workers_and_no_judge_replacement_starts(ray_local, monkeypatch):
    import stages.actors
    from ladder.progress import ResolvedJudge
    from ladder.rung.roles import build_judge_pool
    from ladder.rung.stageset import StageSet

    spawned = []
    monkeypatch.setattr("ladder.rung.roles.judge_prompts", lambda *a: (SimpleNamespace(user=str), 64))
    monkeypatch.setattr("ladder.rung.roles.engine_config", lambda *a, **kw: "engine")
    monkeypatch.setattr(stages.actors, "spawn", lambda *a, **k: spawned.append(1) or
                        ray_local.remote(num_cpus=0)(Worker).remote())
    stages = StageSet()
    pool = build_judge_pool(judge_spec(), ResolvedJudge("model", "models:/s/1", "candidate"),
                            SimpleNamespace(answer_pattern=None, views=None, steps=None), 0, "s.job", stages)
    assert len(spawned) == 2 and pool.map("score", [1, 2, 3]) == [0.5] * 3
    workers = list(pool.workers)
    stages.guard.kill_started()  # what the controller's `stop(now=True)` does: the workers are known before
    assert all(dead(ray_local, w) for w in workers)  # the gate hands them to the stage set
    with pytest.raises(StopRequested):
        pool.map("score", [1, 2, 3])  # a dead worker: its replacement would start after the stop
    assert len(spawned) == 2 and pool.replaced == 0


def test_no_rollout_replacement_starts_once_a_stop_is_requested(ray_local):
    from ladder.rung.driver import Rung
    from ladder.rung.stageset import StageSet

    rung = object.__new__(Rung)
    started = []
    rung.spec, rung.stages, rung.rollout_replaced, rung._weights = judge_spec(), StageSet(), 0, None
    rung._start_rollout = lambda k: started.append(k) or ray_local.remote(num_cpus=0)(Worker).remote()
    rung.rollout = [rung.stages.start(lambda: rung._start_rollout(0))]
    rung._replace_rollout(0)  # before a stop: replaced
    assert started == [0, 0] and rung.rollout_replaced == 1
    rung.stages.guard.refuse()  # a graceful stop
    with pytest.raises(StopRequested):
        rung._replace_rollout(0)
    assert started == [0, 0]
    rung.stages.release()


def run_offline(registry, handlers):
    """A controller over `registry` (no Ray actor of its own, nothing prepared) run through the phase `handlers`;
    returns its saved progress."""
    from ladder.control.controller import LadderController
    from ladder.spec import parse_spec

    spec = parse_spec({"name": registry.name, "student": {"base": "m"},
                       "judge": {"initial": {"kind": "model", "path": "m"}}, "task": {"source": {"kind": "builtin"}}})
    ctl = LadderController(spec, job="job")
    ctl.registry = registry
    ctl.prepare = lambda: None
    ctl.HANDLERS = handlers
    ctl.run()
    return registry.load_progress("job")


def test_a_start_refused_by_a_stop_stops_the_ladder_at_its_saved_progress(registry):
    def train(ctl, p):
        ctl.stop()  # a graceful stop, asked while the rung starts its actors
        return ctl.stages.start(lambda: pytest.fail("an actor started after the stop"))
    saved = run_offline(registry, {Phase.TRAIN: train})
    assert saved.state is State.STOPPED and saved.phase is Phase.TRAIN and saved.error is None


def test_stop_now_kills_every_stage_actor_the_controller_started(ray_local):
    from ladder.control.controller import LadderController

    ctl = LadderController(judge_spec(), job="job")
    worker = ctl.stages.start(lambda: ray_local.remote(num_cpus=0)(Worker).remote())  # not yet in ctl.actors
    ctl.stop(now=True)
    assert dead(ray_local, worker) and ctl.stages.guard.refused


def test_stop_now_in_the_middle_of_a_call_stops_the_ladder_it_does_not_fail_it(ray_local, registry):
    """`stop --now` kills the stage actors in the middle of whatever phase runs (the gate's measurement, say): the
    call to a killed worker raises Ray's actor death, and the ladder ends stopped at its saved progress, not failed."""
    def gate(ctl, p):
        worker = ctl.stages.start(lambda: ray_local.remote(num_cpus=0)(Worker).remote())
        ctl.stop(now=True)  # as `ladder stop --now` does from another thread, while the gate waits on its workers
        return ray_local.get(worker.timed.remote("score", [1]))
    saved = run_offline(registry, {Phase.TRAIN: lambda ctl, p: p.to(phase=Phase.GATE), Phase.GATE: gate})
    assert saved.state is State.STOPPED and saved.phase is Phase.GATE and saved.error is None, saved


def test_an_actor_death_without_a_stop_still_fails_the_ladder(ray_local, registry):
    def gate(ctl, p):
        worker = ray_local.remote(num_cpus=0)(Worker).remote()
        ray_local.kill(worker)
        return ray_local.get(worker.timed.remote("score", [1]))
    saved = run_offline(registry, {Phase.TRAIN: gate})
    assert saved.state is State.FAILED and "Actor" in saved.error, saved


def test_an_error_inside_an_actor_method_is_saved_as_its_own_first_line(ray_local, registry):
    """Issue 35, 8: an actor method raises (out of memory in `Trainer.step`); the saved error is that exception's
    type and first line. Without the fix it was Ray's wrapper: `RayTaskError(MemoryError): ray::Worker.step()
    (pid=..., ip=...)`, the real message further down its traceback."""
    def train(ctl, p):
        worker = ray_local.remote(num_cpus=0)(Worker).remote()
        return ray_local.get(worker.step.remote())
    saved = run_offline(registry, {Phase.TRAIN: train})
    assert saved.state is State.FAILED and saved.error == "MemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_a_call_past_the_step_timeout_ends_in_one_line_naming_the_role(ray_local):
    """`resources.step_timeout_s` bounds a wait of the step: a call that does not answer in time is a StepTimeout,
    one line naming the role and the timeout, raised at the deadline (not when the call ends)."""
    import time

    from stages.actors import StepTimeout, get_within

    @ray_local.remote(num_cpus=0)
    class Slow:
        def work(self, seconds: float) -> str:
            time.sleep(seconds)
            return "done"

    slow = Slow.remote()
    assert get_within(slow.work.remote(0), time.monotonic() + 30, "rollout", 30) == "done"
    t0 = time.monotonic()
    with pytest.raises(StepTimeout) as err:
        get_within(slow.work.remote(60), t0 + 2, "rollout", 2)
    assert 1.9 <= time.monotonic() - t0 < 20  # the deadline is t0 + 2 (ray.get may wake a hair early)
    assert str(err.value) == "a rollout worker did not answer within resources.step_timeout_s (2 s)"
    ray_local.kill(slow)



def test_stop_now_gives_back_a_trainer_groups_placement_group(ray_local, monkeypatch):
    """A trainer group's ranks sit in a placement group that `start_trainer` reserves in the stage set's guard:
    `stop --now` kills the group's actor and gives the placement group back (a killed actor cannot, and Ray would
    keep its CPUs until the job ends); one reserved after a stop is given back at once."""
    from ray.util import placement_group_table

    import stages.actors
    from ladder.rung.roles import start_trainer
    from ladder.rung.stageset import StageSet
    from ladder.spec import parse_spec
    from stages.train_group import reserve

    spec = parse_spec({"name": "s", "student": {"base": "m"}, "judge": {"initial": {"kind": "model", "path": "m"}},
                       "task": {"source": {"kind": "builtin"}}, "train": {"workers": 2},
                       "resources": {"trainer": {"cpus": 0.5}}})
    reserved = []  # the group's actor is a tiny one here: what matters is the placement group it was given
    monkeypatch.setattr(stages.actors, "spawn", lambda cls, *a, pg, **k: reserved.append(pg) or
                        ray_local.remote(num_cpus=0)(Worker).remote())
    stage_set = StageSet()
    group = stage_set.start(lambda: start_trainer(spec, "m", None, 0, "s.job", stage_set))
    pg = reserved[0]
    assert pg.wait(timeout_seconds=30) and stage_set.groups == {group: pg}
    stage_set.guard.kill_started()  # what the controller's `stop(now=True)` does
    assert dead(ray_local, group) and placement_group_table(pg)["state"] == "REMOVED"
    late = reserve(2, None)
    with pytest.raises(StopRequested):
        stage_set.guard.hold(late)
    assert placement_group_table(late)["state"] == "REMOVED"
