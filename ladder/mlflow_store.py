"""Where a ladder's MLflow is: the spec's (or the command's) tracking URI, else MLFLOW_TRACKING_URI, else SQLite
under the work directory, with a local artifact root beside it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def tracking_uri_for(spec) -> str:
    return default_tracking_uri(spec.workdir, spec.mlflow.tracking_uri)


def default_tracking_uri(workdir: str = ".ladder", explicit: Optional[str] = None) -> str:
    """The spec's (or the command's) URI, else MLFLOW_TRACKING_URI, else SQLite under the work directory."""
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{work / 'mlflow.db'}"


def local_artifact_root(tracking_uri: str, workdir: str) -> Optional[str]:
    return (Path(workdir).resolve() / "mlartifacts").as_uri() if tracking_uri.startswith("sqlite:") else None
