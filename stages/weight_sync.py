"""Weight sync over a process group: the trainer (rank 0 of its group) broadcasts the student's weights in
buckets to every rollout engine's workers, which load them in place as they arrive.

The group is stateless (`TCPStore` + `PrefixStore` + `ProcessGroupGloo`, NCCL on CUDA), outside both the
trainer's world and vLLM's own, so it forms and re-forms (a replaced engine: a fresh group) without touching
either. Engines take part through `WeightReceiver`, a vLLM worker extension whose named methods are called with
`llm.collective_rpc(name, args=...)` (no pickled closures: it works when an engine has worker processes).
"""
from __future__ import annotations

import json
from datetime import timedelta

BUCKET_BYTES = 64 * 2**20
EXTENSION = "stages.weight_sync.WeightReceiver"


def stateless_group(host: str, port: int, rank: int, world: int, timeout_s: float = 120.0, store=None):
    """A process group of `world` members outside any default group (rank 0 passes the master `store` it made
    with `master_store`); returns once every member has joined."""
    import torch
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    if store is None:
        store = dist.TCPStore(host, port, world, is_master=False, timeout=timeout)
    prefixed = dist.PrefixStore(f"ladder-weight-sync-{port}", store)
    if torch.cuda.is_available():
        return dist.ProcessGroupNCCL(prefixed, rank, world)
    return dist.ProcessGroupGloo(prefixed, rank, world, timeout)


def master_store(world: int, timeout_s: float = 120.0):
    """(sender) A TCP store on a free port of this node that `world` members will join; (store, host, port)."""
    import torch.distributed as dist

    from stages.addresses import free_port, node_ip

    port = free_port()
    store = dist.TCPStore("0.0.0.0", port, world, is_master=True, timeout=timedelta(seconds=timeout_s),
                          wait_for_workers=False)
    return store, node_ip(), port


def broadcast(pg, tensor) -> None:
    import torch.distributed as dist

    opts = dist.BroadcastOptions()
    opts.rootRank, opts.rootTensor = 0, 0
    pg.broadcast([tensor], opts).wait()


def send_json(pg, data) -> None:
    import torch

    raw = torch.frombuffer(bytearray(json.dumps(data).encode()), dtype=torch.uint8)
    broadcast(pg, torch.tensor([raw.numel()], dtype=torch.int64))
    broadcast(pg, raw)


def recv_json(pg, device="cpu"):
    import torch

    size = torch.zeros(1, dtype=torch.int64, device=device)
    broadcast(pg, size)
    raw = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    broadcast(pg, raw)
    return json.loads(bytes(raw.cpu().numpy()))


