"""A local Ray for a unit test module that needs one (in a full run, the integration tier's session Ray: one Ray
per process). The module's actor classes travel by value, so no worker needs to import it."""
import sys


def module_ray(module_name: str):
    """Generator body of a module-scoped `ray_local` fixture."""
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[module_name])
    if ray.is_initialized():
        yield ray
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}})
    yield ray
    ray.shutdown()


def dead(ray, actor) -> bool:
    """Whether Ray reports `actor` dead (a call to it fails with RayActorError); a live one answers within 30 s."""
    try:
        ray.get(actor.__ray_ready__.remote(), timeout=30)
    except ray.exceptions.RayActorError:
        return True
    return False
