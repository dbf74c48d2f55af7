"""The spec a submitted job carries: local paths pinned for a local job, nothing of this machine for a cluster's."""
from __future__ import annotations

import os
from pathlib import Path

from ladder.registry.store import tracking_uri_for


def portable_spec(spec, remote: bool = False):
    """The spec a job runs. Local: paths made absolute and the MLflow URI pinned, so the job's driver (whose working
    directory is a copy of the project) and the user's later `status` / `stop` see the same ladder. Remote (a
    cluster): no path of this machine in it (paths stay as written, read on the cluster: relative ones from the
    job's working directory), and an MLflow server required (ValueError, one line, for a file store)."""
    if remote:
        return spec.model_copy(update={"mlflow": spec.mlflow.model_copy(update={"tracking_uri": server_uri(spec)})})

    def absolute(path: str) -> str:
        return path if path.startswith(("models:/", "/")) or not os.path.exists(path) else str(Path(path).resolve())

    update: dict = {"workdir": str(Path(spec.workdir).resolve()),
                    "mlflow": spec.mlflow.model_copy(update={"tracking_uri": tracking_uri_for(spec)}),
                    "student": spec.student.model_copy(update={"base": absolute(spec.student.base)})}
    initial = spec.judge.initial
    if initial.kind == "model":
        update["judge"] = spec.judge.model_copy(update={"initial": initial.model_copy(
            update={"path": absolute(initial.path)})})
    source = spec.task.source
    if source.kind == "jsonl":
        update["task"] = spec.task.model_copy(update={"source": source.model_copy(update={"path": absolute(source.path)})})
    return spec.model_copy(update=update)


def server_uri(spec) -> str:
    """The MLflow server a remote job and this machine both reach: the spec's URI, else MLFLOW_TRACKING_URI."""
    uri = spec.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri or uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        where = uri or "SQLite under the work directory (no mlflow.tracking_uri or MLFLOW_TRACKING_URI)"
        raise ValueError(f"submit --address: MLflow at {where} is a file on this machine, which the cluster cannot "
                         f"read; give an MLflow server (mlflow.tracking_uri or MLFLOW_TRACKING_URI, e.g. "
                         f"http://mlflow:5000)")
    return uri
