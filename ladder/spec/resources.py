"""The sections of the ladder spec for where a ladder runs: Ray resources per role, and its MLflow (a URI
with a password or token in it is refused: it would be copied into params and job environments)."""
from __future__ import annotations

import re
from typing import Optional

from pydantic import Field, field_validator

from stages.settings import Strict

SECRET_IN_URI = ("in it; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
                 "instead: a URI is copied into params, spec.json and job environments")
# a query parameter that carries a secret, by its name (`?token=`, `access_token`, `api_key`, `sig`, `X-Amz-Signature`)
SECRET_QUERY = re.compile(r"token|secret|passw(or)?d|pwd|api[-_]?key|access[-_]?key|signature|credential|^sig$|^auth",
                          re.IGNORECASE)


def secret_in(uri: str) -> Optional[str]:
    """What secret `uri` carries, in words ("a password", ...), or None: a password; in an HTTP URI any user name
    (requests sends it to the server as a credential: a token in the user name is the usual way); a query parameter
    named as a secret is (a database URI's user name alone is its role, no secret)."""
    from urllib.parse import parse_qsl, urlsplit

    try:
        parts = urlsplit(uri)
        password, user = parts.password, parts.username
    except ValueError:  # a malformed port: not ours to judge here
        return None
    if password:
        return "a password"
    if user and parts.scheme.lower() in ("http", "https"):
        return "a user name (sent to the server as a credential, as a token would be)"
    secret = [name for name, _ in parse_qsl(parts.query, keep_blank_values=True) if SECRET_QUERY.search(name)]
    return f"a secret in its query ({secret[0]}=...)" if secret else None


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
    lease_renew_s: float = Field(30.0, gt=0, description="How often the controller renews its lease on the ladder; one "
                                 "unrenewed for 3 such periods (a controller paused, or cut off from MLflow) is taken "
                                 "over by a `resume`, and the old one writes nothing after that.")

    @field_validator("tracking_uri")
    @classmethod
    def _no_password(cls, uri: Optional[str]) -> Optional[str]:
        what = secret_in(uri) if uri else None
        if what:
            raise ValueError(f"the URI has {what} {SECRET_IN_URI}")
        return uri
