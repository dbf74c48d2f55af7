"""Where each role's actors run: Ray options from `spec.resources`, and a check that the cluster can host them.

A spec that asks for resources no live node has is refused before anything starts, in one line.
"""
from __future__ import annotations

from typing import Optional


class PlacementError(ValueError):
    """The cluster has no node that can host a role as the spec asks; one line."""


ROLES = ("rollout", "judge", "trainer", "controller")


def actor_options(res) -> dict:
    """Ray actor options for one `RoleResources` (None: one CPU, anywhere)."""
    if res is None:
        return {"num_cpus": 1}
    opts: dict = {"num_cpus": res.cpus, "num_gpus": res.gpus}
    if res.custom:
        opts["resources"] = dict(res.custom)
    if res.node_labels:
        opts["label_selector"] = dict(res.node_labels)
    return opts


ENGINE_SECTIONS = {"rollout": "rollout", "judge": "judge_pool"}  # the spec section of an engine role's TP size


def role_resources(spec, role: str):
    """What one actor of `role` asks for: `resources.<role>`, and for an engine of several tensor-parallel workers
    (`<section>.tensor_parallel_size`: worker processes of the actor, on its node) its CPUs and GPUs that many
    times over; custom resources and node labels say where, not how much, and are kept as they are."""
    res = getattr(spec.resources, role)
    section = getattr(spec, ENGINE_SECTIONS.get(role, ""), None)
    tp = getattr(section, "tensor_parallel_size", 1)
    return res if tp == 1 else res.model_copy(update={"cpus": res.cpus * tp, "gpus": res.gpus * tp})


def fits(res, node: dict) -> bool:
    """Whether one actor of the role fits on an empty `node` (an entry of `ray.nodes()`)."""
    total = node.get("Resources", {})
    need = {"CPU": res.cpus, "GPU": res.gpus, **res.custom}
    if any(amount > 0 and total.get(key, 0) < amount for key, amount in need.items()):
        return False
    labels = node.get("Labels", {}) or {}
    return all(labels.get(k) == v for k, v in res.node_labels.items())


def unplaceable(spec, nodes: list[dict]) -> Optional[str]:
    """The first role that no live node can host, described in one line; None when every role fits."""
    alive = [n for n in nodes if n.get("Alive", n.get("alive"))]
    for role in ROLES:
        res = role_resources(spec, role)
        if not any(fits(res, n) for n in alive):
            want = ", ".join([f"{res.cpus:g} CPU", f"{res.gpus:g} GPU"] + [f"{v:g} {k}" for k, v in res.custom.items()]
                             + [f"label {k}={v}" for k, v in res.node_labels.items()])
            return (f"resources.{role}: no node of the cluster has {want} "
                    f"({len(alive)} live node{'s' if len(alive) != 1 else ''})")
    return group_unplaceable(spec, alive)


def group_unplaceable(spec, alive: list[dict]) -> Optional[str]:
    """A trainer group whose placement strategy the live nodes cannot meet (STRICT_PACK: all ranks on one node;
    STRICT_SPREAD: each rank on a node of its own), in one line; None when it can be placed."""
    n, strategy, res = spec.train.workers, spec.train.placement_strategy, spec.resources.trainer
    if n == 1 or strategy not in ("STRICT_PACK", "STRICT_SPREAD"):
        return None
    scaled = res.model_copy(update={"cpus": res.cpus * n, "gpus": res.gpus * n,
                                    "custom": {k: v * n for k, v in res.custom.items()}})
    if strategy == "STRICT_PACK" and not any(fits(scaled, node) for node in alive):
        return (f"train.workers: {n} ranks with STRICT_PACK need one node with {scaled.cpus:g} CPU and "
                f"{scaled.gpus:g} GPU (resources.trainer per rank); no live node has it")
    hosts = sum(fits(res, node) for node in alive)
    if strategy == "STRICT_SPREAD" and hosts < n:
        return (f"train.workers: {n} ranks with STRICT_SPREAD need {n} nodes that each fit resources.trainer; "
                f"{hosts} of the {len(alive)} live nodes do")
    return None


def role_counts(spec) -> dict[str, int]:
    """How many actors of each role the ladder holds at once (rollout, trainer and judge workers stay up from
    rung to rung, and the gate measures a candidate on judge workers while they do)."""
    return {"rollout": spec.rollout.workers, "judge": spec.judge_pool.workers, "trainer": spec.train.workers,
            "controller": 1}


def asks(spec, role: str) -> dict[str, float]:
    """What one actor of `role` asks for, per resource (CPU, GPU, custom)."""
    res = role_resources(spec, role)
    return {"CPU": res.cpus, "GPU": res.gpus, **res.custom}


def asked_in_total(spec) -> dict[str, float]:
    """What the ladder's actors ask for together, per resource (CPU, GPU, custom)."""
    total: dict[str, float] = {}
    for role, count in role_counts(spec).items():
        for key, amount in asks(spec, role).items():
            total[key] = total.get(key, 0.0) + count * amount
    return total


def over_capacity(spec, nodes: list[dict]) -> Optional[str]:
    """The first resource the ladder asks for more of in total than the live nodes have together, in one line."""
    alive = [n for n in nodes if n.get("Alive", n.get("alive"))]
    have: dict[str, float] = {}
    for n in alive:
        for key, amount in (n.get("Resources") or {}).items():
            have[key] = have.get(key, 0.0) + amount
    for key, amount in asked_in_total(spec).items():
        if amount > 0 and have.get(key, 0.0) + 1e-9 < amount:
            parts = []
            for role, count in role_counts(spec).items():
                each = asks(spec, role).get(key, 0)
                if each:
                    parts.append(f"{role} {count} x {each:g}")
            return (f"resources: the ladder asks for {amount:g} {key} in total ({', '.join(parts)}); the cluster has "
                    f"{have.get(key, 0.0):g} {key} on {len(alive)} live node{'s' if len(alive) != 1 else ''}")
    return None


def check_placement(spec) -> None:
    """Refuse, before any actor starts, a spec the connected Ray cluster cannot host: a role no node can take,
    or more of a resource in total than the cluster has."""
    import ray

    nodes = ray.nodes()
    problem = unplaceable(spec, nodes) or over_capacity(spec, nodes)
    if problem:
        raise PlacementError(problem)


def placed(handle) -> bool:
    """Whether Ray has put the actor on a node (its process exists), from Ray's actor table (an actor not yet in
    it is not placed); True where the table cannot be read (then no timeout applies)."""
    try:
        from ray._private.state import actors as actor_table

        info = actor_table(actor_id=handle._actor_id.hex())
    except Exception:  # an internal table of Ray's
        return True
    return bool(info) and not (info.get("State") in ("PENDING_CREATION", "DEPENDENCIES_UNREADY")
                               and not info.get("Pid"))


def unplaced_message(role: str, res, waited_s: float) -> str:
    """One line: the role, what one of its actors asks for, and what the cluster has in total and free."""
    import ray

    need = {"CPU": res.cpus, "GPU": res.gpus, **res.custom}
    total, free = ray.cluster_resources(), ray.available_resources()
    show = lambda have: ", ".join(f"{have.get(k, 0):g} {k}" for k in need)  # noqa: E731
    labels = "".join(f", label {k}={v}" for k, v in res.node_labels.items())
    return (f"resources.{role}: a {role} actor found no node within {waited_s:g} s (resources.placement_timeout_s): "
            f"it asks for {', '.join(f'{v:g} {k}' for k, v in need.items())}{labels}; the cluster has "
            f"{show(total)} in total, {show(free)} free")
