"""Prompt sets with ground truth: built-in generators, JSONL / Parquet files and reasoning-gym, with their checkers.

`build_task(spec.task, seed)` returns a `Task`; `TASK_SOURCES` maps a source kind to its builder.
"""
from __future__ import annotations

from ladder.tasks.base import AnswerChecker, CalibrationItem, Example, Task, TaskError
from ladder.tasks.files import load_jsonl

__all__ = ["AnswerChecker", "CalibrationItem", "Example", "Task", "TaskError", "build_task", "load_jsonl",
           "BUILTIN_TASKS", "TASK_SOURCES"]


def _arithmetic(source, eval_size: int, seed: int) -> Task:
    from ladder.tasks import arithmetic

    return arithmetic.build(source.terms, source.max_operand, source.train_size, eval_size, seed)


def _builtin(source, eval_size: int, seed: int) -> Task:
    return BUILTIN_TASKS[source.name](source, eval_size, seed)


def _file(source, eval_size: int, seed: int) -> Task:
    from ladder.tasks import files

    return files.build(source, eval_size, seed)


def _reasoning_gym(source, eval_size: int, seed: int) -> Task:
    from ladder.tasks import reasoning_gym

    return reasoning_gym.build(source, eval_size, seed)


BUILTIN_TASKS = {"arithmetic": _arithmetic}
TASK_SOURCES = {"builtin": _builtin, "jsonl": _file, "parquet": _file, "reasoning_gym": _reasoning_gym}


def build_task(task_spec, seed: int) -> Task:
    """The Task of a `TaskSpec`: its source's builder, with `task_spec.eval_size` prompts held out."""
    return TASK_SOURCES[task_spec.source.kind](task_spec.source, task_spec.eval_size, seed)
