"""The Task type (train / eval prompts, verifier, judge calibration items) and the task registry."""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional


DEFAULT_ANSWER_PATTERN = r"#(-?\d+)"


def extract_answer(pattern: str, response: str) -> Optional[str]:
    m = re.search(pattern, response)
    return m.group(1).strip() if m else None


class ExactAnswer:
    """Verifier for a task with ground truth: 1.0 when the extracted answer equals the reference."""

    def __init__(self, pattern: str):
        self.pattern = pattern

    def __call__(self, prompt: str, response: str, reference: Optional[str]) -> float:
        return float(reference is not None and extract_answer(self.pattern, response) == str(reference))


class TaskError(ValueError):
    """A dataset that cannot be used; the message is one line naming the file and item."""


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: Optional[str] = None       # ground truth final answer, when the task has one
    solution: Optional[str] = None     # a worked correct response, when the task can write one


@dataclass(frozen=True)
class CalibrationItem:
    """A (prompt, response) pair whose correctness is known: used to measure a model *as a judge*."""
    prompt: str
    response: str
    correct: bool
    reference: Optional[str] = None


@dataclass(frozen=True)
class Task:
    name: str
    train: tuple[Example, ...]
    eval: tuple[Example, ...]
    verifier: Optional[Callable[[str, str, Optional[str]], float]]
    corrupt: Optional[Callable[[random.Random, Example], str]]  # writes a wrong response
    answer_pattern: str = DEFAULT_ANSWER_PATTERN  # regex; its first group is a response's final answer

    def extract(self, response: str) -> Optional[str]:
        """The final answer a response gives (first match of `answer_pattern`), or None."""
        return extract_answer(self.answer_pattern, response)

    def accuracy(self, responses, references) -> float:
        """Share of responses whose extracted final answer equals the reference."""
        pairs = list(zip(responses, references))
        return sum(self.extract(t) == r for t, r in pairs) / max(1, len(pairs))

    def calibration(self, size: int, seed: int) -> list[CalibrationItem]:
        """Pairs from held-out examples: items 2m and 2m+1 are a correct worked solution and a
        corrupted one of the same prompt (so a pairwise judge can compare them)."""
        if self.corrupt is None:
            raise TaskError(f"task {self.name}: has no worked solutions, cannot build a judge calibration set")
        rng = random.Random(seed)
        items = []
        for i in range(size):
            ex = self.eval[(i // 2) % len(self.eval)]
            if i % 2 == 0:
                items.append(CalibrationItem(ex.prompt, ex.solution or "", True, ex.answer))
            else:
                items.append(CalibrationItem(ex.prompt, self.corrupt(rng, ex), False, ex.answer))
        return items


def load_jsonl(path: str | Path) -> list[Example]:
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"{path}: no such dataset file")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
            raise TaskError(f"{path}:{n}: each line needs a non-empty string field \"prompt\"")
        answer = row.get("answer")
        out.append(Example(row["prompt"], None if answer is None else str(answer), row.get("solution")))
    if not out:
        raise TaskError(f"{path}: dataset is empty")
    return out


def build_task(task_spec, seed: int) -> Task:
    """Task from a `TaskSpec`: a built-in generator or a JSONL file split into train / eval."""
    source = task_spec.source
    if source.kind == "builtin":
        builder = TASKS[source.name]
        return builder(source, task_spec.eval_size, seed)
    rows = load_jsonl(source.path)
    if len(rows) <= task_spec.eval_size:
        raise TaskError(f"{source.path}: {len(rows)} rows, need more than task.eval_size={task_spec.eval_size}")
    random.Random(seed).shuffle(rows)
    eval_rows, train_rows = rows[: task_spec.eval_size], rows[task_spec.eval_size:]
    verifier = ExactAnswer(source.answer_pattern) if all(r.answer is not None for r in rows) else None
    return Task("jsonl", tuple(train_rows), tuple(eval_rows), verifier, None, source.answer_pattern)


def _arithmetic(source, eval_size: int, seed: int) -> Task:
    from ladder.tasks import arithmetic
    return arithmetic.build(source.terms, source.max_operand, source.train_size, eval_size, seed)


TASKS = {"arithmetic": _arithmetic}
