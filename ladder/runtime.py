"""Process-level setup for a ladder job: the Ray connection and quiet logs.

An embedded local Ray is started when no RAY_ADDRESS is set; on a cluster the job attaches to it.
"""
from __future__ import annotations

import os


def actors_needed(spec) -> int:
    judge_workers = 0 if spec.judge.initial.kind == "verifier" and spec.rungs == 1 else spec.judge_pool.workers
    return spec.rollout.workers + judge_workers + 2  # + trainer + controller


def start_ray(spec, verbose: bool = False) -> None:
    """Connect to RAY_ADDRESS, or start a local Ray sized so every stage actor can be placed."""
    import ray

    if ray.is_initialized():
        return
    kwargs = dict(namespace="ladder", log_to_driver=verbose, configure_logging=verbose,
                  logging_level="WARNING")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
    else:
        cpus = max(os.cpu_count() or 1, actors_needed(spec))
        ray.init(num_cpus=cpus, include_dashboard=False, **kwargs)
