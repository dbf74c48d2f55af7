"""Helpers of the service tests (test_service.py, test_user_data.py): a ladder's spec, the CLI as a user runs it, its
saved progress and logged steps, what Ray says of its actors, the faults the service scenario injects, and a process
paused while a command that takes seconds lands."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


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
        "eval": {"every": 4, "calibration_size": 8, "yardstick_size": 16},
        "promotion": {"policy": "manual", "tolerance": 1.0, "min_auc": 0.0, "collapse_share": 1.0,
                      "yardstick_tolerance": 1.0},
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
    from ladder.registry.registry import Registry

    reg = Registry.find(name, tracking_uri)
    return reg.load_progress() if reg else None


def wait_for(name, tracking_uri, what, timeout_s=900.0, poll_s=1.0, near=None):
    """Poll the ladder's saved progress until `what(progress)` holds; fail with the last progress. With `near`,
    every second until `near(progress)` holds, then every `poll_s`: a poll costs this process and MLflow ~50 ms of
    CPU, and a ladder's start (its engines, its first evaluation) takes a minute."""
    deadline, p = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        p = progress_of(name, tracking_uri)
        if p is not None and what(p):
            return p
        assert p is None or p.state.value != "failed", p.error
        time.sleep(poll_s if near is None or (p is not None and near(p)) else max(poll_s, 1.0))
    pytest.fail(f"{name}: condition not reached in {timeout_s:.0f} s; last progress {p}")


