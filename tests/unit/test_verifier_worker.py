"""A verifier judge runs on a worker actor, not in the controller: its scores are the function's; a verifier that
hangs is timed out within `resources.step_timeout_s` and, past `worker_replacements`, fails the rung in one line;
one that raises says its own error; `stop --now` ends a call to one that would run for an hour. A local Ray of
this module's own."""
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from local_ray import module_ray  # tests/unit/local_ray.py

from stages.actors import StopRequested
from stages.judge import JudgeError

PROMPTS, RESPONSES, REFERENCES = [f"Q{i}" for i in range(10)], [f"{i % 3}" for i in range(10)], \
    [f"{i % 2}" for i in range(10)]


def score(pool):
    return pool.score_items(PROMPTS, RESPONSES, references=REFERENCES).scores


def exact(prompt, response, reference):
    return float(response == reference)


def sleeps(prompt, response, reference):
    time.sleep(3600)


def fails(prompt, response, reference):
    raise KeyError("no such answer\nsecond line")


@pytest.fixture(scope="module")
def ray_local():
    yield from module_ray(__name__)


def pool_for(verifier, stages, **spec_fields):
    from ladder.rung.roles import verifier_pool
    from ladder.spec import parse_spec

    spec = parse_spec({"name": "v", "student": {"base": "m"}, "judge": {"initial": {"kind": "task"}},
                       "task": {"source": {"kind": "builtin"}}, "judge_pool": {"batch_size": 4}, **spec_fields})
    return verifier_pool(spec, verifier, None, stages)


def test_the_verifier_runs_on_a_worker_and_scores_as_the_function_does(ray_local):
    from ladder.rung.stageset import StageSet

    stages = StageSet()
    try:
        pool = pool_for(exact, stages)
        assert pool.verifies and stages.actors_by_role["verifier"] == pool.workers
        scores = score(pool)
        assert list(scores) == [exact(*item) for item in zip(PROMPTS, RESPONSES, REFERENCES)] and 0 < sum(scores) < 10
        assert pool_for(fails, stages).workers == pool.workers  # the next rung's verifier, in the same worker
        with pytest.raises(JudgeError) as err:
            score(pool)
        assert str(err.value).startswith("verifier test_verifier_worker:fails raised KeyError: 'no such answer")
        assert "\n" not in str(err.value) and "ray::" not in str(err.value)
    finally:
        stages.release()


def test_a_verifier_that_hangs_fails_the_rung_in_one_line_within_the_step_timeout(ray_local):
    from ladder.rung.stageset import StageSet

    stages = StageSet()
    try:
        pool = pool_for(sleeps, stages, resources={"step_timeout_s": 2}, worker_replacements=1)
        t0 = time.monotonic()
        with pytest.raises(JudgeError, match=r"judge workers died 2 times in this rung \(worker_replacements is 1\)"):
            score(pool)
        assert time.monotonic() - t0 < 60 and pool.replaced == 1  # two timeouts of 2 s, and one replacement
    finally:
        stages.release()


def test_stop_now_ends_a_call_to_a_verifier_that_would_run_for_an_hour(ray_local):
    from ladder.rung.stageset import StageSet

    stages = StageSet()
    pool = pool_for(sleeps, stages)
    ray_local.get(pool.workers[0].__ray_ready__.remote())
    with ThreadPoolExecutor(1) as threads:
        call = threads.submit(score, pool)
        time.sleep(1)
        t0 = time.monotonic()
        stages.guard.kill_started()  # what `stop --now` does to the ladder's stage actors
        with pytest.raises(StopRequested):
            call.result(timeout=60)
    assert time.monotonic() - t0 < 30
