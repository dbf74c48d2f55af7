"""The ladder job spec: pydantic v2 models loaded from YAML and validated before anything starts.

Owns the schema (`ladder schema`), loading (`load_spec`) and the one-line error format for bad specs; the judge's
the task's, the roles', the gate's and the resources' sections are in the files beside this one.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import yaml
from pydantic import Field, SerializeAsAny, ValidationError, model_validator

from ladder.spec.judge import JudgeModeName, JudgeSpec
from ladder.spec.gate import GuardSpec, PromotionSpec, SaturationSpec
from ladder.spec.resources import MlflowSpec, ResourcesSpec
from ladder.spec.roles import EvalSpec, JudgePoolSpec, RolloutSpec, StudentSpec, SyncSpec, TrainSpec
from ladder.spec.task import TaskSource, TaskSpec
from stages.settings import Strict

SLUG = r"^[a-z0-9][a-z0-9-]{0,62}$"


class SpecError(ValueError):
    """A spec that cannot be used; the message is one line naming the field."""


class RungSchedule(Strict):
    """Overrides from rung `rung` on (until the next entry): what the rung trains on and how it is judged."""
    rung: int = Field(ge=1, description="First rung this entry applies to.")
    task: Optional[SerializeAsAny[TaskSource]] = Field(None, description="The task from this rung on (e.g. more terms).")
    judge_mode: Optional[JudgeModeName] = Field(None, description="The judge mode from this rung on.")
    train: Optional[dict] = Field(
        None, description="Trainer fields to change from this rung on (e.g. {lr: 1.0e-4, kl_coef: 0.05}); "
                          "the rest stay as in `train`.")
    rollout: Optional[dict] = Field(
        None, description="Sampling fields to change from this rung on: `group_size`, `temperature` (e.g. "
                          "{group_size: 2} where the student trains on its judge's answers and its own samples only "
                          "measure it); the engines are the ladder's, so nothing else of `rollout` changes.")


class LadderSpec(Strict):
    name: str = Field(pattern=SLUG, description="Ladder name: lowercase slug; also the registered model name.")
    seed: int = Field(0, ge=0, description="Seed for data order, sampling and initialisation.")
    workdir: str = Field(".ladder", description="Directory for checkpoints, local MLflow and controller state.")
    rungs: int = Field(3, ge=1, le=1000, description="Number of rungs (generations) to run.")
    checkpoint_every: int = Field(
        10, ge=1, description="The trainer's weights, optimizer, RNG and data cursor are saved to MLflow this often "
                              "(steps); a resumed or restarted rung redoes at most this many steps.")
    controller_restarts: int = Field(
        3, ge=0, description="Times Ray restarts a ladder controller whose process died, each after a wait (5 s, "
                             "doubled each time, up to 60 s); it re-enters the saved phase (a rung goes on from its "
                             "last checkpoint). One death more is recorded as the ladder failed.")
    stage_restarts: int = Field(
        3, ge=0, description="Times a rung starts again from its last checkpoint after its trainer died (or a worker "
                             "died where it cannot be replaced in place), on a new trainer and the engines that still "
                             "answer; one more fails the rung.")
    trust_remote_code: bool = Field(
        False, description="Let models run their own Python code (HF `trust_remote_code`) in engines and the "
                           "trainer. Off: only architectures transformers and vLLM ship are loaded.")
    worker_replacements: int = Field(
        5, ge=0, description="Times per rung a dead rollout or judge worker is replaced in place (a rollout worker "
                             "re-synced to the current weights first) and its batch retried; one more death of "
                             "that role fails the rung.")
    student: StudentSpec = Field(description="The model being trained.")
    judge: JudgeSpec = Field(description="The frozen judge and how it scores.")
    task: TaskSpec = Field(description="Prompts and ground truth.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Rollout workers.")
    judge_pool: JudgePoolSpec = Field(default_factory=JudgePoolSpec, description="Judge workers.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="GRPO trainer.")
    sync: SyncSpec = Field(default_factory=SyncSpec, description="Weight sync from the trainer to the rollout engines.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Evaluation cadence and sizes.")
    promotion: PromotionSpec = Field(default_factory=PromotionSpec, description="The promotion gate.")
    saturation: SaturationSpec = Field(default_factory=SaturationSpec, description="Early rung end.")
    guard: GuardSpec = Field(default_factory=GuardSpec, description="Early rung end on a collapse, best weights kept.")
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec, description="Tracking and registry.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Ray resources and placement per role.")
    schedule: list[RungSchedule] = Field(
        default_factory=list, description="Per-rung overrides of the task and the judge mode, by first rung.")

    @model_validator(mode="after")
    def _cross_field(self) -> "LadderSpec":
        if self.judge.yes_token == self.judge.no_token:
            raise ValueError("judge.yes_token and judge.no_token must differ")
        if self.saturation.enabled and self.saturation.window > self.train.steps:
            raise ValueError("saturation.window must not exceed train.steps")
        if self.promotion.on_reject == "retry" and self.promotion.max_retries < 1:
            raise ValueError("promotion.max_retries must be at least 1 when on_reject is retry")
        if self.train.lora is not None and self.train.workers > 1:
            raise ValueError("train.lora: a LoRA student trains on one trainer rank (train.workers: 1)")
        if self.train.lora is not None and self.sync.backend == "collective":
            raise ValueError("train.lora: a LoRA student's weights go through the object store (sync.backend: "
                             "object_store)")
        firsts = [entry.rung for entry in self.schedule]
        if firsts != sorted(set(firsts)):
            raise ValueError("schedule: entries must name increasing, distinct rungs")
        if firsts and firsts[-1] > self.rungs:
            raise ValueError(f"schedule: rung {firsts[-1]} is beyond rungs={self.rungs}")
        for entry in self.schedule:
            if entry.train:
                try:
                    TrainSpec.model_validate({**self.train.model_dump(), **entry.train})
                except ValidationError as err:
                    raise ValueError(f"schedule (rung {entry.rung}): " + format_validation_error(err, "train")) from None
            if entry.rollout:
                rollout_override(self.rollout, entry)
        first = 2 if self.judge.initial.kind in ("verifier", "task") else 1  # a checker writes no answers to learn
        for k in sorted(k for k in {first, *firsts} if first <= k <= self.rungs):
            rung = self.for_rung(k)
            if rung.judge.mode == "solve" and rung.judge.solve_distill and rung.train.advantage != "filter":
                raise ValueError(f"judge.solve_distill (rung {k}): the student trains on the judge's answers alone, "
                                 "which needs train.advantage: filter (GRPO's advantage of a lone answer is 0)")
        return self

    def for_rung(self, k: int) -> "LadderSpec":
        """This spec with the schedule's overrides for rung `k` applied (the latest entry at or before k)."""
        spec = self
        for entry in self.schedule:
            if entry.rung > k:
                break
            if entry.task is not None:
                spec = spec.model_copy(update={"task": spec.task.model_copy(update={"source": entry.task})})
            if entry.judge_mode is not None:
                spec = spec.model_copy(update={"judge": spec.judge.model_copy(update={"mode": entry.judge_mode})})
            if entry.train:
                train = TrainSpec.model_validate({**spec.train.model_dump(), **entry.train})
                spec = spec.model_copy(update={"train": train})
            if entry.rollout:
                spec = spec.model_copy(update={"rollout": rollout_override(spec.rollout, entry)})
        return spec

    def task_label(self) -> str:
        """What a rung trains on, in a few words (lineage shows it): its task source's own label."""
        return self.task.source.label()

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()

    def flat(self) -> dict[str, str]:
        """The spec as dotted keys, for MLflow params."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: object) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = str(value)

        walk("", self.model_dump(mode="json"))
        return out


def format_validation_error(err: ValidationError, source: str = "spec") -> str:
    """One line naming the first bad field, e.g. `spec.yaml: train.lr: Input should be greater than 0`."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"].removeprefix("Value error, ")
    extra = f" ({len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{extra}"


