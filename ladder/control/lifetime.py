"""The life of a detached controller actor: whether Ray restarted it after its process died (counted, and waited
for with backoff), and its own end once its ladder is over (nothing else would end a detached actor)."""
from __future__ import annotations

import threading
from time import sleep

from ladder.progress import Progress, State

RESTART_WAIT_S, RESTART_WAIT_MAX_S = 5.0, 60.0  # the first restart's wait, doubled at each next, up to the most


def restarted_by_ray() -> bool:
    """Whether this controller actor is a restart of one whose process died."""
    import ray

    if not ray.is_initialized():  # built in-process, outside Ray (get_runtime_context would start a Ray)
        return False
    try:
        return ray.get_runtime_context().was_current_actor_reconstructed
    except Exception:  # a driver, not an actor
        return False


def after_restart(p: Progress, restarted: bool, allowed: int) -> Progress:
    """The progress a controller life goes on from. A start or a resume counts no restart; a restart by Ray
    (`restarted`) is counted in the progress and waited for (5 s, 10 s, ... up to 60 s), so a controller that dies
    as it starts is not restarted in a tight loop; the life after `allowed` restarts (Ray gives one more,
    `start_controller`) only records the ladder failed: nothing else would, and `status` would say running."""
    if not restarted:
        return p.to(restarts=0)
    n = p.restarts + 1
    if n > allowed:
        return p.to(restarts=n, state=State.FAILED, error=f"ControllerDied: the ladder's controller process died {n} "
                                                          f"times (controller_restarts is {allowed}); see its log, "
                                                          f"then `ladder resume {p.ladder}`")
    sleep(min(RESTART_WAIT_MAX_S, RESTART_WAIT_S * 2 ** (n - 1)))
    return p.to(restarts=n)


def end_later(after_s: float = 30.0) -> None:
    """A controller actor ends itself once its ladder is over: a driver that was stopped (`ray job stop`)
    or killed cannot leave it behind. The linger lets a driver still read the result first."""
    import ray

    if not ray.is_initialized():
        return
    try:
        me = ray.get_runtime_context().current_actor
    except Exception:  # run in-process (tests): nothing to end
        return
    timer = threading.Timer(after_s, lambda: ray.kill(me))
    timer.daemon = True
    timer.start()
