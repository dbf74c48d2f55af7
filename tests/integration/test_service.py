"""The ladder as a service, driven through the CLI as a user would, against a real Ray head (`ray start --head`,
dashboard on, token authentication on) and a real `mlflow server` (artifacts proxied), both on 127.0.0.1 and
stopped by process id: submit, status, lineage, promote, stop, resume; `ray job stop`; one-line CLI errors."""
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from servers import MlflowServer, free_port, stop_group, wait_http  # tests/integration/servers.py

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 with its dashboard and token authentication; yields (env, dashboard URL, GCS)."""
    temp = tempfile.mkdtemp(prefix="/tmp/lt")  # short: Ray's socket paths must fit 107 characters
    home = tempfile.mkdtemp(prefix="ladder-home-")  # no ~/.ray/auth_token of the machine's is seen
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "HOME": home,
           "PATH": f"{BIN}:{os.environ['PATH']}",
           # MLflow's own HTTP retries cut to one: the ladder's retries are what carry it through an outage
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    port, dash = free_port(), free_port()
    # every port on free ones: Ray's fixed defaults (the dashboard agent's 52365) are taken by any other Ray
    # on the machine, such as the test session's own, and a head without its agent cannot take jobs
    ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
             f"--ray-client-server-port={free_port()}"]
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true", "--num-cpus=8",
         f"--temp-dir={temp}", "--disable-usage-stats", *ports],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{dash}/api/version", proc)
        yield env, f"http://127.0.0.1:{dash}", f"127.0.0.1:{port}"
    finally:
        stop_group(proc)
        subprocess.run(["rm", "-rf", temp, home])


@pytest.fixture(scope="module")
def mlflow_proc(tmp_path_factory):
    """The module's `mlflow server`; the fault scenario stops and starts it (an outage)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), str(BIN / "mlflow")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlflow_server(mlflow_proc):
    return mlflow_proc.url


