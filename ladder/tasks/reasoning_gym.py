"""A reasoning-gym dataset as a Task: its generator writes the prompts and its own scorer checks the answers.

Needs `pip install 'judge-ladder[tasks]'`; reasoning_gym is imported only when a spec names such a task.
"""
from __future__ import annotations

import difflib
import zlib
from dataclasses import dataclass, field
from typing import Callable, Optional

from ladder.errors import first_line
from ladder.tasks.base import Example, Task, TaskError
from stages.answers import extract_answer

# What the prompt asks for after the question, by answer preset (reasoning-gym's own system prompts ask for
# `<answer>answer here</answer>`, with only the final answer inside); a user's regex adds nothing.
INSTRUCTIONS = {
    "answer_tag": "Give only the final answer between <answer> and </answer> tags, e.g. <answer>answer here</answer>.",
    "boxed": "Give the final answer in \\boxed{}.",
    "gsm8k": "End with the final answer after ####, e.g. #### 42.",
    "hash": "End with # and the final answer, e.g. #42.",
    "last_number": "End with the final answer.",
}
CHUNKS = 4  # generator calls (fresh seeds) tried to find enough prompts before giving up


@dataclass(frozen=True, eq=False)
class GymChecker:
    """The dataset's scorer as a verifier: the response's final answer (read with `pattern`) scored against the
    entry its prompt was made from (a float in [0, 1]; an answer the scorer fails on scores 0)."""
    name: str
    dataset: object
    entries: dict = field(repr=False)   # prompt text -> the reasoning-gym entry (question, answer, metadata)
    pattern: str = "answer_tag"

    def __call__(self, prompt: str, response: str, reference: Optional[str] = None) -> float:
        entry = self.entries.get(prompt)
        if entry is None:
            raise TaskError(f"reasoning_gym {self.name}: prompt {prompt[:40]!r} is not one of the task's")
        answer = extract_answer(self.pattern, response)
        try:
            return float(self.dataset.score_answer(answer=answer, entry=entry))
        except Exception:  # the dataset's scorer could not read this answer: it earns nothing
            return 0.0


def prompt_of(entry: dict, pattern: str) -> str:
    """What the student sees: the entry's question, then how to write the final answer."""
    instruction = INSTRUCTIONS.get(pattern)
    return f"{entry['question']}\n\n{instruction}" if instruction else entry["question"]


def dataset_maker(source) -> Callable[[int, int], object]:
    """`make(seed, size)` -> the reasoning-gym dataset of `source`; TaskError in one line for an unknown name or
    a config the dataset refuses."""
    try:
        import reasoning_gym
        from reasoning_gym.factory import DATASETS
    except ImportError:
        raise TaskError("task.source: kind reasoning_gym needs reasoning-gym (pip install 'judge-ladder[tasks]')") \
            from None
    if source.name not in DATASETS:
        near = difflib.get_close_matches(source.name, sorted(DATASETS), n=5, cutoff=0.5) or sorted(DATASETS)[:5]
        raise TaskError(f"reasoning_gym {source.name}: no such dataset (e.g. {', '.join(near)}; "
                        f"{len(DATASETS)} in all)")
    taken = sorted({"seed", "size"} & set(source.config))
    if taken:
        raise TaskError(f"reasoning_gym {source.name}: config must not set {', '.join(taken)} (the ladder sets "
                        f"them: spec.seed, task.source.train_size, task.eval_size)")

    def make(seed: int, size: int):
        try:
            return reasoning_gym.create_dataset(source.name, seed=seed, size=size, **source.config)
        except Exception as exc:  # TypeError (unknown setting), AssertionError / ValueError (a bad value)
            why = first_line(exc, 160)
            raise TaskError(f"reasoning_gym {source.name}: bad config {source.config}: {why} (settings: "
                            f"{settings(DATASETS[source.name][1])})") from None

    return make


def settings(config_cls) -> str:
    """The settings a reasoning-gym config dataclass takes, but the two the ladder sets."""
    import dataclasses

    return ", ".join(f.name for f in dataclasses.fields(config_cls) if f.name not in ("seed", "size"))


def collect(make, seed: int, want: int, exclude: set[str], pattern: str, distinct: bool) -> list[tuple[str, dict]]:
    """Up to `want` (prompt, entry) pairs whose prompts are not in `exclude`, from up to CHUNKS datasets that
    continue one another (seed + k * want: reasoning-gym seeds item i with seed + i)."""
    out: list[tuple[str, dict]] = []
    seen = set(exclude)
    for k in range(CHUNKS):
        dataset = make(seed + k * want, want)
        for i in range(len(dataset)):
            entry = dataset[i]
            prompt = prompt_of(entry, pattern)
            if prompt not in seen:
                out.append((prompt, entry))
                if distinct:
                    seen.add(prompt)
            if len(out) == want:
                return out
    return out


def derived_seed(seed: int, role: str) -> int:
    return zlib.crc32(f"{seed}:{role}".encode()) % 2**31


def example(prompt: str, entry: dict) -> Example:
    answer = entry.get("answer")
    return Example(prompt, None if answer is None else str(answer))


def build(source, eval_size: int, seed: int) -> Task:
    """Held-out and training prompts from different seeds, no prompt text in both; the dataset's scorer checks."""
    make = dataset_maker(source)
    held = collect(make, derived_seed(seed, "eval"), eval_size, set(), source.answer_pattern, distinct=True)
    if len(held) < eval_size:
        raise TaskError(f"reasoning_gym {source.name}: only {len(held)} distinct prompts for task.eval_size="
                        f"{eval_size}; lower it or widen the config")
    train = collect(make, derived_seed(seed, "train"), source.train_size, {p for p, _ in held},
                    source.answer_pattern, distinct=False)
    if not train:
        raise TaskError(f"reasoning_gym {source.name}: every prompt it generates is held out; widen the config")
    checker = GymChecker(source.name, make(0, 1), dict(held + train), source.answer_pattern)
    return Task(source.name, tuple(example(p, e) for p, e in train), tuple(example(p, e) for p, e in held),
                checker, None, source.answer_pattern, checker_accuracy=True)
