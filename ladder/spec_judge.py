"""The judge's section of the ladder spec: the rung-1 judge (a model, a registry version, a verifier or the task's
checker), its mode and each mode's settings, and how the student's and the judge's prompts are rendered."""
from __future__ import annotations

import re
from typing import Annotated, Literal, Optional, Union

from pydantic import Field, field_validator

from ladder.spec_fields import Strict, has_placeholders, one_group_regex
from stages.scoring import PAIR_TEMPLATE, SCORE_PATTERN, VERDICT_TEMPLATE


class ChatSpec(Strict):
    """How a model's prompts are rendered: through its chat template (a user turn, the model answers in the
    assistant turn) or as plain text."""
    template: str = Field(
        "auto", description="auto: the tokenizer's own chat template when it has one, plain text otherwise; "
                            "none: plain text; anything else: a Jinja chat template (as in tokenizer_config.json).")
    system: Optional[str] = Field(None, description="A system prompt put before the user turn (chat templates only).")

    @field_validator("template")
    @classmethod
    def _jinja(cls, v: str) -> str:
        if v not in ("auto", "none") and "{{" not in v and "{%" not in v:
            raise ValueError("must be auto, none or a Jinja chat template (with {{ ... }} or {% ... %})")
        return v


class ModelJudge(Strict):
    kind: Literal["model"] = Field(description="The judge is an HF-format model directory.")
    path: str = Field(description="HF-format directory of the judge model.")


class RegistryJudge(Strict):
    kind: Literal["registry"] = Field(description="The judge is a model version in the MLflow registry.")
    uri: str = Field(description="An MLflow model URI such as models:/name@judge or models:/name/3.")

    @field_validator("uri")
    @classmethod
    def _models_uri(cls, v: str) -> str:
        if not re.match(r"^models:/[^/@]+(@[\w-]+|/\d+)$", v):
            raise ValueError("must look like models:/<name>@<alias> or models:/<name>/<version>")
        return v


class VerifierJudge(Strict):
    kind: Literal["verifier"] = Field(description="The judge is a Python function (prompt, response, reference) -> score.")
    function: str = Field(description="Import path module:function of the verifier.")

    @field_validator("function")
    @classmethod
    def _import_path(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", v):
            raise ValueError("must be an import path like package.module:function")
        return v


class TaskJudge(Strict):
    kind: Literal["task"] = Field(
        description="The judge is the task's own answer checker (reference answers, compared numerically; a "
                    "reasoning-gym task's scorer): no verifier module to write.")


JudgeSource = Annotated[Union[ModelJudge, RegistryJudge, VerifierJudge, TaskJudge], Field(discriminator="kind")]

JudgeMode = Literal["verdict", "score", "solve", "pairwise"]


class JudgeSpec(Strict):
    initial: JudgeSource = Field(
        description="The rung-1 judge: a model directory, a registry URI, a verifier function or the task's checker.")
    chat: ChatSpec = Field(
        default_factory=ChatSpec, description="How the judge's prompts (every mode) are rendered: with a chat "
                                              "template the judge prompt is a user turn and the verdict, score or "
                                              "answer is read from the assistant turn.")
    mode: JudgeMode = Field(
        "verdict", description="verdict: P(yes)/(P(yes)+P(no)) of the next token; score: parse a number the judge "
                               "writes; solve: the judge solves the prompt itself and the response earns its "
                               "agreement with the judge's answers; pairwise: the judge compares two responses of a "
                               "group in both orders and a response earns its win rate.")
    prompt_template: str = Field(
        VERDICT_TEMPLATE, description="Judge prompt; must contain {prompt} and {response}.")
    yes_token: str = Field("yes", description="Token whose probability means approval (verdict mode).")
    no_token: str = Field("no", description="Token whose probability means disapproval (verdict mode).")
    score_pattern: str = Field(
        SCORE_PATTERN, description="Regex whose first group is the score (score mode).")
    score_max: float = Field(10.0, gt=0, description="Scores are divided by this to land in [0, 1] (score mode).")
    score_max_tokens: int = Field(16, ge=1, le=512, description="Tokens the judge may write (score mode).")
    fallback_score: float = Field(0.0, ge=0, le=1, description="Reward given when the judge output cannot be parsed.")
    unreadable: Literal["fallback", "drop"] = Field(
        "fallback", description="A judge output that cannot be read, or a score that is NaN or outside [0, 1]: "
                                "fallback gives it fallback_score; drop leaves the sample out of training. Either "
                                "way it is counted (judge/parse_failure_rate), and a step with nothing left is "
                                "skipped.")
    solve_template: str = Field("{prompt}", description="What the judge is given to solve (solve mode); contains {prompt}.")
    solve_samples: int = Field(4, ge=1, le=64, description="Answers the judge writes per prompt (solve mode).")
    solve_temperature: float = Field(
        1.0, ge=0, le=5, description="Sampling temperature of the judge's own answers (solve mode; 0 = greedy).")
    solve_max_tokens: int = Field(32, ge=1, le=32768, description="Tokens per judge answer (solve mode).")
    solve_reward: Literal["share", "majority"] = Field(
        "share", description="share: the fraction of the judge's answers the response agrees with; "
                             "majority: 1 when it agrees with the judge's most common answer (solve mode).")
    pair_template: str = Field(
        PAIR_TEMPLATE, description="Pairwise prompt with {prompt}, {first}, {second}; "
                                                          "yes_token means the first response is better.")

    @field_validator("prompt_template")
    @classmethod
    def _placeholders(cls, v: str) -> str:
        return has_placeholders(v, "{prompt}", "{response}")

    @field_validator("solve_template")
    @classmethod
    def _solve_placeholders(cls, v: str) -> str:
        return has_placeholders(v, "{prompt}")

    @field_validator("pair_template")
    @classmethod
    def _pair_placeholders(cls, v: str) -> str:
        return has_placeholders(v, "{prompt}", "{first}", "{second}")

    @field_validator("score_pattern")
    @classmethod
    def _regex(cls, v: str) -> str:
        return one_group_regex(v, "the score")
