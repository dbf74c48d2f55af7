"""How the trainer's weights reach a rung's rollout engines after each step, in place: through the object store
(whole weights, or a LoRA rung's adapter alone), or over a process group (`sync.backend: collective`: the trainer
broadcasts, every engine's workers load; the group forms at the first sync and afresh after a worker is replaced)."""
from __future__ import annotations

import logging
import time

from stages.actors import StepTimeout, get_within, raise_if_start_failed

log = logging.getLogger(__name__)


def load_method(rung) -> str:
    """The rollout worker's method that takes what `store_sync` exports: a LoRA rung's adapter, or whole weights."""
    return "load_adapter" if rung.lora_sync == "adapter" else "load_weights"


def announce(rung) -> None:
    """Say once, in the log, what a LoRA rung's engines receive each step and why."""
    if rung.lora_sync:
        log.info("LoRA rung: the rollout engines receive %s after each step%s", "the adapter alone (the base "
                 "stays loaded)" if rung.lora_sync == "adapter" else "the merged weights",
                 f" ({rung.lora_why})" if rung.lora_why else "")


def store_sync(rung) -> int:
    """The trainer's weights (a LoRA rung with adapter sync: its adapter's files) put in the object store once and
    loaded by every rollout worker in place; a worker that dies meanwhile is replaced and loads them first."""
    import ray

    timeout = rung.spec.resources.step_timeout_s
    export = rung.trainer.export_adapter if rung.lora_sync == "adapter" else rung.trainer.export_weights
    ref = get_within(export.remote(), time.monotonic() + timeout, "trainer", timeout)
    rung.weights_version, rung._weights, rung.sync_bytes = ref.version, ref, ref.n_bytes
    loads = [w.timed.remote(load_method(rung), ref) for w in rung.rollout]
    seconds, deadline = [0.0], time.monotonic() + timeout
    for k, load in enumerate(loads):
        try:
            seconds.append(get_within(load, deadline, "rollout", timeout)[1])
        except (ray.exceptions.RayActorError, StepTimeout) as exc:  # its replacement loads `ref` before it serves
            raise_if_start_failed(exc)
            rung._replace_rollout(k, exc)
    rung.work_s["sync"] = ref.meta.get("seconds", 0.0) + max(seconds)
    return ref.version


def collective_sync(rung) -> int:
    """`rung`'s weights broadcast over a process group of the trainer and every engine worker (formed at the first
    sync, formed afresh after a rollout worker was replaced); a worker that died meanwhile is replaced and the
    broadcast redone."""
    import ray

    from stages.weight_sync import connect, push

    t0, timeout = time.perf_counter(), rung.spec.resources.step_timeout_s
    version = rung.weights_version + 1
    for attempt in range(2):
        try:
            if not rung._sync_group:
                connect(rung.trainer, rung.rollout)  # every wait of it bounded (120 s)
                rung._sync_group = True
            push(rung.trainer, rung.rollout, version, timeout)
            break
        except Exception as exc:  # a worker that died mid-broadcast fails the group's other members too
            if isinstance(exc, ray.exceptions.GetTimeoutError):  # a hung member: the rung restarts
                raise StepTimeout(f"the weight sync did not end within resources.step_timeout_s ({timeout:g} s)") \
                    from None
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
