"""Which judge a rung trains against, resolved in one place: a model directory, a registry version or a
verifier for rung 1 (`judge.initial`), and for later rungs the version the alias `judge` points to.

Model judges resolve to a location each judge worker opens itself (a directory or `models:/<name>/<v>`).
"""
from __future__ import annotations

from dataclasses import dataclass

from ladder.progress import VERIFIER_LABEL
from stages.models import RegistryError, model_uri


TASK_CHECKER = "task"  # the location of `judge.initial: {kind: task}`: the rung's task checks the answers


@dataclass(frozen=True)
class ResolvedJudge:
    """A judge ready to start: a model location (directory or models:/ URI), or a verifier import path."""
    kind: str                     # "model" | "verifier"
    location: str                 # directory, models:/<name>/<version>, or module:function
    label: str                    # what lineage records (a version, a path, a function)


def resolve_judge(spec, rung: int = 1) -> ResolvedJudge:
    """The frozen judge of rung `rung` of the ladder `spec` (fails in one line when there is none)."""
    from ladder.registry import Registry

    if rung > 1:
        reg = Registry.for_spec(spec)
        if reg.alias("judge") is None:
            raise RegistryError(f"models:/{spec.name}@judge: no promoted rung to judge rung {rung}")
        return registered_judge(reg, f"models:/{spec.name}@judge")
    src = spec.judge.initial
    if src.kind == "model":
        return ResolvedJudge("model", src.path, src.path)
    if src.kind == "task":  # the rung's own task checks the answers (built with the task, per rung)
        return ResolvedJudge("verifier", TASK_CHECKER, f"{VERIFIER_LABEL}{TASK_CHECKER}")
    if src.kind == "verifier":
        from stages.judge import load_verifier

        load_verifier(src.function)  # fail here, in one line, before any actor starts
        return ResolvedJudge("verifier", src.function, f"{VERIFIER_LABEL}{src.function}")
    return registered_judge(Registry.for_spec(spec), src.uri)


def registered_judge(registry, uri: str) -> ResolvedJudge:
    """`models:/<name>@<alias>` or `models:/<name>/<version>` -> that version pinned as `models:/<name>/<v>`,
    which each judge worker fetches itself on its own node."""
    found = registry.pinned(uri)
    return ResolvedJudge("model", model_uri(found.name, found.version), f"{found.name}/v{found.version}")
