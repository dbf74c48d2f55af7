"""Faults in a ladder run as a service (a real `ray start --head` and `mlflow server`, as in test_service.py, in a
module of its own so a run's two test processes take the two side by side): a killed driver, controller and
trainer, and an MLflow outage."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from service import ROOT, actor_pid, ladder, service_spec, steps_logged, wait_for

pytestmark = pytest.mark.integration


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
