"""Benchmark: in-place weight sync (object store blob -> reload_weights) vs restarting the engine.

Baseline and candidate run side by side in this script on the same model; prints the ratio and
writes bench/results/weight_sync.json. Usage: python bench/weight_sync.py [--size bench] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="bench", help="tiny model size (nano, micro, small, bench)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "weight_sync.json"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from ladder.models.tiny import build_tiny_model, count_parameters
    from stages.actors import spawn
    from stages.engine import EngineConfig
    from stages.rollout import RolloutWorker
    from stages.train import TrainConfig, Trainer

    work = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    model = str(build_tiny_model(work / "model", args.size))
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    cfg = EngineConfig(model, kv_cache_gib=0.25)
    trainer = spawn(Trainer, model, TrainConfig(), 0)
    worker = spawn(RolloutWorker, cfg)
    ray.get([trainer.__ray_ready__.remote(), worker.__ray_ready__.remote()])
    in_place, restart = [], []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        ref = ray.get(trainer.export_weights.remote())
        ray.get(worker.load_weights.remote(ref))
        in_place.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        saved = ray.get(trainer.save.remote(str(work / f"ckpt-{i}")))
        fresh = spawn(RolloutWorker, EngineConfig(saved, kv_cache_gib=0.25))
        ray.get(fresh.__ray_ready__.remote())
        restart.append(time.perf_counter() - t0)
        ray.kill(fresh)
    result = {"model_size": args.size, "parameters": count_parameters(model), "repeats": args.repeats,
              "in_place_sync_s": min(in_place), "restart_from_checkpoint_s": min(restart),
              "speedup": min(restart) / min(in_place)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"in-place sync is {result['speedup']:.1f}x faster than restarting the engine from a checkpoint")
    ray.shutdown()


if __name__ == "__main__":
    main()
