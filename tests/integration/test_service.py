"""The ladder as a service, driven through the CLI as a user would, against a real Ray head (`ray start --head`,
dashboard on, token authentication on) and a real `mlflow server` (artifacts proxied), both on 127.0.0.1 and
stopped by process id, shared by the module's ladders: submit, status, lineage, promote, stop, resume; `ray job
stop`; one-line CLI errors; and faults in a ladder run on that cluster (a killed driver, trainer and controller, an
MLflow outage, and a version promoted by hand that the rung in progress does not train against)."""
import json
import subprocess
import sys

import pytest
from servers import refusing_port  # tests/integration/servers.py
from service import (OUTAGE_S, ROOT, actor_pid, alive, assert_one_line_refusal, judged_by_rung_one, kill_driver,
                     kill_trainer, ladder, outage_from_first_step, paused, progress_of, promote_then_kill_controller,
                     ray_job_stop, register_by_hand, restarted_on_kept_workers, service_spec, steps_logged,
                     logged_once, trained_through_outage, untrained_model, wait_for, wait_gone)

pytestmark = pytest.mark.integration


def manual_gate(cli, name, sub, res, at, track, gcs, uri) -> None:
    """Rung 1 of the service ladder at its manual gate: `status` (from MLflow and from the controller itself) and
    `lineage` show the pending decision, then `promote` makes version 1 the judge."""
    wait_for(name, uri, lambda p: p.state.value == "awaiting_promotion", timeout_s=600)
    status = json.loads(cli("status", name, *at, *track, "--json").stdout)
    assert status["state"] == "awaiting_promotion" and status["pending_decision"] == "1" and status["rung"] == 1
    assert status["job"] == sub["job"] and status["submission"] == res["submission"] and status["live"] is True
    assert "decision pending on v1" in cli("status", name, *at, *track).stdout
    live = json.loads(cli("status", name, "--address", gcs, *track, "--json").stdout)
    assert live["source"] == "controller" and live["pending_decision"] == "1"  # asked of the controller itself
    rows = json.loads(cli("lineage", name, *track, "--json").stdout)
    assert [(r["version"], r["rung"], r["status"]) for r in rows] == [(1, 1, "candidate")]
    assert steps_logged(uri, name, 1) == list(range(1, 9))  # a graceful stop redoes no step

    decided = json.loads(cli("promote", name, "1", *track, "--reason", "looks right", "--json").stdout)
    assert decided["status"] == "promoted" and decided["aliases"]["judge"] == "1"


def stop_mid_rung_two(cli, env, name, at, track, dashboard, uri):
    """`ladder stop` once rung 2 has logged a step: it ends mid-rung with a checkpoint and no actor alive; returns
    the saved progress."""
    wait_for(name, uri, lambda p: p.rung == 2 and p.phase.value == "train" and steps_logged(uri, name, 2))
    out = json.loads(cli("stop", name, *at, *track, "--json").stdout)
    assert out["state"] == "stopped" and out["rung"] == 2
    assert alive(dashboard, env, name) == []  # controller and every stage actor are gone
    stopped = progress_of(name, uri)
    assert stopped.state.value == "stopped" and stopped.phase.value == "train" and 1 <= stopped.step < 12
    assert stopped.checkpoint
    return stopped


def job_stop_mid_rung_one(env, name, sub, dashboard, uri) -> None:
    """`ray job stop` of the submission while rung 1 trains: a graceful stop (the step in flight ends and is
    checkpointed), nothing left running. The rung's trainer is paused (SIGSTOP) from its second step until the job
    has stopped: `ray job stop` takes seconds, a step of rung 1 under one (a run saw the stop land after the rung)."""
    p = wait_for(name, uri, lambda p: p.rung == 1 and p.step >= 2, poll_s=0.2,
                 near=lambda p: p.rung == 1 and p.phase.value == "train")
    with paused(actor_pid(dashboard, env, rf"{name}\.{p.job}\.trainer\..*")):
        ray_job_stop(env, dashboard, sub["submission"])
    stopped = wait_for(name, uri, lambda p: p.state.value == "stopped", timeout_s=300)
    wait_gone(dashboard, env, name)
    assert stopped.rung == 1 and stopped.phase.value == "train" and 2 <= stopped.step < 8, stopped
    assert stopped.checkpoint.endswith(f"step-{stopped.step:05d}")  # the step it ended checkpointed


