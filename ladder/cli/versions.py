"""The commands on a ladder's model versions: its lineage, and a person's promote or reject decision."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ladder.cli.console import TRACKING_HELP, fail, guard, ladder_access, load_spec_file
from ladder.registry.tags import Tag

def _registry_for(ref: str, tracking_uri: Optional[str], workdir: str):
    """A ladder named by its spec file or by its name."""
    from ladder.registry.registry import Registry
    from ladder.cli.remote import open_registry

    if ref.endswith((".yaml", ".yml")) or Path(ref).is_file():
        return Registry.for_spec(load_spec_file(Path(ref)))
    return guard(open_registry, ref, ladder_access(None, tracking_uri, workdir))


def lineage(ladder: str = typer.Argument(..., help="Ladder name, or its spec YAML file."),
            tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
            workdir: str = typer.Option(".ladder", help="Work directory of a local ladder."),
            as_json: bool = typer.Option(False, "--json", help="Rows as JSON."),
            plot: Optional[Path] = typer.Option(None, "--plot", metavar="FILE",
                                                 help="Also write the ladder chart (PNG) to FILE.")):
    """Show every rung's model version: who judged it, its status, accuracies and aliases."""
    from ladder.cli.run import format_table

    reg = _registry_for(ladder, tracking_uri, workdir)
    rows = reg.lineage()
    typer.echo(json.dumps(rows) if as_json else format_table(rows, reg.aliases()))
    if plot is not None:
        from ladder.registry.chart import ladder_chart

        try:
            ladder_chart(rows, plot, title=f"ladder {reg.name}")
        except ValueError as exc:
            fail(str(exc))
        typer.echo(f"chart: {plot}", err=as_json)


def _decide_by_hand(ladder: str, version: Optional[str], reason: str, action: str, tracking_uri: Optional[str],
                    workdir: str, as_json: bool = False) -> None:
    """Write a person's promote / reject decision to MLflow (a waiting controller reads it within a second)."""
    from ladder.cli.remote import pending_version

    reg = _registry_for(ladder, tracking_uri, workdir)
    if version is None:
        version = guard(pending_version, reg.name, ladder_access(None, tracking_uri, workdir))
    guard(getattr(reg, action), version, by="human", reason=reason)
    if as_json:
        typer.echo(json.dumps({"ladder": reg.name, "version": version, "status": reg.status_of(version),
                               "aliases": reg.aliases()}))
        return
    moved = reg.version(version).tags.get(Tag.ALIASES_MOVED)
    typer.echo(f"{reg.name} v{version}: " + ("promoted (judge, champion -> v%s)" % version if action == "promote"
                                             else f"rejected ({moved})" if moved else "rejected"))


def promote(ladder: str = typer.Argument(..., help="Ladder name, or its spec YAML file."),
            version: Optional[str] = typer.Argument(None, help="Model version; default the one awaiting a decision."),
            reason: str = typer.Option("", help="Why (recorded on the version)."),
            tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
            workdir: str = typer.Option(".ladder", help="Work directory of a local ladder."),
            as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON.")):
    """Promote a version by hand: aliases judge and champion move to it (overrides the gate). A ladder
    waiting for this decision continues at once."""
    _decide_by_hand(ladder, version, reason, "promote", tracking_uri, workdir, as_json)


def reject(ladder: str = typer.Argument(..., help="Ladder name, or its spec YAML file."),
           version: Optional[str] = typer.Argument(None, help="Model version; default the one awaiting a decision."),
           reason: str = typer.Option("", help="Why (recorded on the version)."),
           tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
           workdir: str = typer.Option(".ladder", help="Work directory of a local ladder."),
           as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON.")):
    """Reject a version by hand. If it holds judge or champion (an auto-promotion), they move back to the last
    promoted version before it (or are removed). A waiting ladder stops or retries the rung."""
    _decide_by_hand(ladder, version, reason, "reject", tracking_uri, workdir, as_json)
