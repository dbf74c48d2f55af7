"""The sections of the ladder spec that decide a rung's end and its promotion: the gate's policy and
thresholds, saturation, and the collapse guard."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from stages.settings import Strict

class PromotionSpec(Strict):
    policy: Literal["auto", "manual"] = Field("auto", description="auto: promote when the gate passes; manual: wait.")
    tolerance: float = Field(
        0.05, ge=0, le=1, description="How much a candidate may fall behind: the current judge's AUC as a judge, and "
                                      "the last promoted rung's held-out accuracy as a student.")
    min_auc: float = Field(
        0.6, ge=0, le=1, description="A candidate judge must separate right from wrong calibration answers with at "
                                     "least this AUC (0.5 is chance; 0 turns the rule off).")
    collapse_share: float = Field(0.9, gt=0, le=1, description="A judge giving this share of samples one score has collapsed.")
    yardstick_tolerance: float = Field(
        0.02, ge=0, le=1, description="How far a candidate may fall below the champion (the last promoted version) "
                                      "on the ladder's one yardstick (`eval.yardstick`): a chain cannot promote its "
                                      "way down (1 turns the rule off).")
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
                                             "from its best by more than `tolerance` (held-out accuracy alone "
                                             "under step votes, whose fixed label a learning student agrees with "
                                             "on its errors too).")
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
