"""One rank of a trainer group: the `Trainer` with its student and reference sharded by FSDP2 over a
torch.distributed world (gloo on CPU, NCCL on CUDA), its share of each step's batch, and sharded optimizer state.

The group's ranks run the same calls in lockstep (`stages/train_group.py` drives them); every collective is
entered by all of them, so a method here is called on every rank or on none.
"""
from __future__ import annotations

from datetime import timedelta

from stages.addresses import free_port, node_ip
from stages.packing import micro_batches
from stages.startup import few_collections
from stages.train import Trainer, TrainConfig


def balanced_shares(rows: list[int], lengths: list[int], world: int) -> list[list[int]]:
    """`rows` (with their token `lengths`) dealt to `world` ranks, longest first to the rank with the fewest
    tokens so far (ties: the lowest rank); every rank computes the same shares."""
    shares: list[list[int]] = [[] for _ in range(world)]
    load = [0] * world
    for j in sorted(range(len(rows)), key=lambda j: (-lengths[j], j)):
        r = min(range(world), key=lambda r: (load[r], r))
        shares[r].append(j)
        load[r] += lengths[j]
    return [sorted(s) for s in shares]


class TrainerRank(Trainer):
    """Rank `rank` of `world`. Built light (no model); `join` forms the world and loads the sharded student."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def address(self, port: int = 0) -> tuple[str, int]:
        """(rank 0) Where the others find the world's store: this node's address and `port` (0: a free one)."""
        return node_ip(), port or free_port()

    @few_collections()
    def join(self, host: str, port: int, model_path: str, cfg: TrainConfig, seed: int, store=None,
             timeout_s: float = 60.0) -> int:
        """Join the world whose store rank 0 holds at host:port, then load the student, sharded. Returns the
        parameter count."""
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend, init_method=f"tcp://{host}:{port}", rank=self.rank,
                                    world_size=self.world, timeout=timedelta(seconds=timeout_s))
        return self.reset(model_path, cfg, seed, store)

    def reset(self, model_path: str, cfg: TrainConfig, seed: int = 0, store=None) -> int:
        from torch.distributed.device_mesh import init_device_mesh

        device = "cuda" if _cuda() else "cpu"
        self.mesh = init_device_mesh(device, (self.world,))
        self.let_go()  # this rank's shards of the previous student, before the next one loads
        Trainer.__init__(self, model_path, cfg, seed, store if store is not None else getattr(self, "store", None))
        return self.parameter_count()

    def place(self, module):
        """FSDP2: each decoder layer a unit of its own, then the root (embeddings, norm, head). Gradients are
        summed over the ranks, not averaged: each rank's loss is already divided by the whole batch's tokens."""
        import torch
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

        self.architecture = type(module).__name__  # fully_shard renames the class (FSDP<name>)
        mp = MixedPrecisionPolicy(param_dtype=self.compute_dtype, reduce_dtype=torch.float32) \
            if self.compute_dtype != torch.float32 else MixedPrecisionPolicy()
        for layer in decoder_layers(module):
            fully_shard(layer, mesh=self.mesh, mp_policy=mp)
        fully_shard(module, mesh=self.mesh, mp_policy=mp)
        for m in module.modules():
            if isinstance(m, FSDPModule):
                m.set_gradient_divide_factor(1.0)
                m.set_force_sum_reduction_for_comms(True)  # gloo has no pre-multiplied sum
        return module

    def micro_groups(self, rows: list[int], lengths: list[int]) -> list[list[int]]:
        """This rank's share of the kept samples in micro-batches, padded with empty passes to the largest
        number any rank runs (FSDP's collectives need every rank in every forward and backward)."""
        plans = []
        for share in balanced_shares(rows, lengths, self.world):
            plans.append([[rows[share[j]] for j in g]
                          for g in micro_batches([lengths[j] for j in share], self.cfg.micro_batch_tokens)])
        n = max(len(p) for p in plans)
        return plans[self.rank] + [[] for _ in range(n - len(plans[self.rank]))]

    def reduce_totals(self, totals: dict) -> dict:
        import torch
        import torch.distributed as dist

        keys = sorted(totals)
        flat = torch.stack([totals[k] for k in keys])
        dist.all_reduce(flat)
        return dict(zip(keys, flat))

    def clip_gradients(self):
        import torch
        from torch.distributed.tensor import DTensor

        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        torch.nn.utils.clip_grads_with_norm_(self.model.parameters(), self.cfg.max_grad_norm, norm, foreach=True)
        return norm

    def full_state_dict(self) -> dict:
        """The whole weights on rank 0 (in CPU memory), {} on the others; every rank must call it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_full_state(self, state: dict, strict: bool = True) -> None:
        """Whole weights (the same on every rank) into this rank's shards: each rank copies its own slice, no
        collective (torch's `set_model_state_dict` scatters from rank 0, tensor by tensor)."""
        import torch

        from stages.group_checkpoint import local_slice

        local = self.model.state_dict()
        unknown = sorted(set(state) - set(local))
        missing = sorted(set(local) - set(state))
        if strict and (unknown or missing):
            raise ValueError(f"weights do not fit the student: unknown {unknown[:3]}, missing {missing[:3]}")
        with torch.no_grad():
            for name, full in ((k, v) for k, v in state.items() if k in local):
                mine = local_slice(full, local[name])
                (local[name].to_local() if hasattr(local[name], "to_local") else local[name]).copy_(mine)

    def full_state_items(self):
        """(HF name, whole tensor) one weight at a time, gathered for this step only: a sender streams them
        without holding the whole model. Every rank must walk the whole iterator."""
        from torch.distributed.tensor import DTensor

        for name, t in self.model.state_dict().items():
            yield name, (t.full_tensor() if isinstance(t, DTensor) else t).detach()

    def parameter_checksum(self) -> float:
        import torch
        import torch.distributed as dist

        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for p in self.model.parameters():
            total += p.to_local().detach().double().abs().sum()
        dist.all_reduce(total)
        return float(total)

    def save(self, out_dir: str, max_shard_size=None, state_dict=None) -> str:
        """Rank 0 writes the whole HF checkpoint (the others gather with it and return "")."""
        import json
        from pathlib import Path

        full = self.full_state_dict()
        if self.rank != 0:
            return ""
        out = Trainer.save(self, out_dir, max_shard_size, state_dict=full)
        config = Path(out) / "config.json"
        data = json.loads(config.read_text())
        data["architectures"] = [self.architecture]
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return out

    def model_files(self) -> dict[str, bytes]:
        """Rank 0's HF files ({} on the others)."""
        if self.rank == 0:
            return Trainer.model_files(self)
        self.full_state_dict()  # the gather rank 0's save runs
        return {}

    def trainer_state(self) -> bytes:
        from stages.group_checkpoint import rank_state

        return rank_state(self)

    def restore(self, weights: dict[str, bytes], state: bytes) -> int:
        """Weights (whole HF files) and a group's state blob (any world size) into this rank."""
        from stages.group_checkpoint import restore_rank

        self.load_weight_files(weights)
        return restore_rank(self, state)


def decoder_layers(model) -> list:
    """The model's repeated blocks (each a unit of FSDP): `model.layers` of HF decoder-only models."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no decoder layers (model.layers) to shard")
    return list(layers)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
