"""The `ladder` command line: validate, schema, bootstrap, train-rung here; the commands of a ladder job
(`jobs.py`) and of its model versions (`versions.py`) are registered after them.

Imports stay cheap: torch, vLLM and Ray are imported inside the commands that need them.
"""
from __future__ import annotations

import gc
import json
import sys
from pathlib import Path
from typing import Optional

import typer

from ladder.cli import jobs
from ladder.cli import versions
from ladder.cli.console import USER_ERRORS, fail, load_spec_file, quiet_libraries
from ladder.errors import first_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="judge-ladder: iterated RL from AI feedback, where each trained student "
                       "becomes the frozen judge of the next.")


@app.command()
def validate(spec: Path = typer.Argument(..., help="Ladder spec YAML file."),
             as_json: bool = typer.Option(False, "--json", help="Print the validated spec as JSON.")):
    """Check a spec (fields, bounds, cross-field rules), its datasets (rows, fields, reference answers where
    the gate or the task judge needs them) and its model folders (config.json, safetensors headers) without
    starting anything."""
    loaded = load_spec_file(spec)
    from ladder.control.preflight import preflight

    try:
        preflight(loaded, gate=True, offline=True)
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
              steps: int = typer.Option(1200, min=1, help="SFT steps (batches of 64)."),
              terms: int = typer.Option(4, min=2, max=6, help="Operands per arithmetic problem."),
              max_operand: int = typer.Option(5, min=1, max=99, help="Largest operand."),
              direct_share: float = typer.Option(
                  0.6, min=0.0, max=1.0, help="Share of solving examples that give the bare answer (#13) instead "
                                              "of the worked steps: the base model then mostly answers directly, "
                                              "and RL can teach it to use its steps."),
              judge_share: float = typer.Option(
                  0.0, min=0.0, max=1.0, help="Share of examples that teach yes/no judging (verdict-mode judges)."),
              level: list[str] = typer.Option(
                  ["4x7:0.25", "4x9:0.25"],
                  help="A harder level also taught, TERMSxMAX_OPERAND:SHARE (repeat for more; `none` for none): that "
                       "share of the examples comes from it, so a curriculum's later rungs meet problems the base "
                       "model has seen but solves poorly. The default is the demo's curriculum."),
              threads: int = typer.Option(1, min=1, help="Torch threads (1 is as fast for a model this small and "
                                                         "does not slow to a crawl beside other work)."),
              seed: int = typer.Option(0, help="Seed."),
              force: bool = typer.Option(False, help="Rebuild even if the model exists."),
              as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")):
    """SFT a tiny model from scratch on the arithmetic task (and optionally on judging); report its accuracy."""
    from ladder.models.tiny import SIZES

    if size not in SIZES:
        fail(f"--size: unknown size {size!r}; choose one of {', '.join(SIZES)}")
    levels = () if level == ["none"] else tuple(_level(text) for text in level)
    if sum(share for _, _, share in levels) >= 1:
        fail("--level: the shares of the harder levels add up to 1 or more; the task's own level needs some")
    report_file = out / "bootstrap.json"
    recipe = {"size": size, "steps": steps, "terms": terms, "max_operand": max_operand, "direct_share": direct_share,
              "judge_share": judge_share, "seed": seed, "levels": [list(lv) for lv in levels]}
    if report_file.is_file() and not force:
        report = json.loads(report_file.read_text())
        old = report.get("recipe") or {**recipe, "levels": [], **{k: report.get(k) for k in (
            "steps", "terms", "max_operand", "direct_share", "judge_share")}}  # a model built before recipes were kept
        if old == recipe:
            typer.echo(json.dumps(report) if as_json else f"{out}: already bootstrapped (use --force to rebuild); "
                       + _describe_bootstrap(report))
            return
        typer.echo(f"{out}: bootstrapped with another recipe; rebuilding", err=True)
    quiet_libraries()
    import torch
    from transformers.utils import logging as hf_logging

    from ladder.models.bootstrap import bootstrap as run_bootstrap

    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    log = (lambda m: typer.echo(m, err=True)) if as_json else typer.echo
    result = run_bootstrap(out, size=size, steps=steps, seed=seed, terms=terms, max_operand=max_operand,
                           direct_share=direct_share, judge_share=judge_share, levels=levels, log=log)
    from dataclasses import asdict
    report_file.write_text(json.dumps({**asdict(result), "recipe": recipe}, indent=2))
    if as_json:
        typer.echo(json.dumps(asdict(result)))
    else:
        typer.echo(f"bootstrapped {result.model_dir}: {result.parameters / 1e6:.2f}M parameters, "
                   f"{result.steps} steps in {result.seconds:.0f}s; " + _describe_bootstrap(asdict(result)))