def unique_weights(model) -> tuple[list[tuple[str, object]], dict[str, str]]:
    """(HF name, parameter or buffer) of every weight once, and the names that share one already listed ({name:
    the listed name}: a tied head shares the embeddings). The receiver loads a shared weight under each of its
    names (vLLM's in-place reload keeps a layer it gets nothing for as it was)."""
    first: dict[int, str] = {}
    out, aliases = [], {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in first:
            aliases[name] = first[id(t)]
        else:
            first[id(t)] = name
            out.append((name, t))
    return out, aliases


def plan_buckets(weights: list[tuple[str, object]], cap: int = BUCKET_BYTES) -> list[dict]:
    """Consecutive weights of one dtype in buckets of at most `cap` bytes (a bigger weight: a bucket of its own);
    each {"dtype": str, "items": [[name, shape], ...]}."""
    buckets: list[dict] = []
    size = 0
    for name, t in weights:
        dtype, n = str(t.dtype).removeprefix("torch."), t.numel() * t.element_size()
        if not buckets or buckets[-1]["dtype"] != dtype or size + n > cap:
            buckets.append({"dtype": dtype, "items": []})
            size = 0
        buckets[-1]["items"].append([name, list(t.shape)])
        size += n
    return buckets


def whole(t):
    """A weight's whole tensor (a DTensor gathered from its shards: every rank of its mesh must call it)."""
    from torch.distributed.tensor import DTensor

    return (t.full_tensor() if isinstance(t, DTensor) else t).detach()


class WeightSender:
    """The trainer's side, for `Trainer` and `TrainerRank` (rank 0 holds the sync group; the other ranks of a
    group only gather their shards with it)."""

    def open_weight_sync(self, receivers: int, timeout_s: float = 120.0) -> tuple[str, int]:
        """A fresh store for a sync group of this process and `receivers` engine workers; (host, port)."""
        self._sync_store, host, port = master_store(1 + receivers, timeout_s)
        self._sync_world, self._sync_port, self._sync_timeout = 1 + receivers, port, timeout_s
        return host, port

    def connect_weight_sync(self) -> int:
        """Join the group opened by `open_weight_sync` (returns when every receiver has joined); its size."""
        self._sync_group = stateless_group("", self._sync_port, 0, self._sync_world, self._sync_timeout,
                                           store=self._sync_store)
        return self._sync_world

    def send_weights(self, version: int = 0, cap: int = BUCKET_BYTES) -> int:
        """Broadcast the whole weights, bucket by bucket, to the sync group; returns `version`. On a group's
        other ranks this only gathers (every rank must call it)."""
        import torch

        root = getattr(self, "rank", 0) == 0
        weights, aliases = unique_weights(self.model)
        buckets = plan_buckets(weights, cap)
        if root:
            send_json(self._sync_group, {"version": version, "buckets": buckets, "aliases": aliases})
        by_name = dict(weights)
        for bucket in buckets:
            parts = [whole(by_name[name]) for name, _ in bucket["items"]]
            if root:
                flat = torch.cat([p.reshape(-1) for p in parts]) if len(parts) > 1 else parts[0].reshape(-1)
                broadcast(self._sync_group, flat.contiguous())
        self.version = max(getattr(self, "version", 0), version)
        return version


class WeightReceiver:
    """vLLM worker extension (`LLM(..., worker_extension_cls=EXTENSION)`): how each worker of an engine takes new
    weights in place: from a model folder, from a state dict, or from a sync group's broadcast, one bucket at a
    time (`reload_weights` reads them as they arrive)."""

    def load_folder(self, model_dir: str) -> bool:
        """Load the weights of the HF model folder `model_dir` (on this node) in place."""
        from stages.models import model_state

        self.reload_weights(weights_iterator=iter(model_state(model_dir).items()))
        return True

    def load_state(self, state: dict) -> bool:
        """Load `state` (HF names to tensors) in place."""
        self.reload_weights(weights_iterator=iter(state.items()))
        return True

    def join_weight_sync(self, host: str, port: int, first_rank: int, world: int, timeout_s: float = 120.0) -> int:
        """Join the sender's group as rank `first_rank` + this worker's rank in its engine; returns that rank."""
        rank = first_rank + getattr(self, "rank", 0)
        self._weight_sync = stateless_group(host, port, rank, world, timeout_s)
        return rank

    def receive_weights(self) -> int:
        """Receive one broadcast of the whole weights and load it in place; returns its version."""
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        header = recv_json(self._weight_sync, device)

        def stream():
            shared = {}
            for bucket in header["buckets"]:
                shapes = [torch.Size(s) for _, s in bucket["items"]]
                flat = torch.empty(sum(s.numel() for s in shapes), dtype=getattr(torch, bucket["dtype"]),
                                   device=device)
                broadcast(self._weight_sync, flat)
                offset = 0
                for (name, _), shape in zip(bucket["items"], shapes):
                    view = flat[offset:offset + shape.numel()].view(shape)
                    if name in header["aliases"].values():
                        shared[name] = view
                    yield name, view
                    offset += shape.numel()
            for alias, name in header["aliases"].items():
                yield alias, shared[name]

        self.reload_weights(weights_iterator=stream())
        return header["version"]

    def leave_weight_sync(self) -> None:
        self._weight_sync = None


def connect(trainer, workers: list, timeout_s: float = 120.0) -> int:
    """(controller) A fresh sync group of `trainer` (a `Trainer` or `TrainerGroup` actor) and every worker of the
    rollout actors `workers`; returns its size. Call again after a worker is replaced. Each wait ends within
    `timeout_s` (ray's GetTimeoutError after it)."""
    import ray

    widths = ray.get([w.sync_width.remote() for w in workers], timeout=timeout_s)
    host, port = ray.get(trainer.open_weight_sync.remote(sum(widths)), timeout=timeout_s)
    firsts = [1 + sum(widths[:i]) for i in range(len(workers))]
    joins = [w.join_weight_sync.remote(host, port, f, 1 + sum(widths), timeout_s) for w, f in zip(workers, firsts)]
    size, *_ = ray.get([trainer.connect_weight_sync.remote(), *joins], timeout=timeout_s)
    return size


def push(trainer, workers: list, version: int, timeout_s: float | None = None) -> list[int]:
    """(controller) One collective sync: the trainer sends, every rollout actor loads; their versions. Within
    `timeout_s` (ray's GetTimeoutError after it)."""
    import time

    import ray

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    left = lambda: None if deadline is None else max(0.0, deadline - time.monotonic())  # noqa: E731
    receives = [w.receive_weights.remote() for w in workers]
    ray.get(trainer.send_weights.remote(version), timeout=left())
    return ray.get(receives, timeout=left())
