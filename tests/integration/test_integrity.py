"""Ladder integrity on real engines: a rung whose judge is made wrong on purpose collapses, and the collapse guard
stops it with its best weights put back (the trainer's and the rollout workers')."""
import sys

import pytest
from ray import cloudpickle

pytestmark = pytest.mark.integration
# the verifier below runs on the rung's verifier worker, which cannot import this test module: sent by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def wrong_on_purpose(prompt, response, reference):
    """A judge that rewards wrong final answers: what a self-judged rung drifting into consistent errors does."""
    from ladder.tasks.arithmetic import exact

    return 1.0 - exact(prompt, response, reference)


def test_the_collapse_guard_stops_a_rung_taught_wrong_answers_and_keeps_its_best(ray_local, tiny_model):
    """Measured on the demo's base model (greedy held-out accuracy ~0.34, 128 prompts): rewarded for wrong answers
    at lr 5e-4, its held-out accuracy fell from 0.336 to 0.008 by the first evaluation (step 4), far past the 0.1
    tolerance (the start is the best); without the guard the rung would run its 24 steps. A build of the same
    recipe starting at 0.19 (another float trajectory) passes too. Broken on purpose (no
    restore), the final accuracy stays at the collapsed level and the test fails."""
    from ladder.progress import ResolvedJudge
    from ladder.rung.driver import Rung, train_steps
    from ladder.spec import parse_spec
    from ladder.tasks import build_task

    spec = parse_spec({
        "name": "guard", "seed": 0, "rungs": 1, "student": {"base": tiny_model},
        "judge": {"initial": {"kind": "verifier", "function": "test_integrity:wrong_on_purpose"}},
        "task": {"source": {"kind": "builtin", "name": "arithmetic", "terms": 4, "max_operand": 5, "train_size": 2000},
                 "eval_size": 128},
        "rollout": {"workers": 1, "group_size": 8, "max_tokens": 40, "kv_cache_gib": 0.25},
        "train": {"lr": 5e-4, "kl_coef": 0.0, "steps": 24, "prompts_per_step": 16},
        "eval": {"every": 4}, "guard": {"enabled": True, "tolerance": 0.1, "window": 4},
    })
    rung = Rung(spec, build_task(spec.task, spec.seed), tiny_model,
                ResolvedJudge("verifier", "test_integrity:wrong_on_purpose", "verifier:wrong"), spec.seed)
    seen = []
    try:
        rung.ready()
        start = rung.evaluate()["eval/accuracy"]
        best_checksum = ray_local.get(rung.trainer.parameter_checksum.remote())
        ended = train_steps(rung, 1, spec.train.steps, lambda: False, lambda s, m: seen.append((s, m)))
        after = rung.evaluate()["eval/accuracy"]
        restored = ray_local.get(rung.trainer.parameter_checksum.remote())
    finally:
        rung.shutdown()
    evals = [(s, m["eval/accuracy"]) for s, m in seen if "eval/accuracy" in m]
    summary = f"start {start:.3f}, evaluations {evals}, after the guard {after:.3f}"
    assert ended == "collapse" and seen[-1][0] < spec.train.steps, summary
    assert evals[-1][1] < start - spec.guard.tolerance, summary  # it fell past the tolerance from its best
    assert rung.ended_why.startswith("collapse guard: held-out accuracy"), rung.ended_why
    # the best weights are back: the rollout workers serve them (greedy held-out accuracy equal to the best's), and
    # where the start was the best, the trainer holds exactly the start's weights
    kept = [start] + [a for _, a in evals[:-1]]
    assert after == max(kept), summary
    if all(a < start for a in kept[1:]):
        assert restored == best_checksum, summary
    # reward accuracy: the judge's rewards never agreed with the truth (1 - exact is wrong on every sample)
    assert all(m["judge/reward_accuracy"] == 0.0 for _, m in seen), summary
