"""Benchmark: does a rung of GRPO against the exact verifier make the student a better solver?

Runs one rung of `examples/verifier-rung.yaml` (after `ladder bootstrap`), or of any spec whose judge checks
answers (`--spec examples/smollm2/smollm2.yaml`), and measures held-out accuracy, greedy and sampled at the rung's
temperature, before training and every `--every` steps; prints the curve, the gain over the step-0 model and the
mean step time split by stage, writes bench/results/verifier_rung.json (or `--out`).
Usage: python bench/verifier_rung.py [--spec examples/verifier-rung.yaml] [--steps 40] [--every 10] [--out F]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def held_out(rung, temperature: float) -> dict[str, float]:
    """Accuracy on every held-out prompt (one sample each), and the share of answers that show steps."""
    from stages.batches import PromptBatch

    rows = rung.task.eval
    batch = PromptBatch(tuple(r.prompt for r in rows), tuple(r.answer for r in rows))
    responses = rung.generate(batch, 1, temperature).responses
    return {"accuracy": rung.task.accuracy(responses, batch.references),
            "worked_share": sum(not t.startswith("#") for t in responses) / len(responses)}


def measure(rung, step: int, reward: float | None, t0: float) -> dict:
    point = {"step": step, "seconds": round(time.perf_counter() - t0, 1), "train_reward": reward,
             "greedy": held_out(rung, 0.0), "sampled": held_out(rung, rung.spec.rollout.temperature)}
    print(f"step {step:>3}  {point['seconds']:>6.0f}s  held-out greedy {point['greedy']['accuracy']:.3f} "
          f"(steps shown {point['greedy']['worked_share']:.0%})  sampled {point['sampled']['accuracy']:.3f}"
          + ("" if reward is None else f"  train reward {reward:.3f}"), flush=True)
    return point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "examples" / "verifier-rung.yaml"))
    parser.add_argument("--steps", type=int, default=None, help="override train.steps")
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "verifier_rung.json"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from ladder.rung.driver import Rung
    from ladder.control.preflight import preflight
    from cluster.connect import start_ray
    from ladder.spec import load_spec
    from ladder.tasks import build_task

    spec = load_spec(args.spec)
    steps = args.steps or spec.train.steps
    judge = preflight(spec)
    start_ray(spec)
    rung = Rung(spec, build_task(spec.task, spec.seed), spec.student.base, judge, spec.seed)
    try:
        rung.ready()
        t0 = time.perf_counter()
        curve, rewards, times = [measure(rung, 0, None, t0)], [], []
        for step in range(1, steps + 1):
            metrics = rung.step()
            rewards.append(metrics["reward/mean"])
            times.append({k.removeprefix("time/"): v for k, v in metrics.items() if k.startswith("time/")
                          and k.endswith("_s")})
            if step % args.every == 0 or step == steps:
                window = rewards[-args.every:]
                curve.append(measure(rung, step, sum(window) / len(window), t0))
    finally:
        rung.shutdown()
    report(curve, spec, args, {k: round(sum(t[k] for t in times) / len(times), 3) for k in times[0]})


def report(curve: list[dict], spec, args, step_s: dict) -> None:
    before, after = curve[0], curve[-1]
    gain = {k: after[k]["accuracy"] - before[k]["accuracy"] for k in ("greedy", "sampled")}
    print(f"\nheld-out greedy accuracy {before['greedy']['accuracy']:.3f} -> {after['greedy']['accuracy']:.3f} "
          f"({gain['greedy'] * 100:+.1f} points) in {after['step']} steps, {after['seconds']:.0f}s of training+eval; "
          f"sampled {before['sampled']['accuracy']:.3f} -> {after['sampled']['accuracy']:.3f} "
          f"({gain['sampled'] * 100:+.1f}); held-out prompts: {spec.task.eval_size}")
    print("mean step: " + ", ".join(f"{k} {v:.2f}s" for k, v in step_s.items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"spec": os.path.relpath(args.spec, ROOT), "student": spec.student.base, "judge": spec.judge.initial.model_dump(),
                               "train": spec.train.model_dump(), "rollout": spec.rollout.model_dump(),
                               "eval_size": spec.task.eval_size, "gain_points": {k: v * 100 for k, v in gain.items()},
                               "mean_step_s": step_s, "curve": curve}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
