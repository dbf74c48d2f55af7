"""Step votes (`judge.solve_steps`): the judge's label composed from its most common result for each step, pooled
over its answers to a set of training prompts, and the worked answer it composes as what distillation trains on."""
import json

import pytest
from test_label_rules import ScriptedPool, rollout  # tests/unit

from stages.scoring import SolveMode
from stages.steps import SIGNED_SUM_STEPS, signed_sum_compose, signed_sum_steps, table_of

HARD = "Q:4+1-5+3\nA:"  # its worked answer: 4+1=5,5-5=0,0+3=3#3
GAP = "Q:9+9-1+2\nA:"   # 9+9 is a step the judge never wrote


class WorkingPool(ScriptedPool):
    """A judge that writes the worked answers in `script` for each input text (cycled to `n`), no engine."""

    def map(self, method, items, n, max_tokens, temperature):
        assert method == "write"
        self.asked += items
        return [[(self.script[t][i % len(self.script[t])], 9) for i in range(n)] for t in items]


# the training prompts the table is learnt from: each step of HARD is written right in most of the places it is
# written (5-5=1 once), and HARD's own answers are wrong in their majority (the judge slips on it there)
SCRIPT = {
    "Q:4+1+2+0\nA:": ["4+1=5,5+2=7,7+0=7#7"],
    "Q:5-5+1+1\nA:": ["5-5=0,0+1=1,1+1=2#2", "5-5=1,1+1=2,2+1=3#3"],
    "Q:6-5+0+3\nA:": ["6-5=1,1+0=1,1+3=4#4"],
    "Q:2+1-3+3\nA:": ["2+1=3,3-3=0,0+3=3#3"],
    "Q:3+2-5+3\nA:": ["3+2=5,5-5=0,0+3=3#3"],
    HARD: ["4+1=5,5-5=1,1+3=4#4", "4+1=5,5-5=1,1+3=4#4", "4+1=5,5-5=0,0+3=3#3", "4+1=6,6-5=1,1+3=4#4"],
    GAP: ["9+9=17,17-1=16,16+2=18#18"],
}
TRAINING = tuple(p for p in SCRIPT if p not in (HARD, GAP))


def pool(**settings) -> WorkingPool:
    cfg = SolveMode(solve_samples=4, solve_reward="majority", solve_steps=len(TRAINING), **settings)
    judge = WorkingPool(SCRIPT, cfg)
    judge.steps, judge.step_prompts = SIGNED_SUM_STEPS, TRAINING
    return judge


def test_a_step_the_judge_writes_right_in_most_places_is_right_in_its_table_and_composes_the_answer():
    texts = [signed_sum_steps(t) for p in TRAINING for t in SCRIPT[p]]
    table = table_of(texts)
    assert table[(5, "-", 5)] == "0"  # written 0 three times and 1 once (each prompt's answers count as written)
    assert signed_sum_compose(HARD, table) == "4+1=5,5-5=0,0+3=3#3"
    assert signed_sum_compose(GAP, table) is None  # a step missing from the table: no answer
    assert signed_sum_steps("12+7=19,19-3=16#16") == [((12, "+", 7), "19"), ((19, "-", 3), "16")]


def test_the_label_is_the_composed_answer_where_the_judges_own_majority_is_wrong():
    judge = pool()
    judged = judge.score(rollout([(HARD, ["#3", "#4"]), (GAP, ["#18", "#17"])]))
    assert judged.scores[:2] == (1.0, 0.0)  # the composed 3, not the judge's majority 4 for this prompt
    assert judged.trainable[2:] == (False, False)  # no composed answer: abstained, no learning signal
    assert judge.asked == list(TRAINING)  # the table learnt from its prompts; nothing more written per prompt
    judge.score(rollout([(HARD, ["#3", "#3"])]))
    assert judge.asked == list(TRAINING)  # not learnt again
    plain = ScriptedPool(SCRIPT, SolveMode(solve_samples=4, solve_reward="majority"))
    plain.map = WorkingPool.map.__get__(plain)
    assert plain.score(rollout([(HARD, ["#3", "#4"])])).scores == (0.0, 1.0)  # without step votes: the majority


def test_distillation_trains_on_the_composed_worked_answer():
    judged = pool(solve_distill=True).score(rollout([(HARD, ["#4", "#4"]), (GAP, ["#18", "#17"])]), guide=True)
    assert judged.guided == 1 and judged.trainable == (False, True, False, False)
    assert judged.rollout.samples[1].completion_text == "4+1=5,5-5=0,0+3=3#3" and judged.scores[1] == 1.0


