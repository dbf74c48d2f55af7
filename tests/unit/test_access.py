"""Access and secrets: a tracking URI with a password or a token in it is refused wherever it comes from; `resume` refuses a
saved spec.json edited since the ladder started, unless told to adopt it. Real MLflow on SQLite, no Ray."""
import json

import pytest
from typer.testing import CliRunner

from ladder.cli.app import app
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
    parse_spec(spec_dict(uri="postgresql://mlflow@db.example/mlflow"))  # a database's role alone is no secret
    runner = CliRunner()
    res = runner.invoke(app, ["status", "--tracking-uri", SECRET, "--workdir", str(tmp_path)])
    assert res.exit_code == 2 and res.output.strip().startswith("error: the tracking URI has a password in it")
    assert "Traceback" not in res.output and "s3cret" not in res.output
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SECRET)
    res = runner.invoke(app, ["status", "--workdir", str(tmp_path)])
    assert res.exit_code == 2 and "MLFLOW_TRACKING_URI has a password in it" in res.output


@pytest.mark.parametrize("uri, where", [
    ("https://ghp_16C7e42F292c6912E7710c838347Ae178B4a@mlflow.example", "a user name (sent to the server as a"),
    ("http://alice@mlflow.example:5000", "a user name (sent to the server as a"),  # requests sends it as basic auth
    ("https://mlflow.example/?token=ghp_16C7e42F292c6912E7710c838347Ae178B4a", "a secret in its query (token=...)"),
    ("https://mlflow.example/?X-Amz-Signature=ghp_16C7e42F292c6912E7710c838347Ae178B4a", "(X-Amz-Signature=...)"),
    ("postgresql://db.example/mlflow?sslmode=require&password=ghp_16C7e42F292c6912E7710c838347Ae178B4a",
     "a secret in its query (password=...)"),
])
def test_a_token_in_a_tracking_uris_user_name_or_query_is_refused_like_a_password(tmp_path, monkeypatch, uri, where):
    """Issue 35, 10: only `user:password@` was refused; a token as the user name or in the query went into params,
    spec.json and job environments. Refused in one line saying where, never showing it."""
    with pytest.raises(SpecError) as err:
        parse_spec(spec_dict(uri=uri), "spec.yaml")
    assert str(err.value).startswith("spec.yaml: mlflow.tracking_uri: the URI has ") and where in str(err.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    res = CliRunner().invoke(app, ["status", "--workdir", str(tmp_path)])
    assert res.exit_code == 2 and res.output.strip().startswith("error: MLFLOW_TRACKING_URI has ")
    assert where in res.output and "ghp_" not in res.output + str(err.value) and "Traceback" not in res.output


def test_resume_refuses_a_spec_json_edited_since_the_start_unless_adopted(registry, mlflow_store):
    from ladder.cli.remote import LadderAccess, resumable
    from cluster.connect import Address

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


def test_a_remote_submission_carries_no_path_of_this_machine_and_needs_an_mlflow_server(tmp_path, monkeypatch):
    from ladder.cli.job_spec import portable_spec

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "models" / "base").mkdir(parents=True)  # exists here: a local job would pin its absolute path
    raw = {**spec_dict(), "workdir": "work", "student": {"base": "models/base"},
           "judge": {"initial": {"kind": "model", "path": "models/base"}}}
    for uri in (None, "sqlite:///here/mlflow.db", "file:///here/mlruns", "./mlruns"):
        spec = parse_spec({**raw, **({"mlflow": {"tracking_uri": uri}} if uri else {})})
        with pytest.raises(ValueError, match="is a file on this machine, which the cluster cannot read; give an "
                                             "MLflow server"):
            portable_spec(spec, remote=True)
    assert not (tmp_path / "work").exists()  # nothing made for a refused submission
    remote = portable_spec(parse_spec({**raw, "mlflow": {"tracking_uri": "http://mlflow:5000"}}), remote=True)
    text = remote.model_dump_json()
    assert str(tmp_path) not in text and remote.workdir == "work" and remote.student.base == "models/base"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")  # the server may come from the environment
    assert portable_spec(parse_spec(raw), remote=True).mlflow.tracking_uri == "http://mlflow:5000"
    local = portable_spec(parse_spec(raw))  # a local job: this machine's paths, pinned
    assert local.student.base == str(tmp_path / "models" / "base") and local.workdir == str(tmp_path / "work")


def test_submit_to_a_cluster_with_a_file_store_is_one_line(tmp_path, monkeypatch):
    import yaml

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**spec_dict(), "workdir": str(tmp_path / "w")}))
    res = CliRunner().invoke(app, ["submit", str(path), "--address", "127.0.0.1:1"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.strip().startswith("error: submit --address: MLflow at SQLite under the work directory")


def test_a_submitted_job_checks_every_rungs_dataset_on_the_cluster_before_anything_starts(tmp_path, monkeypatch):
    """The driver of a submitted job (`ladder run-submitted`, on the cluster, in the job's working directory)
    checks the spec as the cluster sees it before Ray or MLflow is touched: rung 2's dataset (from the schedule),
    a relative path the submitter had but the cluster's working directory lacks, fails in one line naming it."""
    monkeypatch.chdir(tmp_path)  # the job's working directory on the cluster: no data/ here
    for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    spec = parse_spec({**spec_dict(), "rungs": 2, "workdir": "work", "mlflow": {"tracking_uri": "http://mlflow:5000"},
                       "schedule": [{"rung": 2, "task": {"kind": "jsonl", "path": "data/harder.jsonl",
                                                         "answer_pattern": "hash"}}]})
    monkeypatch.setenv("LADDER_SPEC_JSON", spec.model_dump_json())
    monkeypatch.setenv("LADDER_JOB", "j1")
    res = CliRunner().invoke(app, ["run-submitted"])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and "Traceback" not in res.output, res.output
    assert lines[0].startswith("error: ") and "data/harder.jsonl" in lines[0], lines
    assert not (tmp_path / "work" / "mlflow.db").exists()
