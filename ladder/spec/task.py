"""The task's section of the ladder spec: where prompts and reference answers come from (the built-in generator,
JSONL / Parquet files, reasoning-gym) and how a response's final answer is read."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, SerializeAsAny, ValidationError, field_validator, model_validator

from ladder.tasks.base import DEFAULT_BUILTIN, BuiltinTaskSpec
from stages.settings import Strict, one_group_regex


ANSWER_PRESETS_HELP = ("A preset: hash (`#42`), gsm8k (`#### 42`), boxed (`\\boxed{42}`, the last one), last_number "
                       "(the last number written), answer_tag (`<answer>42</answer>`); or a regex whose first group "
                       "is the answer. Answers are compared as numbers when both are (`42.0` = `42`, `1,000` = "
                       "`1000`), else as text.")


def _answer_pattern(v: str) -> str:
    from stages.answers import PRESETS

    return v if v in PRESETS else one_group_regex(v, "the answer")


class BuiltinTask(BuiltinTaskSpec):
    """A built-in task: validated as the spec section of the task its `name` names (`BUILTIN_TASKS`, in
    ladder/tasks/__init__.py), whose model it becomes; an unknown name is refused as a bad `name`."""

    @model_validator(mode="wrap")
    @classmethod
    def _as_named_task(cls, data, handler):
        from ladder.tasks import BUILTIN_TASKS

        if isinstance(data, BuiltinTaskSpec):  # a task's section already (a validated spec, copied)
            return data
        if not isinstance(data, dict):
            return handler(data)  # pydantic's own one line for what is not a mapping
        model = BUILTIN_TASKS.get(data.get("name", DEFAULT_BUILTIN))
        if model is None:
            names = [repr(n) for n in BUILTIN_TASKS]
            expected = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
            raise ValidationError.from_exception_data(cls.__name__, [{
                "type": "literal_error", "loc": ("name",), "input": data.get("name"), "ctx": {"expected": expected}}])
        return model.model_validate(data)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):
        """The schema of every built-in task's section (the models `BUILTIN_TASKS` lists)."""
        from ladder.tasks import BUILTIN_TASKS

        return {"oneOf": [handler(model.__pydantic_core_schema__) for model in BUILTIN_TASKS.values()]}


class FileTask(Strict):
    """Rows of a user's dataset file (HF `datasets` exports read as they are)."""
    path: str = Field(description="Path of the dataset file (relative paths: from where the ladder runs).")
    prompt_field: str = Field("prompt", description="Field holding each row's prompt (question).")
    answer_field: str = Field("answer", description="Field holding the reference answer (rows may lack it).")
    solution_field: str = Field("solution", description="Field holding a worked correct response (optional).")
    answer_pattern: str = Field("hash", description="How a response's final answer is read. " + ANSWER_PRESETS_HELP)

    @field_validator("answer_pattern")
    @classmethod
    def _regex(cls, v: str) -> str:
        return _answer_pattern(v)

    def label(self) -> str:
        return f"{self.kind} {Path(self.path).name}"


class JsonlTask(FileTask):
    kind: Literal["jsonl"] = Field(description="Prompts from a JSONL file, one JSON object per line.")


class ParquetTask(FileTask):
    kind: Literal["parquet"] = Field(description="Prompts from a Parquet file, one row per prompt.")


class ReasoningGymTask(Strict):
    kind: Literal["reasoning_gym"] = Field(
        description="A procedural task of reasoning-gym (pip install reasoning-gym): its generator and its scorer.")
    name: str = Field(description="The reasoning-gym dataset name, e.g. chain_sum, basic_arithmetic, leg_counting.")
    config: dict = Field(default_factory=dict,
                         description="The dataset's settings (its difficulty), e.g. {min_terms: 2, max_terms: 3}.")
    train_size: int = Field(2000, ge=1, description="Number of training prompts generated.")
    answer_pattern: str = Field("answer_tag", description="How a response's final answer is read, before the "
                                                          "dataset's scorer sees it. " + ANSWER_PRESETS_HELP)

    @field_validator("answer_pattern")
    @classmethod
    def _regex(cls, v: str) -> str:
        return _answer_pattern(v)

    def label(self) -> str:
        settings = " ".join(f"{k}={v}" for k, v in sorted(self.config.items()))
        return f"reasoning_gym {self.name}" + (f" {settings}" if settings else "")


TaskSource = Annotated[Union[BuiltinTask, JsonlTask, ParquetTask, ReasoningGymTask], Field(discriminator="kind")]
# A field of this type is written `SerializeAsAny[TaskSource]`: a built-in task's section is its own task's model
# (a subclass of BuiltinTaskSpec with more fields), dumped whole.


class TaskSpec(Strict):
    source: SerializeAsAny[TaskSource] = Field(description="Where prompts come from.")
    eval_size: int = Field(64, ge=1, description="Held-out prompts kept for evaluation.")
