"""Benchmark: weight sync through the Ray object store vs over a process group (collective, gloo on CPU), side by
side in one run on the same trainer and engine; with the step it follows, and each rank's memory.

Object store: `export_weights` (numpy arrays, `ray.put`) then the engine's `load_weights`. Collective: the trainer
(rank 0 of a trainer group when --workers > 1) broadcasts buckets over a stateless gloo group that the engine's
worker joined once (`stages.weight_sync.connect` / `push`). Also reports a GRPO step's seconds (the share of a
step each sync takes) and the bytes of parameters + gradients + AdamW state each rank holds with 1 and with
--workers ranks. Writes bench/results/weight_sync.json.

With --lora RANK it compares a LoRA student with the full one instead, side by side on the same model: seconds
and bytes per object-store sync (the adapter's files into an engine that keeps its base, against the whole
weights), a step's seconds, and the trainer's parameter, gradient, AdamW and reference bytes and peak resident
memory. Writes bench/results/weight_sync_lora.json.

Usage: python bench/weight_sync.py [--size bench | --model DIR] [--workers 2] [--repeats 3] [--restart] [--lora 16]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def judged_batch(model_dir: str, n: int = 8, length: int = 48):
    """A synthetic judged batch (n samples of `length` tokens, 2 prompt groups) for timing a step."""
    from transformers import AutoTokenizer

    from stages.batches import JudgedBatch, RolloutBatch, Sample

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok.encode("12+34=46 and 5*6=30; " * 8, add_special_tokens=False)
    samples = tuple(Sample(tuple(ids[:8]), tuple(ids[8 + i:8 + i + length]), "", ()) for i in range(n))
    rollout = RolloutBatch(("p",) * n, (None,) * n, samples, tuple(i % 2 for i in range(n)))
    return JudgedBatch(rollout, tuple(float(i % 3) / 2 for i in range(n)))


def start_trainer(model: str, workers: int, lora=None):
    import ray

    from stages.actors import spawn
    from stages.train import TrainConfig, Trainer
    from stages.train_group import TrainerGroup

    if workers == 1:
        trainer = spawn(Trainer, model, TrainConfig(lora=lora), 0)
    else:
        trainer = spawn(TrainerGroup, model, TrainConfig(), 0, None, workers, options={"num_cpus": 0})
    ray.get(trainer.__ray_ready__.remote())
    return trainer


def seconds(call) -> tuple[float, object]:
    """(the seconds `call()` took, what it returned)."""
    t0 = time.perf_counter()
    out = call()
    return time.perf_counter() - t0, out


def time_syncs(trainer, worker, model: str, repeats: int) -> dict:
    """Seconds per sync, best of `repeats`, each way; the trainer steps in between (fresh weights each time)."""
    import ray

    from stages.weight_sync import connect, push

    batch = judged_batch(model)
    connect_s, _ = seconds(lambda: connect(trainer, [worker]))
    store, collective, step = [], [], []
    for i in range(repeats):
        step.append(seconds(lambda: ray.get(trainer.step.remote(batch)))[0])
        store.append(seconds(lambda: ray.get(worker.load_weights.remote(ray.get(trainer.export_weights.remote()))))[0])
        collective.append(seconds(lambda: push(trainer, [worker], 1000 + i))[0])
    best = {"object_store_sync_s": min(store), "collective_sync_s": min(collective), "train_step_s": min(step)}
    return {**best, "collective_connect_s": connect_s,
            "object_store_share_of_step": best["object_store_sync_s"] / (best["train_step_s"] + best["object_store_sync_s"]),
            "collective_share_of_step": best["collective_sync_s"] / (best["train_step_s"] + best["collective_sync_s"]),
            "speedup": best["object_store_sync_s"] / best["collective_sync_s"]}


def memory_per_rank(model: str, workers: int) -> dict:
    """Bytes of parameters + gradients + AdamW state each rank holds after one step, with 1 rank (the plain
    trainer) and with `workers` ranks."""
    import ray

    from stages.actors import kill_all
    from stages.train_group import stop

    out = {}
    for n in sorted({1, workers}):
        trainer = start_trainer(model, n)
        ray.get(trainer.step.remote(judged_batch(model)))
        held = ray.get(trainer.state_bytes.remote())
        out[str(n)] = [held] if n == 1 else held
        stop(trainer) if n > 1 else kill_all([trainer])
    return out


def peak_rss(actor) -> int:
    """The peak resident memory of an actor's process so far, in bytes (Linux reports KiB)."""
    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: __import__("resource").getrusage(0).ru_maxrss)) * 1024


