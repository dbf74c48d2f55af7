"""The `ladder` command line: validate, schema, bootstrap, train-rung (and the ladder commands).

Imports stay cheap: torch, vLLM and Ray are imported inside the commands that need them.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="judge-ladder: iterated RL from AI feedback, where each trained student "
                       "becomes the frozen judge of the next.")

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)


def quiet_libraries() -> None:
    """No per-file progress bars from transformers / safetensors loading in our terminal output."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


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
    """Check a spec (fields, bounds, cross-field rules) without starting anything."""
    loaded = _load(spec)
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
    loaded = _load(spec)
    from ladder.rung_driver import run_single_rung

    try:
        run_single_rung(loaded, steps=steps, out=out, as_json=as_json, verbose=verbose)
    except USER_ERRORS as exc:
        fail(str(exc).splitlines()[0])


@app.command()
def run(spec: Path = typer.Argument(..., help="Ladder spec YAML file."),
        as_json: bool = typer.Option(False, "--json", help="JSON progress lines and a JSON summary."),
        verbose: bool = typer.Option(False, help="Show Ray and vLLM logs.")):
    """Run a whole ladder (all rungs) on a local Ray (or RAY_ADDRESS), recording everything in MLflow."""
    loaded = _load(spec)
    quiet_libraries()
    from ladder.ladder_driver import run_ladder
    from ladder.rung_driver import preflight

    try:
        preflight(loaded)
        final = run_ladder(loaded, as_json=as_json, verbose=verbose)
    except USER_ERRORS as exc:
        fail(str(exc).splitlines()[0])
    if final["state"] == "failed":
        raise typer.Exit(1)


def _registry(spec_path: Path):
    from ladder.registry import Registry

    return Registry.for_spec(_load(spec_path))


@app.command()
def lineage(spec: Path = typer.Argument(..., help="Ladder spec YAML file (names the ladder and MLflow)."),
            as_json: bool = typer.Option(False, "--json", help="Rows as JSON."),
            plot: Optional[Path] = typer.Option(None, "--plot", metavar="FILE",
                                                 help="Also write the ladder chart (PNG) to FILE.")):
    """Show every rung's model version: who judged it, its status, accuracies and aliases."""
    from ladder.ladder_driver import aliases_of, format_table, lineage_rows

    reg = _registry(spec)
    rows = lineage_rows(reg)
    typer.echo(json.dumps(rows) if as_json else format_table(rows, aliases_of(reg)))
    if plot is not None:
        from ladder.chart import ladder_chart

        try:
            ladder_chart(rows, plot, title=f"ladder {reg.name}")
        except ValueError as exc:
            fail(str(exc))
        typer.echo(f"chart: {plot}", err=as_json)


def _decide_by_hand(spec_path: Path, version: str, reason: str, action: str, outcome: str) -> None:
    """Write a person's promote / reject decision to MLflow; one line on an unknown version."""
    from ladder.registry import RegistryError

    reg = _registry(spec_path)
    try:
        getattr(reg, action)(version, by="human", reason=reason)
    except RegistryError as exc:
        fail(str(exc))
    typer.echo(f"{reg.name} v{version}: {outcome}")


@app.command()
def promote(spec: Path = typer.Argument(..., help="Ladder spec YAML file."),
            version: str = typer.Argument(..., help="Model version to promote."),
            reason: str = typer.Option("", help="Why (recorded on the version).")):
    """Promote a version by hand: aliases judge and champion move to it (overrides the gate)."""
    _decide_by_hand(spec, version, reason, "promote", f"promoted (judge, champion -> v{version})")


@app.command()
def reject(spec: Path = typer.Argument(..., help="Ladder spec YAML file."),
           version: str = typer.Argument(..., help="Model version to reject."),
           reason: str = typer.Option("", help="Why (recorded on the version).")):
    """Reject a version by hand; the judge alias does not move."""
    _decide_by_hand(spec, version, reason, "reject", "rejected")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
