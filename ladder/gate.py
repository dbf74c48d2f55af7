"""The promotion gate: a candidate is measured *as a judge* on a calibration set beside the current judge.

Verdicts come from transformers on the controller (the same P(yes)/(P(yes)+P(no)) the vLLM judge computes).
"""
from __future__ import annotations

from dataclasses import dataclass

from ladder.rung import ResolvedJudge, judge_health


@dataclass(frozen=True)
class JudgeQuality:
    accuracy: float          # share of calibration items where (score > 0.5) == correct
    auc: float               # P(score of a correct item > score of a wrong one)
    identical_share: float   # share of items given the single most common score (collapse)


@dataclass(frozen=True)
class GateResult:
    candidate: JudgeQuality
    current: JudgeQuality
    passed: bool
    reason: str

    def metrics(self) -> dict[str, float]:
        out = {}
        for who, q in (("candidate", self.candidate), ("current", self.current)):
            out.update({f"gate/{who}_accuracy": q.accuracy, f"gate/{who}_auc": q.auc,
                        f"gate/{who}_identical_share": q.identical_share})
        out["gate/passed"] = float(self.passed)
        return out


def auc(scores: list[float], labels: list[bool]) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return 0.5
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def judge_scores(judge: ResolvedJudge, items, judge_spec) -> list[float]:
    if judge.kind == "verifier":
        from stages.judge import load_verifier

        fn = load_verifier(judge.location)
        return [float(fn(c.prompt, c.response, c.reference)) for c in items]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ladder.bootstrap import verdicts

    tok = AutoTokenizer.from_pretrained(judge.location)
    model = AutoModelForCausalLM.from_pretrained(judge.location, dtype=torch.float32).eval()
    texts = [judge_spec.prompt_template.replace("{prompt}", c.prompt).replace("{response}", c.response)
             for c in items]
    return verdicts(model, tok, texts, judge_spec.yes_token, judge_spec.no_token)


def measure(judge: ResolvedJudge, items, judge_spec) -> JudgeQuality:
    scores = judge_scores(judge, items, judge_spec)
    labels = [c.correct for c in items]
    acc = sum((s > 0.5) == y for s, y in zip(scores, labels)) / len(items)
    return JudgeQuality(acc, auc(scores, labels), judge_health(scores, 0)["judge/identical_share"])


def run_gate(candidate: ResolvedJudge, current: ResolvedJudge, items, spec) -> GateResult:
    cand, cur = measure(candidate, items, spec.judge), measure(current, items, spec.judge)
    p = spec.promotion
    if cand.identical_share >= p.collapse_share:
        return GateResult(cand, cur, False, f"judge collapsed: {cand.identical_share:.0%} of items got one score")
    if cand.accuracy < cur.accuracy - p.tolerance:
        return GateResult(cand, cur, False, f"judges worse: accuracy {cand.accuracy:.3f} < "
                                            f"{cur.accuracy:.3f} - tolerance {p.tolerance}")
    return GateResult(cand, cur, True, f"accuracy {cand.accuracy:.3f} vs current {cur.accuracy:.3f}")
