"""Final answers read from a response (presets or a regex), compared as numbers where both are numbers, and replaced.

Pure Python: the scorers, the tasks and the spec's validation share it.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+"

DEFAULT_ANSWER_PATTERN = r"#(-?\d+)"  # the built-in arithmetic task's final answer: `3+4=7#7`

# name -> (regex whose first group is the answer, whether the last match counts instead of the first)
PRESETS: dict[str, tuple[str, bool]] = {
    "hash": (DEFAULT_ANSWER_PATTERN, False),                 # the built-in arithmetic task: `3+4=7#7`
    "gsm8k": (r"####\s*(" + _NUMBER + r")", True),           # GSM8K's solutions: `#### 72`
    "boxed": (r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}", True),  # `\boxed{72}` (one level of nested braces)
    "last_number": (r"(" + _NUMBER + r")", True),             # whatever number the response ends on
    "answer_tag": (r"<answer>\s*(.*?)\s*</answer>", True),    # reasoning-gym's format
}


def final_match(pattern: str, response: str) -> Optional[re.Match]:
    """The match whose first group is `response`'s final answer: a preset's (its last match where the preset
    says so) or the regex `pattern`'s first match; None when there is none."""
    regex, last = PRESETS.get(pattern, (pattern, False))
    if not last:
        return re.search(regex, response, flags=re.DOTALL)
    found = None
    for found in re.finditer(regex, response, flags=re.DOTALL):
        pass
    return found


def extract_answer(pattern: str, response: str) -> Optional[str]:
    """The final answer `response` gives: a preset's (see PRESETS) or the first group of the regex `pattern`'s
    first match; None when there is none."""
    found = final_match(pattern, response)
    return found.group(1).strip() if found and found.group(1) is not None else None


def replace_answer(pattern: str, response: str, new_answer: str) -> Optional[str]:
    """`response` with its final answer (the text `extract_answer` reads, surrounding space kept) replaced by
    `new_answer`; None when it gives no final answer."""
    found = final_match(pattern, response)
    if found is None or found.group(1) is None:
        return None
    start, end = found.span(1)
    text = response[start:end]
    start += len(text) - len(text.lstrip())
    end -= len(text) - len(text.rstrip())
    return response[:start] + new_answer + response[max(start, end):]


def as_number(text: Optional[str]) -> Optional[float]:
    """`text` as a number when it is one (`1,000` -> 1000.0, `$3.50` -> 3.5, `42.` -> 42.0), else None."""
    if text is None:
        return None
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    if not re.fullmatch(r"-?(\d+(\.\d*)?|\.\d+)", cleaned):
        return None
    return float(cleaned)


def normalized(answer: Optional[str]) -> Optional[str]:
    """A key under which answers that `same_answer` counts as one are equal: `1,000`, `1000.0` -> `1000`; text
    answers lowercased and stripped. (Numbers are keyed exactly, without `same_answer`'s relative tolerance.)"""
    if answer is None:
        return None
    number = as_number(answer)
    if number is None:
        return answer.strip().lower()
    return str(int(number)) if number.is_integer() else repr(number)


def same_answer(answer: Optional[str], reference: Optional[str]) -> bool:
    """Whether two final answers agree: numerically when both are numbers (`42.0` = `42`), else as text
    (case and surrounding space ignored)."""
    if answer is None or reference is None:
        return False
    a, b = as_number(answer), as_number(str(reference))
    if a is not None and b is not None:
        return abs(a - b) <= 1e-6 * max(1.0, abs(b))
    return answer.strip().lower() == str(reference).strip().lower()


def wrong_number(reference: str, delta: int) -> Optional[str]:
    """A number `delta` away from the numeric answer `reference`, written the way it is (decimals, thousands
    commas, a `$`); None when `reference` is not a number."""
    value = as_number(reference)
    if value is None:
        return None
    text = reference.strip()
    decimals = len(text.split(".")[1]) if re.search(r"\.\d+$", text) else 0
    new = value + delta
    body = f"{abs(new):,.{decimals}f}" if "," in text else f"{abs(new):.{decimals}f}"
    return ("-" if new < 0 else "") + ("$" if "$" in text else "") + body


@dataclass(frozen=True)
class Label:
    """The judge's label of one prompt in solve mode, from every answer it wrote (views x samples)."""
    answers: tuple[Optional[str], ...]  # [views * samples] final answers read (None: unreadable)
    majority: Optional[str]             # the most common readable answer (ties: the first written); None: none
    share: float                        # the majority's count over every answer written, unreadable ones included
    abstained: bool                     # share below `solve_min_share`: the prompt gets no learning signal

    @property
    def readable(self) -> list[str]:
        return [a for a in self.answers if a is not None]


def label_of(answers: Sequence[Optional[str]], min_share: float = 0.0) -> Label:
    """The label of a prompt the judge answered with `answers`: their majority, its share and whether the judge
    abstains (a prompt with no readable answer is unread, not abstained)."""
    counts = Counter(normalized(a) for a in answers if a is not None)
    if not counts:
        return Label(tuple(answers), None, 0.0, False)
    majority, count = counts.most_common(1)[0]  # ties: the first written
    share = count / len(answers)
    return Label(tuple(answers), majority, share, share < min_share)
