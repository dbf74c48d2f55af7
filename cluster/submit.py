"""Ladders as jobs: `ladder submit` / `ladder resume` through the Ray Jobs API, or as a local background job.

A submitted job carries the project (runtime env `working_dir`) and the validated spec (an environment
variable); its driver is `ladder run-submitted`, which starts or resumes the ladder's controller.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

from cluster.processes import pid_alive

PROJECT = Path(__file__).resolve().parents[1]
EXCLUDES = [".venv", ".git", ".ladder", "**/__pycache__", "*.egg-info", "bench/results", "*.db", "mlartifacts",
            ".pytest_cache"]
LIVE = ("PENDING", "RUNNING")


def job_env(spec, job: str, resume: bool, submission: str) -> dict[str, str]:
    return {"LADDER_SPEC_JSON": spec.model_dump_json(), "LADDER_JOB": job, "LADDER_RESUME": "1" if resume else "0",
            "LADDER_SUBMISSION": submission}


def jobs_client(address):
    """A `JobSubmissionClient` for the cluster, its errors (unreachable, token) as one line."""
    import logging

    from ray.job_submission import JobSubmissionClient

    from cluster.connect import explain

    for name in list(logging.root.manager.loggerDict):  # Ray's job SDK logs every packaged file at INFO
        if name.startswith("ray"):
            logging.getLogger(name).setLevel(logging.WARNING)
    # ... and warns that .git/.venv are left out of the package, which EXCLUDES asks for anyway
    logging.getLogger("ray._private.runtime_env").setLevel(logging.ERROR)
    url = address.api_server()
    try:
        return JobSubmissionClient(url)
    except Exception as exc:
        raise explain(exc, address.raw) from None


def live_jobs(client, name: str) -> list:
    """Submitted jobs of ladder `name` that are pending or running."""
    return [j for j in client.list_jobs()
            if (j.metadata or {}).get("ladder") == name and str(getattr(j.status, "value", j.status)) in LIVE]


def submit(address, spec, job: str, resume: bool = False, python: str = "python", agent_wait_s: float = 120.0) -> str:
    """Submit the ladder as a Ray job; returns the submission id. Refuses a name that is already running."""
    from cluster.connect import explain

    client = jobs_client(address)
    try:
        running = live_jobs(client, spec.name)
    except Exception as exc:
        raise explain(exc, address.raw) from None
    if running:
        raise ValueError(f"ladder {spec.name!r} is already running (Ray job {running[0].submission_id}); "
                         f"see `ladder status {spec.name}`")
    submission = f"ladder-{spec.name}-{job}-{uuid.uuid4().hex[:4]}"
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            return client.submit_job(
                entrypoint=f"{python} -m ladder.cli run-submitted", submission_id=submission,
                runtime_env={"working_dir": str(PROJECT), "excludes": EXCLUDES,
                             "env_vars": job_env(spec, job, resume, submission)},
                metadata={"ladder": spec.name, "ladder_job": job})
        except Exception as exc:
            # a cluster that has just started answers before its job agent is up: that one is worth waiting for
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise explain(exc, address.raw) from None
            time.sleep(2.0)


def follow(address, submission: str, out=sys.stdout) -> str:
    """Print the job's log as it grows until the job ends; returns its final status."""
    client = jobs_client(address)
    shown = 0
    while True:
        status = str(getattr(client.get_job_status(submission), "value", ""))
        logs = client.get_job_logs(submission)
        out.write(logs[shown:])
        out.flush()
        shown = len(logs)
        if status not in LIVE:
            return status
        time.sleep(2.0)


# local background jobs (no cluster address) --------------------------------------------------
def local_record(spec) -> Path:
    return Path(spec.workdir).resolve() / spec.name / "local-job.json"


def local_job(spec) -> Optional[dict]:
    """The record of this ladder's last local background job (pid, job, log, submission), alive or not."""
    record = local_record(spec)
    return json.loads(record.read_text()) if record.is_file() else None


def local_running(spec) -> Optional[dict]:
    """The local background job of this ladder, if its process is alive."""
    info = local_job(spec)
    return info if info is not None and pid_alive(info["pid"]) else None


def submit_local(spec, job: str, resume: bool = False) -> dict:
    """Run the ladder in a background process on an embedded local Ray; its output goes to a log file."""
    running = local_running(spec)
    if running:
        raise ValueError(f"ladder {spec.name!r} is already running (local job, pid {running['pid']}); "
                         f"see `ladder status {spec.name}`")
    log = Path(spec.workdir).resolve() / spec.name / f"job-{job}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    submission = f"local-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, **job_env(spec, job, resume, submission)}
    env.pop("RAY_ADDRESS", None)
    with open(log, "ab") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "ladder.cli", "run-submitted"], stdout=sink,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=str(PROJECT),
                                start_new_session=True)
    info = {"pid": proc.pid, "job": job, "log": str(log), "submission": submission}
    local_record(spec).write_text(json.dumps(info))
    return {**info, "process": proc}


def follow_local(info: dict, out=sys.stdout, poll_s: float = 1.0) -> int:
    """Print a local job's log as it grows until its process ends; returns its exit status (1: the ladder failed)."""
    log, shown = Path(info["log"]), 0
    while True:
        alive = info["process"].poll() is None  # our child: poll reaps it
        data = log.read_text(errors="replace") if log.is_file() else ""
        out.write(data[shown:])
        out.flush()
        shown = len(data)
        if not alive:
            return info["process"].returncode
        time.sleep(poll_s)
