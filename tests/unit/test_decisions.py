"""Decisions keep aliases and status in step (MLflow on SQLite in a temp dir, no Ray): a rejection takes back
the aliases the version held, and a gate re-entered after a crash uses the decision or verdict already recorded."""
import pytest

from ladder.control import gate_phase
from ladder.progress import Phase, Progress, State
from registries import add_versions  # tests/unit/registries.py


def test_rejecting_the_live_judge_moves_judge_and_champion_back(registry):
    v1, v2 = add_versions(registry, 2)
    registry.promote(v1, by="auto", reason="gate passed")
    registry.promote(v2, by="auto", reason="gate passed")
    registry.reject(v2, by="human", reason="judges lengths")
    assert registry.aliases()["judge"] == v1 and registry.aliases()["champion"] == v1
    assert registry.status_of(v2) == "rejected" and registry.status_of(v1) == "promoted"
    assert registry.version(v2).tags["ladder.aliases_moved"] == "judge and champion moved back to v1"
    assert "Aliases: judge and champion moved back to v1." in registry.version(v2).description


def test_rejecting_the_only_promoted_version_removes_the_aliases(registry):
    v1, v2 = add_versions(registry, 2)
    registry.promote(v2, by="auto")
    registry.reject(v2, by="human")
    assert "judge" not in registry.aliases() and "champion" not in registry.aliases()
    assert registry.alias("judge") is None
    assert "removed" in registry.version(v2).tags["ladder.aliases_moved"]


def test_rejecting_a_version_that_holds_no_alias_moves_nothing(registry):
    v1, v2, v3 = add_versions(registry, 3)
    registry.promote(v1, by="auto")
    registry.promote(v2, by="auto")
    registry.reject(v3, by="auto")
    assert registry.aliases()["judge"] == v2
    registry.reject(v1, by="human")  # an older promoted version: the live judge stays where it is
    assert registry.aliases()["judge"] == v2 == registry.aliases()["champion"]
    assert "ladder.aliases_moved" not in registry.version(v1).tags


def spec_of(name: str, policy: str = "auto"):
    from ladder.spec import parse_spec

    return parse_spec({"name": name, "rungs": 3, "student": {"base": "m"},
                       "judge": {"initial": {"kind": "model", "path": "m"}}, "task": {"source": {"kind": "builtin"}},
                       "promotion": {"policy": policy}})


def controller_at_gate(reg, monkeypatch, policy: str = "auto"):
    """A controller (in this process, no Ray) whose rung 1 registered version 1 and crashed in its gate phase;
    measuring the candidate again would fail the test."""
    from ladder.control.controller import LadderController

    ctl = LadderController(spec_of(reg.name, policy), job="job")
    ctl.registry = reg
    monkeypatch.setattr("ladder.judging.gate.candidate_quality",
                        lambda *a, **k: pytest.fail("the gate was measured again"))
    parent = reg.client.create_run(reg.experiment_id, tags={"ladder.kind": "ladder"}).info.run_id
    rung_run = reg.start_rung_run(parent, 1, "job")
    (version,) = add_versions(reg, 1, rung_run)
    return ctl, Progress(reg.name, "job", state=State.RUNNING, phase=Phase.GATE, candidate=version,
                         parent_run=parent, rung_run=rung_run)


def test_a_gate_reentered_after_a_promotion_keeps_it(registry, monkeypatch):
    ctl, p = controller_at_gate(registry, monkeypatch)
    registry.promote(p.candidate, by="auto", reason="gate passed")  # then the controller died before saving
    after = gate_phase.gate(ctl, p)
    assert after.rung == 2 and after.phase is Phase.TRAIN
    assert registry.status_of(p.candidate) == "promoted" and registry.alias("judge") == p.candidate


def test_a_gate_reentered_after_its_verdict_applies_the_recorded_verdict(registry, monkeypatch):
    from ladder.judging.gate import GateResult, JudgeQuality

    ctl, p = controller_at_gate(registry, monkeypatch)
    bad = JudgeQuality(accuracy=0.5, auc=0.41, identical_share=0.2)
    registry.record_gate(p.candidate, GateResult(bad, bad, False, "AUC 0.410 < 0.6"))  # died before rejecting
    after = gate_phase.gate(ctl, p)
    assert after.phase is Phase.DONE and after.results.ended == "rejected"
    assert registry.status_of(p.candidate) == "rejected"
    assert registry.version(p.candidate).tags["ladder.reason"] == "AUC 0.410 < 0.6"


def test_a_manual_ladder_reentering_its_gate_after_the_verdict_waits(registry, monkeypatch):
    from ladder.judging.gate import GateResult, JudgeQuality

    ctl, p = controller_at_gate(registry, monkeypatch, policy="manual")
    good = JudgeQuality(accuracy=0.9, auc=0.95, identical_share=0.1)
    registry.record_gate(p.candidate, GateResult(good, good, True, "AUC 0.950 >= 0.6"))
    after = gate_phase.gate(ctl, p)
    assert after.phase is Phase.AWAIT and after.state is State.AWAITING_PROMOTION
    assert registry.decision(p.candidate) is None


