"""Benchmark: a verdict's cost against the vocabulary's size, reading two logprobs against the whole distribution.

One vLLM engine holds a tiny model whose vocabulary is padded to a real checkpoint's (151,936 tokens, Qwen2's) and
scores the same texts two ways, side by side: `logprob_token_ids=[yes, no]` (what the judge does) and
`logprobs=-1` (the whole next-token distribution, what it did before). Prints seconds and the ratio, checks both
give the same verdicts, writes bench/results/verdict_vocab.json.
Usage: python bench/verdict_vocab.py [--texts 64] [--vocab 151936]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int = 3):
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "verdict_vocab.json"))
    args = parser.parse_args()
    from ladder.models.tiny import build_tiny_model
    from ladder.tasks.arithmetic import build
    from stages.engine import ENGINE_ENV, use_private_tmp

    for key, value in ENGINE_ENV.items():
        os.environ.setdefault(key, value)
    use_private_tmp()  # vLLM's file store goes to a folder removed at exit
    from vllm import LLM, SamplingParams

    from stages.judge import JudgeConfig, verdict, verdict_scores

    with tempfile.TemporaryDirectory(prefix="verdict-bench-") as tmp:
        model = str(build_tiny_model(Path(tmp) / "wide", "small", seed=0, vocab_size=args.vocab))
        llm = LLM(model=model, dtype="float32", max_model_len=512, enforce_eager=True, max_logprobs=-1,
                  kv_cache_memory_bytes=2**28, enable_prefix_caching=False)
        tok = llm.get_tokenizer()
        yes, no = tok.get_vocab()["yes"], tok.get_vocab()["no"]
        cfg = JudgeConfig()
        task = build(4, 5, args.texts, 8, seed=0)
        texts = [cfg.render(r.prompt, r.solution) for r in task.train[: args.texts]]

        def whole():
            outs = llm.generate(texts, SamplingParams(max_tokens=1, logprobs=-1, temperature=1.0), use_tqdm=False)
            return [verdict(o.outputs[0].logprobs[0][yes].logprob, o.outputs[0].logprobs[0][no].logprob)
                    for o in outs]

        two_s, two = timed(lambda: verdict_scores(llm, texts, yes, no))
        whole_s, full = timed(whole)
    assert max(abs(a - b) for a, b in zip(two, full)) < 1e-5, "both ways must give the same verdicts"
    print(f"{len(texts)} verdicts, vocabulary {args.vocab}: two logprobs {two_s:.3f}s, whole distribution "
          f"{whole_s:.3f}s: {whole_s / two_s:.1f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"texts": len(texts), "vocab": args.vocab, "two_logprobs_s": two_s,
                               "whole_distribution_s": whole_s, "speedup": whole_s / two_s}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
