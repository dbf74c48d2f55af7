"""A restart cannot change a rung's judge: the judge and the student init are pinned in the saved progress when
the rung's train phase first starts, and a restarted controller trains against the pinned ones even after a
promotion by hand (MLflow on SQLite, no Ray: the rung's stage actors are replaced by a stand-in)."""
import json
from types import SimpleNamespace

import pytest

from ladder.progress import Phase, Progress, RungInputs, State
from ladder.control.train_phase import train
from registries import add_versions  # tests/unit/registries.py


class Started(Exception):
    """Raised by the stand-in rung: the controller got as far as starting the rung's actors."""


def controller(reg, monkeypatch, seen: list, judge=None):
    """A controller (in this process) of a 3-rung ladder whose student starts from the previous rung; starting a
    rung records its student and judge (a verifier imported, as the rung's judge pool does) and stops there."""
    import ladder.rung.driver
    from ladder.control.controller import LadderController
    from ladder.rung.roles import verifier_of
    from ladder.spec import parse_spec

    def rung(spec, task, student, judge, seed, **kwargs):
        seen.append((student, judge.location, judge.label))
        if judge.kind == "verifier":
            verifier_of(judge, task)
        raise Started()

    monkeypatch.setattr(ladder.rung.driver, "Rung", rung)
    spec = parse_spec({"name": reg.name, "rungs": 3, "student": {"base": "base-dir", "init": "previous"},
                       "judge": {"initial": judge or {"kind": "model", "path": "judge-dir"}},
                       "task": {"source": {"kind": "builtin"}}})
    ctl = LadderController(spec, job="job")
    ctl.registry, ctl.tasks = reg, SimpleNamespace(task=lambda k: None)
    return ctl


def test_a_promotion_by_hand_between_a_death_and_a_restart_does_not_change_the_judge(registry, monkeypatch):
    v1, v2 = add_versions(registry, 2)
    registry.promote(v1, by="auto")
    parent = registry.start_ladder_run(SimpleNamespace(name=registry.name, flat=lambda: {}), "job")
    p = Progress(registry.name, "job", state=State.RUNNING, phase=Phase.TRAIN, rung=2, parent_run=parent)
    seen: list = []
    with pytest.raises(Started):
        train(controller(registry, monkeypatch, seen), p)  # the controller dies as the rung's actors start
    pinned = f"models:/{registry.name}/{v1}"
    saved = registry.load_progress("job")
    assert saved.inputs == RungInputs("model", pinned, f"{registry.name}/v{v1}", pinned, f"v{v1}")
    assert saved.rung_run is not None and saved.judge == f"{registry.name}/v{v1}"

    registry.promote(v2, by="human", reason="meanwhile")  # judge and champion -> v2 before the restart
    with pytest.raises(Started):
        train(controller(registry, monkeypatch, seen), registry.load_progress("job"))
    assert seen == [(pinned, pinned, f"{registry.name}/v{v1}")] * 2  # the restart: still v1, judge and student
    assert registry.load_progress("job").results.student_init == f"v{v1}"


def test_the_next_rung_and_a_retry_pin_again():
    p = Progress("x", "job", inputs=RungInputs("model", "models:/x/1", "x/v1", "base-dir", "base"))
    assert p.next_rung().inputs is None and p.retry_rung().inputs is None


def test_progress_saved_before_pins_still_loads_and_pins_on_reentry(registry, monkeypatch):
    (v1,) = add_versions(registry, 1)
    registry.promote(v1, by="auto")
    parent = registry.start_ladder_run(SimpleNamespace(name=registry.name, flat=lambda: {}), "job")
    old = json.loads(Progress(registry.name, "job", state=State.RUNNING, rung=2, parent_run=parent).to_json())
    del old["inputs"]  # written by a controller from before the pins
    p = Progress.from_json(json.dumps(old))
    assert p.inputs is None and p.rung == 2
    seen: list = []
    with pytest.raises(Started):
        train(controller(registry, monkeypatch, seen), p)
    assert registry.load_progress("job").inputs.judge_location == f"models:/{registry.name}/{v1}"


def test_a_pinned_verifier_the_spec_does_not_name_is_refused_before_it_is_imported(registry, monkeypatch, tmp_path):
    """Issue 35, 10: the progress tag's pinned `module:function` was imported on resume unchecked, so write access to
    the ladder's MLflow experiment ran code on the controller. Now only the spec's verifier (or a built-in task
    checker) is imported; any other pin fails the ladder in one line, and nothing of it runs."""
    from stages.judge import JudgeError

    ran = tmp_path / "ran"
    (tmp_path / "planted.py").write_text(f"open({str(ran)!r}, 'w').close()\ndef score(p, r, a):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    parent = registry.start_ladder_run(SimpleNamespace(name=registry.name, flat=lambda: {}), "job")
    named = {"kind": "verifier", "function": "ladder.tasks.arithmetic:exact"}
    tampered = RungInputs("verifier", "planted:score", "verifier:ladder.tasks.arithmetic:exact", "base-dir", "base")
    registry.save_progress(Progress(registry.name, "job", state=State.RUNNING, parent_run=parent, inputs=tampered))
    seen: list = []
    with pytest.raises(JudgeError) as refused:
        train(controller(registry, monkeypatch, seen, judge=named), registry.load_progress("job"))
    assert "'planted:score'" in str(refused.value) and "\n" not in str(refused.value)
    assert not ran.exists() and seen == []

    kept = RungInputs("verifier", "ladder.tasks.arithmetic:exact", "verifier:ladder.tasks.arithmetic:exact",
                      "base-dir", "base")  # the spec's own verifier, pinned: imported as before
    registry.save_progress(Progress(registry.name, "job", state=State.RUNNING, parent_run=parent, inputs=kept))
    with pytest.raises(Started):
        train(controller(registry, monkeypatch, seen, judge=named), registry.load_progress("job"))
    assert seen == [("base-dir", "ladder.tasks.arithmetic:exact", "verifier:ladder.tasks.arithmetic:exact")]
