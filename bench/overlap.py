"""Benchmark: a GRPO step with `train.overlap` against the same step without it, side by side on this machine.

The setup of `bench/grpo_vs_trl.py` with eager engines (the untrained `bench` model as student and judge,
8 prompts x 4 samples, at most 128 new tokens, KL 0.04). With overlap the next step's rollout and judging run
while this step trains (one step off-policy). Steady state: the first `--warmup` steps of each run are left
out. Prints samples/s of both and their ratio, and writes bench/results/overlap.json.

Usage: python bench/overlap.py [--steps 6] [--warmup 1]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out of the means")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "overlap.json"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from grpo_vs_trl import GROUP, KL, MAX_TOKENS, PROMPTS, run_ladder, steady, write_report

    from ladder.models.tiny import build_tiny_model, count_parameters

    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="overlap-bench-") as tmp:
        model = str(build_tiny_model(Path(tmp) / "bench-model", "bench", seed=0))
        report["setup"] = {"model": "bench (untrained)", "parameters": count_parameters(model), "prompts": PROMPTS,
                           "group": GROUP, "max_new_tokens": MAX_TOKENS, "kl": KL, "steps": args.steps,
                           "warmup_left_out": args.warmup, "cpu": platform.processor() or platform.machine(),
                           "cores": os.cpu_count()}
        for name, overlap in (("sequential", "false"), ("overlap", "true")):
            print(f"{name}:", flush=True)
            report[name] = run_ladder(model, str(Path(tmp) / name), args.steps,
                                      [f"train.overlap={overlap}", "rollout.compiled=false"])
            report[name]["steady"] = steady(report[name], args.warmup)
    for name in ("sequential", "overlap"):
        s = report[name]["steady"]
        print(f"{name:>10}: {s['samples_per_s']:.2f} samples/s, step {s['mean']['time/step_s']:.2f}s")
    report["ratio"] = report["overlap"]["steady"]["samples_per_s"] / report["sequential"]["steady"]["samples_per_s"]
    print(f"     ratio: overlap {report['ratio']:.2f}x sequential (samples/s)")
    write_report(report, args.out)


if __name__ == "__main__":
    main()
