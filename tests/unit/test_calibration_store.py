"""A sampled calibration set is kept in MLflow with the rung that sampled it: a controller whose job folder lost the
file (a resume on another node) reads the same items back instead of failing at the gate."""
import json
from types import SimpleNamespace

from ladder.spec import parse_spec


def answers_only_spec(tmp_path):
    rows = [{"prompt": f"What is {i} * 3?", "answer": 3 * i} for i in range(24)]
    path = tmp_path / "ref.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return parse_spec({"name": "calib", "rungs": 2, "student": {"base": "m"}, "judge": {"initial": {"kind": "task"}},
                       "task": {"source": {"kind": "jsonl", "path": str(path), "answer_pattern": "last_number"},
                                "eval_size": 8},
                       "eval": {"calibration_size": 8}})


def sampling_rung(spec):
    """A stand-in for a running rung: its student answers every prompt right once and wrong once per pair."""
    def generate(batch, n, temperature):
        prompts = [p for p in batch.prompts for _ in range(n)]
        answers = [a for a in batch.references for _ in range(n)]
        responses = [f"it is {a}" if i % 2 else "it is 1" for i, a in enumerate(answers)]
        return SimpleNamespace(prompts=prompts, responses=responses)
    return SimpleNamespace(spec=spec, generate=generate)


def test_a_sampled_calibration_set_comes_back_from_mlflow_when_the_local_file_is_gone(tmp_path, registry):
    from ladder.control.rung_store import RunCalibration
    from ladder.tasks.sets import TaskSets

    spec = answers_only_spec(tmp_path)
    parent = registry.start_ladder_run(spec, "job1")
    rung_run = registry.start_rung_run(parent, 1, "job1", "uid-1")
    ctl = SimpleNamespace(progress=SimpleNamespace(parent_run=parent, rung_run=rung_run), registry=registry)
    folder = tmp_path / "job1"
    first = TaskSets(spec, folder, RunCalibration(ctl))
    assert first.task(2).needs_sampled_calibration
    sampled = first.calibration(2, sampling_rung(spec))  # the gate's set of rung 1: rung 2's task
    assert len(sampled) == 8
    files = list(folder.glob("calibration-*.json"))
    assert len(files) == 1
    # kept with the rung run that sampled it, named on the job's run
    kept = registry.client.download_artifacts(rung_run, f"calibration/{files[0].name}", str(tmp_path / "dl"))
    assert json.loads(open(kept).read()) == json.loads(files[0].read_text())
    files[0].unlink()  # another node: the job folder has no file
    resumed = TaskSets(spec, folder, RunCalibration(ctl))
    assert resumed.calibration(2) == sampled  # no rung to sample with: from MLflow, identical
    assert files[0].is_file()  # and written back to the folder
