"""Multi-step arithmetic: prompts `Q:3+4-2\nA:`, worked solutions `3+4=7,7-2=5#5`, a verifier.

The final answer follows `#`; the verifier gives 1 for a right answer and partial credit for right steps.
"""
from __future__ import annotations

import random
import re
import zlib
from typing import Optional

from ladder.tasks.base import Example, Task
from stages.answers import DEFAULT_ANSWER_PATTERN, extract_answer, same_answer


def make_example(rng: random.Random, terms: int, max_operand: int) -> Example:
    nums = [rng.randint(0, max_operand) for _ in range(terms)]
    ops = []
    total = nums[0]
    steps = []
    for n in nums[1:]:
        op = "-" if (rng.random() < 0.4 and total >= n) else "+"
        new = total + n if op == "+" else total - n
        steps.append(f"{total}{op}{n}={new}")
        ops.append(op)
        total = new
    expr = str(nums[0]) + "".join(f"{o}{n}" for o, n in zip(ops, nums[1:]))
    return Example(prompt=f"Q:{expr}\nA:", answer=str(total), solution=",".join(steps) + f"#{total}")


def is_heldout(prompt: str) -> bool:
    """One prompt in eight is held out for evaluation, by a hash of its text: the same prompts for every
    seed and size, so neither the bootstrap SFT nor any rung ever trains on an evaluation prompt."""
    return zlib.crc32(prompt.encode()) % 8 == 0


def build(terms: int, max_operand: int, train_size: int, eval_size: int, seed: int) -> Task:
    """Train and eval sets from disjoint prompt halves (`is_heldout`); repeats allowed in training only."""
    rng = random.Random(seed)
    seen: set[str] = set()
    eval_rows: list[Example] = []
    train_rows: list[Example] = []
    budget = (train_size + eval_size) * 50
    while (len(eval_rows) < eval_size or len(train_rows) < train_size) and budget > 0:
        budget -= 1
        ex = make_example(rng, terms, max_operand)
        if not is_heldout(ex.prompt):
            if len(train_rows) < train_size:
                train_rows.append(ex)
        elif ex.prompt not in seen and len(eval_rows) < eval_size:
            seen.add(ex.prompt)
            eval_rows.append(ex)
    from stages.steps import SIGNED_SUM_STEPS
    from stages.views import signed_sum_views

    return Task("arithmetic", tuple(train_rows), tuple(eval_rows), verify, corrupt, views=signed_sum_views,
                steps=SIGNED_SUM_STEPS)


def final_answer(response: str) -> Optional[str]:
    return extract_answer(DEFAULT_ANSWER_PATTERN, response)


def verify(prompt: str, response: str, reference: Optional[str]) -> float:
    """1.0 for the right final answer; otherwise up to 0.5 for this problem's own steps done right.

    Partial credit counts only the steps of the prompt's expression, in order (`3+4=7`, then
    `7-2=5`), so valid arithmetic that does not belong to the problem earns nothing.
    """
    if same_answer(final_answer(response), reference):
        return 1.0
    expected = solution_steps(prompt)
    if not expected:
        return 0.0
    written = response.split("#")[0].split(",")
    good = sum(1 for want, got in zip(expected, written) if want == got.strip())
    return 0.5 * good / len(expected)


def exact(prompt: str, response: str, reference: Optional[str]) -> float:
    """1.0 for the right final answer, else 0.0: no credit for the way there. Right as the task measures it
    (`stages.answers.same_answer`: `#07` answers 7), so the checker rewards what held-out accuracy counts."""
    return 1.0 if same_answer(final_answer(response), reference) else 0.0


def solution_steps(prompt: str) -> list[str]:
    """The worked steps of a prompt `Q:3+4-2\nA:`: `["3+4=7", "7-2=5"]` ([] if it is not arithmetic)."""
    m = re.fullmatch(r"Q:(\d+(?:[+-]\d+)+)\nA:", prompt)
    if not m:
        return []
    tokens = re.findall(r"[+-]|\d+", m.group(1))
    total, steps = int(tokens[0]), []
    for op, n in zip(tokens[1::2], tokens[2::2]):
        new = total + int(n) if op == "+" else total - int(n)
        steps.append(f"{total}{op}{n}={new}")
        total = new
    return steps


def corrupt(rng: random.Random, ex: Example) -> str:
    """A plausible wrong response with a wrong final answer: either only the final answer is off by a
    small amount, or one step's result is, and the slip carries through every later step."""
    assert ex.solution is not None
    body, ans = ex.solution.split("#")
    steps = body.split(",")
    delta = rng.choice([-2, -1, 1, 2, 3])
    if rng.random() < 0.5:
        return f"{body}#{int(ans) + delta}"
    i = rng.randrange(len(steps))
    out = steps[:i]
    total = None
    for k, step in enumerate(steps[i:]):
        lhs, res = step.split("=")
        a, op, b = re.fullmatch(r"(-?\d+)([+-])(\d+)", lhs).groups()
        a = total if k > 0 else int(a)
        total = (a + int(b) if op == "+" else a - int(b)) + (delta if k == 0 else 0)
        out.append(f"{a}{op}{b}={total}")
    return ",".join(out) + f"#{total}"


# The task's section of the spec (`task.source: {kind: builtin, name: arithmetic, ...}`), listed in BUILTIN_TASKS
# (ladder/tasks/__init__.py). Kept apart from the task's content above. ------------------------------------------
from typing import Literal  # noqa: E402

from pydantic import Field  # noqa: E402

from ladder.tasks.base import BuiltinTaskSpec  # noqa: E402


class ArithmeticSpec(BuiltinTaskSpec):
    name: Literal["arithmetic"] = Field("arithmetic", description="Name of the built-in task.")
    terms: int = Field(3, ge=2, le=6, description="Operands per arithmetic problem.")
    max_operand: int = Field(9, ge=1, le=99, description="Largest operand.")
    train_size: int = Field(2000, ge=1, description="Number of training prompts generated.")

    def build(self, eval_size: int, seed: int) -> Task:
        return build(self.terms, self.max_operand, self.train_size, eval_size, seed)

    def label(self) -> str:
        return f"{self.name} terms={self.terms} max_operand={self.max_operand}"
