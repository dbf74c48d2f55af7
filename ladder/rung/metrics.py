"""What a rung reports beside the trainer's numbers: the judge's health, response lengths, the reward's agreement
with the reference answers, held-out flips, and whether the judge is saturated."""
from __future__ import annotations

from collections import Counter

from stages.answers import normalized


def judge_health(scores, parse_failures: int) -> dict[str, float]:
    """Parse-failure rate, share of samples given the single most common score, mean approval."""
    n = max(1, len(scores))
    common = Counter(round(s, 3) for s in scores).most_common(1)
    return {"judge/parse_failure_rate": parse_failures / n,
            "judge/identical_share": (common[0][1] / n) if common else 0.0,
            "judge/approval": sum(scores) / n}


def length_health(rollout, judged) -> dict[str, float]:
    """Mean response length, its correlation with reward (length hacking), judge tokens per sample."""
    lengths = [float(len(s.completion_ids)) for s in rollout.samples]
    n = max(1, len(lengths))
    return {"rollout/response_tokens": sum(lengths) / n,
            "judge/length_reward_corr": pearson(lengths, list(judged.scores)),
            "judge/tokens_per_sample": judged.judge_tokens / n}


def reward_truth(task, rollout, judged) -> dict[str, float]:
    """Where the task has answers: the share of the samples trained on whose judge reward agrees with the reference
    (above 0.5 for a right answer, at most 0.5 for a wrong one) and the share of right samples. Measured, never
    trained on."""
    if not task.has_answers:
        return {}
    right = task.correct(rollout.responses, rollout.references, rollout.prompts)
    # over the samples trained on: a prompt the judge abstained on (solve_min_share) teaches nothing either way
    agree = [(s > 0.5) == r for s, r, kept in zip(judged.scores, right, judged.trainable) if kept]
    n = max(1, len(right))
    return {"judge/reward_accuracy": sum(agree) / max(1, len(agree)), "rollout/accuracy": sum(right) / n,
            "rollout/answer_consistency": answer_consistency(task, rollout.prompts, rollout.responses)}


def answer_consistency(task, prompts, responses) -> float:
    """How much a prompt's samples agree: per prompt, the share of its samples that give its most common final
    answer (no readable answer counts as a sample apart), averaged over prompts. Rising while reward accuracy falls
    is self-judged training settling on consistent wrong answers."""
    groups: dict[str, list] = {}
    for prompt, response in zip(prompts, responses):
        answer = task.extract(response)
        groups.setdefault(prompt, []).append(None if answer is None else normalized(answer))
    shares = []
    for answers in groups.values():
        readable = Counter(a for a in answers if a is not None)
        shares.append(readable.most_common(1)[0][1] / len(answers) if readable else 0.0)
    return sum(shares) / len(shares) if shares else 0.0


def pearson(xs: list[float], ys: list[float]) -> float:
    """Pearson correlation; 0.0 when either side is constant."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else 0.0


def flips(before: dict[str, bool], after: dict[str, bool]) -> dict[str, float]:
    """Held-out prompts that went from right to wrong (and wrong to right) since the last evaluation, as shares of
    the prompts evaluated both times; nothing before a first evaluation."""
    common = [p for p in after if p in before]
    if not common:
        return {}
    return {"eval/flip_rate": sum(before[p] and not after[p] for p in common) / len(common),
            "eval/fix_rate": sum(after[p] and not before[p] for p in common) / len(common)}


def saturated(approvals: list[float], sat) -> bool:
    """The judge approves nearly everything: mean approval over the last `window` steps > threshold."""
    if not sat.enabled or len(approvals) < sat.window:
        return False
    return sum(approvals[-sat.window:]) / sat.window > sat.threshold