def live_actors(dashboard, env) -> list[dict]:
    """The live actors of the Ray cluster, asked of its State API over HTTP (`/api/v0/actors`, as
    `ray.util.state.list_actors` does) with the head's token: in this process, where Ray's own client would need a
    process of its own (Ray reads the authentication mode once per process)."""
    import urllib.parse
    import urllib.request

    query = urllib.parse.urlencode({"limit": 10000, "filter_keys": "state", "filter_predicates": "=",
                                    "filter_values": "ALIVE", "detail": "false"})
    request = urllib.request.Request(f"{dashboard}/api/v0/actors?{query}",
                                     headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
    assert answer["result"], answer.get("msg")
    return answer["data"]["result"]["result"]


def alive(dashboard, env, name) -> list[str]:
    """Names of live actors of ladder `name` (its controller and stage actors), as Ray's State API reports them."""
    return [a["name"] for a in live_actors(dashboard, env) if a.get("name") == name
            or (a.get("name") or "").startswith(name + ".")]


def wait_gone(dashboard, env, name, timeout_s: float = 120.0) -> None:
    """Until Ray reports no live actor of ladder `name` (its controller and stage actors); fails past `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while alive(dashboard, env, name) and time.monotonic() < deadline:
        time.sleep(1)
    assert alive(dashboard, env, name) == []


def steps_logged(tracking_uri, name, rung):
    """The step numbers of every reward.mean logged by rung `rung`'s run (a step logged twice appears twice)."""
    from ladder.registry.registry import Registry

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


def actor_pid(dashboard, env, name_pattern, timeout_s=120.0) -> int:
    """The process id of the live actor whose name matches `name_pattern`, as Ray reports it."""
    import re

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = [a["pid"] for a in live_actors(dashboard, env) if re.fullmatch(name_pattern, a.get("name") or "")]
        if pids:
            return pids[0]
        time.sleep(1)
    pytest.fail(f"no live actor named like {name_pattern}")


def register_by_hand(name, uri, model_dir) -> str:
    """A version of `model_dir` registered by hand in the ladder's model (no rung made it, no alias names it yet);
    returns its number."""
    from ladder.registry.registry import Registry

    reg = Registry(name, uri)
    run = reg.client.create_run(reg.experiment_id, run_name="by hand").info.run_id
    return reg.register(run, model_dir, {"ladder.rung_uid": "by-hand"})


def untrained_model(path) -> str:
    """A model of the test model's shape that was never trained: as a judge it answers nothing parsable."""
    from ladder.models.tiny import build_tiny_model

    return str(build_tiny_model(path, size="micro", seed=1))


def judged_by_rung_one(uri, name, rung: int, steps: int) -> None:
    """Rung `rung` trained against the judge pinned at its start (rung 1's version) through a restart, not an
    untrained version promoted by hand before it: rung 1's answers parse, the untrained model's do not (most of
    them, each step), so a step it judged would show parse failures far above the bar (with the pin removed: 0.875)."""
    from ladder.registry.registry import Registry

    reg = Registry.find(name, uri)
    versions = reg.versions()
    first = next(v.version for v in versions if v.tags.get("ladder.rung") == "1")
    run = next(v for v in versions if v.tags.get("ladder.rung") == str(rung))
    assert run.tags["ladder.judge"] == f"{name}/v{first}"
    history = reg.client.get_metric_history(run.run_id, "judge.parse_failure_rate")
    assert {m.step for m in history} == set(range(1, steps + 1)) and max(m.value for m in history) < 0.5, history


# the faults of test_service.py's fault scenario ----------------------------------------------------------------
OUTAGE_S = 20.0


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


def logged_once(uri, name, rung, steps) -> None:
    """Rung `rung` logged each of its `steps` steps once, whatever it redid after a restart from a checkpoint."""
    assert steps_logged(uri, name, rung) == list(range(1, steps + 1))  # a redone step keeps its first metrics


def restarted_on_kept_workers(reg, run_id: str) -> None:
    """The rung restarted once (on record), and the restart took over the rollout engine and the verifier worker
    (rung 1's judge) that outlived the trainer."""
    assert reg.client.get_run(run_id).data.metrics["faults.stage_restarts"] == 1.0
    reused = sorted(reg.client.get_metric_history(run_id, "rung.actors_reused"), key=lambda m: m.step)
    assert [m.value for m in reused] == [0.0, 2.0]


def trained_through_outage(reg, run_id: str, trained: list, down: float, up: float) -> tuple[list[int], int]:
    """The steps whose metrics were logged while MLflow was down (`down`..`up`, seconds; `trained`: the rung's
    reward.mean history), at least one, and the delivery retries the rung recorded, at least one."""
    during = sorted({m.step for m in trained if down * 1000 <= m.timestamp <= up * 1000})
    assert during, "no step ran while MLflow was down: training waited for it"
    retries = reg.client.get_metric_history(run_id, "faults.mlflow_retries")
    assert retries and max(m.value for m in retries) >= 1
    return during, int(max(m.value for m in retries))


def kill_trainer(dashboard, env, name, uri, steps, every):
    """SIGKILL the trainer at rung 1's first checkpoint (its pid looked up before, so the kill lands mid-rung on a
    busy machine too): the rung restarts from that checkpoint on a new trainer and the running engine. Returns (the step it was killed at,
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
    from ladder.registry.registry import Registry

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


@contextlib.contextmanager
def paused(pid: int, store: Optional[Path] = None):
    """The process `pid` stopped (SIGSTOP, awaited in /proc) for the block, at a moment it holds no lock on the
    SQLite file `store` if one is given (another process's write would wait on it); continued after the block,
    whatever happens."""
    try:
        for _ in range(200):
            os.kill(pid, signal.SIGSTOP)
            wait_until_stopped(pid)
            if store is None or not locks_held(pid, store):
                break
            os.kill(pid, signal.SIGCONT)  # in the middle of a write: let it end
            time.sleep(0.01)
        else:
            pytest.fail(f"process {pid} held a lock on {store.name} at each of 200 pauses")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def wait_until_stopped(pid: int, timeout_s: float = 30.0) -> None:
    """Every thread of `pid` in the stopped state (T)."""
    def running(stat: Path) -> bool:
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] not in "Tt"
        except FileNotFoundError:  # a thread that ended meanwhile
            return False

    deadline = time.monotonic() + timeout_s
    while any(running(stat) for stat in Path(f"/proc/{pid}/task").glob("*/stat")):
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        time.sleep(0.005)


def locks_held(pid: int, store: Path) -> bool:
    """Does `pid` hold a POSIX lock (/proc/locks) on the SQLite file `store` or its journal?"""
    inodes = {f.stat().st_ino for f in store.parent.glob(store.name + "*")}
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.replace("->", "").split()  # "1: POSIX ADVISORY WRITE <pid> <major>:<minor>:<inode> ..."
        if fields[1] == "POSIX" and fields[4] == str(pid) and int(fields[5].rsplit(":", 1)[1]) in inodes:
            return True
    return False
