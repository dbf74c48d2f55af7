"""A failed ladder says so in MLflow: its `failed` state is saved even when the metrics outbox has given up, its
error texts fit MLflow's tag limit; and a ladder asking for more than the cluster has in total is refused."""
import pytest

from ladder.progress import ERROR_MAX_CHARS, Phase, State


def failing_controller(registry, handler):
    from ladder.control.controller import LadderController
    from ladder.spec import parse_spec

    spec = parse_spec({"name": registry.name, "student": {"base": "m"},
                       "judge": {"initial": {"kind": "model", "path": "m"}}, "task": {"source": {"kind": "builtin"}}})
    ctl = LadderController(spec, job="job")
    registry.buffer_writes()
    ctl.registry = registry
    ctl.prepare = lambda: None  # the registry above; no tasks, no actors
    ctl.HANDLERS = {Phase.TRAIN: handler}
    return ctl


def test_a_failed_state_is_saved_when_the_metrics_outbox_has_given_up(registry):
    def train(ctl, p):  # a metric write MLflow refuses for good: the outbox gives up, the next write raises
        ctl.registry.outbox.put("log metrics", lambda: (_ for _ in ()).throw(ValueError("INVALID_PARAMETER_VALUE")))
        ctl.registry.flush_writes()
    ctl = failing_controller(registry, train)
    ctl.run()
    saved = registry.load_progress("job")
    assert saved.state is State.FAILED and "INVALID_PARAMETER_VALUE" in saved.error
    assert registry.client.get_run(saved.parent_run).info.status == "FAILED"


def test_error_texts_fit_mlflow_tags(registry):
    from ladder.registry.tracking import TAG_MAX_CHARS

    def train(ctl, p):
        raise RuntimeError("x" * 20000)
    ctl = failing_controller(registry, train)
    ctl.run()
    saved = registry.load_progress("job")
    assert saved.state is State.FAILED and len(saved.error) <= ERROR_MAX_CHARS and saved.error.endswith("(cut off)")
    run = registry.client.create_run(registry.experiment_id).info.run_id
    registry.fail_run(run, "failed: " + "y" * 20000)  # MLflow refuses a longer tag: the failure would be lost
    assert len(registry.client.get_run(run).data.tags["ladder.ended_by"]) <= TAG_MAX_CHARS


def spec(**fields):
    from ladder.spec import parse_spec

    return parse_spec({"name": "p", "student": {"base": "m"}, "judge": {"initial": {"kind": "model", "path": "m"}},
                       "task": {"source": {"kind": "builtin"}}, **fields})


def node(cpus, gpus=0, custom=None):
    return {"Alive": True, "Resources": {"CPU": cpus, "GPU": gpus, **(custom or {})}}


def test_the_sum_of_what_the_ladder_asks_is_checked_per_resource():
    from cluster.placement import over_capacity, unplaceable

    gpus = spec(rollout={"workers": 2}, judge_pool={"workers": 2},
                resources={"rollout": {"gpus": 1}, "judge": {"gpus": 1}, "trainer": {"gpus": 1}})
    four = [node(8, gpus=1) for _ in range(4)]
    assert unplaceable(gpus, four) is None  # each actor fits on a node of its own ...
    assert over_capacity(gpus, four) == ("resources: the ladder asks for 5 GPU in total (rollout 2 x 1, judge 2 x 1, "
                                         "trainer 1 x 1); the cluster has 4 GPU on 4 live nodes")  # ... not all
    assert over_capacity(gpus, four + [node(8, gpus=1)]) is None
    cpus = spec(rollout={"workers": 3}, judge_pool={"workers": 1}, resources={"rollout": {"cpus": 2}})
    assert "asks for 8 CPU in total" in over_capacity(cpus, [node(3), node(2)])  # 3x2 + judge 1 + trainer 1
    assert over_capacity(cpus, [node(4), node(4)]) is None
    custom = spec(judge_pool={"workers": 2}, resources={"judge": {"custom": {"judge_node": 1}}})
    assert "2 judge_node in total (judge 2 x 1); the cluster has 1 judge_node" in \
        over_capacity(custom, [node(8), node(8, custom={"judge_node": 1})])


def test_placement_refuses_before_any_actor_starts(monkeypatch):
    import ray

    from cluster.placement import PlacementError, check_placement

    monkeypatch.setattr(ray, "nodes", lambda: [node(2, gpus=1), node(2, gpus=1)])
    with pytest.raises(PlacementError, match="asks for 3 GPU in total"):
        check_placement(spec(resources={"rollout": {"gpus": 1}, "judge": {"gpus": 1}, "trainer": {"gpus": 1}}))


def test_a_controllers_cleanup_with_no_actors_starts_no_ray():
    """What a controller's end runs (`kill_all` of its actors, `kill_started`), with no actor to kill (a ladder run
    in-process that failed before any started, a CLI process): no Ray is started or joined. Ray starts one at the
    first call that needs it, a bare `ray.init()` that joins any Ray of the machine; it did, in a test process that
    had none yet, and the next `ray.init` of that process failed ("called ray.init twice"). In a process of its own:
    one with a Ray already up could not tell."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("from stages.actors import StartGuard, kill_all; kill_all([]); StartGuard().kill_started(); "
            "import ray; print(ray.is_initialized())")
    res = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "False", res.stderr[-2000:]


def test_waiting_on_a_local_job_returns_its_exit_status(tmp_path):
    """`submit --wait` / `resume --wait` of a local job exit non-zero when the ladder failed: `follow_local` gives the
    job process' own status (it exits 1 for a failed ladder). It returned 0 whatever the end, so a resume whose
    ladder failed at once looked like a success to a script."""
    import io
    import subprocess
    import sys

    from cluster.submit import follow_local

    for code in (0, 1):
        log = tmp_path / f"job-{code}.log"
        proc = subprocess.Popen([sys.executable, "-c", f"print('the ladder ended'); raise SystemExit({code})"],
                                stdout=log.open("w"), stderr=subprocess.STDOUT)
        out = io.StringIO()
        assert follow_local({"process": proc, "log": str(log)}, out, poll_s=0.05) == code
        assert "the ladder ended" in out.getvalue()
