"""An actor that cannot start is not a stage death: an error raised in an actor's constructor fails the rung at
once with that error's own line (not Ray's "The actor died because of an error raised in its creation task"),
without stage restarts or worker replacements; a death at runtime still restarts. A local Ray of this test's own
with tiny actors, no engines (a few seconds)."""
import threading
import time
from types import SimpleNamespace

import pytest
from local_ray import module_ray  # tests/unit/local_ray.py

from ladder.control.train_phase import after_stage_death
from stages.actors import ActorStartError, as_start_error, raise_if_start_failed


class Broken:
    """Fails in its constructor the way a worker without a tokenizer does (an error raised from another)."""

    def __init__(self, *args):
        try:
            open("/nonexistent/tokenizer.json")
        except OSError as exc:
            raise OSError("Can't load tokenizer for '/models/m'. If you were trying to load it from "
                          "'https://huggingface.co/models'...\nsecond line of the message") from exc

    def timed(self, method, *args):
        return [], 0.0


class Healthy(Broken):
    def __init__(self, *args):
        pass


@pytest.fixture(scope="module")
def ray_local():
    yield from module_ray(__name__)


def died(ray, actor) -> Exception:
    with pytest.raises(ray.exceptions.RayActorError) as err:
        ray.get(actor.__ray_ready__.remote(), timeout=60)
    return err.value


@pytest.fixture(scope="module")
def start_failure(ray_local):
    """Ray's exception for an actor whose constructor raised; named, as every stage actor of a ladder is (Ray then
    calls its task `ray::<name>:Broken.__init__()`)."""
    return died(ray_local, ray_local.remote(num_cpus=0)(Broken).options(name="lad.job.judge0").remote())


@pytest.fixture(scope="module")
def runtime_death(ray_local):
    """Ray's exception for an actor that started and was then killed."""
    actor = ray_local.remote(num_cpus=0)(Healthy).remote()
    ray_local.get(actor.__ray_ready__.remote())
    ray_local.kill(actor)  # only asks: a call or two may still be answered before the kill lands
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray_local.get(actor.__ray_ready__.remote(), timeout=60)
        except ray_local.exceptions.RayActorError as exc:
            return exc
        time.sleep(0.1)
    pytest.fail("the killed actor still answers after 60 s")


def test_a_constructor_error_is_one_line_with_its_own_message(start_failure):
    assert "creation task" in str(start_failure)  # what Ray says first
    err = as_start_error(start_failure)
    assert isinstance(err, ActorStartError)
    assert str(err).startswith("Broken (node ") and "\n" not in str(err)
    assert str(err).endswith("could not start: OSError: Can't load tokenizer for '/models/m'. If you were trying "
                             "to load it from 'https://huggingface.co/models'...")


def test_a_death_at_runtime_is_not_a_start_failure(runtime_death):
    assert as_start_error(runtime_death) is runtime_death
    raise_if_start_failed(runtime_death)  # returns: the caller replaces or restarts


def rung_of(trainer, rollout, placement_timeout_s: float = 1800.0):
    """What `Rung.ready` reads of a rung: its spec's resources and its actors."""
    from ladder.spec import ResourcesSpec

    resources = ResourcesSpec(placement_timeout_s=placement_timeout_s)
    return SimpleNamespace(spec=SimpleNamespace(resources=resources), trainer=trainer, rollout=rollout,
                           pool=SimpleNamespace(workers=[]))


def test_rung_ready_raises_the_start_failure(ray_local):
    from ladder.rung.driver import Rung

    fake = rung_of(ray_local.remote(num_cpus=0)(Healthy).remote(), [ray_local.remote(num_cpus=0)(Broken).remote()])
    with pytest.raises(ActorStartError, match="Broken .* could not start: OSError: Can't load tokenizer"):
        Rung.ready(fake)


class Loading:
    """Placed at once, then slow in its constructor (an engine loading its model)."""

    def __init__(self):
        time.sleep(120)


