"""What a phase handler may use of the controller that runs it: the `PhaseContext` protocol. The handlers
(`train_phase`, `gate_phase`) are typed against it, never against `LadderController`, so imports point one way:
the controller imports its handlers, the handlers import nothing of the controller."""
from __future__ import annotations

from typing import Any, Protocol

from ladder.progress import Progress


class PhaseContext(Protocol):
    """The controller as its phase handlers see it (each handler: `(ctx, progress) -> next progress`)."""
    spec: Any        # the ladder's LadderSpec
    registry: Any    # the ladder's Registry (MLflow: runs, metrics, versions, decisions)
    store: Any       # the RungStore: checkpoints and the logged candidate
    tasks: Any       # the TaskSets: each rung's task and calibration items
    live: Any        # the LiveStatus `status` shows between saves
    stages: Any      # the StageSet kept from one phase (and rung) to the next

    @property
    def name_prefix(self) -> str:
        """What this ladder's stage actors are named after."""

    def save(self, progress: Progress) -> Progress:
        """`progress` from now on, saved to MLflow (a stop asked for meanwhile marks it stopping)."""

    def stopping(self) -> bool:
        """A stop was asked for: the handler ends at its next step boundary."""

    def aborted(self) -> bool:
        """`stop --now`: the stage actors were killed mid-step."""

    def hold(self, actors: list) -> None:
        """The stage actors of the phase now running (a `stop --now` kills them)."""

    def keep(self, stages) -> None:
        """The stage set the next phase takes over (engines kept, models loaded in place)."""
