"""A controller whose lease is taken over while it cannot renew it (issue 35, item 1): a `ladder run` whose controller
is paused (SIGSTOP: it can neither renew nor write, as when it is cut off from MLflow) past its lease's stale time is
resumed by another process with a Ray of its own, as from another machine; the new controller takes the lease and
completes the ladder, and the old one, continued, writes nothing more and ends in one line. Real Ray, vLLM and MLflow
(SQLite); leases renewed every second (`mlflow.lease_renew_s`) instead of every 30 s."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from service import paused, steps_logged, wait_for  # tests/integration/service.py

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
STEPS = 8


def takeover_spec(model: str, workdir: Path) -> dict:
    return {
        "name": "takeover", "seed": 0, "rungs": 1, "workdir": str(workdir), "checkpoint_every": 2,
        "student": {"base": model},
        "judge": {"initial": {"kind": "verifier", "function": "ladder.tasks.arithmetic:exact"}},
        "task": {"source": {"kind": "builtin", "name": "arithmetic", "train_size": 500}, "eval_size": 8},
        "rollout": {"workers": 1, "group_size": 4, "max_tokens": 32, "kv_cache_gib": 0.25},
        "train": {"lr": 1e-4, "kl_coef": 0.0, "steps": STEPS, "prompts_per_step": 4},
        "eval": {"every": STEPS, "calibration_size": 8, "yardstick_size": 0},
        "promotion": {"policy": "auto", "tolerance": 1.0, "collapse_share": 1.0, "min_auc": 0.0,
                      "yardstick_tolerance": 1.0},
        "mlflow": {"lease_renew_s": 1.0},
    }


def start(*args, tmp: str) -> subprocess.Popen:
    """A `ladder` command in a process (and, where it starts one, a Ray) of its own: TMPDIR is its temp folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return subprocess.Popen([sys.executable, "-m", "ladder.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**env, "TMPDIR": tmp})


def fence(reg) -> int:
    from ladder.control.lease import read_fence

    return read_fence(reg)[0]


def lease_pid(reg, parent_run: str) -> int:
    """The process of the controller that holds the job's lease (on this host)."""
    from ladder.control.lease import leases

    (lease,) = [lease for run, lease in leases(reg) if run == parent_run]
    return lease.pid


def take_over_while_paused(reg, store: Path, old_pid: int, workdir: Path, tmp: str):
    """With the old controller paused: wait out its lease's stale time (3 s on the writer's clock, which `resume`
    checks first), resume from a process of its own, and wait until the new controller holds the fence; the old one
    is continued on the way out. Returns the resume's process and how long the takeover took."""
    with paused(old_pid, store):
        held = fence(reg)
        time.sleep(3.5)
        t0 = time.monotonic()
        new = start("resume", "takeover", "--workdir", str(workdir), "--wait", "--json", tmp=tmp)
        while fence(reg) == held:
            assert new.poll() is None, f"resume ended first: {new.communicate()[1][-3000:]}"
            assert time.monotonic() - t0 < 300, "the lease was not taken over in 300 s"
            time.sleep(0.2)
        return new, time.monotonic() - t0


def test_a_paused_controller_whose_lease_was_taken_over_writes_nothing_and_the_new_one_completes(
        tiny_model, tmp_path, fault_figures):
    from ladder.registry.registry import Registry
    from ladder.spec import load_spec

    workdir = tmp_path / "w"
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(takeover_spec(tiny_model, workdir)))
    spec = load_spec(path)
    uri, store = f"sqlite:///{workdir / 'mlflow.db'}", workdir / "mlflow.db"
    tmps = [tempfile.mkdtemp(prefix="lk-", dir="/tmp") for _ in range(2)]  # short: Ray's socket paths live under it
    procs = []
    try:
        procs.append(start("run", str(path), "--json", tmp=tmps[0]))
        at = wait_for("takeover", uri, lambda p: p.step >= 2 and p.checkpoint, poll_s=0.2)
        reg = Registry.for_spec(spec)
        new, took = take_over_while_paused(reg, store, lease_pid(reg, at.parent_run), workdir, tmps[1])
        procs.append(new)
        old_out, old_err = procs[0].communicate(timeout=600)
        new_out, new_err = new.communicate(timeout=1200)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(60)
        for tmp in tmps:
            shutil.rmtree(tmp, ignore_errors=True)

    assert new.returncode == 0, new_err[-3000:]
    old = json.loads(old_out.strip().splitlines()[-1])["status"]  # `run --json`: the controller's last status
    assert procs[0].returncode == 1 and old["state"] == "failed", (old, old_err[-3000:])
    assert old["error"].startswith("LeaseLost: ") and "taken over" in old["error"] and "\n" not in old["error"], old
    assert "Traceback" not in old_err, old_err[-3000:]
    done = reg.load_progress()
    # the old controller saved no progress after it lost the lease (its "failed" would be the last word here) ...
    assert done.state.value == "completed" and done.job == at.job and done.error is None, done
    # ... registered nothing (one version, the new controller's) and logged each step once
    assert [str(v.version) for v in reg.versions()] == ["1"]
    assert steps_logged(uri, "takeover", 1) == list(range(1, STEPS + 1))
    assert json.loads(new_out.strip().splitlines()[0])["resumed"] is True
    fault_figures(f"controller paused (SIGSTOP) at rung 1 step >= {at.step} past its lease's stale time (renewed "
                  "every 1 s), `ladder resume` from a process and Ray of its own",
                  f"the new controller took the lease {took:.0f} s after the resume started and completed the ladder; "
                  "the old one, continued, wrote nothing more and ended in one line (LeaseLost)")