def parse_spec(data: object, source: str = "spec") -> LadderSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: top level must be a mapping of fields, got {type(data).__name__}")
    try:
        return LadderSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, source)) from None


def load_spec(path: str | Path) -> LadderSpec:
    """Load and validate a spec file (relative model and dataset paths in it are read from where the ladder
    runs, not from the file's folder)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise SpecError(f"{path}: not valid YAML{where}") from None
    return parse_spec(data, str(path))


def json_schema() -> dict:
    return LadderSpec.model_json_schema()


SAMPLING = ("group_size", "temperature")  # what a rung may change of the ladder's rollout: its engines stay


def rollout_override(rollout: RolloutSpec, entry: RungSchedule) -> RolloutSpec:
    """`rollout` with a schedule entry's sampling fields applied; any other field is refused in one line."""
    other = sorted(set(entry.rollout) - set(SAMPLING))
    if other:
        raise ValueError(f"schedule (rung {entry.rung}): rollout.{other[0]} cannot change between rungs (the "
                         f"engines are the ladder's); a rung may change {' and '.join(SAMPLING)}")
    try:
        return RolloutSpec.model_validate({**rollout.model_dump(), **entry.rollout})
    except ValidationError as err:
        raise ValueError(f"schedule (rung {entry.rung}): " + format_validation_error(err, "rollout")) from None
