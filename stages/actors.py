"""Turning stage classes into Ray actors: resources, the engine environment, restarts."""
from __future__ import annotations

import os

from stages.engine import ENGINE_ENV


def spawn(cls, *args, num_cpus: float = 1, name: str | None = None, namespace: str | None = None,
          max_restarts: int = 0, max_concurrency: int = 1, **kwargs):
    """Start `cls(*args, **kwargs)` as a Ray actor whose process has the engine environment."""
    import ray

    env = {**ENGINE_ENV, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    env.setdefault("OMP_NUM_THREADS", os.environ.get("LADDER_THREADS", str(os.cpu_count() or 1)))
    options = dict(num_cpus=num_cpus, runtime_env={"env_vars": env}, max_restarts=max_restarts,
                   max_concurrency=max_concurrency)
    if name:
        options.update(name=name, namespace=namespace, lifetime="detached", get_if_exists=False)
    return ray.remote(cls).options(**options).remote(*args, **kwargs)


def kill_all(handles) -> None:
    import ray

    for h in handles:
        try:
            ray.kill(h)
        except Exception:  # already dead
            pass
