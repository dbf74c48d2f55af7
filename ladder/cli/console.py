"""How the commands talk to the terminal: a user error ends in one line and exit code 2, libraries stay quiet,
and the spec file, the MLflow store and the Ray address are read the same way by every command."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ladder.registry.retrying import MlflowUnavailable, mlflow_problem
from ladder.errors import first_line

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, MlflowUnavailable)


def quiet_libraries() -> None:
    """No progress bars (transformers, MLflow downloads) nor INFO logs (MLflow, Ray's job packaging) in our
    terminal output."""
    import logging
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # MLflow's client retries a request for ~4 minutes by default; the ladder's own retries (mlflow.retry_s)
    # carry a running ladder through outages, and a command should say "unreachable" in seconds
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    for name in ("alembic", "mlflow", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def load_spec_file(spec_path: Path):
    from ladder.spec import SpecError, load_spec

    try:
        return load_spec(spec_path)
    except SpecError as exc:
        fail(str(exc))


ADDRESS_HELP = ("Ray cluster: its address (host:6379) or its dashboard's (http://host:8265); default RAY_ADDRESS, "
                "else a local Ray of the ladder's own.")
TRACKING_HELP = "MLflow tracking URI; default MLFLOW_TRACKING_URI, else SQLite under --workdir."


def ladder_access(address: Optional[str], tracking_uri: Optional[str], workdir: str):
    """How a command reaches its ladders: the MLflow store (the option, else the default) and the Ray address."""
    from ladder.registry.store import default_tracking_uri
    from cluster.connect import Address
    from ladder.cli.remote import LadderAccess

    try:
        uri = default_tracking_uri(workdir, tracking_uri)
    except ValueError as exc:  # a password in the URI
        fail(str(exc))
    return LadderAccess(uri, Address.resolve(address), workdir)


def guard(fn, *args, **kwargs):
    """Run a command's body; user errors (bad name, version, address, token) end in one line and exit 2."""
    quiet_libraries()
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as exc:
        fail(first_line(exc, None))
    except Exception as exc:
        if type(exc).__module__.startswith("mlflow."):  # MLflow refused or could not be reached
            fail(mlflow_problem(exc))
        raise