def test_step_votes_asked_of_a_task_without_steps_are_refused_in_one_line(tmp_path):
    from ladder.spec import parse_spec
    from ladder.tasks.sets import NoViews, check_tasks

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Q:{i}+1\nA:", "answer": i + 1}) + "\n" for i in range(40)))
    spec = lambda source, n: parse_spec({  # noqa: E731
        "name": "steps", "rungs": 2, "student": {"base": "m"},
        "judge": {"initial": {"kind": "task"}, "mode": "solve", "solve_steps": n},
        "task": {"source": {"kind": "builtin", "name": "arithmetic"}, "eval_size": 8},
        "schedule": [{"rung": 2, "task": source}]})
    with pytest.raises(NoViews, match=r"^judge.solve_steps: 64 asked of task .*rung 2.*set judge.solve_steps: 0$"):
        check_tasks(spec({"kind": "jsonl", "path": str(path)}, 64), gate=True)
    check_tasks(spec({"kind": "builtin", "name": "arithmetic", "max_operand": 7}, 64), gate=True)


def test_the_table_is_learnt_from_training_prompts_drawn_by_the_seed_and_only_when_asked():
    from ladder.rung.roles import step_prompts
    from ladder.tasks.arithmetic import build

    task = build(4, 9, 200, 16, 0)
    drawn = step_prompts(task, SolveMode(solve_steps=64), seed=3)
    assert len(drawn) == 64 and set(drawn) <= {e.prompt for e in task.train}
    assert not set(drawn) & {e.prompt for e in task.eval}  # never a held-out prompt
    assert step_prompts(task, SolveMode(solve_steps=64), seed=3) == drawn != step_prompts(task, SolveMode(
        solve_steps=64), seed=4)
    assert step_prompts(task, SolveMode(), seed=3) == () and task.steps is SIGNED_SUM_STEPS


def test_a_step_counts_from_the_answers_that_agree_with_their_prompts_majority():
    """Two training prompts whose four answers all differ write 5-5=1 eight times; the answers that agree with
    their prompt's majority write 5-5=0 six times and 5-5=1 never: the table keeps 0, so HARD composes to 3."""
    noisy = {f"Q:5-5+{k}+1\nA:": [f"5-5=1,1+{k}={1 + k + d},{1 + k + d}+1={2 + k + d}#{2 + k + d}" for d in range(4)]
             for k in (2, 3)}
    judge = WorkingPool({**SCRIPT, **noisy}, SolveMode(solve_samples=4, solve_reward="majority", solve_steps=7))
    judge.steps, judge.step_prompts = SIGNED_SUM_STEPS, TRAINING + tuple(noisy)
    assert judge.score(rollout([(HARD, ["#3", "#4"])])).scores == (1.0, 0.0)
    every = table_of(signed_sum_steps(t) for p in judge.step_prompts for t in (SCRIPT | noisy)[p] * (4 // len(
        (SCRIPT | noisy)[p])))
    assert every[(5, "-", 5)] == "1"  # every answer's votes: the noisy prompts' slip wins


def test_a_judges_table_is_learnt_once_per_ladder_and_the_next_rung_labels_with_the_gates():
    """The gate measures a candidate with its step table; the next rung's pool (the same judge, prompts and settings,
    the ladder's tables) labels with that table and writes nothing; another judge learns its own."""
    known: dict = {}
    gate = pool()
    gate.tables = (known, "models:/tiny/2")
    assert gate.score(rollout([(HARD, ["#3", "#4"])])).scores == (1.0, 0.0) and gate.asked
    rung = pool()
    rung.tables = (known, "models:/tiny/2")
    assert rung.score(rollout([(HARD, ["#3", "#4"])])).scores == (1.0, 0.0) and rung.asked == []
    other = pool()
    other.tables = (known, "models:/tiny/3")
    other.score(rollout([(HARD, ["#3"])]))
    assert other.asked == list(TRAINING) and len(known) == 2