def _level(text: str) -> tuple[int, int, float]:
    """`4x9:0.25` -> (4, 9, 0.25); a malformed level fails in one line."""
    import re

    m = re.fullmatch(r"(\d+)x(\d+):([0-9.]+)", text.strip())
    if not m or not 2 <= int(m.group(1)) <= 6 or not 1 <= int(m.group(2)) <= 99 or not 0 < float(m.group(3)) < 1:
        fail(f"--level: {text!r} is not TERMSxMAX_OPERAND:SHARE with 2-6 terms, operands up to 1-99 and a share "
             f"between 0 and 1 (e.g. 4x9:0.25)")
    return int(m.group(1)), int(m.group(2)), float(m.group(3))


def _describe_bootstrap(report: dict) -> str:
    judge = report.get("judge_accuracy")
    harder = "".join(f"; {lv['terms']} terms, operands 0-{lv['max_operand']}: {lv['answer_accuracy']:.2f}"
                     for lv in report.get("levels") or ())
    return (f"held-out answer accuracy {report['answer_accuracy']:.2f} ({report.get('terms', 3)} terms, operands "
            f"0-{report.get('max_operand', 9)}; greedy; {report.get('worked_share', 1.0):.0%} show their steps)" + harder + ("" if judge is None else f", judge accuracy {judge:.2f}"))


@app.command("train-rung")
def train_rung(spec: Path = typer.Argument(..., help="Ladder spec YAML file."),
               steps: Optional[int] = typer.Option(None, min=1, help="Override train.steps."),
               out: Optional[Path] = typer.Option(None, help="Where to save the trained student."),
               as_json: bool = typer.Option(False, "--json", help="One JSON object per step on stdout."),
               verbose: bool = typer.Option(False, help="Show Ray and vLLM logs.")):
    """Run one rung (rollout -> judge -> train -> sync) against the spec's initial judge."""
    quiet_libraries()
    loaded = load_spec_file(spec)
    from ladder.cli.train_rung import run_single_rung

    from ladder.rung.driver import RungFailed
    from stages.actors import ActorStartError

    try:
        run_single_rung(loaded, steps=steps, out=out, as_json=as_json, verbose=verbose)
    except (*USER_ERRORS, ActorStartError) as exc:  # an actor that cannot start: a model or path to fix
        fail(first_line(exc, None))
    except RungFailed as exc:
        fail(f"rung failed: {exc}", code=1)


# the ladder commands, in the order `ladder --help` lists them
app.command()(jobs.run)
app.command("run-submitted", hidden=True)(jobs.run_submitted)
app.command()(jobs.submit)
app.command()(jobs.resume)
app.command()(jobs.status)
app.command()(jobs.stop)
app.command()(versions.lineage)
app.command()(versions.promote)
app.command()(versions.reject)


def main() -> None:  # pragma: no cover
    """The `ladder` command: a short-lived process whose MLflow, Ray or torch imports make millions of objects and
    hardly any garbage, so the collector runs rarely (~0.3 s of CPU less for a command that opens MLflow)."""
    from stages.startup import START_THRESHOLDS

    gc.set_threshold(*START_THRESHOLDS)
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
