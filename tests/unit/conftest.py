"""Unit-test fixtures: an MLflow store on SQLite in a temp dir (no server, no Ray)."""
import itertools

import pytest

_NAMES = (f"lad{i}" for i in itertools.count())


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory):
    """One SQLite store for the session (its schema is built once, ~5 s): (tracking URI, artifact root)."""
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root / 'mlflow.db'}", (root / "art").as_uri()


@pytest.fixture
def registry(mlflow_store):
    """A `Registry` of a ladder name of its own in the shared store."""
    from ladder.registry.registry import Registry

    return Registry(next(_NAMES), *mlflow_store)