def test_the_label_is_the_majority_of_the_answers_composed_along_each_order_of_the_terms():
    """The table has 5-5 wrong: the prompt's own order takes that step, two other orders of its terms do not. The
    label is their majority (3); the prompt's own worked answer (4) is not trained on. A prompt whose own order
    gives the majority is trained on its own composition."""
    from stages.steps import composed_label

    table = {(4, "+", 1): "5", (5, "-", 5): "1", (1, "+", 3): "4", (4, "+", 3): "7", (7, "-", 5): "2",
             (2, "+", 1): "3", (3, "+", 4): "7"}
    forms = [HARD, "Q:4+3-5+1\nA:", "Q:3+4-5+1\nA:"]
    label, own = composed_label(forms, signed_sum_compose, table, "last_number")
    assert (label.majority, round(label.share, 2), label.abstained, own) == ("3", 0.67, False, None)
    label, own = composed_label(forms[1:] + [HARD], signed_sum_compose, table, "last_number")
    assert label.majority == "3" and own == "4+3=7,7-5=2,2+1=3#3"
    assert composed_label(forms, signed_sum_compose, table, "last_number", min_share=0.75)[0].abstained
    assert composed_label([GAP], signed_sum_compose, table, "last_number")[0].abstained  # nothing composes


def test_the_tasks_checker_judging_with_step_votes_teaches_the_exact_worked_answers():
    """Step votes' oracle (bench/ladder_vs_oracle.py): with the task's own checker as the judge (`kind: task`) the
    table is the task's exact arithmetic, so distillation trains on each prompt's exact worked answer; a verifier
    function (the demo's rung 1) or a judge without step votes keeps training on its rewards alone."""
    from ladder.progress import TASK_CHECKER, ResolvedJudge
    from ladder.rung.roles import exact_steps
    from ladder.spec import parse_spec
    from ladder.tasks import build_task
    from stages.judge import JudgeConfig, JudgePool

    def spec(initial, **judge):
        return parse_spec({"name": "oracle", "rungs": 1, "student": {"base": "m"},
                           "judge": {"initial": initial, "mode": "solve", "solve_distill": True, **judge},
                           "task": {"source": {"kind": "builtin", "name": "arithmetic"}, "eval_size": 8},
                           "train": {"advantage": "filter"}})

    task = build_task(spec({"kind": "task"}).task, 0)
    checker = ResolvedJudge("verifier", TASK_CHECKER, "task")
    steps = exact_steps(spec({"kind": "task"}, solve_steps=64), checker, task)
    assert steps is SIGNED_SUM_STEPS
    function = ResolvedJudge("verifier", "ladder.tasks.arithmetic:exact", "verifier:ladder.tasks.arithmetic:exact")
    assert exact_steps(spec({"kind": "verifier", "function": "ladder.tasks.arithmetic:exact"}, solve_steps=64),
                       function, task) is None
    assert exact_steps(spec({"kind": "task"}), checker, task) is None  # no step votes asked
    cfg = JudgeConfig(SolveMode(solve_steps=64, solve_distill=True))
    oracle = JudgePool([], 4, verifier=lambda p, r, ref: float(r.endswith("#3")), cfg=cfg, steps=steps)
    judged = oracle.score(rollout([(HARD, ["#4", "#3"]), (GAP, ["#18", "#17"])]), guide=True)
    assert judged.trainable == (False, True, False, True) and judged.guided == 2
    assert [judged.rollout.samples[i].completion_text for i in (1, 3)] == ["4+1=5,5-5=0,0+3=3#3",
                                                                           "9+9=18,18-1=17,17+2=19#19"]
    rewards_only = JudgePool([], 4, verifier=lambda p, r, ref: float(r.endswith("#3")), cfg=cfg)
    assert rewards_only.score(rollout([(HARD, ["#4", "#3"])]), guide=True).guided == 0


def test_a_step_too_few_agreeing_answers_wrote_is_left_out_of_the_table():
    """`solve_step_votes`: a step enters the table only where that many answers agreeing with their prompt's
    majority wrote it; the other answers' votes no longer fill in. HARD's first step, 4+1, is written by the four
    answers of one training prompt: at 4 HARD composes as before, at 5 it composes nothing and is abstained on."""
    from stages.steps import voted_table

    answers = [([((2, "+", 2), "4")], True)] * 3 + [([((2, "+", 2), "5")], False)] * 5 + \
              [([((3, "+", 3), "7")], False)] * 2
    assert voted_table(answers) == {(2, "+", 2): "4", (3, "+", 3): "7"}  # agreeing votes first, the others fill in
    assert voted_table(answers, min_votes=3) == {(2, "+", 2): "4"}
    assert voted_table(answers, min_votes=4) == {}
    assert pool(solve_step_votes=4).score(rollout([(HARD, ["#3", "#4"])])).scores == (1.0, 0.0)
    judged = pool(solve_step_votes=5).score(rollout([(HARD, ["#3", "#4"])]))
    assert judged.trainable == (False, False)
