"""A user's dataset as a whole ladder: a JSONL file with its own field names, reference answers and no worked
solutions, the task's checker as rung 1's judge, the gate's calibration set sampled by the student. The ladder runs
as a local background job (no cluster): `submit` without an address, `stop --now` mid-rung 1, `resume`, `stop --now`
in rung 1's gate, its local calibration file deleted, `resume --wait`."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from service import ladder, paused, progress_of, steps_logged, wait_for  # tests/integration/service.py

from cluster.processes import pid_alive

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
RUNG1_STEPS = 9


def write_questions(path: Path, n: int, answers: bool = True) -> None:
    """Arithmetic questions as a user would bring them: `question` / `answer` fields, no solutions. Of the test
    model's own kind (4 terms, operands 0-5), so its rungs' candidates solve some of them as judges: a judge that
    solves none gives every calibration item one score, and the gate rejects it as collapsed (it did, on 3-term
    problems with operands to 9 and a test model whose greedy accuracy was 0.19)."""
    import random

    from ladder.tasks.arithmetic import make_example

    rng, seen, rows = random.Random(3), set(), []
    while len(rows) < n:
        ex = make_example(rng, 4, 5)
        if ex.prompt not in seen:
            seen.add(ex.prompt)
            rows.append({"question": ex.prompt, **({"answer": int(ex.answer)} if answers else {}), "id": len(rows)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def jsonl_spec(model: str, data: Path, workdir: Path, **overrides) -> dict:
    return {**{
        "name": "jsonl-ladder", "seed": 0, "rungs": 2, "workdir": str(workdir),
        "student": {"base": model, "init": "previous"},
        "judge": {"initial": {"kind": "task"}, "mode": "solve", "solve_samples": 4, "solve_reward": "majority"},
        "task": {"source": {"kind": "jsonl", "path": str(data), "prompt_field": "question", "answer_pattern": "hash"},
                 "eval_size": 16},
        "rollout": {"workers": 1, "group_size": 4, "max_tokens": 32, "kv_cache_gib": 0.25},
        "train": {"lr": 1e-4, "kl_coef": 0.0, "steps": 2, "prompts_per_step": 4},
        "eval": {"every": 2, "calibration_size": 48},  # 24 prompts: a judge right on none is far-fetched
        "promotion": {"policy": "auto", "tolerance": 1.0, "collapse_share": 1.0, "min_auc": 0.0,
                      "yardstick_tolerance": 1.0},
    }, **overrides}


def ladder_cli(*args, tmp: str, timeout: int = 1200):
    return subprocess.run([sys.executable, "-m", "ladder.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "RAY_ADDRESS": "", "TMPDIR": tmp})


@pytest.fixture(scope="module")
def jsonl_ladder(tiny_model, tmp_path_factory):
    """The JSONL ladder as a local background job (no cluster): `submit` runs it on a Ray of its own, `stop --now`
    mid-rung 1 aborts the step (progress goes back to the last checkpoint, the job's process ends), `resume` goes
    on to rung 1's gate; there its controller is paused past its lease's stale time and a `resume --wait` from
    elsewhere (no local job record, no local calibration file: as on another machine) takes the ladder over, its gate
    reading the calibration set back from MLflow, and finishes it, while the paused one, continued, writes nothing
    more (`take_over_in_the_gate`); each step is logged once."""
    work = tmp_path_factory.mktemp("jsonl")
    write_questions(work / "questions.jsonl", 400)
    path = work / "spec.yaml"
    # rung 1 is longer: three checkpoints, the `stop --now` below lands after the first
    # leases renewed every second (30 s by default): a paused controller's is stale after 3 s
    path.write_text(yaml.safe_dump(jsonl_spec(tiny_model, work / "questions.jsonl", work / "w", checkpoint_every=3,
                                              schedule=[{"rung": 1, "train": {"steps": RUNG1_STEPS}},
                                                        {"rung": 2, "train": {"steps": 2}}],
                                              mlflow={"lease_renew_s": 1.0})))
    tmp, elsewhere = (tempfile.mkdtemp(prefix="lj-", dir="/tmp") for _ in range(2))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["TMPDIR"] = tmp  # short: Ray's socket paths live under it
    at, uri = ["--workdir", str(work / "w")], f"sqlite:///{work / 'w' / 'mlflow.db'}"
    try:
        assert ladder_cli("validate", str(path), tmp=tmp).returncode == 0
        sub = json.loads(ladder(env, "submit", str(path), "--json").stdout)
        assert sub["submission"].startswith("local-")
        stopped = stop_now_at_first_checkpoint(env, "jsonl-ladder", uri, at)
        ladder(env, "resume", "jsonl-ladder", *at)  # a local job in the background: returns once it started
        took = take_over_in_the_gate({**env, "TMPDIR": elsewhere}, "jsonl-ladder", uri, at)
        from ladder.registry.registry import Registry
        from ladder.spec import load_spec

        spec = load_spec(path)
        gate = took
        yield spec, Registry.for_spec(spec), sub, stopped, work, gate
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(elsewhere, ignore_errors=True)


def stop_now_at_first_checkpoint(env, name, uri, at):
    """`stop --now` once rung 1 has a checkpoint: the step in flight is aborted, progress goes back to that
    checkpoint, and the job's process has ended (`status` shows no live controller). Returns the progress.

    The controller's process is paused (SIGSTOP) from the checkpoint until the CLI's request is in MLflow: the
    CLI takes seconds to start, a step of rung 1 a fraction of one (a run saw the rung end before the stop)."""
    p = wait_for(name, uri, lambda p: p.step >= 3 and p.checkpoint, poll_s=0.2, near=lambda p: p.phase.value == "train")
    stopped = stop_now_paused(env, name, uri, at, p.parent_run)
    assert stopped.rung == 1 and stopped.phase.value == "train", f"rung 1 ended before the stop: {stopped}"
    assert stopped.step % 3 == 0 and stopped.checkpoint.endswith(f"step-{stopped.step:05d}")
    return stopped


def stop_now_paused(env, name, uri, at, parent_run):
    """`ladder stop --now` with the controller's process paused (SIGSTOP) until the request is in MLflow, so it
    lands where the progress is now; the ladder ends stopped and its local job's process has ended. Returns the
    progress."""
    with paused(controller_pid(name, uri, parent_run), Path(uri.removeprefix("sqlite:///"))):
        cmd = [sys.executable, "-m", "ladder.cli", "stop", name, "--now", *at, "--json"]
        stop = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for_stop_request(name, uri, parent_run, stop)
    out, err = stop.communicate(timeout=900)
    assert stop.returncode == 0, err[-2000:]
    assert json.loads(out)["state"] == "stopped"
    status = json.loads(ladder(env, "status", name, *at, "--json").stdout)
    assert status["state"] == "stopped" and status["live"] is None  # its local job's process has ended
    return progress_of(name, uri)


def delete_calibration(folder: Path) -> dict[str, list]:
    """Delete the job's local calibration files (at least one); returns their items by file name."""
    files = list(folder.glob("*/calibration-*.json"))
    assert files, f"no calibration file under {folder}"
    deleted = {f.name: json.loads(f.read_text()) for f in files}
    for f in files:
        f.unlink()
    return deleted


def take_over_in_the_gate(elsewhere, name, uri, at) -> dict:
    """Issues 35, 1 and 6: once the resumed job is in rung 1's gate (its candidate registered, the gate starting a
    judge engine with it: many seconds), its controller is paused (it can neither renew its lease nor write, as when
    cut off from MLflow) past the lease's stale time (3 s on its own clock, which `resume` checks first), and
    `resume --wait` runs from a Ray and temp folder of its own, without this host's record of the local job and
    without the job's local calibration file (as on another machine): its controller takes the lease (the fence's
    generation moves on), its gate reads the set back from MLflow, and it completes the ladder. The old one,
    continued, writes nothing more: its job's process ends, its log's last word LeaseLost. Returns what the tests
    check and the fault table's figures."""
    from ladder.control.lease import read_fence
    from ladder.registry.registry import Registry

    p = wait_for(name, uri, lambda p: p.rung == 1 and p.phase.value == "gate" and p.state.value == "running",
                 poll_s=0.2, near=lambda p: p.step >= RUNG1_STEPS - 3)
    reg = Registry.find(name, uri)
    record = Path(reg.load_spec(p.parent_run).workdir) / name / "local-job.json"
    old = json.loads(record.read_text())
    with paused(controller_pid(name, uri, p.parent_run), Path(uri.removeprefix("sqlite:///"))):
        assert reg.recorded_gate(p.candidate) is None, "the gate's verdict came first: the scenario shows nothing"
        held = read_fence(reg)[0]
        deleted = delete_calibration(Path(record.parent))
        record.unlink()  # the record of a local job lives on the host that started it
        time.sleep(3.5)
        t0 = time.monotonic()
        new = subprocess.Popen([sys.executable, "-m", "ladder.cli", "resume", name, *at, "--wait"], cwd=ROOT,
                               env=elsewhere, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while read_fence(reg)[0] == held:
            assert new.poll() is None, f"resume ended first: {new.communicate()[1][-3000:]}"
            assert time.monotonic() - t0 < 300, "the lease was not taken over in 300 s"
            time.sleep(0.5)
        took = time.monotonic() - t0
    out, err = new.communicate(timeout=1200)
    assert new.returncode == 0, (out[-2000:], err[-3000:])
    deadline = time.monotonic() + 300
    while pid_alive(old["pid"]):
        assert time.monotonic() < deadline, "the old job's process outlived the takeover by 300 s"
        time.sleep(0.5)
    lost = [line for line in Path(old["log"]).read_text().splitlines() if "LeaseLost" in line]
    assert lost and "taken over" in lost[-1] and "Traceback" not in lost[-1], lost
    return {"in_gate": p, "deleted": deleted, "took_s": took, "resumed_s": time.monotonic() - t0}


def controller_pid(name, uri, parent_run) -> int:
    """The process of the ladder's controller, from the lease it holds (on this host: a local job)."""
    import socket

    from ladder.control.lease import leases
    from ladder.registry.registry import Registry

    (lease,) = [lease for run, lease in leases(Registry.find(name, uri)) if run == parent_run]
    assert lease.host == socket.gethostname() and lease.pid > 0, lease
    return lease.pid


def wait_for_stop_request(name, uri, parent_run, cli, timeout_s: float = 120.0) -> None:
    """Until `ladder stop` (the process `cli`) has written its request to the ladder's run."""
    from ladder.registry.registry import Registry

    reg, deadline = Registry.find(name, uri), time.monotonic() + timeout_s
    while reg.stop_request(parent_run) != "now":
        assert cli.poll() is None, f"ladder stop ended first: {cli.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "ladder stop wrote no request"
        time.sleep(0.1)


def test_a_stopped_local_job_resumes_where_its_checkpoint_left_it(jsonl_ladder):
    spec, reg, sub, stopped, *_ = jsonl_ladder
    done = reg.load_progress()
    assert done.state.value == "completed" and done.job == sub["job"], (done.state.value, done.error)
    # each step logged once: the steps past the checkpoint that `stop --now` aborted were redone, not logged again
    assert steps_logged(reg.tracking_uri, spec.name, 1) == list(range(1, RUNG1_STEPS + 1))
    (run,) = reg.client.search_runs([reg.experiment_id], "tags.`ladder.rung` = '1'")
    entered = reg.client.get_metric_history(run.info.run_id, "time.rung_start_s")
    assert sorted(m.step for m in entered) == [0, stopped.step]  # entered at its start, then at the checkpoint


def test_a_jsonl_ladder_without_solutions_runs_through_the_gate(jsonl_ladder):
    spec, reg, _, _, work, _ = jsonl_ladder
    assert reg.load_progress().state.value == "completed"
    v1, v2 = reg.versions()
    assert v1.tags["ladder.judge"] == "verifier:task" and v2.tags["ladder.judge"] == f"{spec.name}/v1"
    assert v1.tags["ladder.task"] == "jsonl questions.jsonl"
    for v in (v1, v2):  # each rung's candidate was measured as a judge on the calibration set
        auc = reg.client.get_metric_history(v.run_id, "gate.candidate_auc")
        assert len(auc) == 1 and 0.0 <= auc[0].value <= 1.0
    files = list((work / "w" / spec.name).glob("*/calibration-*.json"))
    assert len(files) == 1, files  # one task for both rungs: sampled once, read again
    items = json.loads(files[0].read_text())
    assert len(items) == spec.eval.calibration_size
    assert sum(i["correct"] for i in items) == len(items) // 2  # balanced
    questions = {json.loads(line)["question"]: str(json.loads(line)["answer"])
                 for line in (work / "questions.jsonl").read_text().splitlines()}
    from stages.answers import extract_answer, same_answer

    for right, wrong in zip(items[::2], items[1::2]):  # pairs of one held-out prompt: labelled by the reference
        assert right["prompt"] == wrong["prompt"] and right["prompt"] in questions
        assert same_answer(extract_answer("hash", right["response"]), questions[right["prompt"]])
        assert not same_answer(extract_answer("hash", wrong["response"]), questions[wrong["prompt"]])
    # rung 1's rewards came from the task's checker: 1 for a right final answer, else 0
    logged = reg.client.list_artifacts(v1.run_id, "student_samples")
    sample = json.loads(Path(reg.client.download_artifacts(v1.run_id, logged[0].path, str(work))).read_text())
    for s in sample:
        right = same_answer(extract_answer("hash", s["response"]), questions[s["student_input"]])
        assert s["reward"] == float(right)


def test_a_gate_taken_over_without_its_local_calibration_file_finishes(jsonl_ladder, fault_figures):
    """Taken over in rung 1's gate before its verdict by a controller without the job's local calibration file (as
    on another machine): its gate reads the set back from MLflow (kept with the rung run that sampled it), measures
    the candidate on it once (the old controller, continued, recorded nothing), records its verdict, and the ladder
    completes; the file is back on disk with the items that were deleted."""
    spec, reg, _, _, work, gate = jsonl_ladder
    stopped, deleted, done = gate["in_gate"], gate["deleted"], reg.load_progress()
    assert done.state.value == "completed", f"the resumed gate did not finish: {done.state.value}: {done.error}"
    v1 = reg.version(stopped.candidate)
    assert v1.tags["ladder.rung"] == "1"
    verdict = reg.recorded_gate(v1.version)
    assert verdict is not None, f"v{v1.version} has no gate verdict: {v1.tags}"
    size = spec.eval.calibration_size
    (acc,) = reg.client.get_metric_history(v1.run_id, "gate.candidate_accuracy")  # measured once: by the resumed gate
    (auc,) = reg.client.get_metric_history(v1.run_id, "gate.candidate_auc")
    assert abs(acc.value * size - round(acc.value * size)) < 1e-6  # a share of the calibration set's items
    assert verdict.auc == pytest.approx(auc.value, abs=1e-4)
    back = {f.name: json.loads(f.read_text()) for f in (work / "w" / spec.name).glob("*/calibration-*.json")}
    assert back == deleted  # written back, the same items
    (name, items), = deleted.items()
    assert len(items) == size
    from ladder.registry.tags import Tag

    kept = reg.client.get_run(stopped.parent_run).data.tags[Tag.CALIBRATION + name]
    assert kept == stopped.rung_run  # MLflow's copy: with rung 1's run, which sampled it
    fault_figures(f"JSONL ladder (answers only, local job) taken over in rung 1's gate (v{v1.version}, no verdict "
                  "yet) by a controller without the local calibration file",
                  f"its gate read the set back from MLflow (rung 1's run), measured v{v1.version} on its {size} items "
                  f"(AUC {auc.value:.3f}, {'pass' if verdict.passed else 'fail'}) and the ladder completed; the file "
                  f"is back, identical; resume to the end {gate['resumed_s']:.0f} s")


def test_a_controller_paused_past_its_lease_is_taken_over_and_writes_nothing_more(jsonl_ladder, fault_figures):
    """The job's controller paused in rung 1's gate past its lease's stale time, a `resume --wait` from elsewhere: the new
    controller completed the ladder (the fixture: its process exited 0, the old job's process ended with LeaseLost
    as its last word). The old one saved no progress after it lost the lease (its "failed" or "stopped" would be the
    last word here), registered nothing and logged no step twice."""
    spec, reg, sub, _, _, gate = jsonl_ladder
    done = reg.load_progress()
    assert done.state.value == "completed" and done.job == sub["job"] and done.error is None, done
    assert [str(v.version) for v in reg.versions()] == ["1", "2"]  # one version per rung, none of the old one's
    assert steps_logged(reg.tracking_uri, spec.name, 2) == [1, 2]
    fault_figures("JSONL ladder's controller paused (SIGSTOP) in rung 1's gate past its lease's stale time (renewed "
                  "every 1 s); `resume --wait` from a Ray of its own without this host's job record",
                  f"the new controller took the lease {gate['took_s']:.0f} s after the resume started and completed "
                  "the ladder; the old one, continued, wrote nothing more and its job ended (LeaseLost)")


def test_a_dataset_without_answers_is_refused_before_anything_starts(tiny_model, tmp_path):
    write_questions(tmp_path / "q.jsonl", 60, answers=False)
    spec = jsonl_spec(tiny_model, tmp_path / "q.jsonl", tmp_path / "w")
    spec["judge"]["initial"] = {"kind": "model", "path": tiny_model}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    tmp = tempfile.mkdtemp(prefix="lj-", dir="/tmp")
    try:
        for command in ("validate", "run"):
            res = ladder_cli(command, str(path), tmp=tmp, timeout=300)
            assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and "rows have no reference answers (field 'answer')" in lines[0]
            assert "promotion gate needs them" in lines[0]
        assert not (tmp_path / "w" / "mlflow.db").exists()  # no MLflow experiment left behind
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_verdict_word_that_is_not_one_token_is_refused_in_one_line(smollm2_dir, tmp_path):
    """`ladder train-rung` with SmolLM2 judging in verdict mode with no_token "incorrect": two tokens for its
    tokenizer, while " incorrect" is one. One line naming the field and that variant, before any engine starts."""
    write_questions(tmp_path / "q.jsonl", 60)
    spec = jsonl_spec(smollm2_dir, tmp_path / "q.jsonl", tmp_path / "w")
    spec.update(rungs=1, judge={"initial": {"kind": "model", "path": smollm2_dir}, "mode": "verdict",
                                "yes_token": "Yes", "no_token": "incorrect"})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    tmp = tempfile.mkdtemp(prefix="lj-", dir="/tmp")
    try:
        res = ladder_cli("train-rung", str(path), tmp=tmp, timeout=300)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith("error: judge.no_token: 'incorrect' is 2 tokens") and "one token: ' incorrect'" in lines[0]
