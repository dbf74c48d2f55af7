"""Benchmark: a bootstrap SFT step in two runs of similar length (`_backward`) vs the whole batch padded as one.

Both run side by side in this script, alternating, on the same batches of the test model's recipe (4-term
arithmetic, operands 0-5, 60% bare answers) with one torch thread; prints the ratio and writes
bench/results/bootstrap_step.json. The two give the same gradient (tests/unit/test_bootstrap.py).
Usage: python bench/bootstrap_step.py [--size micro] [--batches 40] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="micro", help="tiny model size (nano, micro, small, bench)")
    parser.add_argument("--batches", type=int, default=40, help="batches of 64 per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (whole, runs), alternating")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bootstrap_step.json"))
    args = parser.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ladder.models.bootstrap import _backward, _examples
    from ladder.models.tiny import build_tiny_model
    from ladder.tasks.arithmetic import build

    torch.set_num_threads(1)
    model_dir = build_tiny_model(Path(tempfile.mkdtemp(prefix="bench-bootstrap-")) / "m", size=args.size)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    task = build(terms=4, max_operand=5, train_size=4000, eval_size=128, seed=1)
    rng = random.Random(0)
    batches = [_examples(task, "{prompt}{response}\nok?", rng, 64, "yes", "no", 0.0, 0.6) for _ in range(args.batches)]
    seconds = {"whole": [], "runs": []}
    for _ in range(args.rounds):
        for kind, parts in (("whole", 1), ("runs", 2)):
            t0 = time.perf_counter()
            for batch in batches:
                model.zero_grad(set_to_none=True)
                _backward(model, tok, batch, parts)
            seconds[kind].append((time.perf_counter() - t0) / len(batches))
    whole, runs = min(seconds["whole"]), min(seconds["runs"])
    result = {"size": args.size, "batch": 64, "threads": 1, "whole_s_per_step": round(whole, 4),
              "runs_s_per_step": round(runs, 4), "speedup": round(whole / runs, 3), "all": seconds}
    print(f"bootstrap step ({args.size}, batch 64, 1 thread): whole batch {whole:.3f} s, two runs {runs:.3f} s "
          f"-> {whole / runs:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
