"""The ladder's one yardstick: a fixed task every version is measured on, recorded per version, shown in lineage and
the chart's first panel, and a gate rule so a chain cannot promote its way down."""
from __future__ import annotations

from ladder.judging.gate import JudgeQuality, decide_gate
from ladder.registry.chart import ladder_chart, yardstick_points
from ladder.spec import PromotionSpec, parse_spec

GOOD = JudgeQuality(accuracy=0.85, auc=0.9, identical_share=0.1)
PROMO = PromotionSpec(tolerance=0.05, yardstick_tolerance=0.02)


def curriculum(**eval_fields) -> dict:
    return {"name": "yard", "rungs": 3, "student": {"base": "m"}, "judge": {"initial": {"kind": "task"}},
            "task": {"source": {"kind": "builtin", "name": "arithmetic", "terms": 4, "max_operand": 5}, "eval_size": 16},
            "eval": eval_fields,
            "schedule": [{"rung": 3, "task": {"kind": "builtin", "name": "arithmetic", "terms": 4, "max_operand": 9}}]}


def test_the_gate_refuses_a_candidate_below_the_champion_on_the_yardstick():
    below = decide_gate(GOOD, GOOD, PROMO, False, yardstick=0.50, champion_yardstick=0.55)
    assert not below.passed and below.rule == "yardstick"
    assert "0.500 < 0.550 - yardstick_tolerance 0.02" in below.reason
    assert below.metrics()["gate/champion_yardstick"] == 0.55
    within = decide_gate(GOOD, GOOD, PROMO, False, yardstick=0.54, champion_yardstick=0.55)
    assert within.passed and "yardstick 0.540 vs champion 0.550" in within.reason
    assert decide_gate(GOOD, GOOD, PROMO, False, yardstick=0.30).passed  # no champion yet: nothing to fall below


def test_the_yardstick_is_the_last_rungs_task_on_prompts_of_its_own(tmp_path):
    from ladder.tasks.sets import TaskSets

    sets = TaskSets(parse_spec(curriculum(yardstick_size=64)), tmp_path)
    yard = sets.yardstick()
    assert len(yard.eval) == 64
    assert sets.yardstick() is yard  # built once: every version meets the same prompts
    operands = {int(x) for r in yard.eval for x in r.prompt.split(":")[1].split("\n")[0].replace("-", "+").split("+")}
    assert max(operands) > 5  # the last rung's task (operands 0-9), not rung 1's (0-5)
    rung3 = {r.prompt for r in sets.task(3).eval}
    assert len(rung3 & {r.prompt for r in yard.eval}) < len(rung3) / 2  # other held-out prompts than rung 3's
    assert TaskSets(parse_spec(curriculum(yardstick_size=0)), tmp_path).yardstick() is None


def test_a_yardstick_named_in_the_spec_is_used(tmp_path):
    from ladder.tasks.sets import TaskSets

    source = {"kind": "builtin", "name": "arithmetic", "terms": 3, "max_operand": 5}
    yard = TaskSets(parse_spec(curriculum(yardstick=source, yardstick_size=16)), tmp_path).yardstick()
    assert all(r.prompt.split(":")[1].split("\n")[0].count("+") + r.prompt.split(":")[1].split("\n")[0].count("-") == 2
               for r in yard.eval)


def test_the_chart_draws_every_version_on_the_yardstick_beside_its_judge(tmp_path):
    rows = [{"version": 1, "rung": 1, "status": "promoted", "yardstick": 0.40, "yardstick_start": 0.15,
             "heldout_accuracy": 0.9},
            {"version": 2, "rung": 2, "status": "rejected", "yardstick": 0.38, "heldout_accuracy": 0.7},
            {"version": 3, "rung": 2, "status": "promoted", "yardstick": 0.47, "heldout_accuracy": 0.75},
            {"version": 4, "rung": 3, "status": "candidate", "yardstick": 0.52, "heldout_accuracy": 0.6}]
    points = yardstick_points(rows)
    assert [y for _, y, _ in points["each version"]] == [0.40, 0.38, 0.47, 0.52]
    # a version's judge is the version promoted before it: v1 judged both tries of rung 2, v3 judged rung 3
    assert [(x, y) for x, y, _ in points["its judge"]] == [(2, 0.40), (2, 0.40), (3, 0.47)]
    counts = ladder_chart(rows, tmp_path / "chart.png")
    assert counts["yardstick: each version"] == 4 and counts["yardstick: its judge"] == 3


def test_lineage_says_how_far_each_student_beats_its_judge_and_why_its_rung_ended(registry):
    from ladder.registry.lineage import lineage_rows
    from ladder.registry.tags import Tag

    parent = registry.client.create_run(registry.experiment_id, tags={Tag.KIND: "ladder"}).info.run_id
    run = registry.start_rung_run(parent, 1, "job")
    for key, value, step in (("judge.task_accuracy", 0.60, 0), ("eval.accuracy", 0.50, 0),
                             ("eval.yardstick_accuracy", 0.30, 0), ("eval.accuracy", 0.66, 8)):
        registry.client.log_metric(run, key, value, step=step)
    registry.record_ended_by(run, "collapse")
    registry.raw.create_registered_model(registry.name)
    registry.raw.create_model_version(registry.name, "file:///nowhere", run_id=run,
                                      tags={Tag.RUNG: "1", Tag.YARDSTICK: "0.4200"})
    (row,) = lineage_rows(registry)
    assert row["yardstick"] == 0.42 and row["yardstick_start"] == 0.30
    assert abs(row["beats_judge"] - 0.06) < 1e-9
    assert row["ended_by"].startswith("collapse")


def test_a_file_tasks_yardstick_is_its_held_out_rows(tmp_path):
    """A file has no prompts to spare: the default yardstick is the last rung's own held-out rows (a larger
    yardstick_size than the file allows is no error), never rows the rung trains on."""
    import json

    from ladder.tasks.sets import TaskSets

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Q:{i}+1\nA:", "answer": i + 1}) + "\n" for i in range(40)))
    spec = parse_spec({**curriculum(yardstick_size=512), "rungs": 1, "schedule": [],
                       "task": {"source": {"kind": "jsonl", "path": str(path)}, "eval_size": 8}})
    sets = TaskSets(spec, tmp_path)
    yard, task = sets.yardstick(), sets.task(1)
    assert [r.prompt for r in yard.eval] == [r.prompt for r in task.eval] and len(yard.eval) == 8
    assert not {r.prompt for r in yard.eval} & {r.prompt for r in task.train}
