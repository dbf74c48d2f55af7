"""Access and secrets: a tracking URI with a password in it is refused wherever it comes from; `resume` refuses a
saved spec.json edited since the ladder started, unless told to adopt it. Real MLflow on SQLite, no Ray."""
import json

import pytest
from typer.testing import CliRunner

from ladder.cli import app
from ladder.progress import Progress, State
from ladder.spec import SpecError, parse_spec

SECRET = "http://alice:s3cret@mlflow.example:5000"


def spec_dict(name="x", uri=None):
    return {"name": name, "student": {"base": "m"}, "judge": {"initial": {"kind": "model", "path": "m"}},
            "task": {"source": {"kind": "builtin"}}, **({"mlflow": {"tracking_uri": uri}} if uri else {})}


def test_a_tracking_uri_with_a_password_is_refused_in_one_line(tmp_path, monkeypatch):
    with pytest.raises(SpecError) as err:
        parse_spec(spec_dict(uri=SECRET), "spec.yaml")
    assert str(err.value).startswith("spec.yaml: mlflow.tracking_uri: the URI has a password in it; set "
                                     "MLFLOW_TRACKING_USERNAME") and "s3cret" not in str(err.value)
    parse_spec(spec_dict(uri="http://alice@mlflow.example:5000"))  # a user name alone is no secret
    runner = CliRunner()
    res = runner.invoke(app, ["status", "--tracking-uri", SECRET, "--workdir", str(tmp_path)])
    assert res.exit_code == 2 and res.output.strip().startswith("error: the tracking URI has a password in it")
    assert "Traceback" not in res.output and "s3cret" not in res.output
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SECRET)
    res = runner.invoke(app, ["status", "--workdir", str(tmp_path)])
    assert res.exit_code == 2 and "MLFLOW_TRACKING_URI has a password in it" in res.output


def test_resume_refuses_a_spec_json_edited_since_the_start_unless_adopted(registry, mlflow_store):
    from ladder.control import LadderAccess, resumable
    from ladder.runtime import Address

    spec = parse_spec({**spec_dict(registry.name), "mlflow": {"tracking_uri": mlflow_store[0]}})
    run = registry.start_ladder_run(spec, "j1")
    registry.save_spec(run, spec)
    registry.save_progress(Progress(registry.name, "j1", state=State.STOPPED, parent_run=run))
    where = LadderAccess(mlflow_store[0], Address(None))
    assert resumable(registry.name, where) == (spec, "j1")  # as started: resumed
    edited = json.loads(spec.model_dump_json())
    edited["judge"]["initial"] = {"kind": "verifier", "function": "os:system"}  # someone with write access
    registry.client.log_text(run, json.dumps(edited), "spec.json")
    with pytest.raises(ValueError) as err:
        resumable(registry.name, where)
    assert "its saved spec.json was changed since it started" in str(err.value) and "--adopt-spec" in str(err.value)
    adopted, job = resumable(registry.name, where, adopt_spec=True)
    assert adopted.judge.initial.function == "os:system" and job == "j1"
    assert resumable(registry.name, where)[0] == adopted  # adopted: the ladder's spec from now on
