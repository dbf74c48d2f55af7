"""Benchmark: is a curriculum in length, or a judge that decomposes a sum, open to the tiny model? (issue 34)

Two probes of what the demo's arithmetic model can do outside the 4-term problems it is taught:
- length: bootstrap a base (`ladder bootstrap`'s recipe, 4 terms, operands 0-5) that has also seen other lengths
  (`--level TERMS:SHARE`, operands 0-5), then measure greedy accuracy per number of terms (`--terms`) on 256
  held-out prompts each, as the model answers (mostly bare, `#7`) and forced to work its steps (its answer begun
  with the prompt's first operand): a length curriculum needs a model whose worked steps carry over to one more
  term than it was taught;
- decompose (`--model DIR --decompose`): the model's label of 4-term prompts built from its own answers to each
  step of the sum asked alone (`Q:17+8\nA:`, and padded to 4 terms, `Q:17+8+0+0\nA:`), chained: a judge that
  splits a problem into easier ones labels better than it answers only if it answers the easier ones.
Usage: python bench/length_probe.py --out DIR [--steps 1200] [--level 2:0.15 --level 3:0.15] [--terms 3,4,5,6,7]
       python bench/length_probe.py --model DIR --decompose [--max-operand 9]
       (one JSON line per run, appended to --json, default bench/results/length_probe.jsonl)
"""
import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from ladder.models.bootstrap import _max_tokens, bootstrap  # noqa: E402
from ladder.tasks.arithmetic import build, final_answer  # noqa: E402
from stages.answers import same_answer  # noqa: E402
from stages.views import signed_terms  # noqa: E402

torch.set_num_threads(2)


def greedy(model, tok, prompts, max_new):
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
    return tok.batch_decode(ids[:, enc.input_ids.shape[1]:], skip_special_tokens=True)


def share_right(answers, rows) -> float:
    return round(sum(same_answer(final_answer(a), e.answer) for a, e in zip(answers, rows)) / len(rows), 3)


def per_length(model, tok, terms: list[int], n: int = 256) -> dict:
    """Per number of terms (operands 0-5): greedy accuracy, the share of greedy answers that work their steps, and
    accuracy when forced to work them."""
    out = {}
    for t in terms:
        rows = build(t, 5, 10, n, 1).eval[:n]
        bare = greedy(model, tok, [e.prompt for e in rows], _max_tokens(t))
        first = [re.match(r"Q:(\d+)", e.prompt).group(1) for e in rows]
        forced = [f + a for f, a in zip(first, greedy(model, tok, [e.prompt + f for e, f in zip(rows, first)],
                                                      _max_tokens(t)))]
        out[str(t)] = {"greedy": share_right(bare, rows), "worked_share": round(sum(
            not a.startswith("#") for a in bare) / n, 2), "forced_worked": share_right(forced, rows),
            "example": [rows[0].prompt, forced[0]]}
        print(t, out[str(t)], flush=True)
    return out


def chained_label(model, tok, prompts, form: str) -> list:
    """Each prompt's label from the model's answers to its sum's steps asked one at a time (`form` writes a step's
    prompt from its running total, sign and term), each step starting from the model's last answer."""
    terms = [signed_terms(re.match(r"Q:(.*)\nA:", p).group(1)) for p in prompts]
    totals = [t[0][1] for t in terms]
    for k in range(1, len(terms[0])):
        live = [i for i, total in enumerate(totals) if total is not None]
        if not live:
            break
        answers = greedy(model, tok, [form.format(totals[i], *terms[i][k]) for i in live], 40)
        for i, a in zip(live, answers):
            a = final_answer(a)
            totals[i] = int(a) if a is not None and re.fullmatch(r"-?\d+", a) else None
    return [None if t is None else str(t) for t in totals]


def decompose(model, tok, max_operand: int, n: int = 512) -> dict:
    rows = build(4, max_operand, 10, n, 1).eval[:n]
    out = {"greedy": share_right(greedy(model, tok, [e.prompt for e in rows], 48), rows)}
    for name, form in (("steps_alone", "Q:{}{}{}\nA:"), ("steps_padded", "Q:{}{}{}+0+0\nA:")):
        labels = chained_label(model, tok, [e.prompt for e in rows], form)
        out[name] = round(sum(same_answer(a, e.answer) for a, e in zip(labels, rows)) / n, 3)
        out[name + "_example"] = greedy(model, tok, [form.format(17, "+", 8)], 40)[0]
    print(out, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="where to bootstrap the probe's base")
    ap.add_argument("--model", help="measure this model instead of bootstrapping one")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--direct-share", type=float, default=0.6)
    ap.add_argument("--level", action="append", default=[], help="TERMS:SHARE, operands 0-5")
    ap.add_argument("--terms", default="3,4,5,6,7")
    ap.add_argument("--decompose", action="store_true")
    ap.add_argument("--max-operand", type=int, default=9)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "length_probe.jsonl"))
    args = ap.parse_args()
    t0, record = time.time(), {}
    model_dir = args.model
    if not model_dir:
        levels = tuple((int(t), 5, float(s)) for t, s in (lv.split(":") for lv in args.level))
        bootstrap(args.out, steps=args.steps, seed=0, terms=4, max_operand=5, direct_share=args.direct_share,
                  judge_share=0.0, levels=levels, log=print)
        model_dir = args.out
        record["base"] = {"steps": args.steps, "terms": 4, "max_operand": 5, "direct_share": args.direct_share,
                          "levels": [list(lv) for lv in levels]}
    recipe = Path(model_dir) / "bootstrap.json"
    if "base" not in record and recipe.is_file():
        record["base"] = json.loads(recipe.read_text()).get("recipe")
    record["model"] = Path(model_dir).name
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if args.decompose:
        record["decompose"] = {"max_operand": args.max_operand, **decompose(model, tok, args.max_operand)}
    else:
        record["per_length"] = per_length(model, tok, [int(t) for t in args.terms.split(",")])
    record["seconds"] = round(time.time() - t0)
    with open(args.json, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
