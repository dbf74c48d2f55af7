"""The `ladder` command line: validate, schema, bootstrap, train-rung (and the ladder commands).

Imports stay cheap: torch, vLLM and Ray are imported inside the commands that need them.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from ladder.retrying import MlflowUnavailable, mlflow_problem
from ladder.runtime import first_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="judge-ladder: iterated RL from AI feedback, where each trained student "
                       "becomes the frozen judge of the next.")

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, MlflowUnavailable)


def quiet_libraries() -> None:
    """No progress bars (transformers, MLflow downloads) nor INFO logs (MLflow, Ray's job packaging) in our
    terminal output."""
    import logging
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # MLflow's client retries a request for ~4 minutes by default; the ladder's own retries (mlflow.retry_s)
    # carry a running ladder through outages, and a command should say "unreachable" in seconds
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    for name in ("alembic", "mlflow", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _load(spec_path: Path):
    from ladder.spec import SpecError, load_spec

    try:
        return load_spec(spec_path)
    except SpecError as exc:
        fail(str(exc))


@app.command()
def validate(spec: Path = typer.Argument(..., help="Ladder spec YAML file."),
             as_json: bool = typer.Option(False, "--json", help="Print the validated spec as JSON.")):
    """Check a spec (fields, bounds, cross-field rules) and its datasets (rows, fields, reference answers where
    the gate or the task judge needs them) without starting anything."""
    loaded = _load(spec)
    from ladder.calibration import check_tasks

    try:
        check_tasks(loaded, gate=True)
    except ValueError as exc:
        fail(first_line(exc, None))
    if as_json:
        typer.echo(json.dumps(loaded.model_dump(mode="json"), indent=2))
    else:
        typer.echo(f"{spec}: ok (ladder {loaded.name!r}, {loaded.rungs} rungs, "
                   f"{loaded.train.steps} steps per rung, judge {loaded.judge.initial.kind})")


@app.command()
def schema():
    """Print the JSON Schema of a ladder spec."""
    from ladder.spec import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


@app.command()
def bootstrap(out: Path = typer.Option(Path(".ladder/models/tiny-base"), help="Where to write the model."),
              size: str = typer.Option("micro", help="Model size: nano, micro, small, bench."),
              steps: int = typer.Option(900, min=1, help="SFT steps (batches of 64)."),
              terms: int = typer.Option(4, min=2, max=6, help="Operands per arithmetic problem."),
              max_operand: int = typer.Option(5, min=1, max=99, help="Largest operand."),
              direct_share: float = typer.Option(
                  0.6, min=0.0, max=1.0, help="Share of solving examples that give the bare answer (#13) instead "
                                              "of the worked steps: the base model then mostly answers directly, "
                                              "and RL can teach it to use its steps."),
              judge_share: float = typer.Option(
                  0.0, min=0.0, max=1.0, help="Share of examples that teach yes/no judging (verdict-mode judges)."),
              seed: int = typer.Option(0, help="Seed."),
              force: bool = typer.Option(False, help="Rebuild even if the model exists."),
              as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")):
    """SFT a tiny model from scratch on the arithmetic task (and optionally on judging); report its accuracy."""
    from ladder.models.tiny import SIZES

    if size not in SIZES:
        fail(f"--size: unknown size {size!r}; choose one of {', '.join(SIZES)}")
    report_file = out / "bootstrap.json"
    if report_file.is_file() and not force:
        report = json.loads(report_file.read_text())
        typer.echo(json.dumps(report) if as_json else f"{out}: already bootstrapped (use --force to rebuild); "
                   + _describe_bootstrap(report))
        return
    quiet_libraries()
    import torch
    from transformers.utils import logging as hf_logging

    from ladder.bootstrap import bootstrap as run_bootstrap

    hf_logging.disable_progress_bar()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    log = (lambda m: typer.echo(m, err=True)) if as_json else typer.echo
    result = run_bootstrap(out, size=size, steps=steps, seed=seed, terms=terms, max_operand=max_operand,
                           direct_share=direct_share,
                           judge_share=judge_share, log=log)
    from dataclasses import asdict
    if as_json:
        typer.echo(json.dumps(asdict(result)))
    else:
        typer.echo(f"bootstrapped {result.model_dir}: {result.parameters / 1e6:.2f}M parameters, "
                   f"{result.steps} steps in {result.seconds:.0f}s; " + _describe_bootstrap(asdict(result)))


def _describe_bootstrap(report: dict) -> str:
    judge = report.get("judge_accuracy")
    return (f"held-out answer accuracy {report['answer_accuracy']:.2f} (greedy; {report.get('worked_share', 1.0):.0%} "
            f"show their steps)" + ("" if judge is None else f", judge accuracy {judge:.2f}"))


@app.command("train-rung")
def train_rung(spec: Path = typer.Argument(..., help="Ladder spec YAML file."),
               steps: Optional[int] = typer.Option(None, min=1, help="Override train.steps."),
               out: Optional[Path] = typer.Option(None, help="Where to save the trained student."),
               as_json: bool = typer.Option(False, "--json", help="One JSON object per step on stdout."),
               verbose: bool = typer.Option(False, help="Show Ray and vLLM logs.")):
    """Run one rung (rollout -> judge -> train -> sync) against the spec's initial judge."""
    quiet_libraries()
    loaded = _load(spec)
    from ladder.rung_driver import run_single_rung

    from ladder.rung import RungFailed

    try:
        run_single_rung(loaded, steps=steps, out=out, as_json=as_json, verbose=verbose)
    except USER_ERRORS as exc:
        fail(first_line(exc, None))
    except RungFailed as exc:
        fail(f"rung failed: {exc}", code=1)


ADDRESS_HELP = ("Ray cluster: its address (host:6379) or its dashboard's (http://host:8265); default RAY_ADDRESS, "
                "else a local Ray of the ladder's own.")
TRACKING_HELP = "MLflow tracking URI; default MLFLOW_TRACKING_URI, else SQLite under --workdir."


def _where(address: Optional[str], tracking_uri: Optional[str], workdir: str):
    from ladder.registry import default_tracking_uri
    from ladder.runtime import Address
    from ladder.service import Where

    return Where(default_tracking_uri(workdir, tracking_uri), Address.resolve(address), workdir)


def _guard(fn, *args, **kwargs):
    """Run a command's body; user errors (bad name, version, address, token) end in one line and exit 2."""
    quiet_libraries()
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as exc:
        fail(first_line(exc, None))
    except Exception as exc:
        if type(exc).__module__.startswith("mlflow."):  # MLflow refused or could not be reached
            fail(mlflow_problem(exc))
        raise


@app.command()
def run(spec: Path = typer.Argument(..., help="Ladder spec YAML file."),
        address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
        as_json: bool = typer.Option(False, "--json", help="JSON progress lines and a JSON summary."),
        verbose: bool = typer.Option(False, help="Show Ray and vLLM logs.")):
    """Run a whole ladder (all rungs) in this terminal, recording everything in MLflow. Ctrl-C stops it
    gracefully (finish the step, checkpoint); `ladder resume NAME` continues it."""
    loaded = _load(spec)
    quiet_libraries()
    from ladder.ladder_driver import run_ladder
    from ladder.rung_driver import preflight

    def body():
        preflight(loaded)
        return run_ladder(loaded, as_json=as_json, verbose=verbose, address=address)

    final = _guard(body)
    if final["state"] == "failed":
        raise typer.Exit(1)


@app.command("run-submitted", hidden=True)
def run_submitted():
    """The driver of a submitted ladder job: spec, job id and resume flag come from the environment."""
    import os

    from ladder.spec import LadderSpec

    quiet_libraries()
    from ladder.ladder_driver import run_ladder

    spec = LadderSpec.model_validate_json(os.environ["LADDER_SPEC_JSON"])
    final = _guard(run_ladder, spec, as_json=False, job=os.environ["LADDER_JOB"],
                   resume=os.environ.get("LADDER_RESUME") == "1", submission=os.environ.get("LADDER_SUBMISSION"))
    if final["state"] == "failed":
        raise typer.Exit(1)


def _submit(spec, job: str, resume: bool, address: Optional[str], wait: bool, python: str, as_json: bool) -> None:
    from cluster import submit as jobs
    from ladder.runtime import Address

    target = Address.resolve(address)
    if target.local:
        info = _guard(jobs.submit_local, spec, job, resume)
        submission, where = info["submission"], f"local background job (log: {info['log']})"
    else:
        submission = _guard(jobs.submit, target, spec, job, resume, python)
        info, where = None, f"Ray job on {target.raw}"
    verb = "resumed" if resume else "submitted"
    typer.echo(json.dumps({"ladder": spec.name, "job": job, "submission": submission, "resumed": resume})
               if as_json else f"{verb} ladder {spec.name!r} (job {job}) as {submission}: {where}\n"
                               f"follow it: ladder status {spec.name}; stop it: ladder stop {spec.name}")
    if wait:
        out = sys.stderr if as_json else sys.stdout
        _guard(jobs.follow_local, info, out) if info else _guard(jobs.follow, target, submission, out)


@app.command()
def submit(spec: Path = typer.Argument(..., help="Ladder spec YAML file."),
           address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
           wait: bool = typer.Option(False, "--wait", help="Follow the job's output until it ends."),
           python: str = typer.Option("python", help="Python on the cluster's head node that has the project's "
                                                     "dependencies installed."),
           as_json: bool = typer.Option(False, "--json", help="Print the submission as JSON.")):
    """Start a ladder as a job and return: a Ray job (Jobs API, carrying the project and the spec) on a cluster,
    or a background process on a local Ray. A ladder name that is already running is refused."""
    import uuid

    from cluster.submit import portable_spec

    loaded = portable_spec(_load(spec))
    from ladder.rung_driver import preflight
    from ladder.runtime import Address

    if Address.resolve(address).local:
        _guard(preflight, loaded)  # a local job sees this machine's models: check them before it starts
    _submit(loaded, uuid.uuid4().hex[:8], False, address, wait, python, as_json)


@app.command()
def resume(name: str = typer.Argument(..., help="Ladder name."),
           address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
           tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
           workdir: str = typer.Option(".ladder", help="Work directory of a local ladder."),
           wait: bool = typer.Option(False, "--wait", help="Follow the job's output until it ends."),
           python: str = typer.Option("python", help="Python on the cluster's head node."),
           as_json: bool = typer.Option(False, "--json", help="Print the submission as JSON.")):
    """Continue a stopped (or crashed) ladder from its last checkpoint, as the same job, with its saved spec."""
    from ladder.service import resumable

    spec, job = _guard(resumable, name, _where(address, tracking_uri, workdir))
    _submit(spec, job, True, address, wait, python, as_json)


@app.command()
def status(name: Optional[str] = typer.Argument(None, help="Ladder name; default every ladder in the store."),
           address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
           tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
           workdir: str = typer.Option(".ladder", help="Work directory of local ladders."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """State, rung, step, latest metrics, pending decision and job of a ladder (or of every ladder)."""
    from ladder.registry import Registry
    from ladder.service import status as ladder_status

    where = _where(address, tracking_uri, workdir)
    names = [name] if name else _guard(Registry.ladder_names, where.tracking_uri)
    rows = [_guard(ladder_status, n, where) for n in names]
    if as_json:
        typer.echo(json.dumps(rows[0] if name else rows))
        return
    if not rows:
        typer.echo(f"no ladders in MLflow at {where.tracking_uri}")
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


@app.command()
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
    from ladder.service import request_stop

    out = _guard(request_stop, name, _where(address, tracking_uri, workdir), now, timeout)
    typer.echo(json.dumps(out) if as_json else
               f"{name}: {out['state']} at rung {out['rung']} step {out['step']}; resume with: ladder resume {name}")


def _registry_for(ref: str, tracking_uri: Optional[str], workdir: str):
    """A ladder named by its spec file or by its name."""
    from ladder.registry import Registry
    from ladder.service import open_registry

    if ref.endswith((".yaml", ".yml")) or Path(ref).is_file():
        return Registry.for_spec(_load(Path(ref)))
    return _guard(open_registry, ref, _where(None, tracking_uri, workdir))


@app.command()
def lineage(ladder: str = typer.Argument(..., help="Ladder name, or its spec YAML file."),
            tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
            workdir: str = typer.Option(".ladder", help="Work directory of a local ladder."),
            as_json: bool = typer.Option(False, "--json", help="Rows as JSON."),
            plot: Optional[Path] = typer.Option(None, "--plot", metavar="FILE",
                                                 help="Also write the ladder chart (PNG) to FILE.")):
    """Show every rung's model version: who judged it, its status, accuracies and aliases."""
    from ladder.ladder_driver import format_table

    reg = _registry_for(ladder, tracking_uri, workdir)
    rows = reg.lineage()
    typer.echo(json.dumps(rows) if as_json else format_table(rows, reg.aliases()))
    if plot is not None:
        from ladder.chart import ladder_chart

        try:
            ladder_chart(rows, plot, title=f"ladder {reg.name}")
        except ValueError as exc:
            fail(str(exc))
        typer.echo(f"chart: {plot}", err=as_json)


def _decide_by_hand(ladder: str, version: Optional[str], reason: str, action: str, tracking_uri: Optional[str],
                    workdir: str, as_json: bool = False) -> None:
    """Write a person's promote / reject decision to MLflow (a waiting controller reads it within a second)."""
    from ladder.service import pending_version

    reg = _registry_for(ladder, tracking_uri, workdir)
    if version is None:
        version = _guard(pending_version, reg.name, _where(None, tracking_uri, workdir))
    _guard(getattr(reg, action), version, by="human", reason=reason)
    if as_json:
        typer.echo(json.dumps({"ladder": reg.name, "version": version, "status": reg.status_of(version),
                               "aliases": reg.aliases()}))
        return
    typer.echo(f"{reg.name} v{version}: " + ("promoted (judge, champion -> v%s)" % version if action == "promote"
                                             else "rejected"))


@app.command()
def promote(ladder: str = typer.Argument(..., help="Ladder name, or its spec YAML file."),
            version: Optional[str] = typer.Argument(None, help="Model version; default the one awaiting a decision."),
            reason: str = typer.Option("", help="Why (recorded on the version)."),
            tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
            workdir: str = typer.Option(".ladder", help="Work directory of a local ladder."),
            as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON.")):
    """Promote a version by hand: aliases judge and champion move to it (overrides the gate). A ladder
    waiting for this decision continues at once."""
    _decide_by_hand(ladder, version, reason, "promote", tracking_uri, workdir, as_json)


@app.command()
def reject(ladder: str = typer.Argument(..., help="Ladder name, or its spec YAML file."),
           version: Optional[str] = typer.Argument(None, help="Model version; default the one awaiting a decision."),
           reason: str = typer.Option("", help="Why (recorded on the version)."),
           tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
           workdir: str = typer.Option(".ladder", help="Work directory of a local ladder."),
           as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON.")):
    """Reject a version by hand; the judge alias does not move. A waiting ladder stops or retries the rung."""
    _decide_by_hand(ladder, version, reason, "reject", tracking_uri, workdir, as_json)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
