"""Step votes (`judge.solve_steps`): a solve-mode judge's label composed from its own most common answer to each step.

A task that works its answers in steps may give `StepRules`: `read(response)` lists the steps a response wrote, each
a (step, result) pair (`12+7=19` -> ((12, '+', 7), '19')), and `compose(prompt, table)` writes the prompt's worked
answer from a table of step results, or None where a step is missing. The judge answers a set of training prompts
(every view, `solve_samples` times) once, at its first scoring call; every step written by an answer that agrees
with its prompt's majority counts as a vote (the other answers' votes fill in steps only they wrote), and the table
keeps each step's most common result, pooled over all the prompts: a step the judge gets right in most of the places
it writes it is right in the table, though it slips on it in some. A prompt's label is then the majority of the
answers the table composes along each form of the prompt (`composed_label`), and the prompt's own worked answer,
where it gives that label, is what `solve_guide` and `solve_distill` train on. The judge never reads a
reference; code only counts its votes and writes the steps in the task's format, as the views label counts its
answers (bench/filter_online.py --compose: on operands 0-9 the label is right 0.76 against greedy 0.58, and three
offline rounds, each round's student the next one's judge, climbed 0.578 -> 0.619 -> 0.648 -> 0.684).
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable, Optional

from stages.answers import Label, extract_answer, label_of, normalized
from stages.views import SUM, signed_terms

Step = tuple  # a task's key of one step, e.g. (12, '+', 7)
Table = dict  # step -> its most common result (text)


@dataclass(frozen=True)
class StepRules:
    read: Callable[[str], list[tuple[Step, str]]]           # the (step, result) pairs a response wrote
    compose: Callable[[str, Table], Optional[str]]          # the prompt's worked answer from a table, or None
    exact: Optional[Callable[[Step], str]] = None           # the task's own result of a step, where it has one


class ExactTable(dict):
    """Every step's result as the task itself works it (`StepRules.exact`): the table of a judge that never slips
    on a step. With the task's checker as the judge, what solve_distill and solve_guide train on is then the
    prompt's exact worked answer (`exact_guide`): step votes' ceiling (bench/ladder_vs_oracle.py)."""

    def __init__(self, exact: Callable[[Step], str]):
        super().__init__()
        self.exact = exact

    def get(self, step, default=None):
        return self.exact(step)


def exact_guide(rules: StepRules, prompt: str) -> Optional[str]:
    """The prompt's worked answer with every step exact (`rules.exact` given)."""
    return rules.compose(prompt, ExactTable(rules.exact))


def table_of(texts, min_votes: int = 0) -> Table:
    """Each step's most common result over every step the texts wrote (ties: the first written); a step they wrote
    fewer than `min_votes` times is left out."""
    votes: dict[Step, Counter] = defaultdict(Counter)
    for steps in texts:
        for step, result in steps:
            votes[step][result] += 1
    return {step: results.most_common(1)[0][0] for step, results in votes.items()
            if sum(results.values()) >= min_votes}


def agrees(label: Label, text: str, answer_pattern: str) -> bool:
    """Whether an answer the judge wrote gives its prompt's majority, one that at least half of the prompt's answers
    give."""
    answer = extract_answer(answer_pattern, text)
    return label.majority is not None and label.share >= 0.5 and answer is not None \
        and normalized(answer) == label.majority


def voted_table(answers, min_votes: int = 0) -> Table:
    """The table of the steps written by answers that agree with their prompt's majority (`agrees`: an answer the
    judge wrote alike for most forms of the prompt has its steps right far more often), backed, for a step only the
    others wrote, by every answer's votes. `answers`: (the (step, result) pairs one answer wrote, whether it agrees).
    On operands 0-9 a rung-1 student's table from agreeing answers composes a right label for 0.725 of held-out
    prompts against 0.664 from every answer's votes (its greedy answer: 0.586; bench/filter_online.py
    --measure-labels). `min_votes` (judge.solve_step_votes): only the steps that at least that many agreeing
    answers wrote, the others' votes left out."""
    answers = list(answers)
    if min_votes:
        return table_of((steps for steps, agreed in answers if agreed), min_votes)
    return {**table_of(steps for steps, _ in answers), **table_of(steps for steps, agreed in answers if agreed)}


def composed_label(forms, compose, table: Table, answer_pattern: str, min_share: float = 0.0):
    """A prompt's step-votes label and the worked answer distillation trains on: the table composes an answer along
    each form of the prompt (`forms`, the prompt first; `solve_views` of them: each order of a sum's terms takes
    other steps, so a step the table has wrong sways the forms that take it, not all), and the label is their
    majority (abstained below `min_share`, or where no form composes). The worked answer is the prompt's own
    composition where it gives the label, else None. On operands 0-9, for the demo's rung-2 student, the majority of
    8 orders is right on 0.818 of held-out prompts where the prompt's own order composes right on 0.723 (its greedy
    answer: 0.650; bench/filter_online.py --measure-labels)."""
    worked = [compose(form, table) for form in forms]
    label = label_of([w and extract_answer(answer_pattern, w) for w in worked], min_share)
    if label.majority is None:
        return Label(label.answers, None, 0.0, True), None
    own = worked[0] and extract_answer(answer_pattern, worked[0])
    agrees_own = not label.abstained and own is not None and normalized(own) == label.majority
    return label, worked[0] if agrees_own else None


# The built-in arithmetic task's steps: `Q:4+1-5+3\nA:` worked as `4+1=5,5-5=0,0+3=3#3` -------------------------
SUM_STEP = re.compile(r"(\d+)([+-])(\d+)=(-?\d+)")


def signed_sum_steps(response: str) -> list[tuple[Step, str]]:
    return [((int(a), op, int(b)), c) for a, op, b, c in SUM_STEP.findall(response.split("#")[0])]


def signed_sum_compose(prompt: str, table: Table) -> Optional[str]:
    """`4+1=5,5-5=0,0+3=3#3` from the table's results for each step of the prompt's sum, in order."""
    sums = SUM.findall(prompt)
    if len(sums) != 1:
        return None
    terms = signed_terms(sums[0])
    total, steps = str(terms[0][1]), []
    for op, n in terms[1:]:
        result = table.get((int(total), op, n))
        if result is None:
            return None
        steps.append(f"{total}{op}{n}={result}")
        total = result
    return ",".join(steps) + f"#{total}"


def signed_sum_exact(step: Step) -> str:
    a, op, b = step
    return str(a + b if op == "+" else a - b)


SIGNED_SUM_STEPS = StepRules(signed_sum_steps, signed_sum_compose, signed_sum_exact)
