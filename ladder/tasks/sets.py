"""Each rung's task and the judge calibration set of the gate, built once per distinct task of a ladder job (the
controller's cache), and the check of every task of a spec before anything starts.

A task with worked solutions (or a corrupter) gives its calibration items at once; a task with reference answers
only gets them from responses the student samples, labelled by the reference; those are kept in a file of the job
and by a `CalibrationKeeper` (MLflow, with the rung that sampled them), read back from it where the file is gone.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Protocol

from ladder.tasks.base import CalibrationItem, Task

SAMPLES_PER_PROMPT = 4  # responses the student writes per held-out prompt for a sampled calibration set
YARDSTICK_SEED = 9973  # added to the ladder's seed: the yardstick's prompts are drawn apart from the rungs'


class CalibrationKeeper(Protocol):
    """Where a job's sampled calibration sets outlive its folder (another node, a wiped disk): by file name."""

    def save(self, name: str, text: str) -> None: ...

    def load(self, name: str) -> Optional[str]: ...


class TaskSets:
    """Tasks and calibration sets of one ladder job, by rung (the schedule may change the task)."""

    def __init__(self, spec, folder: Path, keeper: Optional[CalibrationKeeper] = None):
        self.spec = spec
        self.folder = folder
        self.keeper = keeper
        self._tasks: dict[str, Task] = {}
        self._calibration: dict[str, list[CalibrationItem]] = {}

    def task(self, k: int) -> Task:
        """Rung k's task (a dataset problem fails here in one line)."""
        from ladder.tasks import build_task

        key = self._key(k)
        if key not in self._tasks:
            self._tasks[key] = build_task(self.spec.for_rung(k).task, self.spec.seed)
        return self._tasks[key]

    def calibration(self, k: int, rung=None) -> list[CalibrationItem]:
        """Rung k's calibration items: from the task, from this job's saved file, or sampled by `rung`'s student
        (a running `Rung` whose rollout workers serve it)."""
        key = self._key(k)
        if key in self._calibration:
            return self._calibration[key]
        task, size, seed = self.task(k), self.spec.eval.calibration_size, self.spec.seed + 7
        if not task.needs_sampled_calibration:
            items = task.calibration(size, seed)
        else:
            items = self._load(key)
            if items is None:
                if rung is None:
                    raise RuntimeError(f"rung {k}: the calibration set must be sampled by a running rung first")
                items = task.calibration_from(sample_responses(rung, task, size), size, seed)
                self._save(key, items)
        self._calibration[key] = items
        return items

    def yardstick(self) -> Optional[Task]:
        """The one fixed task every version is measured on (None when off, or when it has no answers): `eval.yardstick`
        with `eval.yardstick_size` held-out prompts; by default the last rung's task, as a generator of its own prompts
        (other prompts than any rung's evaluation) or, for a file or other fixed source, that rung's held-out rows."""
        if self.spec.eval.yardstick_size == 0:
            return None
        if "yardstick" not in self._tasks:
            self._tasks["yardstick"] = build_yardstick(self.spec, lambda: self.task(self.spec.rungs))
        task = self._tasks["yardstick"]
        return task if task.verifier is not None and task.eval else None

    def _key(self, k: int) -> str:
        return hashlib.sha256(self.spec.for_rung(k).task.model_dump_json().encode()).hexdigest()[:16]

    def _file(self, key: str) -> Path:
        return self.folder / f"calibration-{key}.json"

    def _load(self, key: str) -> Optional[list[CalibrationItem]]:
        """The job's file, else the keeper's copy (written back to the file)."""
        path = self._file(key)
        text = path.read_text() if path.is_file() else self.keeper.load(path.name) if self.keeper else None
        if text is None:
            return None
        items = [CalibrationItem(**row) for row in json.loads(text)]
        if not path.is_file():
            self._write(key, text)
        return items

    def _save(self, key: str, items: list[CalibrationItem]) -> None:
        """Given to the keeper, then written whole (a temporary file renamed), so a restarted controller, here or
        on another node, reads the same items."""
        from dataclasses import asdict

        text = json.dumps([asdict(c) for c in items])
        if self.keeper is not None:
            self.keeper.save(self._file(key).name, text)
        self._write(key, text)

    def _write(self, key: str, text: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self._file(key).with_suffix(".tmp")
        tmp.write_text(text)
        tmp.rename(self._file(key))


def sample_responses(rung, task: Task, size: int) -> list[tuple[str, str]]:
    """(prompt, response) pairs the rung's student writes for held-out prompts of `task` (sampled at the
    rollout temperature), enough for `size` calibration items."""
    from stages.batches import PromptBatch

    rows = [task.eval[i % len(task.eval)] for i in range(min(len(task.eval), max(1, size // 2)))]
    batch = PromptBatch(tuple(r.prompt for r in rows), tuple(r.answer for r in rows))
    rollout = rung.generate(batch, SAMPLES_PER_PROMPT, rung.spec.rollout.temperature)
    return list(zip(rollout.prompts, rollout.responses))


def build_yardstick(spec, last_rung_task) -> Task:
    """The yardstick's Task (`TaskSets.yardstick`); `last_rung_task()` gives the last rung's own task."""
    from ladder.tasks import build_task

    source = spec.eval.yardstick
    if source is None:
        source = spec.for_rung(spec.rungs).task.source
        if source.kind != "builtin":
            return last_rung_task()
    task_spec = spec.task.model_copy(update={"source": source, "eval_size": spec.eval.yardstick_size})
    return build_task(task_spec, spec.seed + YARDSTICK_SEED)


def data_hashes(spec) -> dict[str, str]:
    """The dataset files of every rung (and of the yardstick) by path, each with the sha256 of its bytes (the
    progress keeps them from the ladder's start: `check_data`)."""
    from ladder.tasks.files import file_sha256

    sources = [spec.for_rung(k).task.source for k in range(1, spec.rungs + 1)] + [spec.eval.yardstick]
    paths = sorted({s.path for s in sources if getattr(s, "kind", None) in ("jsonl", "parquet")})
    return {path: file_sha256(path) for path in paths}


def check_data(spec, started: dict[str, str]) -> dict[str, str]:
    """The dataset hashes a going-on ladder keeps: `started` (from `data_hashes` at its start; a progress saved
    before there were any: today's). A file whose bytes are not those it started with is refused in one line naming
    it: its rows would be split into training and held-out prompts anew."""
    from ladder.tasks.files import file_sha256

    for path, then in sorted(started.items()):
        now = file_sha256(path)
        if now != then:
            what = "is gone" if now is None else f"was changed (sha256 {then}... then, {now}... now)"
            raise DataChanged(f"{path}: the dataset file the ladder started with {what}; going on would split other "
                              f"rows into training and held-out prompts: put the file back, or start a new ladder")
    return started or data_hashes(spec)


class DataChanged(ValueError):
    """A dataset file not the one the ladder started with (one line naming it)."""


class NoViews(ValueError):
    """`judge.solve_views` (or `solve_steps`) asked of a task that gives no equivalent forms of its prompts (no
    steps of its answers) (one line)."""


class MissingAnswers(ValueError):
    """A task without reference answers where something needs them (one line)."""


def check_tasks(spec, gate: bool) -> None:
    """Build every distinct task of the ladder (a bad dataset fails here, in one line) and refuse, before anything
    starts, a task without reference answers where they are needed: the task judge, and the promotion gate
    (`gate`: a ladder; `ladder train-rung` has none)."""
    from ladder.tasks import build_task

    if spec.eval.yardstick is not None and spec.eval.yardstick_size:  # a yardstick named in the spec: its file
        build_yardstick(spec, None)
    seen = set()
    for k in range(1, spec.rungs + 1):
        rspec = spec.for_rung(k)
        key = rspec.task.model_dump_json()
        if key in seen:
            continue
        seen.add(key)
        task = build_task(rspec.task, spec.seed)
        by_model = k > 1 or spec.judge.initial.kind not in ("verifier", "task")
        if by_model and rspec.judge.mode == "solve" and rspec.judge.solve_views > 1 and task.views is None:
            raise NoViews(f"judge.solve_views: {rspec.judge.solve_views} views asked of task "
                                 f"{rspec.task_label()} (rung {k}), which gives no equivalent forms of its prompts "
                                 f"(the built-in arithmetic task does); set judge.solve_views: 1")
        if by_model and rspec.judge.mode == "solve" and rspec.judge.solve_steps and task.steps is None:
            raise NoViews(f"judge.solve_steps: {rspec.judge.solve_steps} asked of task {rspec.task_label()} (rung "
                          f"{k}), which gives no steps of its answers (the built-in arithmetic task does); set "
                          "judge.solve_steps: 0")
        if task.has_answers:
            continue
        field = getattr(rspec.task.source, "answer_field", "answer")
        where = f"task.source ({rspec.task_label()}, rung {k}): rows have no reference answers (field {field!r})"
        if k == 1 and spec.judge.initial.kind == "task":
            raise MissingAnswers(f"{where}; judge.initial kind task checks answers against them")
        if gate:
            raise MissingAnswers(f"{where}; the promotion gate needs them to measure a judge (ladder train-rung "
                                 "trains one rung without a gate)")
