"""A trainer group behind one handle: N `TrainerRank` actors in one placement group and one torch.distributed world,
driven in lockstep by a `TrainerGroup` actor that answers the same calls as a `Trainer` actor.

Forming the group (placement, rank 0's address, the world, the sharded model) fails in one line naming the rank
and the cause, within `timeout_s`. A rank that dies later takes the group with it (its handle's calls fail as an
actor's death), so the rung's restart from its last checkpoint runs, as for one trainer.
"""
from __future__ import annotations

import time

from stages.actors import Timed
from stages.train import TrainConfig


class GroupFormError(RuntimeError):
    """A trainer group that could not form; one line naming the rank and the cause."""


def rank_bundle(resources) -> dict:
    """A placement-group bundle for one rank (`RoleResources`; None: one CPU)."""
    if resources is None:
        return {"CPU": 1.0}
    bundle = {"CPU": float(resources.cpus), "GPU": float(resources.gpus), **resources.custom}
    return {k: v for k, v in bundle.items() if v > 0}


def reserve(world: int, resources=None, strategy: str = "PACK"):
    """The placement group of `world` ranks' bundles (asked for, not awaited). Ray keeps a placement group until
    its job ends, whoever made it dies: its maker gives it back (`remove_ranks`, `StartGuard.kill_started`)."""
    from ray.util.placement_group import placement_group

    return placement_group([rank_bundle(resources)] * world, strategy=strategy)


