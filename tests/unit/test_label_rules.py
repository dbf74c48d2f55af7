"""Solve mode's label rules: abstention (a prompt the judge is unsure of gives no learning signal, counted in the
coverage), views (equivalent forms of a prompt, answered each, the label their majority), and the label itself."""
import re

import pytest

from ladder.tasks.arithmetic import build, exact, solution_steps
from stages.batches import RolloutBatch, Sample
from stages.judge import JudgeConfig, JudgePool
from stages.scoring import Scored, SolveMode, checked, label_of, score_solve
from stages.views import running_totals, signed_sum_views, signed_terms


class ScriptedPool(JudgePool):
    """A judge pool whose judge writes, for each input text, the answers in `script` (cycled to `n`), no engine."""

    def __init__(self, script: dict[str, list[str]], cfg: SolveMode, views=None):
        super().__init__([object()], batch_size=4, cfg=JudgeConfig(cfg), views=views)
        self.script = script
        self.asked: list[str] = []

    def map(self, method, items, n, max_tokens, temperature):
        assert method == "write"
        self.asked += items
        return [[(f"#{self.script[t][i % len(self.script[t])]}", 2) for i in range(n)] for t in items]


def rollout(prompts_and_responses):
    prompts = tuple(p for p, rs in prompts_and_responses for _ in rs)
    responses = [r for _, rs in prompts_and_responses for r in rs]
    group = tuple(g for g, (_, rs) in enumerate(prompts_and_responses) for _ in rs)
    samples = tuple(Sample((1,), (2,), r, ()) for r in responses)
    return RolloutBatch(prompts, (None,) * len(prompts), samples, group)


SURE, UNSURE = "Q:1+2\nA:", "Q:4+1\nA:"
SCRIPT = {SURE: ["3", "3", "3", "4"], UNSURE: ["5", "6", "7", "5"]}  # shares 0.75 and 0.5
BATCH = [(SURE, ["1+2=3#3", "#4"]), (UNSURE, ["#5", "#6"])]


def test_abstention_zeroes_the_whole_groups_advantage_and_is_reported_as_coverage():
    from stages.packing import group_advantages

    pool = ScriptedPool(SCRIPT, SolveMode(solve_samples=4, solve_reward="majority", solve_min_share=0.6))
    judged = pool.score(rollout(BATCH))
    assert judged.coverage == 0.5
    assert judged.trainable == (True, True, False, False)
    adv = group_advantages(judged.scores, judged.rollout.group, judged.trainable).tolist()
    assert adv[0] > 0 > adv[1] and adv[2:] == [0.0, 0.0]
    # the same judge without a threshold labels both prompts, and the unsure one teaches (its majority, 5)
    judged = ScriptedPool(SCRIPT, SolveMode(solve_samples=4, solve_reward="majority")).score(rollout(BATCH))
    assert judged.coverage == 1.0 and judged.trainable == (True,) * 4
    adv = group_advantages(judged.scores, judged.rollout.group, judged.trainable).tolist()
    assert adv[2] > 0 > adv[3]


def test_a_threshold_at_the_share_keeps_the_prompt_and_abstention_outlives_fallback_and_drop():
    pool = ScriptedPool(SCRIPT, SolveMode(solve_samples=4, solve_min_share=0.5))  # 0.5 is not below 0.5
    assert pool.score(rollout(BATCH)).coverage == 1.0
    raw = Scored((1.0, 0.0, 0.5, 0.5), 0, 0, abstained=(False, False, True, True))
    for drop in (False, True):
        _, keep, _ = checked(raw, fallback=0.0, drop=drop)
        assert keep == (True, True, False, False)


def test_label_of_counts_unreadable_answers_against_the_share_and_breaks_ties_by_the_first_written():
    label = label_of(["7", None, "7.0", "8"], min_share=0.6)
    assert label.majority == "7" and label.share == 0.5 and label.abstained  # 2 of 4 written, not 2 of 3 readable
    assert label_of(["8", "7", "7", "8"]).majority == "8"
    nothing = label_of([None, None], min_share=0.9)
    assert nothing.majority is None and not nothing.abstained  # unread, not abstained: fallback/drop decide


ARITHMETIC = re.compile(r"Q:\d+(?:[+-]\d+)+\nA:")


@pytest.mark.parametrize("terms,max_operand", [(3, 9), (4, 7), (4, 9), (6, 5)])
def test_views_are_prompts_of_the_task_with_the_same_true_answer(terms, max_operand):
    """Every view is a prompt the task itself could write (first term positive, no running total below zero), with
    the same signed terms; the task's own checker accepts the view's worked answer against the original reference."""
    rows = build(terms, max_operand, 1, 200, seed=5).eval
    several = 0
    for ex in rows:
        forms = signed_sum_views(ex.prompt, 6)
        assert forms[0] == ex.prompt and len(set(forms)) == len(forms) <= 6
        several += len(forms) > 1
        for form in forms:
            assert ARITHMETIC.fullmatch(form), form
            terms_of = signed_terms(form[2:-3])
            assert sorted(terms_of) == sorted(signed_terms(ex.prompt[2:-3]))
            assert min(running_totals(terms_of)) >= 0
            worked = ",".join(solution_steps(form))
            assert exact(ex.prompt, f"{worked}#{worked.rsplit('=', 1)[1]}", ex.answer) == 1.0
    assert several >= 0.9 * len(rows)


def test_a_leading_subtraction_never_leads_a_view():
    forms = signed_sum_views("Q:5-5+0+3\nA:", 24)
    assert len(forms) > 4
    assert all(re.match(r"Q:\d", f) for f in forms)  # no view starts with a sign
    assert "Q:0+5-5+3\nA:" in forms and "Q:0-5+5+3\nA:" not in forms  # 0-5 would go below zero
    assert signed_sum_views("Q:no sum here\nA:", 4) == ("Q:no sum here\nA:",)


def test_the_label_is_the_majority_over_views():
    """The judge answers the prompt wrong but two reorderings right: with three views the label is right."""
    prompt = "Q:4+1-5+3\nA:"
    forms = signed_sum_views(prompt, 3)
    script = {forms[0]: ["9"], forms[1]: ["3"], forms[2]: ["3"]}
    batch = [(prompt, ["#3", "#9"])]
    alone = ScriptedPool(script, SolveMode(solve_samples=2, solve_reward="majority"), views=signed_sum_views)
    assert alone.score(rollout(batch)).scores == (0.0, 1.0) and alone.asked == [prompt]
    viewed = ScriptedPool(script, SolveMode(solve_samples=2, solve_reward="majority", solve_views=3),
                          views=signed_sum_views)
    scored = score_solve(viewed, viewed.cfg.settings, viewed_pairs(batch), viewed.cfg.answer_pattern)
    assert scored.scores == (1.0, 0.0) and viewed.asked == list(forms)
    assert scored.examples[0]["label"] == "3" and scored.examples[0]["label_share"] == round(4 / 6, 3)


def viewed_pairs(batch):
    from stages.scoring import Pairs

    r = rollout(batch)
    return Pairs(r.prompts, tuple(r.responses), r.group)


def test_views_without_a_task_that_gives_them_are_refused_by_name():
    pool = ScriptedPool({SURE: ["3"]}, SolveMode(solve_views=4))
    with pytest.raises(ValueError, match="solve_views"):
        pool.score(rollout([(SURE, ["#3"])]))
