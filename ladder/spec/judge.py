"""The judge's section of the ladder spec: the rung-1 judge (a model, a registry version, a verifier or the task's
checker), its mode and each mode's settings (models that live beside their scorers, in stages/scoring.py), and how
the student's and the judge's prompts are rendered."""
from __future__ import annotations

import re
from typing import Annotated, Literal, Optional, Union

from pydantic import Field, field_validator

from stages.models import RegistryError, parse_model_uri
from stages.scoring import JUDGE_MODES, ModeSettings
from stages.settings import Strict


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
        try:
            parse_model_uri(v)
        except RegistryError:
            raise ValueError("must look like models:/<name>@<alias> or models:/<name>/<version>") from None
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

JudgeModeName = Literal[tuple(JUDGE_MODES)]


class JudgeSpec(*JUDGE_MODES.values()):
    """The frozen judge of rung 1, how its prompts are rendered, its mode, and the settings of every mode (the
    schedule may switch a later rung to another mode; each mode reads its own)."""
    # Each mode's settings model (beside its scorer, in stages/scoring.py) brings its fields and their checks; the
    # YAML keeps them side by side. `settings()` is the current mode's model: what the judge workers take.
    initial: JudgeSource = Field(
        description="The rung-1 judge: a model directory, a registry URI, a verifier function or the task's checker.")
    chat: ChatSpec = Field(
        default_factory=ChatSpec, description="How the judge's prompts (every mode) are rendered: with a chat "
                                              "template the judge prompt is a user turn and the verdict, score or "
                                              "answer is read from the assistant turn.")
    mode: JudgeModeName = Field(
        "verdict", description="verdict: P(yes)/(P(yes)+P(no)) of the next token; score: parse a number the judge "
                               "writes; solve: the judge solves the prompt itself and the response earns its "
                               "agreement with the judge's answers; pairwise: the judge compares two responses of a "
                               "group in both orders and a response earns its win rate.")

    def settings(self) -> ModeSettings:
        """The current mode's settings, validated as that mode's own model."""
        model = JUDGE_MODES[self.mode]
        return model.model_validate(self.model_dump(include=set(model.model_fields)))
