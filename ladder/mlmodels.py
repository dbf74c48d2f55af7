"""Rung models as MLflow models: logged in the transformers flavor, registered from the logged model, and
fetched back as plain HF directories for vLLM and the trainer (the weights are stored once).

A version registered before this format (a run artifact folder of bare HF files) is still fetched and listed.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Optional

TASK = "text-generation"
VERSIONS_TAG = "mlflow.modelVersions"   # what MLflow's own register_model writes on a logged model
_GLOBAL_URI = threading.Lock()


class RegistryError(ValueError):
    """A registry request that cannot be served (unknown version, bad URI); one line."""


def requirements() -> list[str]:
    """What serving a rung needs, pinned to this environment (inference fails here: no torchvision)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "transformers", "torch", "tokenizers", "safetensors")]


def log_hf_model(client, experiment_id: str, run_id: str, hf_dir: str, name: str, tags: dict[str, str],
                 card: str, step: int = 0) -> str:
    """Log an HF directory as an MLflow model (a LoggedModel of the run, the run's output at `step`).

    Idempotent on `ladder.rung_uid`: a ready model already logged for this rung is returned, so a controller
    that died after logging does not store the weights twice. Returns the model id.
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    found = find_logged_model(client, experiment_id, tags["ladder.rung_uid"])
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


def find_logged_model(client, experiment_id: str, rung_uid: str) -> Optional[str]:
    from mlflow.entities import LoggedModelStatus

    found = client.search_logged_models([experiment_id], filter_string=f"tags.`ladder.rung_uid` = '{rung_uid}'")
    ready = [m for m in found if m.status == LoggedModelStatus.READY]
    return ready[0].model_id if ready else None


def register_logged_model(client, tracking_uri: str, name: str, model_id: str, run_id: str,
                          tags: dict[str, str]):
    """A new version of `name` from the logged model; the model is tagged with it as MLflow does."""
    with global_tracking_uri(tracking_uri):  # MLflow's SQL registry looks the model up with the global URI
        mv = client.create_model_version(name, f"models:/{model_id}", run_id=run_id, tags=tags, model_id=model_id)
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


def model_id_of(version) -> Optional[str]:
    """The logged model behind a version (None for a version of bare files registered before)."""
    source = version.source or ""
    return version.model_id or (source.removeprefix("models:/") if source.startswith("models:/m-") else None)


def hf_files_uri(client, version) -> str:
    """Where a version's HF files are: the logged model's `model/` folder, or the old artifact folder."""
    model_id = model_id_of(version)
    if model_id is None:
        return version.source
    return f"{client.get_logged_model(model_id).artifact_location.rstrip('/')}/model"


def fetch_model(uri: str, tracking_uri: str, cache_dir: str) -> str:
    """`models:/<name>/<version>` -> a local HF directory on *this* node (downloaded once, then cached).

    Stage actors call it themselves, so models never travel as paths from one node's disk to another's.
    The download lands in a temporary folder renamed into place: a cached model is always complete.
    """
    import mlflow
    from mlflow import MlflowClient

    name, version = uri.removeprefix("models:/").split("/")
    out = Path(cache_dir) / f"{name}-v{version}"
    if (out / "config.json").is_file():
        return str(out)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        source = hf_files_uri(client, client.get_model_version(name, version))
    except Exception:
        raise RegistryError(f"{uri}: no such model version") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}-v{version}-", dir=out.parent)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=tracking_uri)
        try:
            os.replace(model_dir(Path(local)), out)
        except OSError:  # another worker on this node finished first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def model_dir(root: Path) -> str:
    """The folder holding config.json under a downloaded artifact tree."""
    if (root / "config.json").is_file():
        return str(root)
    for cfg in sorted(root.rglob("config.json")):
        return str(cfg.parent)
    raise RegistryError(f"{root}: downloaded artifact holds no HF model (no config.json)")


def check_model_uri(uri: str, tracking_uri: str) -> None:
    """Fail in one line unless MLflow has `models:/<name>/<version>`."""
    from mlflow import MlflowClient

    body = uri.removeprefix("models:/")
    if body.count("/") != 1:
        raise RegistryError(f"{uri}: a model location must look like models:/<name>/<version>")
    try:
        MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).get_model_version(*body.split("/"))
    except Exception:
        raise RegistryError(f"{uri}: no such model version in MLflow at {tracking_uri}") from None
