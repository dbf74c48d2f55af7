"""A user's dataset file as a Task: JSONL (one object per line) or Parquet, read as HF `datasets` exports them.

The spec names the prompt, answer and solution fields; a row's answer may be a number or text (kept as text).
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator, Optional

from ladder.errors import first_line
from ladder.tasks.base import AnswerChecker, Example, Task, TaskError
from stages.answers import extract_answer, same_answer

MARKED = ("hash", "gsm8k", "boxed", "answer_tag")  # presets that find an answer by a marker, not just any number


def jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    """The objects of a JSONL file with their line numbers."""
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{path}:{n}: not valid JSON ({exc.msg})") from None


def parquet_rows(path: Path) -> Iterator[tuple[int, object]]:
    """The rows of a Parquet file as dicts, numbered from 1."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TaskError(f"{path}: reading Parquet needs pyarrow (pip install 'judge-ladder[tasks]')") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow's ArrowInvalid and OSError: not a Parquet file, or a damaged one
        why = first_line(exc, 120)
        raise TaskError(f"{path}: not a readable Parquet file ({why})") from None
    yield from enumerate(table.to_pylist(), 1)


def file_sha256(path, chars: int = 16) -> Optional[str]:
    """The first `chars` hex digits of the sha256 of a file's bytes (None when there is no such file): enough to
    tell a changed dataset from the one a ladder started with, short enough for the saved progress."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return None
    return digest.hexdigest()[:chars]


READERS = {"jsonl": jsonl_rows, "parquet": parquet_rows}
UNITS = {"jsonl": "line", "parquet": "row"}


def where(path, kind: str, n: int) -> str:
    """A row's place in messages: `file:line` (JSONL) or `file row N` (Parquet, from 1)."""
    return f"{path}:{n}" if kind == "jsonl" else f"{path} row {n}"


def as_text(value: object) -> Optional[str]:
    """A field's value as an answer: numbers as written by Python (`42.0` -> `42`), None for a missing one."""
    if value is None or isinstance(value, bool) or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def prompt_of(at: str, unit: str, row: object, field: str) -> str:
    """The row's prompt; TaskError naming the row (and the fields it has) when it is missing or empty."""
    if not isinstance(row, dict):
        raise TaskError(f"{at}: each {unit} must be an object with fields, got {type(row).__name__}")
    need = f"each {unit} needs a non-empty string field \"{field}\""
    if field not in row:
        fields = ", ".join(map(str, row)) or "none"
        raise TaskError(f"{at}: {need}: no field \"{field}\" (fields: {fields}); set task.source.prompt_field")
    prompt = row[field]
    if not isinstance(prompt, str) or not prompt.strip():
        what = "is empty" if isinstance(prompt, str) or prompt is None else f"is a {type(prompt).__name__}, not text"
        raise TaskError(f"{at}: {need}: this one {what}")
    return prompt


def answer_and_solution(row: dict, source) -> tuple[Optional[str], Optional[str]]:
    """A row's reference answer and worked solution. Without an answer, the solution's final answer is the answer;
    an answer field that holds a worked solution (a marked final answer inside more text, as GSM8K's
    `... #### 72`) gives that final answer and, without a solution field, serves as the solution."""
    solution = as_text(row.get(source.solution_field))
    answer = None if source.answer_field == source.solution_field else as_text(row.get(source.answer_field))
    if answer is not None and source.answer_pattern in MARKED:
        inside = extract_answer(source.answer_pattern, answer)
        if inside is not None and inside != answer:
            answer, solution = inside, solution or answer
    if answer is None and solution is not None:
        answer = extract_answer(source.answer_pattern, solution)
    return answer, solution


def check_solution(at: str, solution: Optional[str], answer: Optional[str], source) -> None:
    """A worked solution must give the row's answer (it becomes a correct calibration item)."""
    if solution is None or answer is None:
        return
    said = extract_answer(source.answer_pattern, solution)
    if not same_answer(said, answer):
        found = f"gives {said!r}" if said is not None else "has no final answer that answer_pattern reads"
        raise TaskError(f"{at}: the solution (field \"{source.solution_field}\") {found}, the answer is "
                        f"{answer!r}; fix the row or task.source.answer_pattern ({source.answer_pattern!r})")


def row_example(at: str, unit: str, row: object, source) -> Example:
    prompt = prompt_of(at, unit, row, source.prompt_field)
    answer, solution = answer_and_solution(row, source)
    check_solution(at, solution, answer, source)
    return Example(prompt, answer, solution)


def load_rows(source, kind: str = "jsonl") -> list[tuple[int, Example]]:
    """A dataset file's examples with their line or row numbers; every row has an answer or none does."""
    path = Path(source.path)
    if not path.is_file():
        raise TaskError(f"{path}: no such dataset file")
    rows = [(n, row_example(where(path, kind, n), UNITS[kind], row, source)) for n, row in READERS[kind](path)]
    if not rows:
        raise TaskError(f"{path}: dataset is empty")
    missing = [str(n) for n, ex in rows if ex.answer is None]
    if missing and len(missing) < len(rows):
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise TaskError(f"{path}: {UNITS[kind]}s {shown} have no answer (field \"{source.answer_field}\"): give "
                        f"every row one or none")
    return rows


def load_jsonl(path, prompt_field: str = "prompt", answer_field: str = "answer", solution_field: str = "solution",
               answer_pattern: str = "hash") -> list[Example]:
    """The examples of a JSONL file, fields named as given."""
    source = SimpleNamespace(path=str(path), prompt_field=prompt_field, answer_field=answer_field,
                             solution_field=solution_field, answer_pattern=answer_pattern)
    return [ex for _, ex in load_rows(source, "jsonl")]


def build(source, eval_size: int, seed: int) -> Task:
    """A Task from a JSONL or Parquet file: rows shuffled with `seed`, the first `eval_size` held out."""
    rows = [ex for _, ex in load_rows(source, source.kind)]
    if len(rows) <= eval_size:
        raise TaskError(f"{source.path}: {len(rows)} rows, need more than task.eval_size={eval_size}")
    random.Random(seed).shuffle(rows)
    verifier = AnswerChecker(source.answer_pattern) if rows[0].answer is not None else None
    return Task(Path(source.path).name, tuple(rows[eval_size:]), tuple(rows[:eval_size]), verifier, None,
                source.answer_pattern)
