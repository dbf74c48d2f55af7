"""A registry lookup says "none" only when MLflow answers so: an outage or a refusal (403) propagates, so
`student.init: previous` never silently starts from the base model (MLflow on SQLite, no Ray)."""
import pytest
from mlflow.exceptions import RestException

from ladder.registry.retrying import MlflowUnavailable
from registries import add_versions  # tests/unit/registries.py

DENIED = RestException({"error_code": "PERMISSION_DENIED", "message": "Permission denied for user alice"})


def failing(exc):
    def call(*args, **kwargs):
        raise exc
    return call


def test_an_alias_that_does_not_exist_is_none(registry):
    assert registry.alias("judge") is None and registry.aliases() == {}  # no registered model yet
    (v1,) = add_versions(registry, 1)
    assert registry.alias("champion") is None
    registry.promote(v1)
    assert registry.alias("champion") == v1


@pytest.mark.parametrize("error, raised", [(DENIED, RestException),
                                           (ConnectionError("Connection refused"), MlflowUnavailable)])
def test_a_refused_or_unreachable_mlflow_is_an_error_not_a_missing_alias(registry, monkeypatch, error, raised):
    (v1,) = add_versions(registry, 1)
    registry.promote(v1)
    for call in ("get_model_version_by_alias", "get_registered_model", "get_model_version"):
        monkeypatch.setattr(registry.raw, call, failing(error))
    with pytest.raises(raised):
        registry.alias("champion")
    with pytest.raises(raised):
        registry.aliases()
    with pytest.raises(raised):
        registry.version(v1)
    with pytest.raises(raised):
        registry.pinned(f"models:/{registry.name}@judge")


def test_student_init_previous_fails_on_a_403_instead_of_starting_from_base(registry, monkeypatch):
    from ladder.judging.resolve import student_init
    from ladder.spec import parse_spec

    spec = parse_spec({"name": registry.name, "student": {"base": "m", "init": "previous"},
                       "judge": {"initial": {"kind": "model", "path": "m"}}, "task": {"source": {"kind": "builtin"}}})
    assert student_init(spec, registry) == ("m", "base")  # nothing promoted yet: the base model
    (v1,) = add_versions(registry, 1)
    registry.promote(v1)
    assert student_init(spec, registry) == (f"models:/{registry.name}/{v1}", f"v{v1}")
    monkeypatch.setattr(registry.raw, "get_model_version_by_alias", failing(DENIED))
    with pytest.raises(RestException, match="PERMISSION_DENIED"):
        student_init(spec, registry)