def test_a_registration_found_already_done_still_sets_its_aliases_and_description(registry):
    """A crash after the version was created, before its aliases and description: the retried registration
    finds the version (no second one) and finishes it."""
    registry.raw.create_registered_model(registry.name)
    tags = {"ladder.rung": "1", "ladder.rung_uid": "job-1-0", "ladder.job": "job"}
    made = str(registry.raw.create_model_version(registry.name, "file:///nowhere", tags=tags).version)
    assert registry.register("no-run", None, tags) == made  # nothing logged: the version is found
    assert registry.aliases() == {"rung-1": made, "candidate": made}
    assert "Rung 1 of ladder" in registry.version(made).description
    assert len(registry.versions()) == 1


def test_the_student_rule_compares_accuracies_on_one_task(registry):
    """A curriculum rung on a harder task is held to its own start, not to the champion's accuracy on an easier
    task; a rung on the champion's own task is held to the champion's recorded accuracy."""
    run = registry.raw.create_run(registry.experiment_id)
    registry.raw.log_metric(run.info.run_id, "eval.accuracy", 0.9)
    add_versions(registry, 1, run.info.run_id)
    registry.raw.set_model_version_tag(registry.name, "1", "ladder.task", "arithmetic terms=4 max_operand=5")
    registry.promote("1")
    assert gate_phase.baseline_accuracy(registry, 0.4, "arithmetic terms=4 max_operand=5") == 0.9
    assert gate_phase.baseline_accuracy(registry, 0.4, "arithmetic terms=4 max_operand=9") == 0.4


def test_the_rungs_judge_is_measured_on_the_items_the_candidate_will_be(tmp_path):
    """In a curriculum the gate compares the candidate, measured on the next rung's task, with the rung's judge on
    the same items (the next rung's task), not on the rung's own easier task."""
    from types import SimpleNamespace

    from ladder.spec import parse_spec
    from ladder.tasks.sets import TaskSets
    from ladder.control.train_phase import leave_rung

    task = {"kind": "builtin", "name": "arithmetic", "terms": 3, "max_operand": 5, "train_size": 50}
    spec = parse_spec({"name": "x", "rungs": 2, "student": {"base": "m"}, "judge": {"initial": {"kind": "model",
                       "path": "m"}}, "task": {"source": task, "eval_size": 8}, "eval": {"calibration_size": 8},
                       "schedule": [{"rung": 2, "task": {**task, "max_operand": 9}}]})
    scored = []

    class Pool:  # scores as the task's checker does, and records which prompts it was asked about
        def score_items(self, prompts, responses, groups, references):
            scored.extend(prompts)
            return SimpleNamespace(scores=[float(r.split("#")[-1] == ref) for r, ref in zip(responses, references)])

    rung = SimpleNamespace(pool=Pool(), evaluate=lambda: {"eval/accuracy": 0.5}, accuracy_on=lambda task: 0.5, step_no=3)
    ctl = SimpleNamespace(spec=spec, tasks=TaskSets(spec, tmp_path),
                          registry=SimpleNamespace(log_metrics=lambda *a: None),
                          store=SimpleNamespace(log_candidate=lambda rung, p, tags: p))
    p = leave_rung(ctl, rung, Progress("x", "j", rung=1, phase=Phase.TRAIN, rung_run="r"), "steps")
    assert set(scored) == {c.prompt for c in ctl.tasks.calibration(2)}
    assert not set(scored) & {c.prompt for c in ctl.tasks.calibration(1)}
    assert p.phase == Phase.REGISTER and p.results.current_judge.auc == 1.0


def test_a_reject_made_while_the_gate_measures_stays_and_judge_does_not_move(registry, monkeypatch):
    """Issue 35, 5: `ladder reject` while the gate measures a candidate that passes. Without the gate reading the
    decision again right before writing its own, the gate promoted it (status promoted, `judge` on it)."""
    from ladder.registry.decisions import Verdict

    ctl, p = controller_at_gate(registry, monkeypatch)

    def measured_while_a_person_rejects(ctl_, p_):
        registry.reject(p_.candidate, by="human", reason="looks wrong")
        return Verdict(True, "AUC 0.950 >= 0.6", 0.95)
    monkeypatch.setattr(gate_phase, "measure_candidate", measured_while_a_person_rejects)
    after = gate_phase.gate(ctl, p)
    assert registry.status_of(p.candidate) == "rejected" and registry.alias("judge") is None
    assert registry.version(p.candidate).tags["ladder.reason"] == "looks wrong"
    assert after.results.ended == "rejected" or after.attempt == 1, after
