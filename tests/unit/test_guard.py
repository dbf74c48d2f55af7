"""Ladder integrity without engines: reward accuracy against a hand count, flip rates between evaluations, and
the collapse guard's verdicts in the step loop (a stand-in rung records which weights it keeps and restores)."""
import pytest

from ladder.rung.guard import CollapseGuard
from ladder.rung.driver import train_steps
from ladder.rung.metrics import answer_consistency, flips, reward_truth
from ladder.spec import parse_spec
from ladder.tasks.base import Example, Task
from stages.batches import JudgedBatch, RolloutBatch, Sample


def _batch(prompts, references, responses, scores):
    samples = tuple(Sample((1,), (2,), r, (0.0,)) for r in responses)
    rollout = RolloutBatch(tuple(prompts), tuple(references), samples, tuple(range(len(prompts))))
    return rollout, JudgedBatch(rollout, tuple(scores))


def test_reward_accuracy_equals_a_hand_count():
    task = Task("t", (Example("a", "3"), Example("b", "1,000")), (), None, None, "last_number")
    rollout, judged = _batch(
        ["a", "a", "b", "b", "a", "b"], ["3", "3", "1,000", "1,000", "3", "1,000"],
        ["so 3", "it is 4", "1000", "999", "3.0", "no idea"],
        [0.9, 0.8, 0.2, 0.1, 0.51, 0.5])
    # right: T F T F T F; judge says right (> 0.5): T T F F T F -> agree: T F F T T T = 4 of 6
    out = reward_truth(task, rollout, judged)
    assert out["judge/reward_accuracy"] == pytest.approx(4 / 6)
    assert out["rollout/accuracy"] == pytest.approx(3 / 6)
    # answers per prompt: a: 3, 4, 3.0 -> 2 of 3 agree; b: 1000, 999, none -> 1 of 3
    assert out["rollout/answer_consistency"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert reward_truth(Task("t", (Example("a"),), (), None, None), rollout, judged) == {}  # no answers, no truth


def test_answer_consistency_is_the_mean_share_of_the_most_common_answer():
    task = Task("t", (), (), None, None, "last_number")
    assert answer_consistency(task, ["p"] * 4, ["7", "7", "7", "7"]) == 1.0
    assert answer_consistency(task, ["p", "p", "q", "q"], ["1", "2", "x", "y"]) == pytest.approx(0.25)  # .5 and 0
    assert answer_consistency(task, [], []) == 0.0


def test_flip_rates_count_prompts_evaluated_both_times():
    assert flips({}, {"a": True}) == {}
    out = flips({"a": True, "b": True, "c": False, "d": False}, {"a": False, "b": True, "c": True, "d": False,
                                                                "e": True})
    assert out == {"eval/flip_rate": 0.25, "eval/fix_rate": 0.25}


def test_the_guard_keeps_the_best_and_fires_past_the_tolerance():
    guard = CollapseGuard(tolerance=0.1, window=2)
    assert [guard.after_eval(a) for a in (0.5, 0.6, 0.55, 0.49)] == ["best", "best", "", "collapse"]
    assert "held-out accuracy 0.490 fell below its best 0.600" in guard.reason
    guard = CollapseGuard(tolerance=0.1, window=2)
    fired = [guard.after_step({"judge/reward_accuracy": x}) for x in (0.9, 0.9, 0.8, 0.7, 0.6)]
    assert fired == [False, False, False, True, True]  # means 0.9, 0.85, 0.75 (< 0.9 - 0.1), ...
    assert guard.after_step({}) is False  # no answers: nothing to watch


def test_the_guard_fires_when_answers_grow_consistent_while_reward_accuracy_drops():
    def run(steps):
        guard = CollapseGuard(tolerance=0.3, window=1, consistency_rise=0.1, consistency_drop=0.05)
        return [guard.after_step({"judge/reward_accuracy": r, "rollout/answer_consistency": c}) for r, c in steps], guard
    # best reward accuracy 0.8 at consistency 0.5; then 0.7 (down 0.1 > 0.05) at consistency 0.7 (up 0.2 > 0.1)
    fired, guard = run([(0.6, 0.4), (0.8, 0.5), (0.78, 0.65), (0.7, 0.7)])
    assert fired == [False, False, False, True]
    assert "answers grew consistent (0.500 -> 0.700" in guard.reason and "from 0.800 to 0.700" in guard.reason
    # the same drop with answers as varied as at the best, or the same rise with reward accuracy holding: no stop
    assert run([(0.8, 0.5), (0.7, 0.52)])[0] == [False, False]
    assert run([(0.8, 0.5), (0.79, 0.9)])[0] == [False, False]


class _Rung:
    """The step loop's view of a rung whose held-out accuracy rises, then falls (self-judged collapse)."""

    def __init__(self, spec, accuracies):
        self.spec, self.accuracies, self.last_skip, self.ended_why = spec, list(accuracies), "", ""
        self.weights = 0          # which step's weights the trainer holds
        self.kept, self.restored = [], None

    def last_accuracy(self):
        return None

    def step(self, prefetch=True):
        self.weights += 1
        return {"judge/approval": 0.5}

    def evaluate(self):
        return {"eval/accuracy": self.accuracies.pop(0)}

    def keep_best(self):
        self.kept.append(self.weights)

    def restore_best(self):
        self.restored = self.kept[-1]
        self.weights = self.restored


def test_the_step_loop_stops_a_collapsing_rung_and_puts_its_best_weights_back():
    spec = parse_spec({"name": "x", "student": {"base": "m"}, "judge": {"initial": {"kind": "model", "path": "m"}},
                       "task": {"source": {"kind": "builtin"}}, "train": {"steps": 20}, "eval": {"every": 2},
                       "guard": {"enabled": True, "tolerance": 0.1}})
    rung = _Rung(spec, [0.4, 0.7, 0.65, 0.5, 0.2, 0.1, 0.1, 0.1, 0.1])
    seen = []
    assert train_steps(rung, 1, 20, lambda: False, lambda s, m: seen.append(s)) == "collapse"
    assert seen == list(range(1, 9))  # evaluations at 2, 4 (best 0.7), 6 (0.65: within), 8 (0.5: collapse)
    assert rung.kept == [0, 2, 4] and rung.restored == 4 and rung.weights == 4
    assert rung.ended_why.startswith("collapse guard: held-out accuracy 0.500")
    off = parse_spec({**spec.model_dump(mode="json"), "guard": {"enabled": False}})
    rung = _Rung(off, [0.4, 0.7, 0.65, 0.5, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert train_steps(rung, 1, 20, lambda: False, lambda s, m: None) == "steps" and rung.restored is None


class _LearningALabel(_Rung):
    """A rung whose held-out accuracy holds while its reward accuracy falls: the student learning a fixed label
    agrees with the label's errors too."""

    def step(self, prefetch=True):
        self.weights += 1
        return {"judge/approval": 0.5, "judge/reward_accuracy": max(0.9 - 0.05 * self.weights, 0.4)}


def test_a_fixed_label_is_guarded_by_held_out_accuracy_alone():
    base = {"name": "x", "student": {"base": "m"}, "task": {"source": {"kind": "builtin"}},
            "train": {"steps": 12}, "eval": {"every": 4}, "guard": {"enabled": True, "tolerance": 0.1, "window": 2}}
    steps = parse_spec({**base, "judge": {"initial": {"kind": "model", "path": "m"}, "mode": "solve",
                                          "solve_steps": 64}})
    rung = _LearningALabel(steps, [0.5, 0.52, 0.55])
    assert train_steps(rung, 1, 12, lambda: False, lambda s, m: None) == "steps" and rung.restored is None
    # the same rewards from a judge that labels as it goes (its majority of each prompt's samples): a collapse
    majority = parse_spec({**base, "judge": {"initial": {"kind": "model", "path": "m"}, "mode": "solve"}})
    rung = _LearningALabel(majority, [0.5, 0.52, 0.55])
    assert train_steps(rung, 1, 12, lambda: False, lambda s, m: None) == "collapse"
    assert rung.ended_why.startswith("collapse guard: reward accuracy")
    # a fixed label still stops a rung whose held-out accuracy falls
    rung = _LearningALabel(steps, [0.5, 0.3, 0.3])
    assert train_steps(rung, 1, 12, lambda: False, lambda s, m: None) == "collapse" and rung.restored == 4
