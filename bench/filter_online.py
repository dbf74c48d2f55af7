"""Benchmark: why a rung's reward-filtered training can lose what offline fine-tuning gains (issue 34).

From one start model, on one task, with the task's checker as the judge (the best label there is), greedy accuracy
on 512 held-out prompts after each way of training on the start's own right answers (T = `--temperature`):
- offline: 8 samples of each of 1024 training prompts drawn once from the start, the right ones kept (each distinct
  answer of a prompt once), then `--steps` AdamW steps of 64 pairs (one-cycle, `--lr`): expert iteration;
- online: every step samples `--prompts` fresh prompts x 8 from the current model and takes one AdamW step on its
  right answers (all of them, or each distinct one once with `--dedupe`): a `train.advantage: filter` rung;
  with `--sampler start` the samples come from a frozen copy of the start instead (what `judge.solve_distill`
  gives a rung whose judge is its start, `init: previous`); with `--label views` a sample is right when it agrees
  with the sampler's own label instead of the checker (it answers 8 reorderings of the prompt twice at T=0.5, the
  majority, no label below a 0.5 share: the demo's judge rule), so the start judges itself; with `--label facts` the
  label is chained through the start's own table of one-step facts (every `a op b = c` its answers to 8 reorderings
  x 2 of 1024 training prompts write, the most common result of each), the start judging itself step by step.
  `--compose` (offline) trains on the worked answers that table writes (each step the start's most common result)
  instead of the start's samples; `--save DIR` keeps the student for the next round (`--base DIR`).
Usage: python bench/filter_online.py --base DIR [--level 9] [--mode offline|online] [--prompts 16] [--lr 5e-4]
       [--steps 60] [--temperature 0.5] [--dedupe] [--sampler current|start] [--label checker|views|facts] [--misses]
       [--compose] [--measure-labels]
       [--save DIR]
       [--out F]
       (one JSON line per run, appended to --out)
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
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from distill_chain import accuracy, generate, level, sft  # noqa: E402
from ladder.models.bootstrap import _backward  # noqa: E402
from ladder.tasks.arithmetic import final_answer  # noqa: E402
from stages.answers import same_answer  # noqa: E402
from stages.scoring import label_of  # noqa: E402
from stages.steps import signed_sum_compose, signed_sum_steps, table_of  # noqa: E402
from stages.views import signed_sum_views  # noqa: E402

torch.set_num_threads(2)


def views_labels(model, tok, rows):
    """The model's own label of each row: the majority of its answers to 8 reorderings x 2 samples at T=0.5, None
    below a 0.5 share (`stages.scoring.label_of`, the ladder's solve mode with views)."""
    forms = [signed_sum_views(e.prompt, 8) for e in rows]
    outs = iter(generate(model, tok, [f for fs in forms for f in fs], 2, 0.5))
    labels = [label_of([final_answer(t) for _ in fs for t in next(outs)], 0.5) for fs in forms]
    return [None if lab.majority is None or lab.abstained else lab.majority for lab in labels]


def fact_table(model, tok, rows) -> dict:
    """The model's own table of one-step facts from every vote (`stages.steps`): every `a op b = c` its answers to 8
    reorderings x 2 samples at T=0.5 of `rows` write, the most common result of each."""
    return fact_tables(model, tok, rows)[0]


def fact_tables(model, tok, rows, share: float = 0.5) -> tuple:
    """(every vote's table, the table of the votes of answers that agree with their prompt's views majority, backed by
    the first for the steps it lacks): one pass of 8 reorderings x 2 samples at T=0.5 of `rows`."""
    forms = [signed_sum_views(e.prompt, 8) for e in rows]
    outs = iter(generate(model, tok, [f for fs in forms for f in fs], 2, 0.5))
    texts = [[t for _ in fs for t in next(outs)] for fs in forms]
    every = table_of(signed_sum_steps(t) for ts in texts for t in ts)
    agreed = []
    for ts in texts:
        lab = label_of([final_answer(t) for t in ts], share)
        if lab.majority is not None and not lab.abstained:
            agreed += [signed_sum_steps(t) for t in ts if same_answer(final_answer(t) or "", lab.majority)]
    return every, {**every, **table_of(agreed)}


def fact_labels(table, rows):
    """Each row's label chained through the table from its first term (None where a step is not in it)."""
    return [final_answer(w) if (w := signed_sum_compose(e.prompt, table)) else None for e in rows]


def composed(table, rows) -> list:
    """(prompt, worked answer) for each row the table covers: its steps written from the table's results, the
    start's most common answer to each step, in the task's worked format (`4+1=5,5-5=0#0`)."""
    return [(e.prompt, w) for e in rows if (w := signed_sum_compose(e.prompt, table))]


def greedy_finals(model, tok, prompts):
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=44, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
    return [final_answer(t) for t in tok.batch_decode(ids[:, enc.input_ids.shape[1]:], skip_special_tokens=True)]


def right_answers(model, tok, rows, temperature, dedupe, label="checker", misses=False):
    """(prompt, answer) for each of 8 samples of each row that the checker accepts, or that agrees with the model's
    own views label (each distinct one once with `dedupe`); with `misses`, of the rows whose greedy answer the
    label (or the checker) does not accept only."""
    outs = generate(model, tok, [e.prompt for e in rows], 8, temperature)
    labels = views_labels(model, tok, rows) if label == "views" else fact_labels(label, rows) \
        if isinstance(label, dict) else [e.answer for e in rows]
    if misses:
        finals = greedy_finals(model, tok, [e.prompt for e in rows])
        labels = [lab if lab is not None and not same_answer(f or "", lab) else None for f, lab in zip(finals, labels)]
    pairs = []
    for i, (e, texts) in enumerate(zip(rows, outs)):
        ok = [t for t in texts if labels[i] is not None and same_answer(final_answer(t) or "", labels[i])]
        pairs += [(e.prompt, t) for t in (sorted(set(ok)) if dedupe else ok)]
    return pairs


def composed_views(table, rows, right) -> dict:
    """Labels composed through the table along each of 8 orders of a prompt's terms (its views): their majority,
    and the original order's where it agrees with that majority (else none)."""
    finals = [[final_answer(w) if (w := signed_sum_compose(v, table)) else None for v in signed_sum_views(e.prompt, 8)]
              for e in rows]
    majority = [label_of(f, 0.0).majority for f in finals]
    strong = [label_of(f, 0.5) for f in finals]
    agreeing = [f[0] if f[0] is not None and m is not None and same_answer(f[0], m) else None
                for f, m in zip(finals, majority)]
    n = len(rows)
    return {"composed_views_right": round(sum(right(majority)) / n, 3),
            "composed_views_half_labelled": round(sum(not s.abstained and s.majority is not None for s in strong) / n, 3),
            "composed_views_half_right": round(sum(right([None if s.abstained else s.majority for s in strong])) / n, 3),
            "composed_agreeing_labelled": round(sum(a is not None for a in agreeing) / n, 3),
            "composed_agreeing_right": round(sum(right(agreeing)) / n, 3)}


def label_accuracy(model, tok, task, rng) -> dict:
    """The start's labels of 512 held-out prompts against the reference: views (share labelled, share right) and
    facts (from a table pooled over 1024 training prompts), and where facts fixes the greedy answer."""
    rows, table = task.eval[:512], fact_table(model, tok, rng.sample(task.train, 1024))

    def right(labels):
        return [lab is not None and same_answer(lab, e.answer) for lab, e in zip(labels, rows)]

    views, facts = views_labels(model, tok, rows), fact_labels(table, rows)
    table_agreed = fact_tables(model, tok, rng.sample(task.train, 1024))[1]
    agreed = fact_labels(table_agreed, rows)
    strict = fact_labels(fact_tables(model, tok, rng.sample(task.train, 1024), 0.75)[1], rows)
    agreed512 = fact_labels(fact_tables(model, tok, rng.sample(task.train, 512))[1], rows)
    greedy = right(greedy_finals(model, tok, [e.prompt for e in rows]))
    share = lambda flags: round(sum(flags) / len(rows), 3)  # noqa: E731
    return {"measure": "labels", "greedy": share(greedy), "views_labelled": share([v is not None for v in views]),
            "views_right": share(right(views)), "facts_labelled": share([f is not None for f in facts]),
            "facts_right": share(right(facts)), "facts_fix": share([f and not g for f, g in zip(right(facts), greedy)]),
            # the views majority where it is sure (share >= 0.5), the composed answer elsewhere
            "views_then_facts_right": share(right([v if v is not None else f for v, f in zip(views, facts)])),
            "facts_of_256_right": share(right(fact_labels(fact_table(model, tok, rng.sample(task.train, 256)), rows))),
            "agreed_facts_right": share(right(agreed)), "agreed_075_facts_right": share(right(strict)),
            "agreed_facts_of_512_right": share(right(agreed512)),
            **composed_views(table_agreed, rows, right),
            "views_then_agreed_right": share(right([v if v is not None else f for v, f in zip(views, agreed)]))}


def online(model, tok, task, args, rng):
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    kept, sampler = [], copy.deepcopy(model).eval() if args.sampler == "start" else model
    label = fact_table(model, tok, rng.sample(task.train, 1024)) if args.label == "facts" else args.label
    for _ in range(args.steps):
        model.eval()
        pairs = right_answers(sampler, tok, rng.sample(task.train, args.prompts), args.temperature, args.dedupe,
                              label, args.misses)
        kept.append(len(pairs))
        model.train()
        opt.zero_grad(set_to_none=True)
        if pairs:
            _backward(model, tok, [(p, t, True) for p, t in pairs])
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        sched.step()
    model.eval()
    return {"pairs_first_10_steps": sum(kept[:10]), "pairs_last_10_steps": sum(kept[-10:])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--level", type=int, default=9, help="operands 0-LEVEL, 4 terms")
    ap.add_argument("--mode", choices=("offline", "online"), default="online")
    ap.add_argument("--prompts", type=int, default=16, help="online: prompts a step")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--dedupe", action="store_true")
    ap.add_argument("--label", choices=("checker", "views", "facts"), default="checker",
                    help="which samples are right: the task's checker, the sampler's own label (8 views x 2), or "
                         "the start's own fact table (online: pooled from its answers to 1024 training prompts)")
    ap.add_argument("--misses", action="store_true", help="online: train only on prompts whose greedy answer "
                    "the label (or the checker) does not accept")
    ap.add_argument("--sampler", choices=("current", "start"), default="current",
                    help="online: sample from the model being trained, or from a frozen copy of the start")
    ap.add_argument("--compose", action="store_true", help="offline: train on worked answers written from the "
                    "start's fact table (each step its most common result) instead of its samples")
    ap.add_argument("--offline-prompts", type=int, default=1024, help="offline --compose: training prompts "
                    "(the table is learnt from them too)")
    ap.add_argument("--measure-labels", action="store_true", help="no training: the start's views and facts "
                    "labels of 512 held-out prompts, against the reference and its greedy answers")
    ap.add_argument("--save", help="save the trained model here (the next round's --base)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "filter_online.jsonl"))
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.base)
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32).eval()
    task, rng, t0 = level(args.level), random.Random(0), time.time()
    row = {**{k: v for k, v in vars(args).items() if k not in ("base", "out", "save")},
           "before": accuracy(model, tok, task)[0]}
    if args.measure_labels:
        row = {"level": args.level, **label_accuracy(model, tok, task, rng)}
    elif args.mode == "offline" and args.compose:
        rows = rng.sample(task.train, args.offline_prompts)
        pairs = composed(fact_table(model, tok, rows), rows)
        model.train()
        sft(model, tok, pairs, args.steps, args.lr, 0)
        model.eval()
        row["pairs"] = len(pairs)
    elif args.mode == "offline":
        pairs = right_answers(model, tok, rng.sample(task.train, 1024), args.temperature, True, args.label)
        model.train()
        sft(model, tok, pairs, args.steps, args.lr, 0)
        model.eval()
        row["pairs"] = len(pairs)
    else:
        row.update(online(model, tok, task, args, rng))
    if not args.measure_labels:
        row.update(after=accuracy(model, tok, task)[0])
        row["gain_points"] = round(100 * (row["after"] - row["before"]), 1)
    row["seconds"] = round(time.time() - t0)
    if args.save:
        model.save_pretrained(args.save)
        tok.save_pretrained(args.save)
    print(json.dumps(row), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
