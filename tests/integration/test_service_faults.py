"""Faults in a ladder run as a service (a real `ray start --head` and `mlflow server`, as in test_service.py, in a
module of its own so a run's two test processes take the two side by side): a killed driver, trainer and
controller, an MLflow outage, and a version promoted by hand that the rung in progress does not train against."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from service import (ROOT, actor_pid, judged_by_rung_one, ladder, progress_of, register_by_hand, service_spec,
                     steps_logged, untrained_model, wait_for)

pytestmark = pytest.mark.integration


OUTAGE_S = 30.0


def outage_from_first_step(mlflow_proc, name, rung):
    """SIGKILL the MLflow server as soon as rung `rung` has logged a step (before its first checkpoint, which
    waits for MLflow), start it again OUTAGE_S later on the same port and store; returns (down, up), times as
    `time.time()`."""
    deadline = time.monotonic() + 600
    while not steps_logged(mlflow_proc.url, name, rung):
        assert time.monotonic() < deadline, f"rung {rung} logged no step"
        time.sleep(0.1)
    mlflow_proc.stop(grace_s=0)  # MLflow goes away mid-rung, at once
    down = time.time()
    time.sleep(max(0.0, down + OUTAGE_S - time.time()))  # the outage itself
    up = time.time()
    mlflow_proc.start()
    return down, up


def steps_redone(uri, name, rung, steps, every) -> int:
    """Rung `rung` logged each of its `steps` steps, and again at most one checkpoint interval (`every`) of
    them; returns how many were logged twice."""
    logged = steps_logged(uri, name, rung)
    assert sorted(set(logged)) == list(range(1, steps + 1)) and len(logged) - steps <= every  # one interval redone
    return len(logged) - steps


def kill_trainer(dashboard, env, name, uri, steps, every):
    """SIGKILL the trainer at rung 1's first checkpoint (its pid looked up before, so the kill lands mid-rung on a
    busy machine too): the rung restarts from that checkpoint on fresh actors. Returns (the step it was killed at,
    the checkpoint it restarted from, the seconds until the restarted rung's next checkpoint or its end)."""
    job = wait_for(name, uri, lambda p: p.rung == 1 and p.phase.value == "train").job
    pid = actor_pid(dashboard, env, rf"{name}\.{job}\.trainer\..*")
    at = wait_for(name, uri, lambda p: p.rung == 1 and p.step >= every, poll_s=0.2)
    assert at.phase.value == "train" and at.step < steps, f"rung 1 ended its steps before the kill: {at}"
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    restarted = wait_for(name, uri, lambda p: p.rung > 1 or p.results.stage_restarts >= 1)
    wait_for(name, uri, lambda p: p.rung > 1 or p.phase.value != "train" or p.step > restarted.step)
    return at.step, restarted.step, time.monotonic() - killed


def kill_driver(driver, dashboard, env, name, uri):
    """SIGKILL the driver of `ladder run`: the ladder goes on without it. Returns (the progress when it was killed,
    the progress saved after it, the seconds until then)."""
    at = progress_of(name, uri)
    driver.kill()
    assert driver.wait(60) == -signal.SIGKILL
    killed = time.monotonic()
    status = json.loads(ladder(env, "status", name, "--address", dashboard, "--tracking-uri", uri, "--json").stdout)
    assert status["live"] is True and status["state"] == "running"
    after = wait_for(name, uri, lambda p: (p.rung, p.step) > (at.rung, at.step))  # went on without it
    return at, after, time.monotonic() - killed


def promote_then_kill_controller(dashboard, env, name, uri, hand, steps, every):
    """Early in rung 2 a version registered by hand is promoted (`judge` names it from then on); at the rung's
    first checkpoint the controller is SIGKILLed: Ray restarts it, and it re-enters the rung from that checkpoint
    against the judge pinned at the rung's start, whatever the alias says by then. Returns (the step it was killed
    at, when, as `time.time()`, the seconds until the restarted controller's next checkpoint)."""
    from ladder.registry import Registry

    pid = actor_pid(dashboard, env, name)
    Registry(name, uri).promote(hand, by="someone", reason="by hand, mid-rung")  # judge and champion move to it
    at = wait_for(name, uri, lambda p: p.rung == 2 and p.step >= every, poll_s=0.2)
    assert at.phase.value == "train" and at.step < steps, f"rung 2 ended its steps before the kill: {at}"
    os.kill(pid, signal.SIGKILL)
    killed, killed_at = time.monotonic(), time.time()
    wait_for(name, uri, lambda p: p.rung > 2 or p.phase.value != "train" or p.step > at.step)
    recovery = time.monotonic() - killed
    assert actor_pid(dashboard, env, name) != pid  # Ray started a new controller process
    return at.step, killed_at, recovery


def test_five_faults_in_one_service_ladder(tiny_model, ray_head, mlflow_proc, tmp_path, fault_figures):
    """Five faults in one ladder. SIGKILL the trainer in rung 1: the rung restarts from its checkpoint on fresh
    actors. SIGKILL the driver of the `ladder run`: the ladder goes on. SIGKILL the `mlflow server` (its process
    group) at rung 2's first logged step and start it again 30 s later on the same port and store (MLflow's own HTTP
    retries are cut to one, so the ladder's retries carry it): training goes on meanwhile and every metric arrives.
    Promote an untrained model by hand mid-rung 2, then SIGKILL the controller: Ray restarts it, it re-enters the
    rung from the last checkpoint, and the rung keeps the judge pinned at its start. No step is logged twice beyond
    one checkpoint interval; one version per rung."""
    env, dashboard, gcs = ray_head
    uri = mlflow_proc.url
    name, steps, every = "svc-faults", 12, 4
    spec = service_spec(tiny_model, tmp_path / "w", name, uri, rungs=2, checkpoint_every=every,
                        train={"lr": 1e-4, "kl_coef": 0.0, "steps": steps, "prompts_per_step": 16},
                        promotion={"policy": "auto", "tolerance": 1.0, "min_auc": 0.0, "collapse_share": 1.0})
    # registered by hand before the ladder starts (version 1, no alias names it): mid-rung 2 only its promotion
    # remains, a few MLflow calls, so the kill after it lands inside the rung on a loaded machine too
    hand = register_by_hand(name, uri, untrained_model(tmp_path / "untrained"))
    driver = subprocess.Popen([sys.executable, "-m", "ladder.cli", "run", str(spec), "--address", gcs], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        at_trainer_kill, restarted_at, trainer_recovery = kill_trainer(dashboard, env, name, uri, steps, every)
        at_driver_kill, after_driver, driver_gap = kill_driver(driver, dashboard, env, name, uri)
        down, up = outage_from_first_step(mlflow_proc, name, 2)
        at_controller_kill, killed_at, recovery = promote_then_kill_controller(dashboard, env, name, uri, hand,
                                                                               steps, every)
        wait_for(name, uri, lambda p: p.state.value == "completed")
    finally:
        if driver.poll() is None:
            driver.kill()
        if mlflow_proc.proc.poll() is not None:
            mlflow_proc.start()  # the module's later tests need it
    from ladder.registry import Registry

    reg = Registry.find(name, uri)
    versions = reg.versions()
    assert [(v.version, v.tags.get("ladder.rung")) for v in versions] == [(hand, None), ("2", "1"), ("3", "2")]
    redone1 = steps_redone(uri, name, 1, steps, every)
    redone2 = steps_redone(uri, name, 2, steps, every)
    assert reg.client.get_run(versions[1].run_id).data.metrics["faults.stage_restarts"] == 1.0  # on record
    judged_by_rung_one(uri, name, rung=2, steps=steps)
    trained = reg.client.get_metric_history(versions[2].run_id, "reward.mean")
    assert max(m.timestamp for m in trained) > killed_at * 1000  # the restarted controller trained rung-2 steps
    during = sorted({m.step for m in trained if down * 1000 <= m.timestamp <= up * 1000})
    assert during, "no step ran while MLflow was down: training waited for it"
    retries = reg.client.get_metric_history(versions[2].run_id, "faults.mlflow_retries")
    assert retries and max(m.value for m in retries) >= 1
    fault_figures(f"trainer SIGKILL at rung 1 step >= {at_trainer_kill}",
                  f"the rung restarted from its checkpoint at step {restarted_at} on new actors and saved its next "
                  f"checkpoint {trainer_recovery:.0f} s after the kill; rung-1 steps logged twice: {redone1} "
                  f"(checkpoint interval {every}); faults.stage_restarts = 1")
    fault_figures(f"driver of `ladder run` SIGKILL at rung {at_driver_kill.rung} step >= {at_driver_kill.step}",
                  f"the ladder went on without it: rung {after_driver.rung} step {after_driver.step} saved "
                  f"{driver_gap:.0f} s after the kill")
    fault_figures(f"MLflow server SIGKILL for {OUTAGE_S:.0f} s from rung 2's first logged step, then started on "
                  "the same port and store",
                  f"steps {during} ran meanwhile; {int(max(m.value for m in retries))} delivery retries")
    fault_figures(f"an untrained version promoted by hand, then the controller actor SIGKILL, at rung 2 step >= "
                  f"{at_controller_kill}",
                  f"Ray restarted it; it re-entered the rung from its last checkpoint against the pinned judge, rung 1's version "
                  f"(parse failures < 0.5 every step); checkpoint {recovery:.0f} s after the kill; rung-2 steps "
                  f"logged twice: {redone2} (checkpoint interval {every}); one version per rung")
