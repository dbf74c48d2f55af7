"""Integration fixtures: one local Ray per session, one bootstrapped tiny model, shared engines."""
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from servers import MlflowServer, free_port, stop_group, wait_http  # tests/integration/servers.py

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
MODEL_CACHE = os.environ.get("LADDER_TEST_MODEL")  # reuse a bootstrapped model across runs, if given


@pytest.fixture(scope="session")
def ray_local():
    import ray

    # address="local": a Ray of this session's own, never one another process started on the machine
    ray.init(address="local", num_cpus=8, include_dashboard=False, namespace="ladder-test", log_to_driver=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """The demo's base model recipe (4-term arithmetic, operands 0-5; mostly one-shot answers, sometimes worked
    steps; not taught to judge) in 450 steps instead of the demo's 1200, about 3 minutes beside the other test
    process. Its held-out greedy accuracy is a trajectory's: 0.18-0.22 at 450 steps, 0.38 in one 600-step build and
    0.19 at 900 steps in another; the tests rest on what it does (bare answers, worked steps when sampled), and the
    GRPO test's gain was +52 points at 450 steps (+52 at 600). Built once per run: the test processes of a run
    (pytest-xdist workers) share it, the first to need it builds it under a lock while the others wait.
    LADDER_TEST_MODEL keeps it between runs."""
    from filelock import FileLock

    if MODEL_CACHE and (Path(MODEL_CACHE) / "bootstrap.json").is_file():
        return MODEL_CACHE
    from ladder.models.bootstrap import bootstrap

    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if os.environ.get("PYTEST_XDIST_WORKER") else shared  # the run's, above each worker's
    out = Path(MODEL_CACHE) if MODEL_CACHE else shared / "tiny"
    with FileLock(str(out) + ".lock"):
        if not (out / "bootstrap.json").is_file():
            bootstrap(out, size="micro", steps=450, seed=0, terms=4, max_operand=5, direct_share=0.6,
                      judge_share=0.0, log=lambda m: None)
    return str(out)


@pytest.fixture(scope="session")
def engine_cfg(tiny_model):
    from stages.engine import EngineConfig

    return EngineConfig(tiny_model, seed=0, kv_cache_gib=0.25)


@pytest.fixture(scope="session")
def rollout_worker(ray_local, engine_cfg):
    from stages.actors import kill_all, spawn
    from stages.rollout import RolloutWorker

    worker = spawn(RolloutWorker, engine_cfg)
    ray_local.get(worker.__ray_ready__.remote())
    yield worker
    kill_all([worker])  # awaited, and its temp folder swept


@pytest.fixture(scope="session")
def judge_worker(ray_local, engine_cfg):
    from stages.actors import kill_all, spawn
    from stages.judge import JudgeConfig, JudgeWorker

    worker = spawn(JudgeWorker, engine_cfg, JudgeConfig())
    ray_local.get(worker.__ray_ready__.remote())
    yield worker
    kill_all([worker])


@pytest.fixture(scope="session")
def wait_dead():
    """`wait_dead(actor)`: returns once Ray reports the actor dead (see `wait_until_dead`)."""
    return wait_until_dead


def wait_until_dead(actor, timeout_s: float = 120.0) -> None:
    """Block until Ray itself reports `actor` dead: `ray.kill` only asks for the kill and returns.

    A call to the actor is submitted until one fails with `RayActorError`; a call that is still
    served proves the kill has not taken effect yet. Fails the test if the actor outlives `timeout_s`.
    """
    import time

    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=max(1.0, deadline - time.monotonic()))
        except ray.exceptions.RayActorError:
            return
        except ray.exceptions.GetTimeoutError:
            break
    pytest.fail(f"actor still alive {timeout_s:.0f} s after it was killed")


@pytest.fixture(scope="session")
def kill_when_busy():
    """`kill_when_busy(pid, actor)`: SIGKILL the actor's process in the middle of a call (see `sigkill_when_busy`)."""
    return sigkill_when_busy


def cpu_ticks(pid: int) -> int:
    """User + system CPU time of a process, in clock ticks (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def sigkill_when_busy(pid: int, actor, ticks: int = 10) -> float:
    """SIGKILL the actor's process `pid` (asked of the actor while it was idle) in the middle of its work: once its
    CPU time has grown by `ticks` since this call, it is serving the request the caller made meanwhile. Waits until
    Ray reports it dead; returns `time.monotonic()` at the kill."""
    import signal
    import time

    start, deadline = cpu_ticks(pid), time.monotonic() + 300
    while cpu_ticks(pid) < start + ticks:
        assert time.monotonic() < deadline, "the worker never got busy"
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_until_dead(actor)
    return killed


# the service tests' servers: a module that asks gets its own (test_service.py's ladders share them, one after the
# other; a Ray head and an MLflow server cost ~45 CPU-seconds over their life)
@pytest.fixture(scope="module")
def ray_head():
    """A Ray head on 127.0.0.1 with its dashboard and token authentication; yields (env, dashboard URL, GCS)."""
    temp = tempfile.mkdtemp(prefix="/tmp/lt")  # short: Ray's socket paths must fit 107 characters
    home = tempfile.mkdtemp(prefix="ladder-home-")  # no ~/.ray/auth_token of the machine's is seen
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "HOME": home,
           # vLLM's cache of model facts stays the machine's: a fresh one costs a process inspecting the model
           "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT") or os.path.expanduser("~/.cache/vllm"),
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
        stop_group(proc, grace_s=3)  # a head asked to stop takes ~20 s; nothing of it outlives its group
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
