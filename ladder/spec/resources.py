"""The sections of the ladder spec for where a ladder runs: Ray resources per role, and its MLflow (a URI
with a password in it is refused: it would be copied into params and job environments)."""
from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator

from stages.settings import Strict

PASSWORD_IN_URI = ("has a password in it; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
                   "MLFLOW_TRACKING_TOKEN) instead: a URI is copied into params, spec.json and job environments")


def has_password(uri: str) -> bool:
    from urllib.parse import urlsplit

    try:
        return bool(urlsplit(uri).password)
    except ValueError:  # a malformed port: not ours to judge here
        return False


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

    step_timeout_s: float = Field(
        1800.0, gt=0, description="How long a step's call to a stage actor (generate, score, train, weight sync) or "
                                  "a placed engine's model load may take; a rollout or judge worker that does not "
                                  "answer in it is killed and replaced like a dead one (within worker_replacements), "
                                  "a trainer restarts the rung from its checkpoint (within stage_restarts).")

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
        if uri and has_password(uri):
            raise ValueError(f"the URI {PASSWORD_IN_URI}")
        return uri