def lora_against_full(model: str, rank: int, repeats: int) -> dict:
    """The full student and a LoRA student of `rank` (all seven projections), each with an engine of its own:
    per sync (best of `repeats`, a step before each) the seconds of export + in-place load and the bytes put in
    the object store; the trainer's state bytes and peak memory after its steps."""
    import ray

    from stages.actors import kill_all, spawn
    from stages.engine import EngineConfig
    from stages.lora import LoraSettings
    from stages.rollout import RolloutWorker

    batch, out = judged_batch(model), {}
    for name, lora in (("full", None), ("lora", LoraSettings(rank=rank, alpha=2.0 * rank))):
        trainer = start_trainer(model, 1, lora)
        worker = spawn(RolloutWorker, EngineConfig(model, kv_cache_gib=0.25, lora_rank=rank if lora else 0))
        ray.get(worker.__ray_ready__.remote())
        export, load = (trainer.export_adapter, "load_adapter") if lora else (trainer.export_weights, "load_weights")
        syncs, steps, sizes = [], [], []
        for _ in range(repeats):
            steps.append(seconds(lambda: ray.get(trainer.step.remote(batch)))[0])
            took, ref = seconds(lambda: ray.get(export.remote()))
            syncs.append(took + seconds(lambda: ray.get(getattr(worker, load).remote(ref)))[0])
            sizes.append(ref.n_bytes)
        out[name] = {"sync_s": min(syncs), "sync_bytes": sizes[-1], "train_step_s": min(steps),
                     "trainer_bytes": ray.get(trainer.state_bytes.remote()), "trainer_peak_rss": peak_rss(trainer)}
        kill_all([trainer, worker])
    out["sync_speedup"] = out["full"]["sync_s"] / out["lora"]["sync_s"]
    out["sync_bytes_ratio"] = out["full"]["sync_bytes"] / out["lora"]["sync_bytes"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="bench", help="tiny model size (nano, micro, small, bench)")
    parser.add_argument("--model", default="", help="an HF folder instead of a tiny model (e.g. SmolLM2-135M)")
    parser.add_argument("--workers", type=int, default=2, help="trainer ranks for the collective sync")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--restart", action="store_true", help="also time restarting the engine from a checkpoint")
    parser.add_argument("--lora", type=int, default=0, help="compare a LoRA student of this rank with the full one")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if args.lora:
        return main_lora(args)
    args.out = args.out or str(Path(__file__).parent / "results" / "weight_sync.json")

    from ladder.models.tiny import build_tiny_model
    from stages.actors import kill_all, spawn
    from stages.engine import EngineConfig
    from stages.rollout import RolloutWorker
    from stages.train_group import stop

    work = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    model = args.model or str(build_tiny_model(work / "model", args.size))
    ray.init(address="local", num_cpus=max(4, args.workers + 2), include_dashboard=False, log_to_driver=False)
    worker = spawn(RolloutWorker, EngineConfig(model, kv_cache_gib=0.25))
    ray.get(worker.__ray_ready__.remote())
    result = {"model": args.model or f"tiny-{args.size}", "repeats": args.repeats, "device": "cpu", "by_workers": {}}
    for workers in sorted({1, args.workers}):
        trainer = start_trainer(model, workers)
        result["parameters"] = ray.get(trainer.parameter_count.remote())
        result["by_workers"][str(workers)] = time_syncs(trainer, worker, model, args.repeats)
        if args.restart and workers == 1:
            result["restart_from_checkpoint_s"] = time_restart(trainer, work)
        stop(trainer) if workers > 1 else kill_all([trainer])
    kill_all([worker])
    result["state_bytes_per_rank"] = memory_per_rank(model, args.workers)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    ray.shutdown()


def main_lora(args) -> None:
    import ray

    from ladder.models.tiny import build_tiny_model

    model = args.model or str(build_tiny_model(Path(tempfile.mkdtemp(prefix="bench-sync-")) / "model", args.size))
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    result = {"model": Path(args.model).name if args.model else f"tiny-{args.size}", "lora_rank": args.lora,
              "repeats": args.repeats, "device": "cpu", **lora_against_full(model, args.lora, args.repeats)}
    out = Path(args.out or Path(__file__).parent / "results" / "weight_sync_lora.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    ray.shutdown()


def time_restart(trainer, work: Path) -> float:
    """Seconds to save a checkpoint and start a fresh engine on it (what an in-place sync avoids)."""
    import ray

    from stages.actors import kill_all, spawn
    from stages.engine import EngineConfig
    from stages.rollout import RolloutWorker

    def restart():
        fresh = spawn(RolloutWorker, EngineConfig(ray.get(trainer.save.remote(str(work / "ckpt"))), kv_cache_gib=0.25))
        ray.get(fresh.__ray_ready__.remote())
        return fresh

    took, fresh = seconds(restart)
    kill_all([fresh])
    return took


if __name__ == "__main__":
    main()
