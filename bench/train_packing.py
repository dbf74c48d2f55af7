"""Benchmark: the train stage with samples packed end to end against one sample per (padded) row.

The untrained `bench`-size model (~19M parameters), 8 prompts x 4 samples of the builtin arithmetic task,
completions of random tokens with lengths spread as an untrained model's are (a quarter cut off at 128, the
rest uniform from 1 to 127), KL weight 0.04, one update per batch. Both layouts run in this process, step by
step in turn, on the same batches; the baseline lays each sample in a row of its own, padded to the longest
(the layout before packing). Prints the mean train-step seconds of both and their ratio, and writes
bench/results/train_packing.json. The losses of both are compared (the same update).

Usage: python bench/train_packing.py [--steps 6] [--warmup 1]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from grpo_vs_trl import GROUP, KL, MAX_TOKENS, PROMPTS, write_report  # noqa: E402  (the setup both share)


def batches(tokenizer, steps: int, seed: int = 0):
    from stages.batches import JudgedBatch, RolloutBatch, Sample
    from ladder.tasks.arithmetic import build

    rng = random.Random(seed)
    task = build(terms=4, max_operand=5, train_size=PROMPTS * steps, eval_size=8, seed=1)
    vocab = [i for i in range(tokenizer.vocab_size) if i not in tokenizer.all_special_ids]
    out = []
    for k in range(steps):
        samples, groups = [], []
        for g, row in enumerate(task.train[PROMPTS * k: PROMPTS * (k + 1)]):
            prompt = tuple(tokenizer.encode(row.prompt, add_special_tokens=False))
            for _ in range(GROUP):
                n = MAX_TOKENS if rng.random() < 0.25 else rng.randint(1, MAX_TOKENS - 1)
                samples.append(Sample(prompt, tuple(rng.choice(vocab) for _ in range(n)), "", ()))
                groups.append(g)
        scores = tuple(rng.random() for _ in samples)
        out.append(JudgedBatch(RolloutBatch(("",) * len(samples), (None,) * len(samples), tuple(samples),
                                            tuple(groups)), scores))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out of the means")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_packing.json"))
    args = parser.parse_args()
    import stages.train as train
    from ladder.models.tiny import build_tiny_model

    packed_rows = train.fill_rows

    def one_per_row(lengths, width):  # the baseline: every sample alone in its row, padded to `width`
        return [[i] for i in sorted(range(len(lengths)), key=lambda i: -lengths[i])]

    cfg = train.TrainConfig(lr=1e-5, kl_coef=KL)
    with tempfile.TemporaryDirectory(prefix="packing-bench-") as tmp:
        model = str(build_tiny_model(Path(tmp) / "bench-model", "bench", seed=0))
        trainers = {"packed": train.Trainer(model, cfg, seed=0), "padded": train.Trainer(model, cfg, seed=0)}
        layouts = {"packed": packed_rows, "padded": one_per_row}
        work = batches(trainers["packed"].tokenizer, args.steps)
        rows: dict[str, list[dict]] = {k: [] for k in trainers}
        for step, judged in enumerate(work, 1):
            for name, trainer in trainers.items():
                train.fill_rows = layouts[name]
                t0 = time.perf_counter()
                stats = trainer.step(judged)
                rows[name].append({"train_s": time.perf_counter() - t0, "loss": stats.loss})
            train.fill_rows = packed_rows
            lengths = [len(s.prompt_ids) + len(s.completion_ids) for s in judged.rollout.samples]
            print(f"  step {step}: packed {rows['packed'][-1]['train_s']:.2f}s, padded "
                  f"{rows['padded'][-1]['train_s']:.2f}s ({sum(lengths)} tokens, "
                  f"{len(packed_rows(lengths, max(lengths)))} packed rows of {max(lengths)})", flush=True)
    mean = {k: statistics.fmean(r["train_s"] for r in v[args.warmup:]) for k, v in rows.items()}
    report = {"setup": {"model": "bench (untrained)", "prompts": PROMPTS, "group": GROUP, "max_new_tokens": MAX_TOKENS,
                        "kl": KL, "steps": args.steps, "warmup_left_out": args.warmup, "cores": os.cpu_count()},
              "steps": rows, "mean_train_s": mean, "speedup": mean["padded"] / mean["packed"],
              "max_loss_difference": max(abs(a["loss"] - b["loss"]) for a, b in zip(rows["packed"], rows["padded"]))}
    print(f"train step: packed {mean['packed']:.2f}s, padded {mean['padded']:.2f}s: "
          f"packing {report['speedup']:.2f}x (losses equal within {report['max_loss_difference']:.1e})")
    write_report(report, args.out)


if __name__ == "__main__":
    main()
