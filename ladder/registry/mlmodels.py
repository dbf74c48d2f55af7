"""Rung models as MLflow models: logged in the transformers flavor and registered from the logged model (the
weights are stored once); stage actors fetch them back as plain HF directories (`stages.models`).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Optional

from stages.models import RegistryError, if_exists, logged_model_uri, parse_model_uri
from ladder.registry.tags import Tag

TASK = "text-generation"
VERSIONS_TAG = "mlflow.modelVersions"   # what MLflow's own register_model writes on a logged model
_GLOBAL_URI = threading.Lock()


def requirements() -> list[str]:
    """What serving a rung needs, pinned to this environment (inference fails here: no torchvision)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "transformers", "torch", "tokenizers", "safetensors")]


def log_hf_model(client, experiment_id: str, run_id: str, hf_dir: str, name: str, tags: dict[str, str],
                 card: str, step: int = 0) -> str:
    """Log an HF directory as an MLflow model (a LoggedModel of the run, the run's output at `step`).

    Idempotent on `ladder.rung_uid` and the weights' checksum: a ready model already logged for this rung with
    these very weights is returned, so a controller that died after logging does not store them twice; one that
    redid steps after the crash (other weights, the ones its evaluation measured) logs those. Returns the model id.
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    tags = {**tags, Tag.WEIGHTS_SHA256: weights_digest(hf_dir)}
    found = find_logged_model(client, experiment_id, tags[Tag.RUNG_UID], tags[Tag.WEIGHTS_SHA256])
    if found is not None:
        return found
    with tempfile.TemporaryDirectory(prefix="ladder-mlmodel-") as tmp:
        local = Path(tmp) / "model"
        _save_flavor(hf_dir, local, card)
        model = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, tags=tags,
                                           model_type="llm")
        try:
            client.log_model_artifacts(model.model_id, str(local))
        except BaseException:
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            raise
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
    return model.model_id


def _save_flavor(hf_dir: str, out: Path, card: str) -> None:
    """The transformers flavor of a local checkpoint: `model/` (the HF files as they are), the tokenizer
    component, MLmodel with the pyfunc text-generation signature, pinned requirements."""
    import huggingface_hub  # the card is given: MLflow does not ask the hub for one
    import mlflow.transformers

    mlflow.transformers.save_model(hf_dir, str(out), task=TASK, pip_requirements=requirements(),
                                   model_card=huggingface_hub.ModelCard(f"---\nlicense: other\n---\n{card}\n"))
    (out / "LICENSE.txt").write_text("Trained by judge-ladder; the license of the ladder's base model applies.\n")


def weights_digest(hf_dir: str) -> str:
    """sha256 over every file of an HF directory (relative path and content, in path order)."""
    import hashlib

    digest, root = hashlib.sha256(), Path(hf_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def find_logged_model(client, experiment_id: str, rung_uid: str, weights: Optional[str] = None) -> Optional[str]:
    """A ready model logged for `rung_uid` (with the weights whose checksum is `weights`, when given)."""
    from mlflow.entities import LoggedModelStatus

    found = client.search_logged_models([experiment_id], filter_string=f"tags.`{Tag.RUNG_UID}` = '{rung_uid}'")
    ready = [m for m in found if m.status == LoggedModelStatus.READY
             and (weights is None or m.tags.get(Tag.WEIGHTS_SHA256) == weights)]
    return ready[0].model_id if ready else None


def register_logged_model(client, tracking_uri: str, name: str, model_id: str, run_id: str,
                          tags: dict[str, str]):
    """A new version of `name` from the logged model; the model is tagged with it as MLflow does."""
    with global_tracking_uri(tracking_uri):  # MLflow's SQL registry looks the model up with the global URI
        mv = client.create_model_version(name, logged_model_uri(model_id), run_id=run_id, tags=tags, model_id=model_id)
    versions = json.loads(client.get_logged_model(model_id).tags.get(VERSIONS_TAG, "[]"))
    client.set_logged_model_tags(model_id, {VERSIONS_TAG: json.dumps(
        versions + [{"name": name, "version": str(mv.version)}])})
    return mv


@contextlib.contextmanager
def global_tracking_uri(uri: str):
    """MLflow's global tracking URI set to `uri` for the block, then put back as it was: the module's value and
    the MLFLOW_TRACKING_URI variable, which `mlflow.set_tracking_uri` also sets (and MLflow's own context
    manager unsets on the way out)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    with _GLOBAL_URI:
        before, before_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            utils._tracking_uri = before
            if before_env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = before_env


def check_model_uri(uri: str, tracking_uri: str) -> None:
    """Fail in one line unless MLflow has `models:/<name>/<version>`."""
    from mlflow import MlflowClient

    ref = parse_model_uri(uri)
    if ref.version is None:
        raise RegistryError(f"{uri}: a model location must look like models:/<name>/<version>")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if if_exists(lambda: client.get_model_version(ref.name, ref.version)) is None:
        raise RegistryError(f"{uri}: no such model version in MLflow at {tracking_uri}")
