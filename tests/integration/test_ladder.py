"""The ladder on real engines and MLflow (SQLite): lineage, idempotent registration, gate, manual policy."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from ladder.control import gate_phase

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def ladder_spec(model, workdir, **overrides):
    spec = {
        "name": "it-ladder", "seed": 0, "rungs": 2, "workdir": str(workdir),
        "student": {"base": model, "init": "previous"},
        "judge": {"initial": {"kind": "model", "path": model}},
        "task": {"source": {"kind": "builtin", "name": "arithmetic", "train_size": 500}, "eval_size": 16},
        "rollout": {"workers": 1, "group_size": 4, "max_tokens": 32, "kv_cache_gib": 0.25},
        "train": {"lr": 1e-3, "kl_coef": 0.0, "steps": 2, "prompts_per_step": 4},
        "eval": {"every": 2, "calibration_size": 16, "yardstick_size": 32},
        "promotion": {"policy": "auto", "tolerance": 1.0, "collapse_share": 1.0, "min_auc": 0.0,
                      "yardstick_tolerance": 1.0},
        # rung 2 trains on longer problems and is judged pairwise by rung 1's student
        "schedule": [{"rung": 2, "task": {"kind": "builtin", "name": "arithmetic", "terms": 4, "train_size": 500},
                      "judge_mode": "pairwise"}],
    }
    spec.update(overrides)
    return spec


@pytest.fixture(scope="module")
def two_rungs(tiny_model, tmp_path_factory):
    """The ladder, run by two `ladder run` of the same spec started at once, each with a Ray of its own (as on two
    machines): one runs it, the other is refused in one line (the lease in MLflow); yields the winner's outcome."""
    work = tmp_path_factory.mktemp("ladder")
    path = work / "spec.yaml"
    path.write_text(yaml.safe_dump(ladder_spec(tiny_model, work / "w")))
    # a temp folder of each run's own (its Ray and engines inherit TMPDIR): what is left there is that ladder's
    tmps = [tempfile.mkdtemp(prefix="lt-", dir="/tmp") for _ in range(2)]  # short: Ray's socket paths live under it
    runs = []
    try:
        runs += [subprocess.Popen([sys.executable, "-m", "ladder.cli", "run", str(path), "--json"], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "RAY_ADDRESS": "", "TMPDIR": tmp}) for tmp in tmps]
        outs = [run.communicate(timeout=1200) for run in runs]
        codes = [run.returncode for run in runs]
        assert sorted(codes) == [0, 2], [err[-3000:] for _, err in outs]
        winner, loser = codes.index(0), codes.index(2)
        refusal = outs[loser][1].strip().splitlines()
        assert len(refusal) == 1 and "Traceback" not in outs[loser][1], outs[loser][1][-3000:]
        assert refusal[0].startswith("error: ladder 'it-ladder' is already running: job "), refusal
        from ladder.registry.registry import Registry
        from ladder.spec import load_spec

        spec = load_spec(path)
        yield spec, Registry.for_spec(spec), json.loads(outs[winner][0].strip().splitlines()[-1]), tmps[winner]
    finally:  # a run that outlived its deadline is stopped by its pid, and the temp folders go either way
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait(60)
        for tmp in tmps:
            shutil.rmtree(tmp, ignore_errors=True)


def test_engines_leave_no_temp_folders(two_rungs):
    """Every engine of the ladder (rollout, judge and gate workers, all killed by Ray) wrote its `vllm_dist_*`
    file into a folder of its own, and the ladder swept those folders when it killed the actors."""
    from stages.engine import TMP_PREFIX

    tmp = two_rungs[3]
    assert any(e.name.startswith("ray") for e in os.scandir(tmp)), "the ladder's Ray should have used this folder"
    assert [e.name for e in os.scandir(tmp) if e.name.startswith(TMP_PREFIX)] == []


