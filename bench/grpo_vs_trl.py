"""Benchmark: a judge-ladder GRPO step against TRL's GRPOTrainer, side by side on this machine.

The same untrained `bench`-size model (~19M parameters) is student and judge; 8 prompts x 4 samples, at most
128 new tokens, temperature 1, verdict reward P(yes) / (P(yes) + P(no)), KL weight 0.04, one update per batch.
judge-ladder runs a `Rung` (a vLLM rollout worker, a vLLM judge worker and the trainer, as Ray actors);
TRL runs `GRPOTrainer` in a process of its own (transformers generate; the reward computed with transformers on
the judge model). The two take turns a step each, so a drift of the machine's speed falls on both alike.
The ladder's engines run compiled (`rollout.compiled`, the setting for throughput: a step is faster, an
engine's start ~45 s slower, once per ladder); `--set rollout.compiled=false` runs them eager, the spec's
default. Steady state: the first `--warmup` steps of each are left out (engine starts and TRL's load too).
Prints samples/s of both, their ratio (also step by step) and the per-stage split, and writes
bench/results/grpo_vs_trl.json.

TRL is not a dependency of the project: `pip install -e '.[bench]'`.
Usage: python bench/grpo_vs_trl.py [--steps 6] [--warmup 1] [--only ladder|trl] [--set rollout.compiled=false]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS, GROUP, MAX_TOKENS, KL, LR = 8, 4, 128, 0.04, 1e-5


def ladder_spec(model: str, workdir: str, steps: int, overrides: list[str]):
    from ladder.spec import parse_spec

    data = {
        "name": "grpo-bench", "seed": 0, "rungs": 1, "workdir": workdir,
        "student": {"base": model},
        "judge": {"initial": {"kind": "model", "path": model}, "mode": "verdict"},
        "task": {"source": {"kind": "builtin", "name": "arithmetic", "terms": 4, "max_operand": 5}, "eval_size": 8},
        "rollout": {"workers": 1, "group_size": GROUP, "max_tokens": MAX_TOKENS, "temperature": 1.0,
                    "kv_cache_gib": 0.25, "compiled": True},
        "judge_pool": {"workers": 1, "batch_size": PROMPTS * GROUP},
        "train": {"lr": LR, "kl_coef": KL, "steps": steps, "prompts_per_step": PROMPTS},
    }
    for item in overrides:  # dotted.key=value
        key, _, value = item.partition("=")
        *path, last = key.split(".")
        node = data
        for part in path:
            node = node.setdefault(part, {})
        node[last] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    return parse_spec(data, str(Path(workdir) / "spec.yaml"))


class LadderSteps:
    """A judge-ladder rung on the bench setup (Ray, a rollout and a judge worker, the trainer), started at
    construction and run one step at a time."""

    def __init__(self, model: str, workdir: str, steps: int, overrides: list[str]):
        from ladder.judging.resolve import resolve_judge
        from ladder.rung.driver import Rung
        from cluster.connect import start_ray
        from ladder.tasks import build_task

        spec = ladder_spec(model, workdir, steps, overrides)
        start_ray(spec)
        self.rung = Rung(spec, build_task(spec.task, spec.seed), spec.student.base, resolve_judge(spec), spec.seed)
        t0 = time.perf_counter()
        self.rung.ready()
        self.start_s = time.perf_counter() - t0
        self.done = 0

    def step(self) -> dict:
        m = self.rung.step()
        self.done += 1
        m.setdefault("time/overhead_s", 0.0)  # (older versions, run as a baseline with PYTHONPATH, lack it)
        row = {k: m[k] for k in ("time/step_s", "time/rollout_s", "time/judge_s", "time/train_s", "time/sync_s",
                                 "time/overhead_s", "rollout/response_tokens", "train/logprob_mismatch",
                                 "reward/mean")}
        print(f"  ladder step {self.done}: {m['time/step_s']:.2f}s (rollout {m['time/rollout_s']:.2f} judge "
              f"{m['time/judge_s']:.2f} train {m['time/train_s']:.2f} sync {m['time/sync_s']:.2f} overhead "
              f"{m['time/overhead_s']:.2f}) {m['rollout/response_tokens']:.0f} tokens/sample", flush=True)
        return row

    def close(self) -> None:
        import ray

        self.rung.shutdown()
        ray.shutdown()


def run_ladder(model: str, workdir: str, steps: int, overrides: list[str]) -> dict:
    ladder = LadderSteps(model, workdir, steps, overrides)
    try:
        rows = [ladder.step() for _ in range(steps)]
    finally:
        ladder.close()
    return {"engine_start_s": ladder.start_s, "steps": rows}


def run_trl(model: str, workdir: str, steps: int, turns=None) -> dict:
    """TRL's GRPOTrainer on the bench setup. With `turns` (a pipe to the bench), each step first says it is
    waiting, starts when told, and sends its times back when done, so the two sides take turns step by step."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from ladder.models.bootstrap import verdicts
    from ladder.tasks.arithmetic import build
    from stages.judge import JudgeConfig

    torch.set_num_threads(os.cpu_count() or 1)
    task = build(terms=4, max_operand=5, train_size=PROMPTS * (steps + 2), eval_size=8, seed=1)
    tok = AutoTokenizer.from_pretrained(model)
    judge = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    template = JudgeConfig()
    times: dict[str, float] = {"rollout": 0.0, "judge": 0.0}

    def reward(prompts, completions, **_):
        t0 = time.perf_counter()
        out = verdicts(judge, tok, [template.render(p, c) for p, c in zip(prompts, completions)], "yes", "no")
        times["judge"] += time.perf_counter() - t0
        return out

    class Timed(GRPOTrainer):
        def _generate(self, prompts):
            t0 = time.perf_counter()
            out = super()._generate(prompts)
            times["rollout"] += time.perf_counter() - t0
            return out

    rows: list[dict] = []

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if turns is not None:
                turns.send("waiting")
                turns.recv()
            self.t0 = time.perf_counter()
            times.update(rollout=0.0, judge=0.0)

        def on_step_end(self, args, state, control, **kw):
            total = time.perf_counter() - self.t0
            rows.append({"time/step_s": total, "time/rollout_s": times["rollout"], "time/judge_s": times["judge"],
                         "time/train_s": total - times["rollout"] - times["judge"]})
            print(f"  trl step {state.global_step}: {total:.2f}s (rollout {times['rollout']:.2f} judge "
                  f"{times['judge']:.2f} train {total - times['rollout'] - times['judge']:.2f})", flush=True)
            if turns is not None:
                turns.send(rows[-1])

    cfg = GRPOConfig(output_dir=str(Path(workdir) / "trl"), per_device_train_batch_size=PROMPTS * GROUP,
                     num_generations=GROUP, max_completion_length=MAX_TOKENS, temperature=1.0, beta=KL,
                     learning_rate=LR, max_steps=steps, num_iterations=1, use_cpu=True, bf16=False,
                     report_to="none", logging_steps=1000, save_strategy="no", seed=0, disable_tqdm=True)
    trainer = Timed(model=model, reward_funcs=reward, args=cfg, processing_class=tok, callbacks=[StepTimes()],
                    train_dataset=Dataset.from_dict({"prompt": [r.prompt for r in task.train]}))
    trainer.train()
    return {"steps": rows}


