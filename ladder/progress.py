"""A ladder's progress as one typed, saved value, and the states and phases it moves through.

The controller loads it, runs the handler of its phase and saves it (in MLflow, on the ladder's parent
run); `status`, `stop`, `resume` and a restarted controller all read this one value.
"""
from __future__ import annotations

import enum
import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional


class State(str, enum.Enum):
    """What a person sees: is the ladder working, waiting, or over."""
    PENDING = "pending"
    RUNNING = "running"
    AWAITING_PROMOTION = "awaiting_promotion"
    STOPPING = "stopping"
    STOPPED = "stopped"
    COMPLETED = "completed"
    FAILED = "failed"


ERROR_MAX_CHARS = 2000  # a failure's text in the progress: the whole progress is one MLflow tag (5000 chars on
#                         older servers), and a rung's error line needs no more


def bounded(text: Optional[str], limit: int) -> Optional[str]:
    """`text` cut to `limit` characters (the cut marked), None kept."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 15] + " ... (cut off)"


ACTIVE = (State.PENDING, State.RUNNING, State.AWAITING_PROMOTION, State.STOPPING)


class Phase(str, enum.Enum):
    """Where the current rung is: train -> register -> gate -> (await) -> next rung; done at the end."""
    TRAIN = "train"
    REGISTER = "register"
    GATE = "gate"
    AWAIT = "await"
    DONE = "done"


@dataclass(frozen=True)
class JudgeQuality:
    """A judge measured on a calibration set (by the gate, `ladder/gate.py`)."""
    accuracy: float          # share of calibration items where (score > 0.5) == correct
    auc: float               # P(score of a correct item > score of a wrong one)
    identical_share: float   # share of items given the single most common score (collapse)


VERIFIER_LABEL = "verifier:"  # the prefix of a verifier judge's label (`verifier:task`, `verifier:module:function`)


@dataclass(frozen=True)
class RungResults:
    """What a rung has measured that its later phases need, and the decisions so far (saved with the progress)."""
    student_init: str = "base"                   # what the student started from: "base" or a version ("v3")
    judge_is_verifier: bool = False              # the rung trains against a verifier function, not a model
    start_accuracy: Optional[float] = None       # the student's held-out accuracy at step 0
    final_accuracy: Optional[float] = None       # ... after the rung's last step
    yardstick_start: Optional[float] = None      # the student's accuracy on the ladder's yardstick at step 0
    yardstick: Optional[float] = None            # ... after the rung's last step (the candidate's)
    current_judge: Optional[JudgeQuality] = None  # the rung's judge on the calibration set (the gate's baseline)
    judge_auc: Optional[float] = None            # the candidate's AUC as a judge (set by the gate)
    stage_restarts: int = 0                      # times the rung went back to its checkpoint (a new trainer)
    history: list = field(default_factory=list)  # the decisions so far (rows of `ladder status`), all rungs
    ended: Optional[str] = None                  # "rejected": a rejection ended the ladder

    def to(self, **changes) -> "RungResults":
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any], judge: Optional[str] = None) -> "RungResults":
        """Read saved results, older ones too: the judge's quality as a 3-element list, and no
        `judge_is_verifier` (then the judge's label `judge` says it)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        quality = known.get("current_judge")
        if isinstance(quality, (list, tuple)):
            known["current_judge"] = JudgeQuality(*quality)
        elif isinstance(quality, dict):
            known["current_judge"] = JudgeQuality(**quality)
        known.setdefault("judge_is_verifier", (judge or "").startswith(VERIFIER_LABEL))
        return cls(**known)


TASK_CHECKER = "task"  # the location of `judge.initial: {kind: task}`: the rung's task checks the answers


@dataclass(frozen=True)
class ResolvedJudge:
    """A judge ready to start, as plain data a rung is handed: a model location (directory or models:/ URI), or a
    verifier import path (`judging.resolve` makes them)."""
    kind: str                     # "model" | "verifier"
    location: str                 # directory, models:/<name>/<version>, or module:function
    label: str                    # what lineage records (a version, a path, a function)


@dataclass(frozen=True)
class RungInputs:
    """What a rung trains against and from, pinned in the progress when its train phase first starts: a restart
    or resume uses these, never an alias read again (a promotion by hand meanwhile does not change them)."""
    judge_kind: str        # "model" | "verifier"
    judge_location: str    # models:/<name>/<version>, a model directory, or a verifier (module:function, task)
    judge_label: str       # what lineage records
    student: str           # the student's init: the base model's location, or models:/<name>/<version>
    student_label: str     # "base" or the version ("v3")


@dataclass(frozen=True)
class Progress:
    """Everything needed to continue a ladder where it stopped (JSON-serialisable, saved after each change)."""
    ladder: str
    job: str                                   # stable across resume: rung uids and the parent run derive from it
    state: State = State.PENDING
    phase: Phase = Phase.TRAIN
    rung: int = 1
    attempt: int = 0                           # retries of this rung after a rejection
    step: int = 0                              # training steps done in this rung (as of `checkpoint`)
    cursor: dict = field(default_factory=dict)  # the prompt cursor's state at `checkpoint`
    checkpoint: Optional[str] = None           # last complete trainer checkpoint (runs:/...); after the
    #                                            rung: its candidate, a logged model (models:/<model_id>)
    candidate: Optional[str] = None            # model version registered by this rung
    judge: Optional[str] = None                # label of the judge this rung trains against
    submission: Optional[str] = None           # the Ray job (or local job) that runs the ladder now
    parent_run: Optional[str] = None
    rung_run: Optional[str] = None
    results: RungResults = field(default_factory=RungResults)  # what the later phases need, the decisions
    inputs: Optional[RungInputs] = None        # the rung's judge and student init, pinned (None before its start)
    data: dict = field(default_factory=dict)   # the ladder's dataset files at its start: path -> sha256 (16 digits)
    restarts: int = 0                          # times Ray restarted the controller since the job's start or resume
    error: Optional[str] = None
    updated_at: float = 0.0

    def to_json(self) -> str:
        data = asdict(self)
        data["state"], data["phase"] = self.state.value, self.phase.value
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Progress":
        data = json.loads(text)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "state": State(known.get("state", "pending")),
                      "phase": Phase(known.get("phase", "train")),
                      "results": RungResults.from_dict(known.get("results") or {}, known.get("judge")),
                      "inputs": RungInputs(**known["inputs"]) if known.get("inputs") else None})

    def to(self, **changes) -> "Progress":
        """A copy with `changes` applied (an error bounded to `ERROR_MAX_CHARS`) and the time stamped."""
        if changes.get("error"):
            changes["error"] = bounded(changes["error"], ERROR_MAX_CHARS)
        return replace(self, **changes, updated_at=time.time())

    def next_rung(self) -> "Progress":
        return self.to(phase=Phase.TRAIN, rung=self.rung + 1, attempt=0, step=0, cursor={}, checkpoint=None,
                       candidate=None, judge=None, rung_run=None, results=RungResults(), inputs=None)

    def retry_rung(self) -> "Progress":
        return self.to(phase=Phase.TRAIN, attempt=self.attempt + 1, step=0, cursor={}, checkpoint=None,
                       candidate=None, judge=None, rung_run=None, results=RungResults(), inputs=None)

    def summary(self) -> dict:
        """What `ladder status` shows of this progress (a live controller adds its own step and metrics)."""
        return {"ladder": self.ladder, "job": self.job, "state": self.state.value, "phase": self.phase.value,
                "rung": self.rung, "step": self.step, "checkpoint_step": self.step, "candidate": self.candidate,
                "error": self.error, "submission": self.submission,
                "pending_decision": self.candidate if self.state is State.AWAITING_PROMOTION else None}

    @property
    def rung_uid(self) -> str:
        """The idempotency key of this rung attempt's model version."""
        return f"{self.job}-{self.rung}-{self.attempt}"

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


def after_decision(p: Progress, decision: str, rungs: int, promotion, history: list) -> Progress:
    """Where the ladder goes once rung `p.rung`'s candidate is `decision` ("promoted" or "rejected"), by the gate
    or by hand: the next rung, the end of a completed ladder after the last (`rungs`), a retry of a rejected rung
    (`promotion.on_reject` retry, within `promotion.max_retries`), or a stop. `history` is the decisions so far,
    this one included; it travels with the progress."""
    recorded = RungResults(history=list(history))
    if decision == "promoted":
        if p.rung >= rungs:
            return p.to(phase=Phase.DONE, state=State.COMPLETED, results=p.results.to(history=recorded.history))
        return p.next_rung().to(results=recorded)
    if promotion.on_reject == "retry" and p.attempt < promotion.max_retries:
        return p.retry_rung().to(results=recorded)
    return p.to(phase=Phase.DONE, state=State.STOPPED, error=f"rung {p.rung} rejected",
                results=p.results.to(history=recorded.history, ended="rejected"))
