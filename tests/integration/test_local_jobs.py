"""Ladders without a cluster: a local background job (`submit` without an address, `stop --now`, `resume
--wait`), and two `ladder run` of one ladder at once, each on a Ray of its own."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from service import ROOT, ladder, progress_of, service_spec, steps_logged, wait_for  # tests/integration

pytestmark = pytest.mark.integration


def test_local_submit_stop_now_resume(tiny_model, tmp_path):
    """Without a cluster: `submit` runs the ladder in the background on a Ray of its own, `stop --now` aborts
    the step (progress goes back to the last checkpoint, the job's process ends), `resume --wait` finishes
    it; the steps redone are at most one checkpoint interval."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    name, work = "svc-local", tmp_path / "w"
    uri = f"sqlite:///{work / 'mlflow.db'}"
    # 12 steps: the `stop --now` below (a CLI process, seconds on a busy machine) lands well before the rung's end
    spec = service_spec(tiny_model, work, name, None, rungs=1, checkpoint_every=3,
                        train={"lr": 1e-4, "kl_coef": 0.0, "steps": 12, "prompts_per_step": 16},
                        promotion={"policy": "auto", "tolerance": 1.0, "min_auc": 0.0, "collapse_share": 1.0})
    sub = json.loads(ladder(env, "submit", str(spec), "--json").stdout)
    assert sub["submission"].startswith("local-")
    wait_for(name, uri, lambda p: p.step >= 3 and p.checkpoint)
    out = json.loads(ladder(env, "stop", name, "--now", "--workdir", str(work), "--json").stdout)
    assert out["state"] == "stopped"
    stopped = progress_of(name, uri)
    assert stopped.step % 3 == 0 and stopped.checkpoint.endswith(f"step-{stopped.step:05d}")
    status = json.loads(ladder(env, "status", name, "--workdir", str(work), "--json").stdout)
    assert status["state"] == "stopped" and status["live"] is None  # its local job's process has ended

    ladder(env, "resume", name, "--workdir", str(work), "--wait")
    done = progress_of(name, uri)
    assert done.state.value == "completed" and done.job == sub["job"]
    steps = steps_logged(uri, name, 1)
    assert sorted(set(steps)) == list(range(1, 13))
    assert len(steps) - 12 <= 3  # steps after the checkpoint were redone, no more


def test_two_runs_of_one_ladder_at_once_each_on_its_own_ray_one_runs_and_one_is_refused(tiny_model, tmp_path):
    """Two `ladder run` of one name started at once from two processes, each starting a Ray of its own (so no name
    claim in one Ray can tell them apart): the lease in MLflow lets one run and refuses the other in one line naming
    the job that runs; the refused one leaves the live job alone, which then stops gracefully on Ctrl-C."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    name, work = "twice", tmp_path / "w"
    uri = f"sqlite:///{work / 'mlflow.db'}"
    spec = service_spec(tiny_model, work, name, None, rungs=1, train={"lr": 1e-4, "steps": 40, "prompts_per_step": 8})
    runs = [subprocess.Popen([sys.executable, "-m", "ladder.cli", "run", str(spec)], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        deadline = time.monotonic() + 600
        while all(r.poll() is None for r in runs):
            assert time.monotonic() < deadline, "neither run was refused: both train the ladder"
            time.sleep(0.5)
        refused = next(r for r in runs if r.poll() is not None)
        live = next(r for r in runs if r is not refused)
        lines = refused.stderr.read().strip().splitlines()
        running = wait_for(name, uri, lambda p: p.state.value == "running" and p.step >= 1)
        assert live.poll() is None  # the other one trains
        assert refused.returncode == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"error: ladder '{name}' is already running: job {running.job} "), lines
        live.send_signal(signal.SIGINT)  # Ctrl-C: finish the step, checkpoint, stop
        assert live.wait(300) == 0
    finally:
        for r in runs:
            if r.poll() is None:
                r.kill()
    stopped = progress_of(name, uri)
    assert stopped.state.value == "stopped" and stopped.job == running.job and stopped.checkpoint
    assert steps_logged(uri, name, 1) == list(range(1, stopped.step + 1))  # one job's steps, each once