def test_an_actor_no_node_can_take_fails_in_one_line_naming_its_resources(ray_local):
    from cluster.placement import PlacementError, actor_options
    from ladder.rung.driver import Rung
    from ladder.spec import RoleResources

    gpu = RoleResources(cpus=0, gpus=1)  # this Ray has no GPU
    fake = rung_of(ray_local.remote(num_cpus=0)(Healthy).remote(),
                   [ray_local.remote(**actor_options(gpu))(Healthy).remote()], placement_timeout_s=1.0)
    fake.spec.resources = fake.spec.resources.model_copy(update={"rollout": gpu})
    raised: list = []
    waiter = threading.Thread(target=lambda: raised.append(pytest.raises(PlacementError, Rung.ready, fake)),
                              daemon=True)
    waiter.start()
    waiter.join(timeout=30)  # a wait without a limit would hang here: a deadline, then the test fails
    assert raised, "Rung.ready still waiting after 30 s on an actor no node can take"
    err = str(raised[0].value)
    assert err.startswith("resources.rollout: a rollout actor found no node within 1 s"), err
    cpus = int(ray_local.cluster_resources()["CPU"])
    assert f"asks for 0 CPU, 1 GPU; the cluster has {cpus} CPU, 0 GPU in total" in err and "\n" not in err


def test_an_actor_placed_and_still_loading_is_waited_for(ray_local):
    """Loading time is not placement time: past the placement timeout, a placed actor is still waited for."""
    from cluster.placement import PlacementError, placed
    from ladder.spec import RoleResources
    from stages.actors import wait_ready

    loading = ray_local.remote(num_cpus=0)(Loading).remote()
    deadline = time.monotonic() + 60  # a worker process may take a while to start on a loaded machine
    while not placed(loading):
        assert time.monotonic() < deadline, "the actor was never placed"
        time.sleep(0.1)
    ended: list = []

    def wait():
        try:
            wait_ready([("trainer", loading, RoleResources(cpus=0))], placement_timeout_s=0.5, poll_s=0.2)
        except Exception as exc:  # noqa: BLE001 (what ended the wait is the finding)
            ended.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(timeout=3)
    assert waiter.is_alive() and not ended, ended  # 3 s past a 0.5 s placement timeout: still waiting
    ray_local.kill(loading)
    waiter.join(timeout=60)
    assert not waiter.is_alive() and ended and not isinstance(ended[0], PlacementError)


def test_a_judge_worker_that_cannot_start_is_not_replaced(ray_local):
    from stages.judge import JudgePool

    respawned = []
    pool = JudgePool([ray_local.remote(num_cpus=0)(Broken).remote()], 4,
                     respawn=lambda: respawned.append(1) or ray_local.remote(num_cpus=0)(Broken).remote())
    with pytest.raises(ActorStartError, match="OSError: Can't load tokenizer"):
        pool.map("score", list(range(6)))
    assert respawned == [] and pool.replaced == 0


def controller(registry):
    from ladder.control.controller import LadderController
    from ladder.progress import Progress, State
    from ladder.spec import parse_spec

    spec = parse_spec({"name": registry.name, "student": {"base": "m"}, "stage_restarts": 2,
                       "judge": {"initial": {"kind": "model", "path": "m"}}, "task": {"source": {"kind": "builtin"}}})
    ctl = LadderController(spec, job="job")
    ctl.registry = registry
    run = registry.client.create_run(registry.experiment_id).info.run_id
    return ctl, Progress(registry.name, "job", state=State.RUNNING, rung_run=run)


def test_the_controller_fails_the_rung_at_once_on_a_start_failure(registry, start_failure, runtime_death):
    ctl, p = controller(registry)
    with pytest.raises(ActorStartError, match="could not start: OSError"):
        after_stage_death(ctl, p, start_failure)
    assert after_stage_death(ctl, p, runtime_death).results.stage_restarts == 1  # a death: back to the checkpoint
