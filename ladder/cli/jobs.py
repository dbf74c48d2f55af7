"""The commands of a ladder job: run it here, submit or resume it as a job, follow its status, stop it."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from ladder.cli.console import (ADDRESS_HELP, TRACKING_HELP, fail, guard, ladder_access, load_spec_file,
                                quiet_libraries)

def run(spec: Path = typer.Argument(..., help="Ladder spec YAML file."),
        address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
        as_json: bool = typer.Option(False, "--json", help="JSON progress lines and a JSON summary."),
        verbose: bool = typer.Option(False, help="Show Ray and vLLM logs.")):
    """Run a whole ladder (all rungs) in this terminal, recording everything in MLflow. Ctrl-C stops it
    gracefully (finish the step, checkpoint); `ladder resume NAME` continues it."""
    loaded = load_spec_file(spec)
    quiet_libraries()
    from ladder.cli.run import run_ladder
    from ladder.control.preflight import preflight

    def body():
        preflight(loaded)
        return run_ladder(loaded, as_json=as_json, verbose=verbose, address=address)

    final = guard(body)
    if final["state"] == "failed":
        raise typer.Exit(1)


def run_submitted():
    """The driver of a submitted ladder job: spec, job id and resume flag come from the environment."""
    import os

    from ladder.spec import LadderSpec

    quiet_libraries()
    from ladder.cli.run import run_ladder

    from ladder.control.preflight import preflight

    spec = LadderSpec.model_validate_json(os.environ["LADDER_SPEC_JSON"])
    guard(preflight, spec)  # on the cluster: every rung's task, the models and the work directory, as seen here
    final = guard(run_ladder, spec, as_json=False, job=os.environ["LADDER_JOB"],
                   resume=os.environ.get("LADDER_RESUME") == "1", submission=os.environ.get("LADDER_SUBMISSION"))
    if final["state"] == "failed":
        raise typer.Exit(1)


def _submit(spec, job: str, resume: bool, address: Optional[str], wait: bool, python: str, as_json: bool) -> None:
    from cluster import submit as jobs
    from cluster.connect import Address

    from ladder.control.lease import refuse_if_running

    target = Address.resolve(address)
    guard(refuse_if_running, spec)  # a ladder another controller runs now is not submitted again
    if target.local:
        info = guard(jobs.submit_local, spec, job, resume)
        submission, where = info["submission"], f"local background job (log: {info['log']})"
    else:
        submission = guard(jobs.submit, target, spec, job, resume, python)
        info, where = None, f"Ray job on {target.raw}"
    verb = "resumed" if resume else "submitted"
    typer.echo(json.dumps({"ladder": spec.name, "job": job, "submission": submission, "resumed": resume})
               if as_json else f"{verb} ladder {spec.name!r} (job {job}) as {submission}: {where}\n"
                               f"follow it: ladder status {spec.name}; stop it: ladder stop {spec.name}")
    if wait:
        out = sys.stderr if as_json else sys.stdout
        failed = guard(jobs.follow_local, info, out) != 0 if info else \
            guard(jobs.follow, target, submission, out) == "FAILED"
        if failed:  # the job's own last lines say why
            fail(f"ladder {spec.name!r} (job {job}) ended failed; see `ladder status {spec.name}`", code=1)


def submit(spec: Path = typer.Argument(..., help="Ladder spec YAML file."),
           address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
           wait: bool = typer.Option(False, "--wait", help="Follow the job's output until it ends."),
           python: str = typer.Option("python", help="Python on the cluster's head node that has the project's "
                                                     "dependencies installed."),
           as_json: bool = typer.Option(False, "--json", help="Print the submission as JSON.")):
    """Start a ladder as a job and return: a Ray job (Jobs API, carrying the project and the spec) on a cluster,
    or a background process on a local Ray. A ladder name that is already running is refused."""
    import uuid

    from ladder.cli.job_spec import portable_spec

    from ladder.control.preflight import preflight
    from cluster.connect import Address

    local = Address.resolve(address).local
    loaded = guard(portable_spec, load_spec_file(spec), not local)
    if local:
        guard(preflight, loaded)  # a local job sees this machine's models: check them before it starts
    # a cluster job checks its models and datasets there, before its first actor (`run_submitted`)
    _submit(loaded, uuid.uuid4().hex[:8], False, address, wait, python, as_json)


def resume(name: str = typer.Argument(..., help="Ladder name."),
           address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
           tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
           workdir: str = typer.Option(".ladder", help="Work directory of a local ladder."),
           wait: bool = typer.Option(False, "--wait", help="Follow the job's output until it ends."),
           python: str = typer.Option("python", help="Python on the cluster's head node."),
           adopt_spec: bool = typer.Option(False, "--adopt-spec", help="Run the saved spec.json even though it was "
                                                                      "changed since the ladder started."),
           as_json: bool = typer.Option(False, "--json", help="Print the submission as JSON.")):
    """Continue a stopped (or crashed) ladder from its last checkpoint, as the same job, with its saved spec."""
    from ladder.cli.remote import resumable

    spec, job = guard(resumable, name, ladder_access(address, tracking_uri, workdir), adopt_spec)
    _submit(spec, job, True, address, wait, python, as_json)


def status(name: Optional[str] = typer.Argument(None, help="Ladder name; default every ladder in the store."),
           address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
           tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
           workdir: str = typer.Option(".ladder", help="Work directory of local ladders."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """State, rung, step, latest metrics, pending decision and job of a ladder (or of every ladder)."""
    from ladder.registry.registry import Registry
    from ladder.cli.remote import status as ladder_status

    access = ladder_access(address, tracking_uri, workdir)
    names = [name] if name else guard(Registry.ladder_names, access.tracking_uri)
    rows = [guard(ladder_status, n, access) for n in names]
    if as_json:
        typer.echo(json.dumps(rows[0] if name else rows))
        return
    if not rows:
        typer.echo(f"no ladders in MLflow at {access.tracking_uri}")
    for r in rows:
        typer.echo(_status_line(r))


def _status_line(r: dict) -> str:
    m = r["latest"]
    line = (f"{r['ladder']}: {r['state']}  rung {r['rung']} {r['phase']} step {r['step']}  job {r['job']}"
            + (f" ({r['submission']})" if r.get("submission") else ""))
    if m.get("reward/mean") is not None:
        line += f"  reward {m['reward/mean']:.3f}"
    if m.get("eval/accuracy") is not None:
        line += f"  held-out acc {m['eval/accuracy']:.3f}"
    if r.get("pending_decision"):
        line += f"\n  decision pending on v{r['pending_decision']}: ladder promote {r['ladder']} " \
                f"{r['pending_decision']}  |  ladder reject {r['ladder']} {r['pending_decision']}"
    if r.get("error"):
        line += f"\n  {r['error']}"
    return line


def stop(name: str = typer.Argument(..., help="Ladder name."),
         now: bool = typer.Option(False, "--now", help="Abort the current step instead of finishing it "
                                                       "(progress goes back to the last checkpoint)."),
         address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
         tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
         workdir: str = typer.Option(".ladder", help="Work directory of a local ladder."),
         timeout: float = typer.Option(900.0, help="Seconds to wait for the ladder to stop."),
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Stop a running ladder: it finishes the step, checkpoints, stops every stage actor and records `stopped`
    in MLflow. Returns once it has (on a cluster: once none of its actors is alive)."""
    from ladder.cli.remote import request_stop

    out = guard(request_stop, name, ladder_access(address, tracking_uri, workdir), now, timeout)
    typer.echo(json.dumps(out) if as_json else
               f"{name}: {out['state']} at rung {out['rung']} step {out['step']}; resume with: ladder resume {name}")
