"""The label rules of solve mode as a ladder uses them: the arithmetic task gives its views, a task that gives none
is refused before anything starts when views are asked of it, and the reward's accuracy is counted over the samples
trained on (an abstained prompt teaches nothing either way)."""
from __future__ import annotations

import json

import pytest

from ladder.spec import parse_spec


def spec_with(task_source: dict, views: int) -> object:
    return parse_spec({"name": "views", "rungs": 2, "student": {"base": "m"},
                       "judge": {"initial": {"kind": "task"}, "mode": "solve", "solve_views": views},
                       "task": {"source": {"kind": "builtin", "name": "arithmetic"}, "eval_size": 8},
                       "schedule": [{"rung": 2, "task": task_source}]})


def test_views_asked_of_a_task_without_them_are_refused_in_one_line(tmp_path):
    from ladder.tasks.sets import NoViews, check_tasks

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Q:{i}+1\nA:", "answer": i + 1}) + "\n" for i in range(40)))
    with pytest.raises(NoViews, match=r"^judge.solve_views: 8 views asked of task .*rung 2.*set judge.solve_views: 1$"):
        check_tasks(spec_with({"kind": "jsonl", "path": str(path)}, 8), gate=True)
    check_tasks(spec_with({"kind": "jsonl", "path": str(path)}, 1), gate=True)  # no views asked: fine
    check_tasks(spec_with({"kind": "builtin", "name": "arithmetic", "max_operand": 7}, 8), gate=True)


def test_the_arithmetic_task_gives_views_its_checker_accepts():
    from ladder.tasks import build_task
    from ladder.tasks.arithmetic import solution_steps

    task = build_task(spec_with({"kind": "builtin", "name": "arithmetic"}, 8).task, 0)
    row = task.eval[0]
    views = task.views(row.prompt, 8)
    assert views[0] == row.prompt and len(set(views)) == len(views) > 1
    for view in views:  # every view's own worked answer is right against the original prompt's reference
        worked = ",".join(solution_steps(view)) + f"#{row.answer}"
        assert task.verifier(view, worked, row.answer) == 1.0


def test_reward_accuracy_counts_only_the_samples_trained_on():
    from ladder.rung.metrics import reward_truth
    from ladder.tasks import build_task
    from stages.batches import JudgedBatch, RolloutBatch, Sample

    task = build_task(spec_with({"kind": "builtin", "name": "arithmetic"}, 8).task, 0)
    a, b = task.eval[0], task.eval[1]
    texts = [f"#{a.answer}", "#-1", f"#{b.answer}", "#-1"]  # right, wrong, right, wrong
    rollout = RolloutBatch((a.prompt, a.prompt, b.prompt, b.prompt), (a.answer, a.answer, b.answer, b.answer),
                           tuple(Sample((1,), (2,), t, (0.0,)) for t in texts), (0, 0, 1, 1))
    # prompt a labelled right; prompt b abstained on (its scores say nothing and it is not trained on)
    judged = JudgedBatch(rollout, (1.0, 0.0, 0.0, 1.0), keep=(True, True, False, False), coverage=0.5)
    out = reward_truth(task, rollout, judged)
    assert out["judge/reward_accuracy"] == 1.0 and out["rollout/accuracy"] == 0.5