def service_spec(model, workdir, name, tracking_uri, at=None, **overrides):
    """The spec of a service test's ladder, written to `at` (default: `<workdir>/<name>.yaml`)."""
    spec = {
        "name": name, "seed": 0, "rungs": 3, "workdir": str(workdir), "checkpoint_every": 2,
        "student": {"base": model, "init": "previous"},
        "judge": {"initial": {"kind": "verifier", "function": "ladder.tasks.arithmetic:exact"},
                  "mode": "solve", "solve_samples": 2, "solve_reward": "majority"},
        "task": {"source": {"kind": "builtin", "name": "arithmetic", "terms": 4, "max_operand": 5,
                            "train_size": 500}, "eval_size": 8},
        "rollout": {"workers": 1, "group_size": 8, "max_tokens": 40, "kv_cache_gib": 0.25},
        "train": {"lr": 1e-4, "kl_coef": 0.0, "steps": 8, "prompts_per_step": 16},
        "eval": {"every": 4, "calibration_size": 8},
        "promotion": {"policy": "manual", "tolerance": 1.0, "min_auc": 0.0, "collapse_share": 1.0},
        "mlflow": {"tracking_uri": tracking_uri},
    }
    spec.update(overrides)
    path = Path(at or Path(workdir) / f"{name}.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    return path


def ladder(env, *args, check: bool = True, timeout: float = 900, cwd=ROOT):
    res = subprocess.run([sys.executable, "-m", "ladder.cli", *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=timeout)
    if check:
        assert res.returncode == 0, f"ladder {' '.join(args)}: {res.stderr[-2000:]}"
    return res


def progress_of(name, tracking_uri):
    from ladder.registry import Registry

    reg = Registry.find(name, tracking_uri)
    return reg.load_progress() if reg else None


def wait_for(name, tracking_uri, what, timeout_s=900.0, poll_s=1.0):
    """Poll the ladder's saved progress until `what(progress)` holds; fail with the last progress."""
    deadline, p = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        p = progress_of(name, tracking_uri)
        if p is not None and what(p):
            return p
        assert p is None or p.state.value != "failed", p.error
        time.sleep(poll_s)
    pytest.fail(f"{name}: condition not reached in {timeout_s:.0f} s; last progress {p}")


ALIVE = """
import json, sys
from ray.util.state import list_actors
actors = list_actors(address=sys.argv[1], filters=[("state", "=", "ALIVE")], limit=10000)
print(json.dumps([a.name for a in actors if a.name == sys.argv[2] or (a.name or "").startswith(sys.argv[2] + ".")]))
"""


def alive(dashboard, env, name) -> list[str]:
    """Names of live actors of ladder `name` (its controller and stage actors), asked of Ray's State API
    (in a process of its own: Ray reads the authentication mode once per process)."""
    res = subprocess.run([sys.executable, "-c", ALIVE, dashboard, name], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout)


def wait_gone(dashboard, env, name, timeout_s: float = 120.0) -> None:
    """Until Ray reports no live actor of ladder `name` (its controller and stage actors); fails past `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while alive(dashboard, env, name) and time.monotonic() < deadline:
        time.sleep(1)
    assert alive(dashboard, env, name) == []


def steps_logged(tracking_uri, name, rung):
    """The step numbers of every reward.mean logged by rung `rung`'s run (a step logged twice appears twice)."""
    from ladder.registry import Registry

    reg = Registry.find(name, tracking_uri)
    runs = reg.client.search_runs([reg.experiment_id], f"tags.`ladder.rung` = '{rung}'")
    return sorted(m.step for r in runs for m in reg.client.get_metric_history(r.info.run_id, "reward.mean"))


def ray_job_stop(env, dashboard, submission) -> None:
    """`ray job stop` of a submission, as an operator would stop it."""
    stop = subprocess.run([str(BIN / "ray"), "job", "stop", "--address", dashboard, submission], env=env,
                          capture_output=True, text=True, timeout=300)
    assert stop.returncode == 0, stop.stderr[-2000:]


def assert_one_line_refusal(res, expected: str) -> None:
    """Exit 2 with one line on stderr that says `expected`, and no traceback."""
    assert res.returncode == 2 and expected in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_submit_jobstop_status_promote_stop_resume(tiny_model, ray_head, mlflow_server, tmp_path):
    """One ladder through the service's whole life: submitted as a Ray job; `ray job stop` mid-rung stops it
    gracefully (the controller and every stage actor end); `resume` continues the same job; `status`, `lineage`
    and `promote` drive the manual gate; `ladder stop` mid-rung 2 and another `resume` finish it."""
    env, dashboard, gcs = ray_head
    name = "svc"
    # submitted from a folder of the submitter's own, with a relative work directory: on the cluster it is the
    # job's working directory's, and nothing of the ladder lands in the submitter's folder
    laptop = tmp_path / "laptop"
    spec = service_spec(tiny_model, "w", name, mlflow_server, at=laptop / "svc.yaml", rungs=2)
    cli = lambda *args, **kw: ladder(env, *args, cwd=laptop, **kw)  # noqa: E731
    at = ["--address", dashboard]
    track = ["--tracking-uri", mlflow_server]
    sub = json.loads(cli("submit", str(spec), "--address", gcs, "--python", sys.executable,
                            "--json").stdout)
    assert sub["ladder"] == name and sub["submission"]

    again = cli("submit", str(spec), *at, "--python", sys.executable, check=False)
    assert_one_line_refusal(again, "already running")

    # `ray job stop` of the submission: a graceful stop, nothing left running
    wait_for(name, mlflow_server, lambda p: p.rung == 1 and p.step >= 2)
    ray_job_stop(env, dashboard, sub["submission"])
    stopped = wait_for(name, mlflow_server, lambda p: p.state.value == "stopped", timeout_s=300)
    wait_gone(dashboard, env, name)
    assert stopped.rung == 1 and stopped.checkpoint
    res = json.loads(cli("resume", name, *at, *track, "--python", sys.executable, "--json").stdout)
    assert res["job"] == sub["job"] and res["resumed"]

    # the manual gate: status, lineage, promote
    wait_for(name, mlflow_server, lambda p: p.state.value == "awaiting_promotion", timeout_s=600)
    status = json.loads(cli("status", name, *at, *track, "--json").stdout)
    assert status["state"] == "awaiting_promotion" and status["pending_decision"] == "1" and status["rung"] == 1
    assert status["job"] == sub["job"] and status["submission"] == res["submission"] and status["live"] is True
    assert "decision pending on v1" in cli("status", name, *at, *track).stdout
    live = json.loads(cli("status", name, "--address", gcs, *track, "--json").stdout)
    assert live["source"] == "controller" and live["pending_decision"] == "1"  # asked of the controller itself
    rows = json.loads(cli("lineage", name, *track, "--json").stdout)
    assert [(r["version"], r["rung"], r["status"]) for r in rows] == [(1, 1, "candidate")]
    assert steps_logged(mlflow_server, name, 1) == list(range(1, 9))  # a graceful stop redoes no step

    decided = json.loads(cli("promote", name, "1", *track, "--reason", "looks right", "--json").stdout)
    assert decided["status"] == "promoted" and decided["aliases"]["judge"] == "1"

    # `ladder stop` mid-rung 2, then `resume` to the end
    wait_for(name, mlflow_server, lambda p: p.rung == 2 and p.phase.value == "train" and p.step >= 2)
    out = json.loads(cli("stop", name, *at, *track, "--json").stdout)
    assert out["state"] == "stopped" and out["rung"] == 2
    assert alive(dashboard, env, name) == []  # controller and every stage actor are gone
    stopped = progress_of(name, mlflow_server)
    assert stopped.state.value == "stopped" and stopped.step >= 2 and stopped.checkpoint

    res = json.loads(cli("resume", name, *at, *track, "--python", sys.executable, "--json").stdout)
    assert res["job"] == sub["job"] and res["resumed"]
    wait_for(name, mlflow_server, lambda p: p.state.value == "awaiting_promotion" and p.candidate == "2")
    cli("promote", name, *track)  # the pending version
    done = wait_for(name, mlflow_server, lambda p: p.state.value == "completed")
    assert done.job == sub["job"]
    rows = json.loads(cli("lineage", name, *track, "--json").stdout)
    assert [(r["version"], r["rung"], r["status"]) for r in rows] == [(1, 1, "promoted"), (2, 2, "promoted")]
    assert {r["job"] for r in rows} == {sub["job"]}
    assert steps_logged(mlflow_server, name, 2) == list(range(1, 9))  # a graceful stop redoes no step
    wait_gone(dashboard, env, name)  # the controller ends itself once the ladder is over
    assert [p.name for p in laptop.iterdir()] == ["svc.yaml"]  # no work directory, store or cache here
    assert done.checkpoint and not done.checkpoint.startswith(str(tmp_path))
    from ladder.registry import Registry

    assert Registry.find(name, mlflow_server).load_spec(done.parent_run).workdir == "w"


def test_cli_errors_are_one_line(tiny_model, ray_head, mlflow_server, tmp_path):
    from ladder.progress import Progress, State
    from ladder.registry import Registry

    env, dashboard, gcs = ray_head
    track = ["--tracking-uri", mlflow_server]
    spec = service_spec(tiny_model, tmp_path / "w", "svc-errors", mlflow_server)
    reg = Registry("svc-done", mlflow_server)  # a ladder that has ended: nothing is pending
    parent = reg.start_ladder_run(__import__("ladder.spec", fromlist=["load_spec"]).load_spec(spec), "j1")
    reg.save_progress(Progress("svc-done", "j1", state=State.COMPLETED, parent_run=parent))
    cases = {
        "unknown ladder": (["status", "no-such-ladder", *track], "no ladder named 'no-such-ladder'"),
        "unknown version": (["promote", "svc-done", "99", *track], "has no version 99"),
        "no decision pending": (["promote", "svc-done", *track], "no decision pending"),
        "not running": (["stop", "svc-done", *track], "is not running"),
        "unreachable": (["submit", str(spec), "--address", f"http://127.0.0.1:{free_port()}"], "unreachable"),
        "wrong token": (["submit", str(spec), "--address", dashboard], "refused the token"),
        "no token": (["submit", str(spec), "--address", dashboard], "none was given"),
        "dashboard address for run": (["run", str(spec), "--address", dashboard], "dashboard's address"),
    }
    for what, (args, expected) in cases.items():
        run_env = {**env, "RAY_AUTH_TOKEN": "wrong"} if what == "wrong token" else \
            {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"} if what == "no token" else env
        res = ladder(run_env, *args, check=False, timeout=300)
        assert res.returncode == 2, f"{what}: exit {res.returncode}: {res.stderr[-1500:]}"
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in res.stderr, f"{what}: {res.stderr}"


PID = """
import json, re, sys
from ray.util.state import list_actors
found = list_actors(address=sys.argv[1], filters=[("state", "=", "ALIVE")], limit=10000)
print(json.dumps([a.pid for a in found if re.fullmatch(sys.argv[2], a.name or "")]))
"""


def actor_pid(dashboard, env, name_pattern, timeout_s=120.0) -> int:
    """The process id of the live actor whose name matches `name_pattern`, as Ray reports it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        res = subprocess.run([sys.executable, "-c", PID, dashboard, name_pattern], env=env, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        pids = json.loads(res.stdout)
        if pids:
            return pids[0]
        time.sleep(1)
    pytest.fail(f"no live actor named like {name_pattern}")


OUTAGE_S = 30.0


def outage_from_first_step(mlflow_proc, name, rung, meanwhile):
    """SIGKILL the MLflow server as soon as rung `rung` has logged a step (before its first checkpoint, which
    waits for MLflow), call `meanwhile()` during the outage, start the server again OUTAGE_S later on the same
    port and store; returns (down, up, what `meanwhile` returned), times as `time.time()`."""
    deadline = time.monotonic() + 600
    while not steps_logged(mlflow_proc.url, name, rung):
        assert time.monotonic() < deadline, f"rung {rung} logged no step"
        time.sleep(0.1)
    mlflow_proc.stop(grace_s=0)  # MLflow goes away mid-rung, at once
    down = time.time()
    found = meanwhile()
    time.sleep(max(0.0, down + OUTAGE_S - time.time()))  # the outage itself
    up = time.time()
    mlflow_proc.start()
    return down, up, found


def steps_redone(uri, name, rung, steps, every) -> int:
    """Rung `rung` logged each of its `steps` steps, and again at most one checkpoint interval (`every`) of
    them; returns how many were logged twice."""
    logged = steps_logged(uri, name, rung)
    assert sorted(set(logged)) == list(range(1, steps + 1)) and len(logged) - steps <= every  # one interval redone
    return len(logged) - steps


def test_killed_driver_killed_controller_killed_trainer_and_an_mlflow_outage(tiny_model, ray_head, mlflow_proc,
                                                                            tmp_path, fault_figures):
    """Four faults in one ladder. SIGKILL the driver of a `ladder run`: the ladder goes on. SIGKILL its controller
    mid-rung: Ray restarts it and it re-enters the saved phase from the last checkpoint. SIGKILL the `mlflow
    server` (its process group) at rung 2's first logged step and start it again 30 s later on the same port and
    store (MLflow's own HTTP retries are cut to one, so the ladder's retries carry it): training goes on
    meanwhile and every metric arrives. SIGKILL the trainer in rung 2: the rung restarts from its checkpoint on
    fresh actors. No step is logged twice beyond one checkpoint interval; one version per rung."""
    env, dashboard, gcs = ray_head
    mlflow_server = mlflow_proc.url
    name, steps, every = "svc-faults", 12, 4
    spec = service_spec(tiny_model, tmp_path / "w", name, mlflow_server, rungs=2, checkpoint_every=every,
                        train={"lr": 1e-4, "kl_coef": 0.0, "steps": steps, "prompts_per_step": 16},
                        promotion={"policy": "auto", "tolerance": 1.0, "min_auc": 0.0, "collapse_share": 1.0})
    driver = subprocess.Popen([sys.executable, "-m", "ladder.cli", "run", str(spec), "--address", gcs], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        at_driver_kill = wait_for(name, mlflow_server, lambda p: p.rung == 1 and p.step >= every).step
        pid = actor_pid(dashboard, env, name)  # looked up now: the kill below must land mid-rung
        driver.kill()
        assert driver.wait(60) == -signal.SIGKILL
        driver_killed = time.monotonic()
        status = json.loads(ladder(env, "status", name, "--address", dashboard, "--tracking-uri", mlflow_server,
                                   "--json").stdout)
        assert status["live"] is True and status["state"] == "running"
        before = wait_for(name, mlflow_server, lambda p: p.rung == 1 and p.step > at_driver_kill)  # went on without it
        driver_gap = time.monotonic() - driver_killed

        os.kill(pid, signal.SIGKILL)
        killed_at, killed_step = time.monotonic(), before.step
        back = wait_for(name, mlflow_server, lambda p: p.rung > 1 or p.step > killed_step)
        recovery = time.monotonic() - killed_at
        assert actor_pid(dashboard, env, name) != pid  # Ray started a new controller process

        trainer_pattern = rf"{name}\.{back.job}\.trainer\..*"
        down, up, trainer = outage_from_first_step(mlflow_proc, name, 2, lambda: actor_pid(dashboard, env,
                                                                                           trainer_pattern))
        at_trainer_kill = wait_for(name, mlflow_server, lambda p: p.rung == 2 and p.step >= every).step
        os.kill(trainer, signal.SIGKILL)  # the rung starts again from its checkpoint on fresh actors
        trainer_killed = time.monotonic()
        restarted = wait_for(name, mlflow_server, lambda p: p.results.stage_restarts >= 1
                             or p.state.value == "completed")
        wait_for(name, mlflow_server, lambda p: p.state.value == "completed" or p.phase.value != "train"
                 or p.step > restarted.step)  # the restarted rung's next checkpoint (or its end)
        trainer_recovery = time.monotonic() - trainer_killed
        wait_for(name, mlflow_server, lambda p: p.state.value == "completed")
    finally:
        if driver.poll() is None:
            driver.kill()
        if mlflow_proc.proc.poll() is not None:
            mlflow_proc.start()  # the module's later tests need it
    from ladder.registry import Registry

    reg = Registry.find(name, mlflow_server)
    versions = reg.versions()
    assert [(v.version, v.tags["ladder.rung"]) for v in versions] == [("1", "1"), ("2", "2")]
    redone1 = steps_redone(mlflow_server, name, 1, steps, every)
    redone2 = steps_redone(mlflow_server, name, 2, steps, every)
    rung2 = reg.client.get_run(versions[1].run_id)
    assert rung2.data.metrics["faults.stage_restarts"] == 1.0  # the trainer's death is on record
    during = sorted({m.step for m in reg.client.get_metric_history(versions[1].run_id, "reward.mean")
                     if down * 1000 <= m.timestamp <= up * 1000})
    assert during, "no step ran while MLflow was down: training waited for it"
    retries = reg.client.get_metric_history(versions[1].run_id, "faults.mlflow_retries")
    assert retries and max(m.value for m in retries) >= 1
    fault_figures(f"driver of `ladder run` SIGKILL at rung 1 step >= {at_driver_kill}",
                  f"the ladder went on without it: checkpoint step {before.step} saved {driver_gap:.0f} s after the kill")
    fault_figures(f"controller actor SIGKILL at rung 1 step >= {killed_step}",
                  f"Ray restarted it; it re-entered the rung from its last checkpoint; progress at checkpoint step "
                  f"{back.step} {recovery:.0f} s after the kill; rung-1 steps logged twice: {redone1} "
                  f"(checkpoint interval {every}); one version per rung")
    fault_figures(f"trainer SIGKILL at rung 2 step >= {at_trainer_kill}",
                  f"the rung restarted from its checkpoint at step {restarted.step} on new actors and saved its next "
                  f"checkpoint {trainer_recovery:.0f} s after the kill; faults.stage_restarts = 1")
    fault_figures(f"MLflow server SIGKILL for {OUTAGE_S:.0f} s from rung 2's first logged step, then started on "
                  "the same port and store",
                  f"steps {during} ran meanwhile; {int(max(m.value for m in retries))} delivery retries; rung-2 steps "
                  f"logged twice: {redone2} (the trainer kill's redone interval); one version per rung")
