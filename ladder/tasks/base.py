"""The Task type: train / eval examples, the answer checker, and the judge calibration items of the gate; and what
every built-in task's spec section has.

Calibration pairs come from worked solutions (their final answer swapped for a wrong one) or from sampled responses.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Literal, Optional, Sequence

from pydantic import Field

from stages.answers import DEFAULT_ANSWER_PATTERN, extract_answer, normalized, replace_answer, same_answer, wrong_number
from stages.settings import Strict

DEFAULT_BUILTIN = "arithmetic"  # the built-in task of a spec that names none (`task.source: {kind: builtin}`)
DELTAS = (-2, -1, 1, 2, 3)  # how far a made-up wrong numeric answer is from the reference

Verifier = Callable[[str, str, Optional[str]], float]


class TaskError(ValueError):
    """A dataset that cannot be used; the message is one line naming the file and item."""


@dataclass(frozen=True)
class AnswerChecker:
    """The checker of a task with reference answers: 1.0 when the response's final answer (read with `pattern`, a
    preset or a regex) is the reference, numerically where both are numbers; else 0.0."""
    pattern: str

    def __call__(self, prompt: str, response: str, reference: Optional[str]) -> float:
        return float(same_answer(extract_answer(self.pattern, response), reference))


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
    verifier: Optional[Verifier]       # the task's checker (prompt, response, reference) -> [0, 1]; None: no answers
    corrupt: Optional[Callable[[random.Random, Example], str]]  # writes a wrong response
    answer_pattern: str = DEFAULT_ANSWER_PATTERN  # preset or regex; its first group is a response's final answer
    checker_accuracy: bool = False     # accuracy counts checker scores of 1 (a scorer that knows more than a reference)
    views: Optional[Callable[[str, int], tuple[str, ...]]] = None  # (prompt, k) -> up to k equivalent forms of it
    steps: Optional[object] = None     # `stages.steps.StepRules`: the steps its answers are worked in (solve_steps)

    @cached_property
    def has_answers(self) -> bool:
        """Every example has a reference answer (read once: the step loop asks it every step)."""
        return all(ex.answer is not None for ex in (*self.train, *self.eval))

    @property
    def has_solutions(self) -> bool:
        """Every held-out example has a worked solution (calibration items can be made from them)."""
        return all(ex.solution for ex in self.eval)

    @property
    def needs_sampled_calibration(self) -> bool:
        """The gate's calibration items must come from sampled responses (`calibration_from`): the task has
        reference answers but neither worked solutions nor a corrupter."""
        return self.has_answers and not self.has_solutions and self.corrupt is None

    def extract(self, response: str) -> Optional[str]:
        """The final answer a response gives (read with `answer_pattern`), or None."""
        return extract_answer(self.answer_pattern, response)

    def checker(self) -> Verifier:
        """The task's own checker (`judge.initial: {kind: task}`); TaskError when the task has none."""
        if self.verifier is None:
            raise TaskError(f"task {self.name}: rows have no reference answers, so the task cannot check answers")
        return self.verifier

    def accuracy(self, responses: Sequence[str], references: Sequence[Optional[str]],
                 prompts: Optional[Sequence[str]] = None) -> float:
        """Share of responses that are right (`correct`)."""
        right = self.correct(responses, references, prompts)
        return sum(right) / max(1, len(right))

    def correct(self, responses: Sequence[str], references: Sequence[Optional[str]],
                prompts: Optional[Sequence[str]] = None) -> list[bool]:
        """Whether each response's final answer is the reference (`same_answer`); for a task whose checker knows
        more than a reference (`checker_accuracy`, e.g. reasoning-gym), with `prompts`: whether the checker gives 1."""
        if self.checker_accuracy and prompts is not None and self.verifier is not None:
            return [self.verifier(p, t, r) >= 1.0 for p, t, r in zip(prompts, responses, references)]
        return [same_answer(self.extract(t), r) for t, r in zip(responses, references)]

    def calibration(self, size: int, seed: int) -> list[CalibrationItem]:
        """Pairs from held-out examples: items 2m and 2m+1 are a correct worked solution and a wrong one of the
        same prompt (so a pairwise judge can compare them): the task's corrupter, else the solution with its final
        answer replaced by a wrong one."""
        if self.corrupt is None:
            self._require_answers()
            if not self.has_solutions:
                raise TaskError(f"task {self.name}: held-out rows have no worked solutions; calibration items must "
                                f"come from sampled responses (Task.calibration_from)")
        rng = random.Random(seed)
        items = []
        for i in range(size):
            ex = self.eval[(i // 2) % len(self.eval)]
            if i % 2 == 0:
                items.append(CalibrationItem(ex.prompt, ex.solution or "", True, ex.answer))
            else:
                wrong = self.corrupt(rng, ex) if self.corrupt else self._solution_made_wrong(rng, ex)
                items.append(CalibrationItem(ex.prompt, wrong, False, ex.answer))
        return items

    def calibration_from(self, samples: Sequence[tuple[str, str]], size: int, seed: int) -> list[CalibrationItem]:
        """Balanced pairs from responses a model sampled (several per prompt, any mix of right and wrong), labelled
        by the checker: items 2m and 2m+1 are a right and a wrong response to the same prompt. A prompt with only
        wrong samples gets a right one made by putting the reference in a wrong one's answer; with only right ones,
        a wrong one by putting a wrong answer in; a sample with no readable answer is only ever a wrong item."""
        self._require_answers()
        rng = random.Random(seed)
        pairs = [p for p in (self._sampled_pair_options(rng, prompt, group)
                             for prompt, group in self._by_prompt(samples).items()) if p is not None]
        if not pairs:
            raise TaskError(f"task {self.name}: no sampled response gives a calibration pair (no sample has a final "
                            f"answer that answer_pattern {self.answer_pattern!r} reads)")
        rng.shuffle(pairs)
        items = []
        for i in range(size):
            ex, rights, wrongs = pairs[(i // 2) % len(pairs)]
            response = rng.choice(rights if i % 2 == 0 else wrongs)
            items.append(CalibrationItem(ex.prompt, response, i % 2 == 0, ex.answer))
        return items

    def _require_answers(self) -> None:
        if not self.has_answers:
            raise TaskError(f"task {self.name}: rows have no reference answers; the promotion gate needs them")

    def _right(self, ex: Example, response: str) -> bool:
        if self.extract(response) is None:
            return False
        if self.verifier is None:
            return same_answer(self.extract(response), ex.answer)
        return self.verifier(ex.prompt, response, ex.answer) >= 1.0

    def _by_prompt(self, samples: Sequence[tuple[str, str]]) -> dict[str, tuple[Example, list[str], list[str]]]:
        """Samples grouped by prompt (first-seen order): the prompt's example, its right and its wrong responses."""
        examples = {ex.prompt: ex for ex in (*self.train, *self.eval)}
        groups: dict[str, tuple[Example, list[str], list[str]]] = {}
        for prompt, response in samples:
            if prompt not in examples:
                raise TaskError(f"task {self.name}: a sampled response's prompt {prompt[:40]!r} is not one of the "
                                f"task's prompts")
            ex, rights, wrongs = groups.setdefault(prompt, (examples[prompt], [], []))
            (rights if self._right(ex, response) else wrongs).append(response)
        return groups

    def _sampled_pair_options(self, rng: random.Random, prompt: str, group) -> Optional[tuple]:
        """(example, right responses, wrong responses) for one prompt, making up the side its samples lack;
        None when no pair can be made."""
        ex, rights, wrongs = group
        if not rights:
            made = (replace_answer(self.answer_pattern, w, ex.answer) for w in wrongs)
            rights = [r for r in made if r is not None and self._right(ex, r)]
            rights = rights or ([ex.solution] if ex.solution and self._right(ex, ex.solution) else [])
        if not wrongs:
            made = (replace_answer(self.answer_pattern, r, self._wrong_answer(rng, ex.answer)) for r in rights)
            wrongs = [w for w in made if w is not None and not self._right(ex, w)]
        return (ex, rights, wrongs) if rights and wrongs else None

    def _solution_made_wrong(self, rng: random.Random, ex: Example) -> str:
        """`ex`'s worked solution with its final answer replaced by a wrong one."""
        wrong = replace_answer(self.answer_pattern, ex.solution or "", self._wrong_answer(rng, ex.answer))
        if wrong is None:
            raise TaskError(f"task {self.name}: the worked solution of held-out prompt {ex.prompt[:40]!r} has no final "
                            f"answer that answer_pattern {self.answer_pattern!r} reads")
        return wrong

    def _wrong_answer(self, rng: random.Random, reference: str) -> str:
        """A wrong final answer: the numeric reference off by a small nonzero amount (same sign and format), or
        another row's reference for a text answer."""
        delta = rng.choice(DELTAS)
        number = wrong_number(reference, delta)
        if number is not None and number.startswith("-") and not reference.strip().startswith("-"):
            number = wrong_number(reference, abs(delta))
        if number is not None and not same_answer(number, reference):
            return number
        own = normalized(reference)
        others = sorted({ex.answer for ex in (*self.eval, *self.train)
                         if ex.answer is not None and normalized(ex.answer) != own})
        if not others:
            raise TaskError(f"task {self.name}: every row has the answer {reference!r}; no wrong answer to make up")
        return rng.choice(others)


class BuiltinTaskSpec(Strict):
    """What the spec section of every built-in task has (`task.source: {kind: builtin, name: <task>, ...}`). A task's
    module subclasses it with its own fields, `build` and `label`; `BUILTIN_TASKS` (ladder/tasks/__init__.py) lists
    it by name, and the spec validates `task.source` as the model its `name` names."""
    kind: Literal["builtin"] = Field(description="A task shipped with judge-ladder.")
    name: str = Field(DEFAULT_BUILTIN, description="Name of the built-in task.")

    def build(self, eval_size: int, seed: int) -> Task:
        """The task's train and eval sets (`eval_size` prompts held out)."""
        raise NotImplementedError(f"{type(self).__name__}: a built-in task builds its Task")

    def label(self) -> str:
        """What a rung trains on, in a few words (lineage shows it)."""
        raise NotImplementedError(f"{type(self).__name__}: a built-in task names itself")
