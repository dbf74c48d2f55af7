"""Benchmark: switching from one rung to the next, with the engines kept (models loaded in place) against new ones.

A rung's stage actors (trainer, a vLLM rollout worker, a vLLM judge worker) hold the `bench`-size model; the next
rung's student and judge (another model of the same architecture) are then put in place two ways, side by side:
`Rung(..., stages=kept)` loads them into the running actors; `Rung(...)` after a shutdown starts new ones (what
every rung paid before). Both are timed until the first step could start; prints the ratio, writes
bench/results/rung_switch.json.
Usage: python bench/rung_switch.py [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "rung_switch.json"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from ladder.progress import ResolvedJudge
    from ladder.models.tiny import build_tiny_model
    from ladder.rung.driver import Rung
    from cluster.connect import start_ray
    from ladder.tasks import build_task

    from grpo_vs_trl import ladder_spec  # the same rung as the GRPO benchmark

    with tempfile.TemporaryDirectory(prefix="switch-bench-") as tmp:
        models = [str(build_tiny_model(Path(tmp) / f"m{i}", "bench", seed=i)) for i in range(2)]
        spec = ladder_spec(models[0], tmp, 1, [])
        task = build_task(spec.task, spec.seed)
        start_ray(spec)
        timings: dict[str, list[float]] = {"kept": [], "new": []}
        try:
            rung = Rung(spec, task, models[0], ResolvedJudge("model", models[0], "m0"), 0)
            rung.ready()
            for r in range(args.repeats):
                a, b = models[r % 2], models[(r + 1) % 2]
                t0 = time.perf_counter()
                rung = Rung(spec, task, b, ResolvedJudge("model", a, "a"), 1, stages=rung.handover())
                rung.ready()
                timings["kept"].append(time.perf_counter() - t0)
                assert rung.stages.reused == 3 and rung.stages.started == 0, (rung.stages.reused, rung.stages.started)
                t0 = time.perf_counter()
                rung.shutdown()
                rung = Rung(spec, task, a, ResolvedJudge("model", b, "b"), 2)
                rung.ready()
                timings["new"].append(time.perf_counter() - t0)
                print(f"  switch {r + 1}: engines kept {timings['kept'][-1]:.2f}s, new engines {timings['new'][-1]:.2f}s",
                      flush=True)
            rung.shutdown()
        finally:
            ray.shutdown()
    kept, new = statistics.fmean(timings["kept"]), statistics.fmean(timings["new"])
    print(f"rung-to-rung switch: engines kept {kept:.2f}s, new engines {new:.2f}s: {new / kept:.1f}x faster")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": "bench (untrained, 2 of the same architecture)", "actors": 3,
                               "kept_s": timings["kept"], "new_s": timings["new"], "speedup": new / kept}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