def test_two_rung_lineage(two_rungs, tmp_path):
    spec, reg, summary, _ = two_rungs
    assert summary["status"]["state"] == "completed"
    versions = reg.versions()
    assert [str(v.version) for v in versions] == ["1", "2"]
    v1, v2 = versions
    assert v2.tags["ladder.judge"] == f"{spec.name}/v1"
    assert v1.tags["ladder.judge"] == spec.judge.initial.path
    assert reg.alias("judge") == "2" and reg.alias("champion") == "2"
    assert reg.alias("rung-1") == "1" and reg.alias("rung-2") == "2"
    assert v2.tags["ladder.student_init"] == "v1"
    for key in ("ladder.rung", "ladder.spec_sha256", "ladder.job", "ladder.rung_uid", "ladder.status"):
        assert key in v2.tags
    parents = {reg.client.get_run(v.run_id).data.tags.get("mlflow.parentRunId") for v in versions}
    assert len(parents) == 1 and None not in parents
    parent = reg.client.get_run(parents.pop())
    assert parent.data.params["train.steps"] == "2"
    chart = Path(reg.client.download_artifacts(parent.info.run_id, "ladder_chart.png", str(tmp_path)))
    assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    history = reg.client.get_metric_history(v1.run_id, "reward.mean")
    assert [m.step for m in history] == [1, 2]
    # rungs are MLflow models: rung 2's run names version 1's model as its input (its judge)
    from stages.models import model_id_of

    assert model_id_of(v1) and model_id_of(v2)
    assert [m.model_id for m in reg.client.get_run(v2.run_id).inputs.model_inputs] == [model_id_of(v1)]
    assert "Gate: pass" in v1.description and "Decision: promoted by auto" in v1.description
    # every version on the one yardstick (rung 2's task, 32 prompts of its own): at its rung's start and end
    rows = {r["version"]: r for r in reg.lineage()}
    for v in versions:
        start_end = [m.step for m in reg.client.get_metric_history(v.run_id, "eval.yardstick_accuracy")]
        assert start_end == [0, 2], start_end
        assert float(v.tags["ladder.yardstick"]) == rows[int(v.version)]["yardstick"]
        right = 32 * rows[int(v.version)]["yardstick"]  # a share of the 32 prompts
        assert abs(right - round(right)) < 1e-3, right
    # engines persist across rungs: rung 1 started its trainer, rollout and judge workers; the gate loaded the
    # candidate into that judge worker and rung 2 took all three over, its models loaded in place
    started = {str(v.version): reg.client.get_metric_history(v.run_id, "rung.actors_started") for v in versions}
    reused = {str(v.version): reg.client.get_metric_history(v.run_id, "rung.actors_reused") for v in versions}
    assert [m.value for m in started["1"]] == [3.0] and [m.value for m in reused["1"]] == [0.0]
    assert [m.value for m in started["2"]] == [0.0] and [m.value for m in reused["2"]] == [3.0]


def test_schedule_changes_task_and_judge_mode_per_rung(two_rungs, tmp_path):
    spec, reg, _, _ = two_rungs
    v1, v2 = reg.versions()
    assert v1.tags["ladder.task"] == "arithmetic terms=3 max_operand=9" and v1.tags["ladder.judge_mode"] == "verdict"
    assert v2.tags["ladder.task"] == "arithmetic terms=4 max_operand=9" and v2.tags["ladder.judge_mode"] == "pairwise"
    probe = json.loads(reg.client.get_run(v2.run_id).data.tags["ladder.judge_probe"])
    assert all(0.0 <= p <= 1.0 for p in probe)
    # each rung trained on its own task: rung 2's logged prompts have four operands
    logged = reg.client.download_artifacts(v2.run_id, "judge_samples/step-0001.json", str(tmp_path))
    samples = json.loads(Path(logged).read_text())
    assert samples and all(s["judge_input"].split("\n")[0].count("+") + s["judge_input"].split("\n")[0].count("-") == 3
                           for s in samples)
    health = reg.client.get_metric_history(v2.run_id, "judge.tokens_per_sample")
    assert [m.step for m in health] == [1, 2] and health[0].value > 1.0  # pairwise: several comparisons per sample
    # the lineage shows each rung's own task, and each rung's judge measured at that task
    from ladder.registry.lineage import lineage_rows

    rows = lineage_rows(reg)
    assert [(r["rung"], r["task"], r["judge_mode"]) for r in rows] == [
        (1, "arithmetic terms=3 max_operand=9", "verdict"), (2, "arithmetic terms=4 max_operand=9", "pairwise")]
    assert all(r["judge_task_accuracy"] is not None and r["judge_majority_accuracy"] is None for r in rows)