def start_ranks(world: int, resources=None, strategy: str = "PACK", timeout_s: float = 60.0, pg=None):
    """`world` `TrainerRank` actors, one per bundle of a placement group (`pg`, or one reserved here) that must be
    placed within `timeout_s`; (the placement group, the ranks). `remove_ranks` gives it back."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from stages.actors import spawn
    from stages.train_rank import TrainerRank

    bundle = rank_bundle(resources)
    pg = pg if pg is not None else reserve(world, resources, strategy)
    if not pg.wait(timeout_seconds=timeout_s):
        ray.util.remove_placement_group(pg)
        free = {k: v for k, v in ray.available_resources().items() if k in bundle}
        raise GroupFormError(f"trainer group: {world} ranks of {bundle} ({strategy}) not placed within "
                             f"{timeout_s:g}s (the cluster has {free} free)")
    return pg, [spawn(TrainerRank, r, world, options={
        **{"num_cpus": bundle.get("CPU", 0), "num_gpus": bundle.get("GPU", 0)},
        "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=r)})
        for r in range(world)]


def remove_ranks(pg, ranks: list) -> None:
    """Kill the ranks and give their placement group back."""
    import ray

    for r in ranks:
        ray.kill(r)
    ray.util.remove_placement_group(pg)


def stop(group, timeout_s: float = 30.0) -> None:
    """(the group's owner) End a `TrainerGroup`: its ranks and placement group, then the handle's actor. Use it
    in place of `ray.kill`, which would leave the ranks' placement group reserved until the job ends."""
    import ray

    from stages.actors import kill_all

    try:
        ray.get(group.shutdown.remote(), timeout=timeout_s)
    except Exception:  # noqa: BLE001 - already dead or stuck: killed below all the same
        pass
    kill_all([group], wait_s=timeout_s)


def form(ranks: list, model_path: str, cfg: TrainConfig, seed: int = 0, store=None, port: int = 0,
         timeout_s: float = 60.0) -> int:
    """Rank 0 publishes its address (`port`, 0: a free one), every rank joins the world and loads the sharded
    student. Returns the parameter count; GroupFormError (one line) when a rank fails or dies, or the world is
    not formed within `timeout_s`."""
    import ray

    try:
        host, port = ray.get(ranks[0].address.remote(port), timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - any failure of rank 0 is the group's
        raise GroupFormError(f"trainer rank 0 could not publish its address: {one_line(exc)}") from None
    refs = [r.join.remote(host, port, model_path, cfg, seed, store, timeout_s) for r in ranks]
    return gather(refs, timeout_s, "formed the world at " + f"{host}:{port}")[0]


def gather(refs: list, timeout_s: float, doing: str) -> list:
    """The ranks' results in rank order; GroupFormError naming the first rank that failed (or those still
    running after `timeout_s`), with its cause in one line."""
    import ray

    pending, out = dict(zip(refs, range(len(refs)))), [None] * len(refs)
    deadline = time.monotonic() + timeout_s
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            late = sorted(pending.values())
            raise GroupFormError(f"trainer rank{'s' if len(late) > 1 else ''} {', '.join(map(str, late))} not "
                                 f"done within {timeout_s:g}s while the group {doing}")
        rank = pending.pop(done[0])
        try:
            out[rank] = ray.get(done[0])
        except Exception as exc:  # noqa: BLE001 - named by rank, in one line
            raise GroupFormError(f"trainer rank {rank} failed while the group {doing}: {one_line(exc)}") from None
    return out


def one_line(exc: BaseException) -> str:
    """The root cause of a Ray error in one line: the last `Error:` line of its text, else its first line."""
    import re

    cause = getattr(exc, "cause", None)
    if cause is not None and not isinstance(cause, type(exc)):
        return one_line(cause)
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    errors = [ln.strip() for ln in text.splitlines() if re.match(r"^\s*[\w.]+(Error|Exception|Died)\b", ln)]
    line = errors[-1] if errors else (text.splitlines() or [type(exc).__name__])[0]
    return f"{type(exc).__name__}: {line}"[:300] if not errors else line[:300]


class TrainerGroup(Timed):
    """N sharded trainer ranks behind the methods of `Trainer` (step, export_weights, snapshot, load_arrays,
    model_files, trainer_state, restore, reset, save, parameter_count, parameter_checksum) and the sender side
    of the collective weight sync. Results are rank 0's."""

    def __init__(self, model_path: str, cfg: TrainConfig, seed: int = 0, store=None, workers: int = 2,
                 rank_resources=None, strategy: str = "PACK", port: int = 0, timeout_s: float = 120.0, pg=None):
        self.world, self.timeout_s = workers, timeout_s
        self.pg, self.ranks = start_ranks(workers, rank_resources, strategy, timeout_s, pg)
        try:
            self.n_params = form(self.ranks, model_path, cfg, seed, store, port, timeout_s)
        except GroupFormError:
            remove_ranks(self.pg, self.ranks)
            raise

    def shutdown(self) -> None:
        """Kill the ranks and give their placement group back (`stop` calls it)."""
        remove_ranks(self.pg, self.ranks)

    def _all(self, method: str, *args) -> list:
        """`method(*args)` on every rank at once; their results in rank order. A rank that died, or failed while
        the others are still inside a collective, ends the group: its ranks are killed and this actor exits."""
        import ray

        refs = [getattr(r, method).remote(*args) for r in self.ranks]
        pending, out = dict(zip(refs, range(len(refs)))), [None] * len(refs)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            rank = pending.pop(done[0])
            try:
                out[rank] = ray.get(done[0])
            except ray.exceptions.RayActorError as exc:
                self._end(f"trainer rank {rank} died in {method}: {one_line(exc)}")
            except Exception as exc:  # noqa: BLE001 - an error on every rank (same input) leaves the group whole
                left, _ = ray.wait(list(pending), num_returns=len(pending), timeout=30.0)
                if len(left) < len(pending):
                    self._end(f"trainer rank {rank} failed in {method} while others wait in a collective: "
                              f"{one_line(exc)}")
                raise
        return out

    def _end(self, why: str) -> None:
        import sys

        import ray

        print(f"trainer group ends: {why}", file=sys.stderr, flush=True)
        remove_ranks(self.pg, self.ranks)
        ray.actor.exit_actor()

    def rank_handles(self) -> list:
        return list(self.ranks)

    def step(self, judged):
        import ray

        return self._all("step", ray.put(judged))[0]

    def reset(self, model_path: str, cfg: TrainConfig, seed: int = 0) -> int:
        return self._all("reset", model_path, cfg, seed)[0]

    def parameter_count(self) -> int:
        return self.n_params

    def export_weights(self):
        return self._all("export_weights")[0]

    def snapshot(self):
        return self._all("snapshot")[0]

    def load_arrays(self, arrays: dict) -> None:
        import ray

        self._all("load_arrays", ray.put(arrays))

    def model_files(self) -> dict:
        return self._all("model_files")[0]

    def save(self, out_dir: str, max_shard_size=None) -> str:
        return self._all("save", out_dir, max_shard_size)[0]

    def trainer_state(self):
        from stages.files import blob
        from stages.group_checkpoint import pack_group_state

        return blob(pack_group_state(self._all("trainer_state")))  # the ranks' shards, as bytes

    def restore(self, weights: dict[str, bytes], state: bytes) -> int:
        import ray

        return self._all("restore", ray.put(weights), ray.put(state))[0]

    def parameter_checksum(self) -> float:
        return self._all("parameter_checksum")[0]

    def state_bytes(self) -> list[dict[str, int]]:
        """Each rank's bytes of parameters, gradients and optimizer state (its shards)."""
        return self._all("state_bytes")

    def open_weight_sync(self, receivers: int) -> tuple[str, int]:
        """(rank 0) A store for a new sync group with `receivers` engine workers; returns its host and port."""
        import ray

        return ray.get(self.ranks[0].open_weight_sync.remote(receivers))

    def connect_weight_sync(self) -> int:
        """(rank 0) Join the sync group opened by `open_weight_sync`; returns when every receiver has joined."""
        import ray

        return ray.get(self.ranks[0].connect_weight_sync.remote())

    def send_weights(self, version: int = 0) -> int:
        """Rank 0 broadcasts the whole weights to the sync group (the others gather with it); the version."""
        return self._all("send_weights", version)[0]