def test_submit_jobstop_status_promote_stop_resume(tiny_model, ray_head, mlflow_server, tmp_path):
    """One ladder through the service's life: submitted as a Ray job; `ray job stop` mid-rung stops it gracefully
    (the controller and every stage actor end); `resume` continues the same job without redoing a step; `status`,
    `lineage` and `promote` drive the manual gate; `ladder stop` mid-rung 2 ends it with a checkpoint. (A resume
    after a stop against a version promoted by hand meanwhile, and a ladder that ends itself once completed: the
    five-faults scenario below.)"""
    from ladder.registry.registry import Registry

    env, dashboard, gcs = ray_head
    name = "svc"
    # submitted from a folder of the submitter's own, with a relative work directory: on the cluster it is the
    # job's working directory's, and nothing of the ladder lands in the submitter's folder
    laptop = tmp_path / "laptop"
    # rung 2 is longer: the `ladder stop` below (a CLI process, seconds on a busy machine) lands well inside it
    spec = service_spec(tiny_model, "w", name, mlflow_server, at=laptop / "svc.yaml", rungs=2,
                        schedule=[{"rung": 2, "train": {"steps": 12}}])
    cli = lambda *args, **kw: ladder(env, *args, cwd=laptop, **kw)  # noqa: E731
    at = ["--address", dashboard]
    track = ["--tracking-uri", mlflow_server]
    sub = json.loads(cli("submit", str(spec), "--address", gcs, "--python", sys.executable, "--json").stdout)
    assert sub["ladder"] == name and sub["submission"]

    again = cli("submit", str(spec), *at, "--python", sys.executable, check=False)
    assert_one_line_refusal(again, "already running")

    job_stop_mid_rung_one(env, name, sub, dashboard, mlflow_server)
    res = json.loads(cli("resume", name, *at, *track, "--python", sys.executable, "--json").stdout)
    assert res["job"] == sub["job"] and res["resumed"]

    manual_gate(cli, name, sub, res, at, track, gcs, mlflow_server)

    stopped = stop_mid_rung_two(cli, env, name, at, track, dashboard, mlflow_server)
    assert stopped.job == sub["job"] and stopped.judge == f"{name}/v1"  # rung 2 against the version promoted
    rows = json.loads(cli("lineage", name, *track, "--json").stdout)
    assert [(r["version"], r["rung"], r["status"], r["job"]) for r in rows] == [(1, 1, "promoted", sub["job"])]
    assert [p.name for p in laptop.iterdir()] == ["svc.yaml"]  # no work directory, store or cache here
    assert not stopped.checkpoint.startswith(str(tmp_path))
    assert Registry.find(name, mlflow_server).load_spec(stopped.parent_run).workdir == "w"


