"""Which judge a rung trains against, resolved in one place: a model directory, a registry version or a
verifier for rung 1 (`judge.initial`), and for later rungs the version the alias `judge` points to; and what its
student starts from. A ladder pins both when a rung starts (`pin_rung_inputs`).

Model judges resolve to a location each judge worker opens itself (a directory or `models:/<name>/<v>`).
"""
from __future__ import annotations

from ladder.progress import TASK_CHECKER, VERIFIER_LABEL, ResolvedJudge, RungInputs
from stages.models import RegistryError, alias_uri, model_uri


def resolve_judge(spec, rung: int = 1, registry=None) -> ResolvedJudge:
    """The frozen judge of rung `rung` of the ladder `spec` (fails in one line when there is none), read through
    `registry` (a controller's, which retries through outages) or a new one."""
    from ladder.registry.registry import Registry

    if rung > 1:
        reg = registry or Registry.for_spec(spec)
        if reg.alias("judge") is None:
            raise RegistryError(f"{alias_uri(spec.name, 'judge')}: no promoted rung to judge rung {rung}")
        return registered_judge(reg, alias_uri(spec.name, "judge"))
    src = spec.judge.initial
    if src.kind == "model":
        return ResolvedJudge("model", src.path, src.path)
    if src.kind == "task":  # the rung's own task checks the answers (built with the task, per rung)
        return ResolvedJudge("verifier", TASK_CHECKER, f"{VERIFIER_LABEL}{TASK_CHECKER}")
    if src.kind == "verifier":
        from stages.judge import load_verifier

        load_verifier(src.function)  # fail here, in one line, before any actor starts
        return ResolvedJudge("verifier", src.function, f"{VERIFIER_LABEL}{src.function}")
    return registered_judge(registry or Registry.for_spec(spec), src.uri)


def registered_judge(registry, uri: str) -> ResolvedJudge:
    """`models:/<name>@<alias>` or `models:/<name>/<version>` -> that version pinned as `models:/<name>/<v>`,
    which each judge worker fetches itself on its own node."""
    found = registry.pinned(uri)
    return ResolvedJudge("model", model_uri(found.name, found.version), f"{found.name}/v{found.version}")


def student_init(spec, registry) -> tuple[str, str]:
    """Where the student starts (a location, its label): the base model, or with `init: previous` the version
    alias `champion` points to (an MLflow error propagates: never silently the base model)."""
    champion = registry.alias("champion") if spec.student.init == "previous" else None
    if champion is not None:
        return model_uri(spec.name, champion), f"v{champion}"
    return spec.student.base, "base"


def pin_rung_inputs(spec, rung: int, registry) -> RungInputs:
    """Rung `rung`'s judge and student init as concrete locations (`models:/<name>/<version>`, never an alias)."""
    judge = resolve_judge(spec, rung, registry)
    student, label = student_init(spec, registry)
    return RungInputs(judge.kind, judge.location, judge.label, student, label)


def pinned_judge(inputs: RungInputs, spec) -> ResolvedJudge:
    """The judge pinned in the saved progress, as a rung is handed it. A pinned verifier is imported (its code run)
    only when `spec` names it or it is a built-in task checker: write access to the progress tag in MLflow must not
    be a way to run code on the controller (a tampered pin is refused in one line, before any import)."""
    from stages.judge import JudgeError

    if inputs.judge_kind == "verifier" and inputs.judge_location not in allowed_verifiers(spec):
        raise JudgeError(f"the saved progress pins verifier {inputs.judge_location!r}, which the ladder's spec does "
                         f"not name (judge.initial): refused, not imported")
    if inputs.judge_kind not in ("model", "verifier"):
        raise JudgeError(f"the saved progress pins a judge of unknown kind {inputs.judge_kind!r}")
    return ResolvedJudge(inputs.judge_kind, inputs.judge_location, inputs.judge_label)


def allowed_verifiers(spec) -> set[str]:
    """The verifiers a rung of `spec` may import: the task's own checker, the built-in tasks' checkers and the
    function `judge.initial` names."""
    from ladder.tasks import BUILTIN_CHECKERS

    named = {spec.judge.initial.function} if spec.judge.initial.kind == "verifier" else set()
    return {TASK_CHECKER, *BUILTIN_CHECKERS, *named}
