"""Gate rules (chance, collapse, behind the judge, student accuracy), reasoning-judge arithmetic, schedule."""
import pytest

from ladder.judging.gate import JudgeQuality, decide_gate, quality
from ladder.rung.metrics import pearson
from ladder.spec import PromotionSpec, SpecError, parse_spec
from stages.scoring import agreement, extract, pair_win

GOOD = JudgeQuality(accuracy=0.85, auc=0.9, identical_share=0.1)
PROMO = PromotionSpec(tolerance=0.05, min_auc=0.6, collapse_share=0.9)


def test_gate_rejects_a_judge_at_chance_with_its_numbers():
    chance = quality([0.5 + 0.01 * (i % 3) for i in range(40)], [i % 2 == 0 for i in range(40)])
    g = decide_gate(chance, GOOD, PROMO, current_is_verifier=False)
    assert not g.passed and g.rule == "chance"
    assert f"AUC {chance.auc:.3f} < min_auc 0.6" in g.reason


def test_gate_rejects_a_collapsed_judge():
    collapsed = quality([1.0] * 20, [i % 2 == 0 for i in range(20)])
    assert collapsed.identical_share == 1.0
    g = decide_gate(collapsed, GOOD, PROMO, current_is_verifier=False)
    assert not g.passed and g.rule == "collapse" and "100%" in g.reason


def test_gate_rejects_a_student_that_lost_accuracy():
    g = decide_gate(GOOD, GOOD, PROMO, False, student_accuracy=0.60, baseline_accuracy=0.70)
    assert not g.passed and g.rule == "student_accuracy"
    assert "0.600 < 0.700 - tolerance 0.05" in g.reason
    assert decide_gate(GOOD, GOOD, PROMO, False, student_accuracy=0.67, baseline_accuracy=0.70).passed


def test_gate_rejects_a_judge_behind_the_current_model_judge_but_not_behind_a_verifier():
    weaker = JudgeQuality(0.7, 0.75, 0.1)
    exact = JudgeQuality(1.0, 1.0, 0.5)
    assert decide_gate(weaker, GOOD, PROMO, False).rule == "behind_judge"
    passed = decide_gate(weaker, exact, PROMO, current_is_verifier=True)
    assert passed.passed and "verifier" in passed.reason


def test_quality_measures_separation():
    q = quality([0.9, 0.1, 0.8, 0.3], [True, False, True, False])
    assert q.auc == 1.0 and q.accuracy == 1.0


def test_solve_agreement_share_and_majority():
    judge = ["5", "5", "7", "5"]
    assert agreement("5", judge, "share") == 0.75
    assert agreement("7", judge, "share") == 0.25
    assert agreement("5", judge, "majority") == 1.0 and agreement("7", judge, "majority") == 0.0
    assert agreement(None, judge, "share") == 0.0
    assert extract(r"#(-?\d+)", "3+4=7,7-2=5#5") == "5" and extract(r"#(-?\d+)", "7-2=5") is None


def test_pairwise_win_is_mirrored_when_the_order_is_swapped():
    for p_ab, p_ba in [(0.9, 0.2), (0.6, 0.6), (0.0, 1.0), (0.37, 0.81)]:
        assert pair_win(p_ab, p_ba) + pair_win(p_ba, p_ab) == pytest.approx(1.0)
    assert pair_win(0.6, 0.6) == 0.5  # pure position bias cancels


