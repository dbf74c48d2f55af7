"""Checkpoints of a trainer group: each rank saves its own shard of the optimizer state (no rank holds the whole
of it), the group's state blob is the ranks' shards together, and a restore rebuilds it for any world size.

The weights themselves travel as the whole HF files (`Trainer.model_files`, gathered on rank 0), as for one
trainer; a 1-process `Trainer`'s state (index-keyed optimizer state) restores into a group too.
"""
from __future__ import annotations

import io

GROUP_KEY = "trainer_group_world"


class CheckpointMismatch(ValueError):
    """A group's state that cannot be restored (shards missing, another model); one line."""


def rank_state(trainer) -> bytes:
    """This rank's shard: {parameter name: {state key: local tensor}} of AdamW, which entries were sharded (and
    along dim 0), the param groups, step counters and RNG. Every rank must call it."""
    import torch
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    from torch.distributed.tensor import DTensor

    osd = get_optimizer_state_dict(trainer.model, trainer.opt)
    local, sharded = {}, []
    for name, entries in osd["state"].items():
        local[name] = {}
        for key, value in entries.items():
            if isinstance(value, DTensor):
                sharded.append((name, key))
                value = value.to_local()
            local[name][key] = value.detach().cpu().clone() if torch.is_tensor(value) else value
    buf = io.BytesIO()
    torch.save({"rank": trainer.rank, "world": trainer.world, "state": local, "sharded": sharded,
                "param_groups": osd["param_groups"], "steps": trainer.steps, "version": trainer.version,
                "rng": torch.get_rng_state()}, buf)
    return buf.getvalue()


def pack_group_state(shards: list[bytes]) -> bytes:
    """The ranks' shards (in rank order) as one blob."""
    import torch

    buf = io.BytesIO()
    torch.save({GROUP_KEY: len(shards), "shards": shards}, buf)
    return buf.getvalue()


def full_optimizer_state(blob: bytes, param_names: list[str]) -> tuple[dict, dict]:
    """(whole optimizer state keyed by parameter name, {steps, version, rng}) from a group's blob of any world
    size, or from a 1-process trainer's state (`param_names`: the model's parameters in optimizer order)."""
    import torch

    saved = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    if GROUP_KEY not in saved:
        return _from_single(saved, param_names)
    shards = [torch.load(io.BytesIO(b), map_location="cpu", weights_only=True) for b in saved["shards"]]
    world = saved[GROUP_KEY]
    ranks = sorted(s["rank"] for s in shards)
    if ranks != list(range(world)) or any(s["world"] != world for s in shards):
        raise CheckpointMismatch(f"trainer group checkpoint holds the shards of ranks {ranks}, written by a world "
                                 f"of {shards[0]['world'] if shards else '?'}: expected ranks 0..{world - 1}")
    shards.sort(key=lambda s: s["rank"])
    first = shards[0]
    sharded = {tuple(x) for x in first["sharded"]}
    state = {name: {key: (torch.cat([s["state"][name][key] for s in shards]) if (name, key) in sharded else value)
                    for key, value in entries.items()} for name, entries in first["state"].items()}
    _check_names(state, param_names)
    return {"state": state, "param_groups": first["param_groups"]}, \
        {k: first[k] for k in ("steps", "version", "rng")}


def _from_single(saved: dict, param_names: list[str]) -> tuple[dict, dict]:
    """A 1-process `Trainer.trainer_state` (optimizer state keyed by parameter index) keyed by name."""
    opt = saved["optimizer"]
    if len(opt["param_groups"]) != 1 or len(opt["param_groups"][0]["params"]) != len(param_names):
        raise CheckpointMismatch(f"trainer checkpoint's optimizer holds {sum(len(g['params']) for g in opt['param_groups'])} "
                                 f"parameters, the model {len(param_names)}")
    index = opt["param_groups"][0]["params"]
    state = {param_names[i]: opt["state"][p] for i, p in enumerate(index) if p in opt["state"]}
    groups = [{**opt["param_groups"][0], "params": list(param_names)}]
    return {"state": state, "param_groups": groups}, {k: saved[k] for k in ("steps", "version", "rng")}


def _check_names(state: dict, param_names: list[str]) -> None:
    unknown = sorted(set(state) - set(param_names))
    if unknown:
        raise CheckpointMismatch(f"trainer group checkpoint has optimizer state for {len(unknown)} parameters the "
                                 f"model lacks (e.g. {unknown[0]})")


def local_slice(full, like):
    """The part of the whole tensor `full` that this rank holds of `like` (a DTensor; a plain tensor: all)."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if not isinstance(like, DTensor):
        return full
    shape, offset = compute_local_shape_and_global_offset(full.shape, like.device_mesh, like.placements)
    return full[tuple(slice(o, o + n) for n, o in zip(shape, offset))]


def restore_rank(trainer, blob: bytes) -> int:
    """A group's (or one trainer's) state into this rank, resharded for this world: each rank takes its own
    slices of the whole state (no collective). Returns the restored step. Every rank must call it."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    from torch.distributed.tensor import DTensor

    params = dict(trainer.model.named_parameters())
    osd, counters = full_optimizer_state(blob, list(params))
    for name, entries in osd["state"].items():
        like = params[name]
        for key, value in entries.items():
            if isinstance(like, DTensor) and torch.is_tensor(value) and value.shape == like.shape:
                entries[key] = DTensor.from_local(local_slice(value, like).to(like.device), like.device_mesh,
                                                  like.placements, shape=like.shape, stride=like.stride())
    set_optimizer_state_dict(trainer.model, trainer.opt, osd, options=StateDictOptions(full_state_dict=False))
    trainer.steps, trainer.version = counters["steps"], counters["version"]
    torch.set_rng_state(counters["rng"].cpu())
    return trainer.steps
