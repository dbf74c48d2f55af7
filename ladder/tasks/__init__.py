"""Prompt sets with ground truth: built-in tasks and JSONL files, with their verifiers.

`build_task(spec.task, seed)` returns a `Task`; `TASKS` is the registry of built-in tasks.
"""
from ladder.tasks.base import Example, Task, build_task, load_jsonl

__all__ = ["Example", "Task", "build_task", "load_jsonl"]
