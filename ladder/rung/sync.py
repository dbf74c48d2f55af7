"""Weight sync over a process group (`sync.backend: collective`): the trainer broadcasts, every rollout engine's
workers load in place; the group forms at a rung's first sync and afresh after a rollout worker is replaced."""
from __future__ import annotations

import time

from stages.actors import raise_if_start_failed


def collective_sync(rung) -> int:
    """`rung`'s weights broadcast over a process group of the trainer and every engine worker (formed at the first
    sync, formed afresh after a rollout worker was replaced); a worker that died meanwhile is replaced and the
    broadcast redone."""
    import ray

    from stages.weight_sync import connect, push

    t0 = time.perf_counter()
    version = rung.weights_version + 1
    for attempt in range(2):
        try:
            if not rung._sync_group:
                connect(rung.trainer, rung.rollout)
                rung._sync_group = True
            push(rung.trainer, rung.rollout, version)
            break
        except Exception as exc:  # a worker that died mid-broadcast fails the group's other members too
            if isinstance(exc, ray.exceptions.RayActorError):
                raise_if_start_failed(exc)
            rung._sync_group = False
            dead = [k for k, w in enumerate(rung.rollout) if not _alive(w)]
            if attempt or not dead:
                raise
            for k in dead:
                rung._replace_rollout(k)
    rung.weights_version = version
    rung.work_s["sync"] = time.perf_counter() - t0
    return version


def _alive(actor) -> bool:
    import ray

    try:
        ray.get(actor.__ray_ready__.remote(), timeout=30)
        return True
    except Exception:  # noqa: BLE001 - dead, or not answering: replaced
        return False
