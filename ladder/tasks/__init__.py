"""Prompt sets with ground truth: built-in generators, JSONL / Parquet files and reasoning-gym, with their checkers.

`build_task(spec.task, seed)` returns a `Task`; `TASK_SOURCES` maps a source kind to its builder, and
`BUILTIN_TASKS` a built-in task's name to its spec section (a `BuiltinTaskSpec` in the task's own module, which
builds the task). Adding a built-in task is its module and its line here.
"""
from __future__ import annotations

from ladder.tasks import arithmetic
from ladder.tasks.base import AnswerChecker, BuiltinTaskSpec, CalibrationItem, Example, Task, TaskError
from ladder.tasks.files import load_jsonl

__all__ = ["AnswerChecker", "BuiltinTaskSpec", "CalibrationItem", "Example", "Task", "TaskError", "build_task",
           "load_jsonl", "BUILTIN_CHECKERS", "BUILTIN_TASKS", "TASK_SOURCES"]

BUILTIN_TASKS: dict[str, type[BuiltinTaskSpec]] = {
    "arithmetic": arithmetic.ArithmeticSpec,
}

# the built-in tasks' checkers, as `judge.initial: {kind: verifier}` names them (module:function)
BUILTIN_CHECKERS = ("ladder.tasks.arithmetic:exact", "ladder.tasks.arithmetic:verify")


def _builtin(source: BuiltinTaskSpec, eval_size: int, seed: int) -> Task:
    return source.build(eval_size, seed)


def _file(source, eval_size: int, seed: int) -> Task:
    from ladder.tasks import files

    return files.build(source, eval_size, seed)


def _reasoning_gym(source, eval_size: int, seed: int) -> Task:
    from ladder.tasks import reasoning_gym

    return reasoning_gym.build(source, eval_size, seed)


TASK_SOURCES = {"builtin": _builtin, "jsonl": _file, "parquet": _file, "reasoning_gym": _reasoning_gym}


def build_task(task_spec, seed: int) -> Task:
    """The Task of a `TaskSpec`: its source's builder, with `task_spec.eval_size` prompts held out."""
    return TASK_SOURCES[task_spec.source.kind](task_spec.source, task_spec.eval_size, seed)