def test_pearson_flags_length_hacking():
    assert pearson([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [0.5, 0.5, 0.5]) == 0.0


def _spec(**extra):
    base = {"name": "s", "rungs": 3, "student": {"base": "m"},
            "judge": {"initial": {"kind": "verifier", "function": "a:b"}}, "task": {"source": {"kind": "builtin"}}}
    return parse_spec({**base, **extra})


def test_schedule_changes_task_and_judge_mode_from_its_rung_on():
    spec = _spec(schedule=[{"rung": 2, "task": {"kind": "builtin", "terms": 4}, "judge_mode": "solve"}])
    assert spec.for_rung(1).task.source.terms == 3 and spec.for_rung(1).judge.mode == "verdict"
    assert spec.for_rung(2).task.source.terms == 4 and spec.for_rung(3).judge.mode == "solve"
    assert spec.for_rung(3).task_label() == "arithmetic terms=4 max_operand=9"


def test_schedule_errors_name_the_problem():
    with pytest.raises(SpecError, match="beyond rungs=3"):
        _spec(schedule=[{"rung": 5, "judge_mode": "solve"}])
    with pytest.raises(SpecError, match="increasing, distinct"):
        _spec(schedule=[{"rung": 2, "judge_mode": "solve"}, {"rung": 2, "judge_mode": "verdict"}])
    with pytest.raises(SpecError, match="judge_mode"):
        _spec(schedule=[{"rung": 2, "judge_mode": "vibes"}])
    with pytest.raises(SpecError, match=r"schedule \(rung 2\): train: lr"):
        _spec(schedule=[{"rung": 2, "train": {"lr": -1}}])
    with pytest.raises(SpecError, match="lrr"):
        _spec(schedule=[{"rung": 2, "train": {"lrr": 0.1}}])


def test_schedule_changes_trainer_fields_and_keeps_the_rest():
    spec = _spec(train={"lr": 2e-4, "steps": 30}, schedule=[{"rung": 2, "train": {"kl_coef": 0.05}}])
    assert spec.for_rung(1).train.kl_coef == 0.02
    assert spec.for_rung(3).train.kl_coef == 0.05 and spec.for_rung(3).train.lr == 2e-4


def test_the_live_status_counts_the_steps_of_the_rung_it_is_in():
    from ladder.control.controller import LadderController
    from ladder.progress import Phase

    ctl = LadderController(_spec(train={"steps": 30}, schedule=[{"rung": 2, "train": {"steps": 5}}]), job="job")
    assert ctl.status()["steps_per_rung"] == 30  # not started yet: rung 1's
    ctl.progress = ctl.progress.to(rung=2, phase=Phase.TRAIN, step=3)
    assert ctl.status()["steps_per_rung"] == 5 and ctl.status()["step"] == 3


def test_bad_scores_get_the_fallback_or_are_dropped_and_are_counted():
    import math

    from stages.scoring import Scored, checked

    raw = Scored((0.7, math.nan, 2.0, -0.5, 0.3), parse_failures=1, judge_tokens=5,
                 unread=(False, False, False, False, True))
    fixed, keep, invalid = checked(raw, fallback=0.0, drop=False)
    assert fixed.scores == (0.7, 0.0, 0.0, 0.0, 0.3) and keep == (True,) * 5
    assert invalid == 3 and fixed.parse_failures == 4
    fixed, keep, invalid = checked(raw, fallback=0.0, drop=True)
    assert keep == (True, False, False, False, False) and invalid == 3


def test_a_verifier_returning_nonsense_is_checked_like_a_judge():
    from stages.batches import RolloutBatch, Sample
    from stages.judge import JudgeConfig, JudgePool
    from stages.scoring import VerdictMode

    answers = iter([1.0, float("nan"), "not a number", 1.5])
    drop = JudgeConfig(VerdictMode(unreadable="drop"))
    pool = JudgePool([], 8, verifier=lambda p, r, ref: next(answers), cfg=drop)
    samples = tuple(Sample((1,), (2,), "x", ()) for _ in range(4))
    judged = pool.score(RolloutBatch(("p",) * 4, (None,) * 4, samples, (0, 0, 0, 0)))
    assert judged.scores == (1.0, 0.0, 0.0, 0.0)
    assert judged.trainable == (True, False, False, False) and judged.invalid_scores == 3


def test_majority_accuracy_counts_by_hand():
    """The judge's majority answer per prompt (same numbers count as one, unreadable answers ignored) against
    the reference: prompt 1 right (7 twice, 8 once), prompt 2 wrong (a tie goes to the first written, 3), prompt 3
    right ('1,000' = '1000.0'), prompt 4 nothing readable: 2 of 4."""
    from ladder.judging.skill import majority_accuracy

    answers = [["7", "8", "7.0"], ["3", "4"], ["1,000", "1000.0", "5"], [None, None]]
    assert majority_accuracy(answers, ["7", "4", "1000", "2"]) == 0.5
    assert majority_accuracy([], []) == 0.0
