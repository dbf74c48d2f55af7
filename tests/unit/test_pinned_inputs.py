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


def controller(reg, monkeypatch, seen: list):
    """A controller (in this process) of a 3-rung ladder whose student starts from the previous rung; starting a
    rung records its student and judge and stops there."""
    import ladder.rung.driver
    from ladder.control.controller import LadderController
    from ladder.spec import parse_spec

    def rung(spec, task, student, judge, seed, **kwargs):
        seen.append((student, judge.location, judge.label))
        raise Started()

    monkeypatch.setattr(ladder.rung.driver, "Rung", rung)
    spec = parse_spec({"name": reg.name, "rungs": 3, "student": {"base": "base-dir", "init": "previous"},
                       "judge": {"initial": {"kind": "model", "path": "judge-dir"}},
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
