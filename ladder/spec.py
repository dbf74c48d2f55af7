"""The ladder job spec: pydantic v2 models loaded from YAML and validated before anything starts.

Owns the schema (`ladder schema`), loading (`load_spec`) and the one-line error format for bad specs; the judge's
and the task's sections are in spec_judge.py and spec_task.py.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import Field, SerializeAsAny, ValidationError, field_validator, model_validator

from ladder.spec_judge import ChatSpec, JudgeModeName, JudgeSpec
from ladder.spec_task import TaskSource, TaskSpec
from stages.settings import Strict

SLUG = r"^[a-z0-9][a-z0-9-]{0,62}$"


class SpecError(ValueError):
    """A spec that cannot be used; the message is one line naming the field."""


class StudentSpec(Strict):
    base: str = Field(description="HF-format directory (or hub id) of the student's base model.")
    init: Literal["base", "previous"] = Field(
        "base", description="Where each rung's student starts: the base model, or the last promoted rung.")
    chat: ChatSpec = Field(default_factory=ChatSpec, description="How the student's prompts are rendered.")


class RolloutSpec(Strict):
    workers: int = Field(1, ge=1, le=512, description="Rollout workers, one vLLM engine each.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Engine dtype (rollout and judge): auto is float32 on CPU and bfloat16 on GPU.")
    gpu_memory_utilization: float = Field(
        0.5, gt=0, le=1, description="Share of its GPU an engine may take (GPU engines; two roles may share one).")
    group_size: int = Field(4, ge=2, le=256, description="Samples per prompt (the GRPO group).")
    max_tokens: int = Field(32, ge=1, le=32768, description="Most tokens generated per sample.")
    max_model_len: Optional[int] = Field(
        None, ge=16, description="Context length of the engines (prompt + generated tokens). Default: the longest "
                                 "rendered prompt (student's or judge's) plus what is generated after it, within the "
                                 "model's own limit; a prompt that cannot fit is refused in one line.")
    temperature: float = Field(1.0, gt=0, le=5, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    kv_cache_gib: float = Field(0.5, gt=0, description="KV cache per engine in GiB (CPU engines).")
    compiled: bool = Field(
        False, description="Engines (rollout and judge) run vLLM's compiled model, not eager mode: faster steps, a "
                           "start slower by tens of seconds.")


class JudgePoolSpec(Strict):
    workers: int = Field(1, ge=1, le=512, description="Judge workers, one vLLM engine each.")
    batch_size: int = Field(64, ge=1, description="Pairs scored per request to one worker.")


class TrainSpec(Strict):
    lr: float = Field(1e-5, gt=0, lt=1, description="AdamW learning rate.")
    kl_coef: float = Field(0.02, ge=0, description="Weight of the KL penalty to the reference model.")
    clip_eps: float = Field(0.2, gt=0, lt=1, description="PPO ratio clip range.")
    steps: int = Field(20, ge=1, description="Training steps per rung (at most).")
    prompts_per_step: int = Field(8, ge=1, description="Prompts per step; samples = prompts * group_size.")
    epochs_per_step: int = Field(1, ge=1, le=16, description="Optimizer passes over each step's batch.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    micro_batch_tokens: int = Field(
        4096, ge=0, description="Tokens per forward pass: samples are packed end to end into rows as wide as the "
                                "longest, and the rows grouped into micro-batches of at most this many tokens "
                                "(gradients accumulate; the loss is that of the whole batch). 0: the whole batch in "
                                "one pass.")
    overlap: bool = Field(
        False, description="Generate and judge step n+1's batch while step n trains: one step off-policy, the ratio "
                           "taken against the sampling engine's logprobs. It pays where rollout, judge and trainer "
                           "have devices of their own; on one CPU they share its cores.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="The trainer's compute dtype (mixed precision: the student's weights and updates stay "
                            "float32, the forward and the frozen reference use this): auto is bfloat16 on a GPU that "
                            "supports it, float32 on CPU (where bf16 is slow and the engines' float32 logprobs then "
                            "agree).")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass instead of keeping them: less memory for "
                           "long sequences and large models, about a third more compute.")
    max_skipped_steps: int = Field(
        5, ge=1, description="Steps in a row without an update (non-finite loss or gradients, or no sample left to "
                             "train on) after which the rung fails, with the reason in MLflow.")


class EvalSpec(Strict):
    every: int = Field(10, ge=1, description="Evaluate every this many steps (and at rung end).")
    calibration_size: int = Field(64, ge=4, description="Items in the judge calibration set of the gate.")


class PromotionSpec(Strict):
    policy: Literal["auto", "manual"] = Field("auto", description="auto: promote when the gate passes; manual: wait.")
    tolerance: float = Field(
        0.05, ge=0, le=1, description="How much a candidate may fall behind: the current judge's AUC as a judge, and "
                                      "the last promoted rung's held-out accuracy as a student.")
    min_auc: float = Field(
        0.6, ge=0, le=1, description="A candidate judge must separate right from wrong calibration answers with at "
                                     "least this AUC (0.5 is chance; 0 turns the rule off).")
    collapse_share: float = Field(0.9, gt=0, le=1, description="A judge giving this share of samples one score has collapsed.")
    on_reject: Literal["stop", "retry"] = Field("stop", description="After a rejected rung: stop the ladder or retry the rung.")
    max_retries: int = Field(1, ge=0, description="Retries of a rejected rung when on_reject is retry.")


class SaturationSpec(Strict):
    enabled: bool = Field(False, description="End a rung early when the judge approves nearly everything.")
    window: int = Field(5, ge=1, description="Steps averaged.")
    threshold: float = Field(0.95, gt=0, le=1, description="Mean judge approval above which the rung ends.")


class GuardSpec(Strict):
    """Self-judged training can rise and then collapse into consistent wrong answers: where the task has answers,
    a rung that falls from its best stops early and keeps its best weights as the candidate."""
    enabled: bool = Field(False, description="Stop a rung early when held-out accuracy or reward accuracy falls "
                                             "from its best by more than `tolerance`.")
    tolerance: float = Field(0.1, gt=0, le=1, description="How far held-out accuracy (at an evaluation) or the mean "
                                                          "reward accuracy over `window` steps may fall below its "
                                                          "best in the rung.")
    window: int = Field(5, ge=1, description="Steps over which reward accuracy (judge reward agreeing with the "
                                             "reference answers; never trained on) is averaged.")
    consistency_rise: float = Field(
        0.1, gt=0, le=1, description="Also stop when the samples' answer consistency (share of a prompt's samples "
                                     "giving its most common answer, averaged over `window` steps) rose this far above "
                                     "its level at the best reward accuracy ...")
    consistency_drop: float = Field(
        0.05, gt=0, le=1, description="... while reward accuracy fell this far below its best: the student settling "
                                      "on answers the judge rewards but the reference does not.")


class RungSchedule(Strict):
    """Overrides from rung `rung` on (until the next entry): what the rung trains on and how it is judged."""
    rung: int = Field(ge=1, description="First rung this entry applies to.")
    task: Optional[SerializeAsAny[TaskSource]] = Field(None, description="The task from this rung on (e.g. more terms).")
    judge_mode: Optional[JudgeModeName] = Field(None, description="The judge mode from this rung on.")
    train: Optional[dict] = Field(
        None, description="Trainer fields to change from this rung on (e.g. {lr: 1.0e-4, kl_coef: 0.05}); "
                          "the rest stay as in `train`.")


class RoleResources(Strict):
    """What one actor of a role asks Ray for, and where it may run."""
    cpus: float = Field(1, ge=0, description="CPUs per actor.")
    gpus: float = Field(0, ge=0, description="GPUs per actor (fractions share a device).")
    custom: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources per actor, e.g. {judge_node: 1}.")
    node_labels: dict[str, str] = Field(
        default_factory=dict, description="Node labels the actor's node must carry (Ray label selector), e.g. {tier: trainer}.")


class ResourcesSpec(Strict):
    """Per role Ray resources; the defaults fit one CPU machine."""
    rollout: RoleResources = Field(default_factory=RoleResources, description="Each rollout worker.")
    judge: RoleResources = Field(default_factory=RoleResources, description="Each judge worker.")
    trainer: RoleResources = Field(default_factory=RoleResources, description="The trainer.")
    controller: RoleResources = Field(default_factory=lambda: RoleResources(cpus=0),
                                      description="The ladder controller (it only coordinates).")
    placement_timeout_s: float = Field(
        1800.0, gt=0, description="How long a stage actor may wait for a node that can give it its resources (an "
                                  "autoscaler may be adding one) before the rung fails naming the role and what it "
                                  "asks for; the time an engine takes to load its model once placed is not counted.")

    @property
    def uses_gpu(self) -> bool:
        return any(r.gpus > 0 for r in (self.rollout, self.judge, self.trainer))


class MlflowSpec(Strict):
    tracking_uri: Optional[str] = Field(
        None, description="MLflow tracking URI; default MLFLOW_TRACKING_URI or sqlite under the work directory.")
    retry_s: float = Field(600.0, gt=0, description="How long MLflow may be unreachable before the ladder fails; "
                           "calls retry with backoff meanwhile and training goes on (metrics are delivered later).")

    @field_validator("tracking_uri")
    @classmethod
    def _no_password(cls, uri: Optional[str]) -> Optional[str]:
        from ladder.mlflow_store import PASSWORD_IN_URI, has_password

        if uri and has_password(uri):
            raise ValueError(f"the URI {PASSWORD_IN_URI}")
        return uri


class LadderSpec(Strict):
    name: str = Field(pattern=SLUG, description="Ladder name: lowercase slug; also the registered model name.")
    seed: int = Field(0, ge=0, description="Seed for data order, sampling and initialisation.")
    workdir: str = Field(".ladder", description="Directory for checkpoints, local MLflow and controller state.")
    rungs: int = Field(3, ge=1, le=1000, description="Number of rungs (generations) to run.")
    checkpoint_every: int = Field(
        10, ge=1, description="The trainer's weights, optimizer, RNG and data cursor are saved to MLflow this often "
                              "(steps); a resumed or restarted rung redoes at most this many steps.")
    controller_restarts: int = Field(
        3, ge=0, description="Times Ray restarts a ladder controller whose process died; it re-enters the saved "
                             "phase (a rung goes on from its last checkpoint).")
    stage_restarts: int = Field(
        3, ge=0, description="Times a rung starts again from its last checkpoint on fresh actors after its trainer "
                             "died (or a worker died where it cannot be replaced in place); one more fails the rung.")
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
