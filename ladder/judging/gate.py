"""The promotion gate: a candidate is measured *as a judge*, on the judge pool, beside the current judge.

Rules (each rejection names its rule and numbers): no collapse, AUC above chance by a margin, not behind
the current model judge, and the student's held-out accuracy not below the last promoted rung's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from cluster.placement import role_resources
from ladder.progress import JudgeQuality
from ladder.rung.metrics import judge_health


@dataclass(frozen=True)
class GateResult:
    candidate: JudgeQuality
    current: JudgeQuality
    passed: bool
    reason: str
    rule: str = "passed"  # which rule decided: collapse | chance | behind_judge | student_accuracy | yardstick
    student_accuracy: Optional[float] = None
    baseline_accuracy: Optional[float] = None
    yardstick: Optional[float] = None            # the candidate's accuracy on the ladder's one yardstick
    champion_yardstick: Optional[float] = None   # ... and the champion's (the last promoted version)

    def metrics(self) -> dict[str, float]:
        out = {}
        for who, q in (("candidate", self.candidate), ("current", self.current)):
            out.update({f"gate/{who}_accuracy": q.accuracy, f"gate/{who}_auc": q.auc,
                        f"gate/{who}_identical_share": q.identical_share})
        out["gate/passed"] = float(self.passed)
        if self.student_accuracy is not None and self.baseline_accuracy is not None:
            out.update({"gate/student_accuracy": self.student_accuracy, "gate/baseline_accuracy": self.baseline_accuracy})
        if self.yardstick is not None and self.champion_yardstick is not None:
            out.update({"gate/yardstick": self.yardstick, "gate/champion_yardstick": self.champion_yardstick})
        return out


def auc(scores: list[float], labels: list[bool]) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return 0.5
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def quality(scores: list[float], labels: list[bool]) -> JudgeQuality:
    acc = sum((s > 0.5) == y for s, y in zip(scores, labels)) / max(1, len(labels))
    return JudgeQuality(acc, auc(scores, labels), judge_health(scores, 0)["judge/identical_share"])


def score_calibration(pool, items) -> list[float]:
    """The pool's scores of calibration items in its mode; items of one prompt form a group, so a
    pairwise judge compares the correct and the corrupted response."""
    index = {p: g for g, p in enumerate(dict.fromkeys(c.prompt for c in items))}
    scored = pool.score_items([c.prompt for c in items], [c.response for c in items],
                              [index[c.prompt] for c in items], [c.reference for c in items])
    return list(scored.scores)


def measure(pool, items) -> JudgeQuality:
    """A judge pool's quality on calibration items."""
    return quality(score_calibration(pool, items), [c.correct for c in items])


def candidate_quality(spec, tasks, stages, candidate: str, k: int, name_prefix: str) -> JudgeQuality:
    """The candidate (a `models:/` location) measured as a judge in the mode rung k+1 will use, on the judge
    workers kept in `stages` (a `StageSet`) with the candidate loaded in place when they can take it; they stay
    in `stages` for the next rung, or are released when the measuring fails."""
    from ladder.progress import ResolvedJudge
    from ladder.rung.roles import build_judge_pool
    from stages.actors import wait_ready

    nxt = min(k + 1, spec.rungs)
    task, calibration = tasks.task(nxt), tasks.calibration(nxt)
    try:
        pool = build_judge_pool(spec.for_rung(nxt), ResolvedJudge("model", candidate, "candidate"), task, spec.seed,
                                name_prefix, stages)
        wait_ready([("judge", w, role_resources(spec, "judge")) for w in pool.workers],
                   spec.resources.placement_timeout_s, spec.resources.step_timeout_s)
        quality = measure(pool, calibration)
        stages.set("judges", pool.workers)
    except BaseException:
        stages.release()
        raise
    return quality


def decide_gate(candidate: JudgeQuality, current: JudgeQuality, promotion, current_is_verifier: bool,
                student_accuracy: Optional[float] = None, baseline_accuracy: Optional[float] = None,
                yardstick: Optional[float] = None, champion_yardstick: Optional[float] = None) -> GateResult:
    """Apply the gate's rules in order; the first that fails is the reason."""
    p = promotion
    result = lambda passed, rule, reason: GateResult(candidate, current, passed, reason, rule,  # noqa: E731
                                                     student_accuracy, baseline_accuracy, yardstick, champion_yardstick)
    if candidate.identical_share >= p.collapse_share:
        return result(False, "collapse", f"judge collapsed: {candidate.identical_share:.0%} of calibration items "
                                         f"got one score (limit {p.collapse_share:.0%})")
    if candidate.auc < p.min_auc:
        return result(False, "chance", f"judge near chance: AUC {candidate.auc:.3f} < min_auc {p.min_auc}")
    if not current_is_verifier and candidate.auc < current.auc - p.tolerance:
        return result(False, "behind_judge", f"judges worse than the current judge: AUC {candidate.auc:.3f} < "
                                             f"{current.auc:.3f} - tolerance {p.tolerance}")
    if student_accuracy is not None and baseline_accuracy is not None \
            and student_accuracy < baseline_accuracy - p.tolerance:
        return result(False, "student_accuracy", f"student lost accuracy: held-out {student_accuracy:.3f} < "
                                                 f"{baseline_accuracy:.3f} - tolerance {p.tolerance}")
    if yardstick is not None and champion_yardstick is not None \
            and yardstick < champion_yardstick - p.yardstick_tolerance:
        return result(False, "yardstick", f"below the champion on the yardstick: {yardstick:.3f} < "
                                          f"{champion_yardstick:.3f} - yardstick_tolerance {p.yardstick_tolerance}")
    vs = "verifier (exact; not a bar for a learned judge)" if current_is_verifier else f"{current.auc:.3f}"
    acc = "" if student_accuracy is None else f"; held-out {student_accuracy:.3f} vs {baseline_accuracy:.3f}"
    yard = "" if yardstick is None else f"; yardstick {yardstick:.3f}" + (
        "" if champion_yardstick is None else f" vs champion {champion_yardstick:.3f}")
    return result(True, "passed", f"AUC {candidate.auc:.3f} (min {p.min_auc}) vs current {vs}{acc}{yard}")
