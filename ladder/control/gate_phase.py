"""The phases after training: the candidate registered as a model version, measured by the gate, promoted or
rejected (by the gate, or by a person the ladder waits for), and the ladder moved on by the decision.

Each function takes the controller whose phase it runs, as a `PhaseContext` (phase.py), and returns the next progress."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from ladder.control.phase import PhaseContext
from ladder.progress import Phase, Progress, State, after_decision
from ladder.registry.registry import version_tags
from stages.models import is_model_uri, logged_model_id, model_uri
from ladder.registry.tags import Tag


def register(ctl: PhaseContext, p: Progress) -> Progress:
    """Register the rung's logged candidate as a model version (idempotent on the rung uid). A candidate
    saved by an older controller as a checkpoint folder is logged as a model first."""
    tags = version_tags(ctl.spec, p)
    if is_model_uri(p.checkpoint):  # the logged model models:/<model_id>
        version = ctl.registry.register(p.rung_run, None, tags, model_id=logged_model_id(p.checkpoint))
    else:
        version = ctl.registry.register(p.rung_run, str(Path(ctl.store.local_checkpoint(p)) / "model"), tags,
                                        step=p.step)
    return p.to(phase=Phase.GATE, candidate=version)


def gate(ctl: PhaseContext, p: Progress) -> Progress:
    """Measure the candidate as a judge; auto: promote or reject; manual: wait for a person. A decision or
    verdict already in the registry (a crash after it, before the progress was saved) is used, not re-made."""
    decided, verdict = ctl.registry.decision(p.candidate), ctl.registry.recorded_gate(p.candidate)
    if decided is None and verdict is None:
        verdict = measure_candidate(ctl, p)
    if verdict is not None:
        p = p.to(results=p.results.to(judge_auc=verdict.auc))
    if decided is not None:
        return decide(ctl, p, decided)
    if ctl.spec.promotion.policy == "manual":
        return p.to(phase=Phase.AWAIT, state=State.AWAITING_PROMOTION)
    decided = ctl.registry.decision(p.candidate)  # read again: a person may have decided while the gate measured
    if decided is not None:
        return decide(ctl, p, decided)
    record = ctl.registry.promote if verdict.passed else ctl.registry.reject
    record(p.candidate, by="auto", reason=verdict.reason)
    return decide(ctl, p, "promoted" if verdict.passed else "rejected")


def measure_candidate(ctl: PhaseContext, p: Progress):
    """The gate's measurement of the candidate as a judge (on this ladder's judge workers, in the mode rung k+1 will
    use), its verdict recorded on the version (and returned)."""
    from ladder.judging.gate import candidate_quality, decide_gate
    from ladder.registry.decisions import Verdict

    r = p.results
    try:
        quality = candidate_quality(ctl.spec, ctl.tasks, ctl.stages, model_uri(ctl.spec.name, p.candidate), p.rung,
                                    ctl.name_prefix)
    finally:
        ctl.hold(ctl.stages.actors())
    baseline = baseline_accuracy(ctl.registry, r.start_accuracy, ctl.spec.for_rung(p.rung).task_label())
    champion = ctl.registry.alias("champion")
    champion_yardstick = ctl.registry.yardstick(champion) if champion is not None else None
    result = decide_gate(quality, r.current_judge, ctl.spec.promotion, r.judge_is_verifier, r.final_accuracy, baseline,
                         r.yardstick, champion_yardstick)
    ctl.registry.record_gate(p.candidate, result)  # first: it is fenced (a deposed controller logs nothing either)
    ctl.registry.log_metrics(p.rung_run, result.metrics(), p.step)
    ctl.live.add(result.metrics())
    return Verdict(result.passed, result.reason, result.candidate.auc)


def baseline_accuracy(registry, start_accuracy: Optional[float], task_label: str) -> Optional[float]:
    """The last promoted rung's held-out accuracy when it was measured on this rung's task; otherwise (before any
    promotion, or a curriculum that moved to a harder task) the student's at this rung's step 0."""
    champion = registry.alias("champion")
    if champion is not None and registry.version(champion).tags.get(Tag.TASK) == task_label:
        recorded = registry.heldout_accuracy(champion)
        if recorded is not None:
            return recorded
    return start_accuracy


def await_decision(ctl: PhaseContext, p: Progress, poll_s: float = 1.0) -> Progress:
    """Wait until a person promotes or rejects the candidate (written to MLflow), or a stop."""
    p = ctl.save(p.to(state=State.AWAITING_PROMOTION))
    ctl.stages.release()  # a person may take hours: no engines held meanwhile
    ctl.hold([])
    while not ctl.stopping():
        decided = ctl.registry.decision(p.candidate)
        if decided is not None:
            return decide(ctl, p.to(state=State.RUNNING), decided)
        time.sleep(poll_s)
    return p.to(state=State.STOPPED)


def decide(ctl: PhaseContext, p: Progress, decision: str) -> Progress:
    """After a decision: its row in the history, the rung run ended, and the next rung, a retry of this one, or the
    end of the ladder (`progress.after_decision`)."""
    history = ctl.live.decided({"rung": p.rung, "version": p.candidate, "judge": p.judge, "status": decision,
                                "accuracy": p.results.final_accuracy, "judge_auc": p.results.judge_auc})
    ctl.registry.end_run(p.rung_run)
    return after_decision(p, decision, ctl.spec.rungs, ctl.spec.promotion, history)
