"""The life of a detached controller actor: whether Ray restarted it after its process died, and its own end
once its ladder is over (nothing else would end a detached actor)."""
from __future__ import annotations

import threading


def restarted_by_ray() -> bool:
    """Whether this controller actor is a restart of one whose process died."""
    import ray

    if not ray.is_initialized():  # built in-process, outside Ray (get_runtime_context would start a Ray)
        return False
    try:
        return ray.get_runtime_context().was_current_actor_reconstructed
    except Exception:  # a driver, not an actor
        return False


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
