"""The task's section of the ladder spec: where prompts and reference answers come from (the built-in generator,
JSONL / Parquet files, reasoning-gym) and how a response's final answer is read."""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator

from stages.settings import Strict, one_group_regex


ANSWER_PRESETS_HELP = ("A preset: hash (`#42`), gsm8k (`#### 42`), boxed (`\\boxed{42}`, the last one), last_number "
                       "(the last number written), answer_tag (`<answer>42</answer>`); or a regex whose first group "
                       "is the answer. Answers are compared as numbers when both are (`42.0` = `42`, `1,000` = "
                       "`1000`), else as text.")


def _answer_pattern(v: str) -> str:
    from stages.answers import PRESETS

    return v if v in PRESETS else one_group_regex(v, "the answer")


class BuiltinTask(Strict):
    kind: Literal["builtin"] = Field(description="A task shipped with judge-ladder.")
    name: Literal["arithmetic"] = Field("arithmetic", description="Name of the built-in task.")
    terms: int = Field(3, ge=2, le=6, description="Operands per arithmetic problem.")
    max_operand: int = Field(9, ge=1, le=99, description="Largest operand.")
    train_size: int = Field(2000, ge=1, description="Number of training prompts generated.")


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


TaskSource = Annotated[Union[BuiltinTask, JsonlTask, ParquetTask, ReasoningGymTask], Field(discriminator="kind")]


class TaskSpec(Strict):
    source: TaskSource = Field(description="Where prompts come from.")
    eval_size: int = Field(64, ge=1, description="Held-out prompts kept for evaluation.")
