"""Final answers read from a response (presets or a regex) and compared, as numbers where both are numbers.

Pure Python: the scorers, the tasks and the spec's validation share it.
"""
from __future__ import annotations

import re
from typing import Optional

_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+"

# name -> (regex whose first group is the answer, whether the last match counts instead of the first)
PRESETS: dict[str, tuple[str, bool]] = {
    "hash": (r"#(-?\d+)", False),                            # the built-in arithmetic task: `3+4=7#7`
    "gsm8k": (r"####\s*(" + _NUMBER + r")", True),           # GSM8K's solutions: `#### 72`
    "boxed": (r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}", True),  # `\boxed{72}` (one level of nested braces)
    "last_number": (r"(" + _NUMBER + r")", True),             # whatever number the response ends on
    "answer_tag": (r"<answer>\s*(.*?)\s*</answer>", True),    # reasoning-gym's format
}


def extract_answer(pattern: str, response: str) -> Optional[str]:
    """The final answer `response` gives: a preset's (see PRESETS) or the first group of the regex `pattern`'s
    first match; None when there is none."""
    regex, last = PRESETS.get(pattern, (pattern, False))
    if last:
        found = None
        for found in re.finditer(regex, response, flags=re.DOTALL):
            pass
    else:
        found = re.search(regex, response, flags=re.DOTALL)
    return found.group(1).strip() if found else None


def as_number(text: Optional[str]) -> Optional[float]:
    """`text` as a number when it is one (`1,000` -> 1000.0, `$3.50` -> 3.5, `42.` -> 42.0), else None."""
    if text is None:
        return None
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    if not re.fullmatch(r"-?(\d+(\.\d*)?|\.\d+)", cleaned):
        return None
    return float(cleaned)


def same_answer(answer: Optional[str], reference: Optional[str]) -> bool:
    """Whether two final answers agree: numerically when both are numbers (`42.0` = `42`), else as text
    (case and surrounding space ignored)."""
    if answer is None or reference is None:
        return False
    a, b = as_number(answer), as_number(str(reference))
    if a is not None and b is not None:
        return abs(a - b) <= 1e-6 * max(1.0, abs(b))
    return answer.strip().lower() == str(reference).strip().lower()
