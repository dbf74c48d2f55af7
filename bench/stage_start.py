"""Benchmark: the CPU seconds a stage process takes to start (an engine, a trainer), with the collector as
`stages.startup` sets it for the start and with Python's default collector, side by side in one run: each start in
a fresh process of its own (one torch thread), alternating, on one tiny model built from its config.

Writes bench/results/stage_start.json.

Usage: python bench/stage_start.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "stage_start.json"


def start_once(role: str, model: str, plain: bool) -> float:
    """(in a child process) Start one stage of `role` on `model`; its CPU seconds from before the first import."""
    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    before = cpu()
    if plain:  # Python's default collector: the start's helpers do nothing
        import contextlib

        import stages.engine
        import stages.startup

        stages.startup.START_THRESHOLDS = (0, 0, 0)  # the larger of these and the collector's own: its own
        stages.engine.heap_frozen = contextlib.nullcontext
    if role == "engine":
        from stages.engine import EngineConfig, build_llm

        build_llm(EngineConfig(model=model, kv_cache_gib=0.25))
    else:
        from stages.train import TrainConfig, Trainer

        Trainer(model, TrainConfig())
    return cpu() - before


def child(role: str, model: str, plain: bool) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LADDER_THREADS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    out = subprocess.run([sys.executable, __file__, "--child", role, model] + (["--plain"] if plain else []),
                         env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("ROLE", "MODEL"), help=argparse.SUPPRESS)
    ap.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(start_once(args.child[0], args.child[1], args.plain))
        return
    from ladder.models.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_tiny_model(Path(tmp) / "model"))
        result = {}
        for role in ("engine", "trainer"):
            seconds = {"default": [], "tuned": []}
            for i in range(args.repeats):
                for plain in (True, False):
                    seconds["default" if plain else "tuned"].append(child(role, model, plain))
                print(f"{role} start {i + 1}/{args.repeats}: default {seconds['default'][-1]:.2f} CPU-s, "
                      f"tuned {seconds['tuned'][-1]:.2f}", flush=True)
            med = {k: statistics.median(v) for k, v in seconds.items()}
            result[role] = {"cpu_s": seconds, "median_cpu_s": med, "tuned_over_default": med["tuned"] / med["default"]}
            print(f"{role}: median {med['default']:.2f} -> {med['tuned']:.2f} CPU-s "
                  f"(ratio {result[role]['tuned_over_default']:.2f})", flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"cpus": os.cpu_count(), "repeats": args.repeats, **result}, indent=2))
    print(f"wrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    main()
