"""Bounded waits in the step path (`resources.step_timeout_s`): a rollout worker that stops answering mid-step is
treated as a dead one (killed, replaced, its part redone) within `worker_replacements`. (Past them the rung fails in
one line naming the role and the timeout: the message is the dead-worker path's, `test_rung.py`; a second wait
here to show it again was left out of `make test`'s time.)"""
import os
import signal
import time

import pytest
from service import wait_until_stopped  # tests/integration/service.py
from test_rung import spec_dict

pytestmark = pytest.mark.integration
TIMEOUT_S = 60.0  # above a step's generate and a replacement engine's load (~25 s alone) beside the other tests


def sigstop(ray, actor) -> float:
    """SIGSTOP the actor's process (its pid asked of it while idle); returns when every thread is stopped."""
    pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))
    os.kill(pid, signal.SIGSTOP)
    wait_until_stopped(pid)
    return time.monotonic()


def test_a_hung_rollout_worker_is_replaced_then_the_rung_fails_in_one_line(ray_local, tiny_model, fault_figures):
    from ladder.rung.driver import ResolvedJudge, Rung
    from ladder.spec import parse_spec
    from ladder.tasks import build_task

    spec = parse_spec(spec_dict(tiny_model, {"kind": "verifier", "function": "ladder.tasks.arithmetic:exact"},
                                worker_replacements=1, resources={"step_timeout_s": TIMEOUT_S},
                                train={"lr": 1e-3, "kl_coef": 0.0, "steps": 3, "prompts_per_step": 4}))
    rung = Rung(spec, build_task(spec.task, spec.seed), tiny_model,
                ResolvedJudge("verifier", "ladder.tasks.arithmetic:exact", "verifier"), spec.seed)
    try:
        rung.ready()
        rung.step()
        hung = rung.rollout[0]
        stopped = sigstop(ray_local, hung)
        metrics = rung.step()  # waits TIMEOUT_S on the stopped worker, then a replacement redoes its part
        recovery = time.monotonic() - stopped
        assert rung.rollout[0] is not hung and rung.step_no == 2
        assert metrics["faults/rollout_replaced"] == 1.0 and metrics["rollout/tokens"] > 0
        assert TIMEOUT_S <= recovery < 3 * TIMEOUT_S
        assert ray_local.get(rung.rollout[0].weights_version.remote()) == rung.weights_version == 2
        fault_figures(f"rollout worker SIGSTOP mid-step (step_timeout_s {TIMEOUT_S:g})",
                      f"killed and replaced {recovery:.1f} s after the stop, its part redone, step counted once")
    finally:
        rung.shutdown()
