"""After a trainer dies, the rung's restart keeps the engines that still answer: the trainer is killed, a role with a
dead or hung actor is started again, and nothing is kept where the engines joined a sync group with the lost
trainer. A local Ray of this module's own, tiny actors."""
import time

import pytest
from local_ray import dead, module_ray  # tests/unit/local_ray.py


class Worker:
    def busy(self, seconds: float) -> None:
        time.sleep(seconds)


@pytest.fixture(scope="module")
def ray_local():
    yield from module_ray(__name__)


def rung_with(ray, sync_group: bool):
    """A rung whose trainer, rollout worker and two judge workers are live tiny actors; one judge worker killed."""
    from ladder.rung.driver import Rung
    from ladder.rung.stageset import StageSet
    from stages.actors import kill_all

    remote = ray.remote(num_cpus=0)(Worker)
    trainer, rollout, judge_a, judge_b = [remote.remote() for _ in range(4)]
    ray.get([a.__ray_ready__.remote() for a in (trainer, rollout, judge_a, judge_b)])
    kill_all([judge_b])  # awaited
    rung = Rung.__new__(Rung)
    rung.stages, rung.trainer, rung.rollout = StageSet(), trainer, [rollout]
    rung.pool = type("Pool", (), {"workers": [judge_a, judge_b], "verifies": False})()
    rung._sync_group = sync_group
    return rung, trainer, rollout, judge_a


def test_the_restart_keeps_the_rollout_engine_and_starts_again_a_role_with_a_dead_worker(ray_local):
    rung, trainer, rollout, judge_a = rung_with(ray_local, sync_group=False)
    kept = rung.survivors()
    assert kept.actors_by_role == {"rollout": [rollout]}
    assert dead(ray_local, trainer) and dead(ray_local, judge_a) and not dead(ray_local, rollout)


def test_engines_in_a_sync_group_with_the_lost_trainer_are_not_kept(ray_local):
    rung, trainer, rollout, _ = rung_with(ray_local, sync_group=True)
    assert rung.survivors().actors_by_role == {}
    assert dead(ray_local, trainer) and dead(ray_local, rollout)


def test_a_hung_worker_is_not_kept(ray_local):
    from ladder.rung.stageset import StageSet

    worker = ray_local.remote(num_cpus=0)(Worker).remote()
    worker.busy.remote(60)  # a call that holds the actor past the wait
    stages = StageSet(actors_by_role={"rollout": [worker]})
    t0 = time.monotonic()
    stages.drop_unless_answering("rollout", answer_s=1.0)
    assert stages.actors_by_role == {} and dead(ray_local, worker) and time.monotonic() - t0 < 40


def test_a_kept_actor_whose_load_hangs_is_replaced_within_the_timeout(ray_local):
    """A new rung's model loaded in place into a kept engine that never answers: past the timeout (the spec's
    `resources.step_timeout_s`) it is killed and a new one started, instead of the rung waiting for ever."""
    from ladder.rung.stageset import StageSet

    remote = ray_local.remote(num_cpus=0)(Worker)
    kept = remote.remote()
    stages = StageSet(actors_by_role={"rollout": [kept]}, keys={"rollout": "k"})
    t0 = time.monotonic()
    (new,) = stages.take("rollout", "k", 1, lambda w: w.busy.remote(600), lambda i: remote.remote(), timeout_s=2.0)
    assert new is not kept and dead(ray_local, kept) and not dead(ray_local, new) and time.monotonic() - t0 < 40
    assert (stages.reused, stages.started) == (0, 1)


class HungTrainer:
    def checkpoint_files(self) -> dict:
        time.sleep(600)
        return {}


def test_a_trainer_that_hangs_while_checkpointing_fails_the_step_in_time(ray_local):
    """Every wait on the trainer outside the step (checkpoint, best weights, the student's files, restore) is
    bounded by `resources.step_timeout_s`: a hung trainer is a `StepTimeout`, and the rung restarts from its
    checkpoint as after a trainer's death, instead of waiting for ever."""
    from types import SimpleNamespace

    from ladder.rung.driver import Rung
    from stages.actors import StepTimeout

    rung = Rung.__new__(Rung)
    rung.spec = SimpleNamespace(resources=SimpleNamespace(step_timeout_s=1.0))
    rung.trainer = ray_local.remote(num_cpus=0)(HungTrainer).remote()
    t0 = time.monotonic()
    with pytest.raises(StepTimeout, match="trainer worker did not answer within resources.step_timeout_s"):
        rung.save_adapter("unused")
    assert time.monotonic() - t0 < 30


class HungSender:
    def send_weights(self, version: int) -> int:
        time.sleep(600)
        return version


def test_a_weight_sync_that_hangs_ends_within_the_step_timeout(ray_local):
    """A collective sync whose trainer never finishes sending: the rung's step fails with StepTimeout after
    `resources.step_timeout_s` (the rung restarts from its checkpoint) instead of waiting for ever."""
    from types import SimpleNamespace

    from ladder.rung.driver import Rung
    from ladder.rung.sync import collective_sync
    from stages.actors import StepTimeout

    rung = Rung.__new__(Rung)
    rung.spec = SimpleNamespace(resources=SimpleNamespace(step_timeout_s=1.0))
    rung.trainer, rung.rollout, rung._sync_group = ray_local.remote(num_cpus=0)(HungSender).remote(), [], True
    rung.weights_version = 0
    t0 = time.monotonic()
    with pytest.raises(StepTimeout, match="weight sync did not end within resources.step_timeout_s"):
        collective_sync(rung)
    assert time.monotonic() - t0 < 30
