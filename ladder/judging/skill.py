"""The judge's own skill at the rung's task: how often the frozen judge solves the held-out prompts itself.

A judge that reads answers can teach a student only as far as it can tell right from wrong; on a task with
reference answers, its own accuracy at solving (greedy, and in solve mode the majority of the answers it samples,
which is what solve mode rewards against) says how far that is. Measured once per rung, at its start, on the judge
workers the rung trains against; never used for training.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

from stages.answers import extract_answer, normalized, same_answer


def judge_task_accuracy(pool, task, prompts: Sequence[str], references: Sequence[Optional[str]],
                        max_tokens: int) -> dict[str, float]:
    """`judge/task_accuracy` (greedy answers) and, in solve mode, `judge/task_majority_accuracy` (the majority of
    `solve_samples` answers at `solve_temperature`) of the pool's judge model on `prompts`; {} for a verifier
    judge or a task without reference answers."""
    if pool.verifier is not None or not pool.workers or not prompts or task.verifier is None:
        return {}
    settings = pool.cfg.settings
    solve = settings.mode == "solve"
    render = settings.render_solve if solve else (lambda p: p)
    tokens = settings.solve_max_tokens if solve else max_tokens
    inputs = [pool.chat(render(p)) for p in prompts]
    greedy = [outs[0][0] for outs in pool.map("write", inputs, 1, tokens, 0.0)]
    out = {"judge/task_accuracy": task.accuracy(greedy, list(references), list(prompts))}
    if solve:
        sampled = pool.map("write", inputs, settings.solve_samples, tokens, settings.solve_temperature)
        answers = [[extract_answer(task.answer_pattern, text) for text, _ in outs] for outs in sampled]
        out["judge/task_majority_accuracy"] = majority_accuracy(answers, references)
    return out


def majority_accuracy(answers: Sequence[Sequence[Optional[str]]], references: Sequence[Optional[str]]) -> float:
    """Share of prompts whose most common readable answer (answers that are the same number count as one; ties:
    the first written) equals the reference; a prompt with no readable answer counts as wrong."""
    right = 0
    for written, reference in zip(answers, references):
        readable = [normalized(a) for a in written if a is not None]
        if readable and same_answer(Counter(readable).most_common(1)[0][0], reference):
            right += 1
    return right / len(references) if references else 0.0
