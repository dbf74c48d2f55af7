"""The ladder as a service, driven through the CLI as a user would, against a real Ray head (`ray start --head`,
dashboard on, token authentication on) and a real `mlflow server` (artifacts proxied), both on 127.0.0.1 and
stopped by process id: submit, status, lineage, promote, stop, resume; `ray job stop`; one-line CLI errors."""
import json
import sys

import pytest
from servers import free_port  # tests/integration/servers.py
from service import (alive, assert_one_line_refusal, judged_by_rung_one, ladder, progress_of, promote_by_hand,
                     ray_job_stop, service_spec, steps_logged, untrained_model, wait_for, wait_gone)

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


def stop_mid_rung_two_and_promote_by_hand(cli, env, name, at, track, dashboard, uri, untrained_dir) -> str:
    """`ladder stop` once rung 2 has logged a step: it ends mid-rung with a checkpoint and no actor alive. While it
    is stopped, someone promotes an untrained model by hand (`judge` names it now); returns its version."""
    wait_for(name, uri, lambda p: p.rung == 2 and p.phase.value == "train" and steps_logged(uri, name, 2))
    out = json.loads(cli("stop", name, *at, *track, "--json").stdout)
    assert out["state"] == "stopped" and out["rung"] == 2
    assert alive(dashboard, env, name) == []  # controller and every stage actor are gone
    stopped = progress_of(name, uri)
    assert stopped.state.value == "stopped" and stopped.phase.value == "train" and 1 <= stopped.step < 12
    assert stopped.checkpoint
    return promote_by_hand(env, name, uri, untrained_model(untrained_dir), *track)


def test_submit_jobstop_status_promote_stop_resume(tiny_model, ray_head, mlflow_server, tmp_path):
    """One ladder through the service's whole life: submitted as a Ray job; `ray job stop` mid-rung stops it
    gracefully (the controller and every stage actor end); `resume` continues the same job; `status`, `lineage`
    and `promote` drive the manual gate; `ladder stop` mid-rung 2 and another `resume` finish it. A version
    promoted by hand while the ladder is stopped does not change rung 2's judge: it was pinned at the rung's start."""
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

    # `ray job stop` of the submission: a graceful stop, nothing left running
    wait_for(name, mlflow_server, lambda p: p.rung == 1 and p.step >= 2)
    ray_job_stop(env, dashboard, sub["submission"])
    stopped = wait_for(name, mlflow_server, lambda p: p.state.value == "stopped", timeout_s=300)
    wait_gone(dashboard, env, name)
    assert stopped.rung == 1 and stopped.checkpoint
    res = json.loads(cli("resume", name, *at, *track, "--python", sys.executable, "--json").stdout)
    assert res["job"] == sub["job"] and res["resumed"]

    manual_gate(cli, name, sub, res, at, track, gcs, mlflow_server)

    # `ladder stop` mid-rung 2, a version promoted by hand meanwhile, then `resume` to the end
    hand = stop_mid_rung_two_and_promote_by_hand(cli, env, name, at, track, dashboard, mlflow_server,
                                                 tmp_path / "untrained")
    res = json.loads(cli("resume", name, *at, *track, "--python", sys.executable, "--json").stdout)
    assert res["job"] == sub["job"] and res["resumed"]
    wait_for(name, mlflow_server, lambda p: p.state.value == "awaiting_promotion" and p.candidate == "3")
    cli("promote", name, *track)  # the pending version
    done = wait_for(name, mlflow_server, lambda p: p.state.value == "completed")
    assert done.job == sub["job"]
    rows = json.loads(cli("lineage", name, *track, "--json").stdout)
    assert [(r["version"], r["rung"], r["status"]) for r in rows] == [(1, 1, "promoted"), (int(hand), 0, "promoted"),
                                                                         (3, 2, "promoted")]
    assert {r["job"] for r in rows if r["rung"]} == {sub["job"]}
    assert steps_logged(mlflow_server, name, 2) == list(range(1, 13))  # a graceful stop redoes no step
    judged_by_rung_one(mlflow_server, name, rung=2, steps=12)
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