def run_in_turns(model: str, workdir: str, steps: int, overrides: list[str]) -> dict:
    """Both sides at once, taking turns a step each: TRL in a process of its own waits while the ladder steps
    and the ladder (its actors idle) while TRL steps. The machine's speed drifts by 10-20% over minutes here,
    which a run of one side after the other reads as a difference between them."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    turns, theirs = ctx.Pipe()
    trl = ctx.Process(target=run_trl, args=(model, workdir, steps, theirs), daemon=True)
    trl.start()
    ladder = LadderSteps(model, workdir, steps, overrides)
    rows: dict[str, list] = {"ladder": [], "trl": []}
    try:
        for _ in range(steps):
            turns.recv()  # TRL is waiting at the start of its next step
            rows["ladder"].append(ladder.step())
            turns.send("go")
            rows["trl"].append(turns.recv())
    finally:
        ladder.close()
        trl.join(timeout=60)
        if trl.is_alive():
            trl.terminate()
    return {"ladder": {"engine_start_s": ladder.start_s, "steps": rows["ladder"]}, "trl": {"steps": rows["trl"]}}


def steady(result: dict, warmup: int) -> dict:
    rows = result["steps"][warmup:]
    keys = [k for k in rows[0] if k.startswith("time/")]
    mean = {k: statistics.fmean(r[k] for r in rows) for k in keys}
    return {"samples_per_s": PROMPTS * GROUP / mean["time/step_s"], "mean": mean,
            "split": {k.split("/")[1][:-2]: v / mean["time/step_s"] for k, v in mean.items() if k != "time/step_s"}}


def write_report(report: dict, path: str) -> None:
    """The benchmark's JSON result at `path` (its folder made if need be)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out of the means")
    parser.add_argument("--only", choices=["ladder", "trl"], help="run one side only (no ratio)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override the ladder spec, e.g. train.micro_batch_tokens=0 (repeatable)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "grpo_vs_trl.json"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from ladder.models.tiny import build_tiny_model, count_parameters

    with tempfile.TemporaryDirectory(prefix="grpo-bench-") as tmp:
        model = str(build_tiny_model(Path(tmp) / "bench-model", "bench", seed=0))
        report = {"setup": {"model": "bench (untrained)", "parameters": count_parameters(model), "prompts": PROMPTS,
                            "group": GROUP, "max_new_tokens": MAX_TOKENS, "kl": KL, "lr": LR, "steps": args.steps,
                            "warmup_left_out": args.warmup, "ladder_overrides": args.set,
                            "ladder_engines_compiled": ladder_spec(model, tmp, 1, args.set).rollout.compiled,
                            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}}
        if args.only is None:
            print("judge-ladder and TRL GRPOTrainer, a step each in turn:", flush=True)
            report.update(run_in_turns(model, tmp, args.steps, args.set))
        elif args.only == "ladder":
            report["ladder"] = run_ladder(model, tmp, args.steps, args.set)
        else:
            report["trl"] = run_trl(model, tmp, args.steps)
        for side in ("ladder", "trl"):
            if side in report:
                report[side]["steady"] = steady(report[side], args.warmup)
    for side in ("ladder", "trl"):
        if side in report:
            s = report[side]["steady"]
            split = "  ".join(f"{k} {v:.0%}" for k, v in s["split"].items())
            print(f"{side:>6}: {s['samples_per_s']:.2f} samples/s, step {s['mean']['time/step_s']:.2f}s  [{split}]")
    if "ladder" in report and "trl" in report:
        report["ratio"] = report["ladder"]["steady"]["samples_per_s"] / report["trl"]["steady"]["samples_per_s"]
        pairs = [theirs["time/step_s"] / ours["time/step_s"] for ours, theirs in
                 zip(report["ladder"]["steps"][args.warmup:], report["trl"]["steps"][args.warmup:])]
        report["step_ratios"] = pairs  # each step against the TRL step run right after it
        print(f" ratio: judge-ladder {report['ratio']:.2f}x TRL (samples/s); step by step "
              f"{min(pairs):.2f}-{max(pairs):.2f}x, median {statistics.median(pairs):.2f}x")
    write_report(report, args.out)


if __name__ == "__main__":
    main()