def test_five_faults_in_one_service_ladder(tiny_model, ray_head, mlflow_proc, tmp_path, fault_figures):
    """Five faults in one ladder. SIGKILL the trainer in rung 1: the rung restarts from its checkpoint on a new
    trainer and the rollout engine that outlived it. SIGKILL the driver of the `ladder run`: the ladder goes on.
    SIGKILL the `mlflow server` (its process group) at rung 2's first logged step and start it again OUTAGE_S (20 s)
    later on the same port and store (MLflow's own HTTP retries are cut to one, so the ladder's retries carry it): training
    goes on meanwhile and every metric arrives.
    Promote an untrained model by hand mid-rung 2, then SIGKILL the controller: Ray restarts it, it re-enters the
    rung from the last checkpoint, and the rung keeps the judge pinned at its start. Every step is logged once (a
    redone step keeps its first metrics); one version per rung."""
    (env, dashboard, gcs), uri = ray_head, mlflow_proc.url
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
        wait_gone(dashboard, env, name)  # the controller ends itself once the ladder is over
    finally:
        if driver.poll() is None:
            driver.kill()
        if mlflow_proc.proc.poll() is not None:
            mlflow_proc.start()  # the module's later tests need it
    from ladder.registry.registry import Registry

    reg = Registry.find(name, uri)
    versions = reg.versions()
    assert [(v.version, v.tags.get("ladder.rung")) for v in versions] == [(hand, None), ("2", "1"), ("3", "2")]
    logged_once(uri, name, 1, steps)
    logged_once(uri, name, 2, steps)
    restarted_on_kept_workers(reg, versions[1].run_id)
    judged_by_rung_one(uri, name, rung=2, steps=steps)
    trained = reg.client.get_metric_history(versions[2].run_id, "reward.mean")
    assert max(m.timestamp for m in trained) > killed_at * 1000  # the restarted controller trained rung-2 steps
    during, retries = trained_through_outage(reg, versions[2].run_id, trained, down, up)
    fault_figures(f"trainer SIGKILL at rung 1 step >= {at_trainer_kill}",
                  f"the rung restarted from its checkpoint at step {restarted_at} on a new trainer and the kept workers "
                  f"and saved its next "
                  f"checkpoint {trainer_recovery:.0f} s after the kill; every rung-1 step logged once "
                  f"(checkpoint interval {every}); faults.stage_restarts = 1")
    fault_figures(f"driver of `ladder run` SIGKILL at rung {at_driver_kill.rung} step >= {at_driver_kill.step}",
                  f"the ladder went on without it: rung {after_driver.rung} step {after_driver.step} saved "
                  f"{driver_gap:.0f} s after the kill")
    fault_figures(f"MLflow server SIGKILL for {OUTAGE_S:.0f} s from rung 2's first logged step, then started on "
                  "the same port and store",
                  f"steps {during} ran meanwhile; {retries} delivery retries")
    fault_figures(f"an untrained version promoted by hand, then the controller actor SIGKILL, at rung 2 step >= "
                  f"{at_controller_kill}",
                  f"Ray restarted it; it re-entered the rung from its last checkpoint against the pinned judge, rung 1's version "
                  f"(parse failures < 0.5 every step); checkpoint {recovery:.0f} s after the kill; every rung-2 "
                  f"step logged once (checkpoint interval {every}); one version per rung")


def test_cli_errors_are_one_line(tiny_model, ray_head, mlflow_server, tmp_path):
    from ladder.progress import Progress, State
    from ladder.registry.registry import Registry

    env, dashboard, gcs = ray_head
    track = ["--tracking-uri", mlflow_server]
    spec = service_spec(tiny_model, tmp_path / "w", "svc-errors", mlflow_server)
    reg = Registry("svc-done", mlflow_server)  # a ladder that has ended: nothing is pending
    parent = reg.start_ladder_run(__import__("ladder.spec", fromlist=["load_spec"]).load_spec(spec), "j1")
    reg.save_progress(Progress("svc-done", "j1", state=State.COMPLETED, parent_run=parent))
    with refusing_port() as closed:  # nothing answers there, and no server another test starts can take it
        cases = {
            "unknown ladder": (["status", "no-such-ladder", *track], "no ladder named 'no-such-ladder'"),
            "unknown version": (["promote", "svc-done", "99", *track], "has no version 99"),
            "no decision pending": (["promote", "svc-done", *track], "no decision pending"),
            "not running": (["stop", "svc-done", *track], "is not running"),
            "unreachable": (["submit", str(spec), "--address", f"http://127.0.0.1:{closed}"], "unreachable"),
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