def test_rung_two_judge_served_version_one(two_rungs, tiny_model, tmp_path):
    """The probes recorded by each rung equal scores recomputed with transformers from the judge it
    should have served: the base model (verdicts) for rung 1, version 1 (pairwise) for rung 2."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ladder.models.bootstrap import verdicts
    from ladder.control.controller import LadderController
    from stages.scoring import pair_win

    spec, reg, _, _ = two_rungs
    v1, v2 = reg.versions()
    probe_rung2 = json.loads(reg.client.get_run(v2.run_id).data.tags["ladder.judge_probe"])
    probe_rung1 = json.loads(reg.client.get_run(v1.run_id).data.tags["ladder.judge_probe"])
    ctl = LadderController(spec)
    ctl.prepare()
    rung1, rung2 = spec.judge.settings(), spec.for_rung(2).judge.settings()  # verdict, then pairwise

    def fresh_verdicts(model_dir, texts):
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        return verdicts(model, tok, texts, "yes", "no")

    # the judge's own accuracy at rung 1's task, recorded at the rung's start, is transformers' greedy on the base
    from ladder.models.bootstrap import greedy_accuracy
    from ladder.registry.lineage import lineage_rows

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    expected_skill = greedy_accuracy(base, AutoTokenizer.from_pretrained(tiny_model), ctl.tasks.task(1),
                                     len(ctl.tasks.task(1).eval), spec.rollout.max_tokens)
    assert lineage_rows(reg)[0]["judge_task_accuracy"] == pytest.approx(expected_skill, abs=1e-9)

    items1 = ctl.tasks.calibration(1)[:8]
    assert probe_rung1 == pytest.approx(fresh_verdicts(tiny_model, [rung1.render(c.prompt, c.response) for c in items1]),
                                        abs=1e-3)
    items2 = ctl.tasks.calibration(2)[:8]  # (correct, corrupted) pairs of one prompt each
    v1_dir = reg.download("1", str(tmp_path / "dl"))
    texts = [rung2.render_pair(a.prompt, x.response, y.response)
             for a, b in zip(items2[::2], items2[1::2]) for x, y in ((a, b), (b, a))]
    p = fresh_verdicts(v1_dir, texts)
    expected = [w for k in range(0, len(p), 2) for w in (pair_win(p[k], p[k + 1]), pair_win(p[k + 1], p[k]))]
    assert probe_rung2 == pytest.approx(expected, abs=1e-3)
    assert len({round(x, 3) for x in probe_rung2}) > 1


def test_rejecting_an_auto_promoted_version_by_hand_moves_judge_and_champion_back(two_rungs):
    """(Last of the module's tests on the ladder: it changes the store.) The gate promoted both rungs; `ladder
    reject` of version 2 moves `judge` and `champion` back to version 1, so the live judge is never a rejected one."""
    from ladder.registry.store import tracking_uri_for

    spec, reg, _, _ = two_rungs
    assert reg.aliases()["judge"] == reg.aliases()["champion"] == "2"
    res = subprocess.run([sys.executable, "-m", "ladder.cli", "reject", spec.name, "2", "--reason", "wrong on sight",
                          "--tracking-uri", tracking_uri_for(spec), "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["status"] == "rejected" and out["aliases"]["judge"] == out["aliases"]["champion"] == "1", out
    assert reg.alias("judge") == "1" and reg.status_of("2") == "rejected"


def test_registration_is_idempotent(tiny_model, tmp_path):
    from ladder.registry.registry import Registry

    reg = Registry("idem", f"sqlite:///{tmp_path / 'm.db'}", (tmp_path / "art").as_uri())
    run = reg.client.create_run(reg.experiment_id).info.run_id
    tags = {"ladder.rung": "1", "ladder.rung_uid": "job-1-0", "ladder.judge": "x"}
    first = reg.register(run, tiny_model, tags)
    second = reg.register(run, tiny_model, tags)
    assert first == second == "1"
    assert len(reg.versions()) == 1
    third = reg.register(run, tiny_model, {**tags, "ladder.rung_uid": "job-2-0", "ladder.rung": "2"})
    assert third == "2" and len(reg.versions()) == 2


@pytest.fixture(scope="module")
def gate_stages(ray_local):
    """The judge workers the module's gates measure on, kept from one test's controller to the next (the candidate
    loaded in place, as a ladder's next gate does) instead of an engine start each."""
    from ladder.rung.stageset import StageSet

    stages = StageSet()
    yield stages
    stages.release()


def _controller_with_candidate(spec_dict, model_dir, tmp_path, stages):
    """A controller whose progress is at the gate of rung 1, with `model_dir` registered as the candidate; its
    stage actors are `stages`'."""
    from ladder.control.controller import LadderController
    from ladder.progress import JudgeQuality, Phase, Progress, RungResults
    from ladder.spec import parse_spec

    ctl = LadderController(parse_spec(spec_dict))
    ctl.stages = stages
    ctl.prepare()
    parent = ctl.registry.start_ladder_run(ctl.spec, "job")
    run = ctl.registry.start_rung_run(parent, 1, "job")
    version = ctl.registry.register(run, model_dir, {"ladder.rung": "1", "ladder.rung_uid": f"job-{model_dir}"})
    progress = Progress(ctl.spec.name, "job", phase=Phase.GATE, parent_run=parent, rung_run=run, candidate=version,
                        judge="base",
                        results=RungResults(current_judge=JudgeQuality(0.6, 0.65, 0.1), start_accuracy=0.1))
    ctl.progress = progress
    return ctl, run, version, progress


def corrupted_copy(model_dir, out):
    """The same model with its embedding (and tied head) zeroed: every verdict becomes 0.5."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.zero_()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return str(out)


def test_gate_rejects_a_corrupted_candidate(ray_local, tiny_model, tmp_path, gate_stages):
    """A candidate whose verdicts are all 0.5 is measured on real judge workers and refused as collapsed."""

    from ladder.progress import Phase, State

    spec = ladder_spec(tiny_model, tmp_path / "w", promotion={"policy": "auto", "tolerance": 0.05,
                                                              "collapse_share": 0.9})
    bad = corrupted_copy(tiny_model, tmp_path / "bad")
    ctl, run, version, progress = _controller_with_candidate(spec, bad, tmp_path, gate_stages)
    ctl.registry.promote("1", by="setup")  # pretend an earlier judge: alias judge -> 1
    bad_v = ctl.registry.register(run, bad, {"ladder.rung": "2", "ladder.rung_uid": "job-bad"})
    after = gate_phase.gate(ctl, progress.to(candidate=bad_v))  # the candidate is fetched from MLflow by the judge worker
    assert after.phase is Phase.DONE and after.state is State.STOPPED and after.results.ended == "rejected"
    tags = ctl.registry.version(bad_v).tags
    assert ctl.registry.status_of(bad_v) == "rejected"
    assert tags["ladder.gate"] == "fail" and tags["ladder.gate_rule"] == "collapse"
    assert "judge collapsed: 100%" in tags["ladder.gate_reason"]
    assert ctl.registry.alias("judge") == "1"


def test_manual_policy_waits_for_a_decision(ray_local, tiny_model, tmp_path, gate_stages):
    from ladder.control.controller import State
    from ladder.progress import Phase

    spec = ladder_spec(tiny_model, tmp_path / "w", promotion={"policy": "manual"})
    ctl, run, version, progress = _controller_with_candidate(spec, tiny_model, tmp_path, gate_stages)
    waiting = gate_phase.gate(ctl, progress)
    assert waiting.phase is Phase.AWAIT and ctl.registry.alias("judge") is None
    result = {}
    worker = threading.Thread(target=lambda: result.update(p=gate_phase.await_decision(ctl, waiting)))
    worker.start()
    deadline = time.time() + 300
    while ctl.status()["state"] != State.AWAITING_PROMOTION.value and time.time() < deadline:
        time.sleep(0.2)
    assert ctl.status()["state"] == "awaiting_promotion"
    time.sleep(1.5)  # the controller polls every second: it must still be waiting, the alias unmoved
    assert worker.is_alive() and ctl.registry.alias("judge") is None
    ctl.registry.promote(version, by="human", reason="looks good")
    worker.join(timeout=300)
    assert not worker.is_alive(), "the controller did not see the decision"
    assert result["p"].rung == 2 and result["p"].phase is Phase.TRAIN  # on to the next rung at once
    assert ctl.history[-1]["status"] == "promoted"
    assert ctl.registry.alias("judge") == version
    assert ctl.registry.version(version).tags["ladder.decided_by"].startswith("human:")


def test_a_truncated_version_promoted_by_hand_fails_the_next_rung_naming_the_file(ray_local, tiny_model, tmp_path):
    """A person promotes (by hand, over a manual gate) a version whose registered weights file is cut in half; the
    ladder, resumed, pins it as rung 2's student (`init: previous`) and judge and fails at that rung's start, before
    any step, before any stage actor starts (the controller checks the files it fetched): its status and the
    progress saved in MLflow (what `ladder status` shows) say failed, with the broken file's path
    and what is wrong in one line (no Ray header or traceback)."""
    from ladder.control.controller import LadderController
    from ladder.progress import Phase, State
    from ladder.registry.registry import Registry
    from ladder.rung.stageset import StageSet
    from ladder.spec import parse_spec
    from stages.models import model_id_of, model_uri

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    spec = ladder_spec(tiny_model, tmp_path / "w", promotion={"policy": "manual"})
    # rung 1 trained and registered its (broken) candidate; the manual gate waits: measuring is skipped here (the
    # gate's judge workers would refuse the file too), the ladder saved as waiting for a person
    setup, _, version, progress = _controller_with_candidate(spec, str(bad), tmp_path, StageSet())
    setup.registry.save_spec(progress.parent_run, setup.spec)
    setup.save(progress.to(phase=Phase.AWAIT, state=State.AWAITING_PROMOTION))
    setup.registry.promote(version, by="human", reason="looks good to me")
    cached = (Path(setup.spec.workdir) / setup.spec.name / "model-cache").resolve() / \
        model_id_of(setup.registry.version(version))  # where each stage actor fetches the version to

    ctl = LadderController(parse_spec(spec), job="job", resume=True)
    result = {}
    worker = threading.Thread(target=lambda: result.update(status=ctl.run()), daemon=True)
    worker.start()
    worker.join(timeout=300)
    if worker.is_alive():  # it trains (or hangs) on a broken model: its actors are stopped before the test fails
        ctl.stop(now=True)
        worker.join(timeout=120)
        pytest.fail(f"the ladder did not fail at rung 2's start within 300 s: {ctl.status()}")

    status = result["status"]
    error = status["error"]
    assert status["state"] == "failed" and status["rung"] == 2 and status["step"] == 0, status
    assert error and "\n" not in error, error
    assert f"{cached}/model.safetensors: truncated safetensors file" in error, error
    assert error.startswith("ModelBroken: "), error  # found by the controller, not by an actor that failed to start
    assert not any(header in error for header in ("ray::", "RayTaskError", "Traceback", "creation task")), error
    saved = Registry.for_spec(ctl.spec).load_progress("job")
    assert saved.state is State.FAILED and saved.error == error, saved
    assert saved.inputs.student == saved.inputs.judge_location == model_uri(spec["name"], version), saved.inputs
    assert [str(v.version) for v in ctl.registry.versions()] == [version]  # nothing trained from it
