"""Controller decisions that need no Ray: saturation, gate arithmetic, judge health, prompt cursor."""
import pytest

from ladder.judging.gate import auc
from ladder.rung.prompt_cursor import PromptCursor
from ladder.rung.driver import split
from ladder.rung.metrics import judge_health, saturated
from ladder.spec import SaturationSpec


def test_saturation_needs_a_full_window_above_threshold():
    sat = SaturationSpec(enabled=True, window=3, threshold=0.9)
    assert not saturated([0.99, 0.99], sat)
    assert saturated([0.2, 0.95, 0.97, 0.99], sat)
    assert not saturated([0.95, 0.97, 0.5], sat)
    assert not saturated([1.0] * 5, SaturationSpec(enabled=False))


def test_auc_orders_correct_above_wrong():
    assert auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert auc([0.5] * 4, [True, False, True, False]) == 0.5


def test_judge_health_reports_collapse_and_parse_failures():
    h = judge_health([0.5, 0.5, 0.5, 0.9], parse_failures=1)
    assert h["judge/identical_share"] == 0.75
    assert h["judge/parse_failure_rate"] == 0.25
    assert abs(h["judge/approval"] - 0.6) < 1e-9


def test_prompt_cursor_is_deterministic_resumable_and_covers_every_prompt():
    a = PromptCursor(10, seed=3)
    first = a.next(7)
    state = a.state()
    rest = a.next(8)
    b = PromptCursor.restore(10, 3, state)
    assert b.next(8) == rest
    assert sorted(first + rest[:3]) == list(range(10))
    assert PromptCursor(10, seed=3).next(7) == first


def test_split_balances_work_over_workers():
    assert [len(p) for p in split(list(range(10)), 3)] == [4, 3, 3]
    assert sum(split(list(range(5)), 2), []) == list(range(5))


def test_parse_score_scales_and_rejects_garbage():
    from stages.scoring import parse_score

    assert parse_score("the answer looks right. 8", r"(-?\d+(?:\.\d+)?)\s*$", 10) == 0.8
    assert parse_score("great! 15", r"(-?\d+(?:\.\d+)?)\s*$", 10) == 1.0
    assert parse_score("no number here", r"(-?\d+(?:\.\d+)?)\s*$", 10) is None


class _Rung:
    """A rung's step loop as `train_steps` sees it: a spec, `step()` and why the last step made no update.
    (A stand-in for the step loop's bookkeeping only; stages are exercised by the integration tests.)"""

    def __init__(self, spec, skips):
        self.spec, self.skips, self.last_skip = spec, list(skips), ""

    def step(self, prefetch=True):
        self.last_skip = self.skips.pop(0)
        return {"judge/approval": 0.5}


def test_steps_in_a_row_without_an_update_fail_the_rung():
    from ladder.rung.driver import RungFailed, train_steps
    from ladder.spec import parse_spec

    spec = parse_spec({"name": "x", "student": {"base": "m"}, "judge": {"initial": {"kind": "model", "path": "m"}},
                       "task": {"source": {"kind": "builtin"}}, "train": {"steps": 10, "max_skipped_steps": 3},
                       "eval": {"every": 100}})
    seen = []
    ok = _Rung(spec, ["", "non-finite loss", "non-finite loss", ""] + [""] * 6)  # two in a row, then healthy
    assert train_steps(ok, 1, 10, lambda: False, lambda s, m: seen.append(s)) == "steps" and seen == list(range(1, 11))
    bad = _Rung(spec, ["", "non-finite loss", "non-finite gradients", "non-finite loss"] + [""] * 6)
    with pytest.raises(RungFailed, match="3 steps in a row without an update .non-finite loss."):
        train_steps(bad, 1, 10, lambda: False, lambda s, m: None)
