"""Benchmark: an `init: previous` chain whose rungs learn by reward-filtered fine-tuning, offline (issue 34).

What a student can take from its judge's labels when it trains on them as directly as possible, the ceiling of
`train.advantage: filter` with the same labels: rung 1 samples 8 answers per training prompt of 4 terms, operands
0-5 (the student is the base model), keeps those the task's checker accepts and fine-tunes on them (expert
iteration). Every later rung is judged by the rung before: the judge (= the student's start) answers `--views`
reorderings of each training prompt `--samples` times at `--temperature` (the ladder's solve mode with views,
`stages.scoring.label_of`), a prompt whose majority share is at least `--min-share` is labelled, and its answers
that agree with the majority are the fine-tuning set; `--sure-share` keeps only that share of the prompts every
answer agreed on. The judge never reads a reference. Greedy accuracy on 512 held-out prompts of every level and on
a 0-9 yardstick (512 other prompts) after every rung; a rung's gain is its student's accuracy on its own level
minus its judge's (greedy).
Usage: python bench/distill_chain.py --base DIR [--levels 5,6,7,8,9] [--prompts 1024] [--views 4] [--samples 2]
       [--temperature 0.5] [--min-share 0.6] [--sure-share 1.0] [--steps 100] [--lr 5e-4] [--threads 2]
       [--save DIR] [--out F]
"""
import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from ladder.models.bootstrap import _max_tokens, _sft, greedy_answers  # noqa: E402
from ladder.tasks.arithmetic import build as build_arith, exact, final_answer  # noqa: E402
from stages.answers import same_answer  # noqa: E402
from stages.scoring import label_of  # noqa: E402
from stages.views import signed_sum_views  # noqa: E402

torch.set_num_threads(int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 2)


def generate(model, tok, prompts, n, temperature, max_new=44, batch=512):
    """`n` samples of each prompt at `temperature`, in batches of `batch` prompts."""
    tok.padding_side = "left"
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id, do_sample=True, temperature=temperature, top_k=0,
                                 num_return_sequences=n)
        texts = tok.batch_decode(ids[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
        out += [texts[j * n:(j + 1) * n] for j in range(len(chunk))]
    return out


def accuracy(model, tok, task, n=512):
    """Greedy accuracy on the first `n` held-out prompts (as the bootstrap measures it) and the share that writes
    its steps."""
    texts = greedy_answers(model, tok, task, n, _max_tokens(4))
    return task.accuracy(texts, [e.answer for e in task.eval[:n]]), sum(not t.startswith("#") for t in texts) / n


def level(max_operand, seed=1):
    return build_arith(terms=4, max_operand=max_operand, train_size=4000, eval_size=512, seed=seed)


def pairs_oracle(model, tok, task, m, samples, temperature, rng):
    rows = rng.sample(task.train, m)
    outs = generate(model, tok, [e.prompt for e in rows], samples, temperature)
    pairs = []
    for e, texts in zip(rows, outs):
        pairs += [(e.prompt, t) for t in set(texts) if exact(e.prompt, t, e.answer)]
    return pairs, {"kept_prompts": sum(any(exact(e.prompt, t, e.answer) for t in ts) for e, ts in zip(rows, outs)) / m}


def pairs_judged(model, tok, task, m, views, samples, temperature, min_share, rng, sure_share=1.0):
    rows = rng.sample(task.train, m)
    forms = [signed_sum_views(e.prompt, views) for e in rows]
    flat = [f for fs in forms for f in fs]
    outs = iter(generate(model, tok, flat, samples, temperature))
    pairs, kept, right = [], 0, 0
    for e, fs in zip(rows, forms):
        written = [(f, t) for f in fs for t in next(outs)]
        label = label_of([final_answer(t) for _, t in written], min_share)
        if label.majority is None or label.abstained:
            continue
        kept += 1
        right += same_answer(label.majority, e.answer)
        if label.share == 1.0 and rng.random() >= sure_share:
            continue
        pairs += list({(f, t) for f, t in written if same_answer(final_answer(t), label.majority)})
    return pairs, {"coverage": kept / m, "precision": right / max(kept, 1)}


def sft(model, tok, pairs, steps, lr, seed):
    triples = [(p, t, True) for p, t in pairs]
    _sft(model, tok, lambda rng: [rng.choice(triples) for _ in range(64)], steps, lr, seed, lambda m: None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--levels", default="5,6,7,8,9")
    ap.add_argument("--prompts", type=int, default=1024)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--min-share", type=float, default=0.6)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--rounds", type=int, default=1, help="label-and-train rounds a rung; after the first the student "
                    "labels its own next round (an online judge, as SRT)")
    ap.add_argument("--sure-share", type=float, default=1.0)
    ap.add_argument("--save", default="")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "distill_chain.json"))
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.base)
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32).eval()
    ops = [int(x) for x in args.levels.split(",")]
    tasks = {m: level(m) for m in ops}
    yard = level(9, seed=9973)
    rng = random.Random(0)
    t0 = time.time()

    def measure(tag):
        row = {"version": tag, "yardstick": accuracy(model, tok, yard)[0]}
        for m in ops:
            row[f"0-{m}"], row[f"worked_0-{m}"] = accuracy(model, tok, tasks[m])
        row["t"] = round(time.time() - t0)
        print(json.dumps(row), flush=True)
        return row

    log = [measure("base")]
    for k, m in enumerate(ops, start=1):
        judge_acc = log[-1][f"0-{m}"]
        for r in range(args.rounds):
            if k == 1:
                pairs, stats = pairs_oracle(model, tok, tasks[m], args.prompts, 8, 1.0, rng)
            else:
                pairs, stats = pairs_judged(model, tok, tasks[m], args.prompts, args.views, args.samples,
                                            args.temperature, args.min_share, rng, args.sure_share)
            model.train()
            sft(model, tok, pairs, args.steps, args.lr, k * 10 + r)
            model.eval()
            row = measure(f"v{k}.{r}")
            if args.save:
                model.save_pretrained(f"{args.save}/v{k}"); tok.save_pretrained(f"{args.save}/v{k}")
            row.update(stats, pairs=len(pairs), judge_greedy=judge_acc, gain=row[f"0-{m}"] - judge_acc)
            print(json.dumps({"rung": k, "task": f"0-{m}", **stats, "pairs": len(pairs),
                              "gain_points": round(100 * (row[f'0-{m}'] - judge_acc), 1)}), flush=True)
            log.append(row)
    json.dump({"args": vars(args), "log": log}, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
