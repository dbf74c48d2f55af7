"""Solve mode's guidance (`judge.solve_guide`): a group none of whose samples agrees with the judge's label gets
one of the judge's own answers to the prompt that wrote the label, in place of its last sample and scored 1, and
the trainer learns it (its completion is text, tokenized by the student's tokenizer)."""
import pytest
from test_label_rules import SCRIPT, SURE, UNSURE, ScriptedPool, rollout, viewed_pairs  # tests/unit

from stages.scoring import SolveMode, score_solve
from stages.views import signed_sum_views


def test_a_group_that_missed_the_label_gets_the_judges_answer_scored_one():
    batch = [(SURE, ["#4", "#5"]), (UNSURE, ["#5", "#6"])]  # labels 3 (missed by both) and 5 (agreed with)
    plain = ScriptedPool(SCRIPT, SolveMode(solve_samples=4, solve_reward="majority")).score(rollout(batch))
    assert plain.scores == (0.0, 0.0, 1.0, 0.0) and plain.guided == 0
    pool = ScriptedPool(SCRIPT, SolveMode(solve_samples=4, solve_reward="majority", solve_guide=True))
    assert pool.score(rollout(batch)) == plain  # an evaluation's batch: never guided
    judged = pool.score(rollout(batch), guide=True)
    assert judged.scores == (0.0, 1.0, 1.0, 0.0) and judged.guided == 1
    guide = judged.rollout.samples[1]
    assert guide.completion_text == "#3" and guide.completion_ids == () and guide.prompt_ids == (1,)
    assert judged.rollout.samples[0] == plain.rollout.samples[0] and judged.rollout.samples[2:] == \
        plain.rollout.samples[2:]


def test_distillation_trains_every_labelled_group_on_the_judges_answer_and_none_of_the_students_own():
    """`solve_distill`: both groups get the judge's answer (the second too, whose samples agreed with the label),
    and only those train; the students' own samples keep their scores, as measurements."""
    batch = [(SURE, ["#4", "#5"]), (UNSURE, ["#5", "#6"])]  # labels 3 and 5
    cfg = SolveMode(solve_samples=4, solve_reward="majority", solve_distill=True)
    judged = ScriptedPool(SCRIPT, cfg).score(rollout(batch), guide=True)
    assert judged.guided == 2 and judged.trainable == (False, True, False, True)
    assert judged.scores == (0.0, 1.0, 1.0, 1.0)
    assert [s.completion_text for s in judged.rollout.samples] == ["#4", "#3", "#5", "#5"]
    unsure = SolveMode(solve_samples=4, solve_reward="majority", solve_min_share=0.6, solve_distill=True)
    abstained = ScriptedPool(SCRIPT, unsure).score(rollout(batch), guide=True)
    assert abstained.guided == 1 and abstained.trainable == (False, True, False, False)


def test_no_guide_where_the_judge_abstains_or_only_another_view_wrote_the_label():
    unsure = [(UNSURE, ["#8", "#9"])]  # share 0.5 < 0.6: abstained
    cfg = SolveMode(solve_samples=4, solve_reward="majority", solve_min_share=0.6, solve_guide=True)
    judged = ScriptedPool(SCRIPT, cfg).score(rollout(unsure), guide=True)
    assert judged.guided == 0 and judged.trainable == (False, False)
    prompt = "Q:4+1-5+3\nA:"
    forms = signed_sum_views(prompt, 3)  # the prompt itself answered 9 (wrong), its two reorderings 3 (the label)
    pool = ScriptedPool({forms[0]: ["9"], forms[1]: ["3"], forms[2]: ["3"]},
                        SolveMode(solve_samples=2, solve_reward="majority", solve_views=3, solve_guide=True),
                        views=signed_sum_views)
    scored = score_solve(pool, pool.cfg.settings, viewed_pairs([(prompt, ["#9", "#9"])]), pool.cfg.answer_pattern)
    assert scored.examples[0]["label"] == "3" and scored.guides == (None, None)  # a reordering's steps would not fit


@pytest.fixture(scope="module")
def nano(tmp_path_factory):
    from ladder.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("m") / "nano", "nano", seed=0))


def test_the_trainer_learns_a_guide_it_never_sampled(nano):
    """A guided group ([the judge's answer: 1, the student's own: 0, 0, 0]): the guide is tokenized by the student's
    tokenizer, ended by its end-of-sequence token, and its log-probability rises by far more than the noise of a
    few steps (measured: about +9 nats in 4 steps at lr 3e-3 on 8 tokens; the bar is +2)."""
    import torch

    from stages.batches import JudgedBatch, RolloutBatch, Sample
    from stages.packing import completion_logprobs, pack, tokenized
    from stages.train import TrainConfig, Trainer

    trainer = Trainer(nano, TrainConfig(lr=3e-3, kl_coef=0.0), seed=0)
    tok = trainer.tokenizer
    prompt, guide = tuple(tok.encode("Q:12+30\nA:", add_special_tokens=False)), "12+30=42#42"
    own = [Sample(prompt, tuple(tok.encode(t, add_special_tokens=False)), t, ()) for t in ("#7", "#1", "#99")]
    batch = RolloutBatch(("p",) * 4, (None,) * 4, (*own, Sample(prompt, (), guide, ())), (0, 0, 0, 0))
    (made,) = tokenized(batch.samples[3:], tok)
    assert made.completion_ids[-1] == tok.eos_token_id and tok.decode(made.completion_ids[:-1]) == guide
    assert len(made.logprobs) == len(made.completion_ids) and all(x != x for x in made.logprobs)  # NaN: unknown

    def guide_logprob() -> float:
        with torch.no_grad():
            return float(completion_logprobs(trainer.model, pack([made], trainer.pad_id)).sum())

    before = guide_logprob()
    for _ in range(4):
        stats = trainer.step(JudgedBatch(batch, (0.0, 0.0, 0.0, 1.0)))
        assert not stats.skipped and stats.logprob_mismatch == stats.logprob_mismatch  # the guide's unknowns left out
    assert guide_logprob() > before + 2.0, (before, guide_logprob())
