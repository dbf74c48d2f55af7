"""Where a ladder's MLflow is: the spec's (or the command's) tracking URI, else MLFLOW_TRACKING_URI, else SQLite
under the work directory, with a local artifact root beside it."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ladder.spec.resources import SECRET_IN_URI, secret_in


def tracking_uri_for(spec) -> str:
    return default_tracking_uri(spec.workdir, spec.mlflow.tracking_uri)


def default_tracking_uri(workdir: str = ".ladder", explicit: Optional[str] = None) -> str:
    """The spec's (or the command's) URI, else MLFLOW_TRACKING_URI, else SQLite under the work directory; a URI
    with a password in it is refused (ValueError)."""
    if explicit:
        return without_password(explicit, "the tracking URI")
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return without_password(os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI")
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{work / 'mlflow.db'}"


@contextmanager
def store_lock(tracking_uri: str, timeout_s: float = 300.0) -> Iterator[None]:
    """For a SQLite store, a lock file beside the database, held while a process opens it (MLflow creates the
    tables of a new one) and creates an experiment: two commands started at once on a new store (two `ladder run`
    of one spec) would otherwise both create them, and one would end in "table ... already exists". A server
    needs none."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    with FileLock(tracking_uri.removeprefix("sqlite:///") + ".lock", timeout=timeout_s):
        yield


def local_artifact_root(tracking_uri: str, workdir: str) -> Optional[str]:
    return (Path(workdir).resolve() / "mlartifacts").as_uri() if tracking_uri.startswith("sqlite:") else None


def without_password(uri: str, source: str) -> str:
    """`uri`, unless it carries a secret (`http://user:secret@host`, `https://<token>@host`, `?token=`): then one
    line naming `source` and where the secret is (never the secret)."""
    what = secret_in(uri)
    if what:
        raise ValueError(f"{source} has {what} {SECRET_IN_URI}")
    return uri
