"""Benchmark: how good a judge's labels are, per label rule, before any training (design §10).

For a judge model (one directory, or several with `--committee`) and the built-in arithmetic task, on held-out
prompts (or, `--split train`, prompts of the training half: what a rung's judge labels): the judge's greedy
accuracy, and per label rule (temperature x samples, equivalent views of a prompt, a committee, each with an
abstention threshold `min_share`) the label accuracy, the coverage (prompts labelled), the precision on what is
labelled, the margin over greedy on those prompts, and the net gain G = P(label right, greedy wrong) - P(label
wrong, greedy right) over all prompts: what a student that starts as its judge can learn (a rule with G <= 0
cannot lift an `init: previous` rung). The judge's prompts are rendered and answered as the ladder's solve mode
does (`stages.scoring.solve_labels`: the solve template, the model's chat template, seeded sampling, the task's
views, answers read with the task's answer pattern); labels are `stages.scoring.label_of`. The judge never reads a
reference; references only score the labels.
Usage: python bench/label_quality.py --judge DIR [--committee DIR ...] --terms 4 --max-operand 7 [--prompts 512]
       [--split heldout|train] [--temperatures 0.3,0.7,1.0] [--samples 8] [--views 8] [--view-temperatures 0.5]
       [--view-samples 2] [--rollout-temperature 1.0] [--step-prompts 1024] [--step-votes 0,5] [--note TEXT] [--out F]
Writes bench/results/label_quality_<terms>x<max_operand>.json (or `--out`).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARES = (0.0, 0.5, 0.6, 0.75)  # abstention thresholds tried on every rule


class LocalPool:
    """What `solve_labels` needs of a judge pool, in this process: one judge worker, its chat renderer, the
    task's views."""

    def __init__(self, worker, chat, views):
        self.worker, self.chat, self.views = worker, chat, views

    def map(self, method: str, items: list, *args) -> list:
        return getattr(self.worker, method)(items, *args)


def chat_renderer(model_dir: str):
    """The judge's prompt as the ladder renders it with `judge.chat.template: auto` and no system prompt: a user
    turn of the model's chat template when it has one (`ladder/prompts.py`), else the text itself."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not getattr(tokenizer, "chat_template", None):
        return lambda text: text
    return lambda text: tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)


def start_judge(model_dir: str, max_tokens: int, seed: int):
    from stages.engine import EngineConfig
    from stages.judge import JudgeConfig, JudgeWorker
    from stages.scoring import SolveMode

    engine = EngineConfig(model=model_dir, seed=seed, kv_cache_gib=0.5, max_model_len=128 + max_tokens)
    return JudgeWorker(engine, JudgeConfig(SolveMode(solve_max_tokens=max_tokens)))


def answers(pool, prompts: Sequence[str], samples: int, temperature: float, views: int, max_tokens: int,
            pattern: str) -> list[list[list[Optional[str]]]]:
    """[prompt][view][sample] final answers the judge writes, through the ladder's own `solve_labels`."""
    from stages.scoring import SolveMode, solve_labels, views as forms_of

    cfg = SolveMode(solve_samples=samples, solve_temperature=temperature, solve_views=views,
                    solve_max_tokens=max_tokens)
    labels, _, _ = solve_labels(pool, cfg, prompts, pattern)
    out = []
    for p, label in zip(prompts, labels):
        k = len(forms_of(pool, p, views))
        out.append([list(label.answers[v * samples:(v + 1) * samples]) for v in range(k)])
    return out


def score_rule(name: str, votes: list[list[Optional[str]]], refs: Sequence[str], greedy_right: Sequence[bool],
               min_share: float, rollouts: Sequence[Sequence[Optional[str]]] = (), **about) -> dict:
    """One rule's numbers: each prompt's label is `label_of` its votes at `min_share`. With `rollouts` (the
    answers of the student's own samples of each prompt, at the rollout temperature), also the gain the student
    can reach: GRPO only reinforces answers it samples, so a label it never samples teaches nothing, and a wrong
    label it does sample (the model's own typical slip) is learned like a right one (`reach`)."""
    from stages.answers import same_answer
    from stages.scoring import label_of

    n = len(refs)
    labels = [label_of(v, min_share) for v in votes]
    right = [lab.majority is not None and same_answer(lab.majority, r) for lab, r in zip(labels, refs)]
    kept = [not lab.abstained for lab in labels]
    n_kept = sum(kept)
    diffs = [(int(r) - int(g)) if k else 0 for r, g, k in zip(right, greedy_right, kept)]
    gain = sum(diffs) / n
    sd = math.sqrt(sum((d - gain) ** 2 for d in diffs) / max(1, n - 1))
    precision = sum(r for r, k in zip(right, kept) if k) / max(1, n_kept)
    greedy_kept = sum(g for g, k in zip(greedy_right, kept) if k) / max(1, n_kept)
    return {"rule": name, **about, "min_share": min_share, "label_accuracy": sum(right) / n,
            "coverage": n_kept / n, "precision": precision, "greedy_on_kept": greedy_kept,
            "margin": precision - greedy_kept, "net_gain": gain, "net_gain_ci95": 1.96 * sd / math.sqrt(n),
            **(reach(labels, diffs, rollouts) if rollouts else {})}


def reach(labels, diffs: Sequence[int], rollouts: Sequence[Sequence[Optional[str]]]) -> dict:
    """Of the net gain, what the student's samples reach: each fix (+1) and break (-1) weighted by the share of the
    student's samples that write the label (the share of its group GRPO pushes toward it); and the plain counts of
    fixes and breaks whose label it samples at all."""
    from stages.answers import same_answer

    n = len(diffs)
    hit = [sum(a is not None and lab.majority is not None and same_answer(a, lab.majority) for a in rs) / len(rs)
           for lab, rs in zip(labels, rollouts)]
    return {"reach_gain": sum(d * h for d, h in zip(diffs, hit)) / n,
            "fixes_reached": sum(d > 0 and h > 0 for d, h in zip(diffs, hit)) / n,
            "fixes": sum(d > 0 for d in diffs) / n,
            "breaks_reached": sum(d < 0 and h > 0 for d, h in zip(diffs, hit)) / n,
            "breaks": sum(d < 0 for d in diffs) / n}


def step_votes(pool, prompts, args, pattern: str) -> dict[int, list[list[Optional[str]]]]:
    """Each prompt's step-votes label (`judge.solve_steps`) as one vote, per `--step-votes` K
    (`judge.solve_step_votes`): the majority of the answers the judge's step table composes along `--views` orders
    of its terms (`stages.steps.composed_label`, none where nothing composes), the table the ladder's own
    `voted_table` keeps from its answers to `--step-prompts` training prompts (`--views` reorderings x
    `--view-samples` at the first view temperature), written once for every K."""
    from ladder.tasks.arithmetic import build
    from stages.judge import step_answers
    from stages.scoring import SolveMode, views as forms_of
    from stages.steps import SIGNED_SUM_STEPS, composed_label, voted_table

    train = list({r.prompt: r for r in build(args.terms, args.max_operand, 4 * args.step_prompts, 1,
                                                   args.seed + 1).train}.values())[:args.step_prompts]
    cfg = SolveMode(solve_samples=args.view_samples, solve_temperature=args.view_temperatures[0],
                    solve_views=args.views, solve_max_tokens=args.max_tokens, solve_steps=len(train))
    answers = step_answers(pool, cfg, [r.prompt for r in train], SIGNED_SUM_STEPS, pattern)  # the ladder's own
    out = {}
    for k in args.step_votes:
        table = voted_table(answers, k)
        labels = [composed_label(forms_of(pool, p, args.views), SIGNED_SUM_STEPS.compose, table, pattern)[0]
                  for p in prompts]
        out[k] = [[label.majority] for label in labels]  # the ladder's label of each prompt, one vote
    return out


def rules(greedy_views, sampled, view_sampled, committee, refs, greedy_right, args, steps=None) -> list[dict]:
    """Every label rule of this run at every abstention threshold."""
    out = []

    rollouts = [p[0] for p in sampled.get(args.rollout_temperature, [])]  # the student's samples (it is the judge)

    def add(name, votes, **about):
        out.extend(score_rule(name, votes, refs, greedy_right, s, rollouts, **about) for s in SHARES)

    # the exact checker's label (the reference): the ceiling, and how much of it the student's samples reach
    out.append(score_rule("oracle (the reference)", [[r] for r in refs], refs, greedy_right, 0.0, rollouts,
                          temperature=None, samples=0, views=0))

    for k in sorted({3, 5, 6, 8, 12, args.views}):
        if k <= args.views:
            add(f"views{k} greedy", [[v[0] for v in p[:k]] for p in greedy_views], temperature=0.0, samples=1, views=k)
    for t, per_prompt in sampled.items():
        for n in sorted({4, 8, args.samples}):
            if n <= args.samples:
                add(f"T={t} n={n}", [p[0][:n] for p in per_prompt], temperature=t, samples=n, views=1)
    for t, per_prompt in view_sampled.items():
        for n in sorted({2, args.view_samples}):
            if n <= args.view_samples:
                add(f"views{args.views} T={t} n={n}", [[a for v in p for a in v[:n]] for p in per_prompt],
                    temperature=t, samples=n, views=args.views)
    for k, votes in (steps or {}).items():
        out.append(score_rule(f"step votes ({args.step_prompts} prompts, views{args.views} T="
                              f"{args.view_temperatures[0]} n={args.view_samples}"
                              f"{f', steps >= {k} votes' if k else ''})", votes, refs, greedy_right, 0.0,
                              rollouts, temperature=args.view_temperatures[0], samples=args.view_samples,
                              views=args.views, step_prompts=args.step_prompts, step_votes=k))
    if committee:
        members = len(committee) + 1
        add(f"committee{members} greedy", [[m[i][0][0] for m in [greedy_views, *committee]] for i in range(len(refs))],
            temperature=0.0, samples=1, views=1, committee=members)
        add(f"committee{members} x views{args.views} greedy",
            [[v[0] for m in [greedy_views, *committee] for v in m[i]] for i in range(len(refs))],
            temperature=0.0, samples=1, views=args.views, committee=members)
    return out


def task_prompts(terms: int, max_operand: int, n: int, seed: int, split: str) -> tuple[list[str], list[str]]:
    """`n` distinct prompts of the arithmetic task and their answers: held-out ones (never trained on), or from the
    training half (what a rung's judge labels)."""
    from ladder.tasks.arithmetic import build

    if split == "heldout":
        rows = build(terms, max_operand, 1, n, seed).eval
    else:
        rows = list({r.prompt: r for r in build(terms, max_operand, 4 * n, 1, seed).train}.values())[:n]
    return [r.prompt for r in rows], [r.answer for r in rows]


def heldout_views(pool, prompts, greedy_views, refs, k: int) -> dict:
    """Greedy accuracy of the other views (not the prompt itself) whose text is held out and of those whose text is
    in the training half: a reordering may be a prompt the judge was trained on (design: split by text)."""
    from ladder.tasks.arithmetic import is_heldout
    from stages.answers import same_answer
    from stages.scoring import views as forms_of

    right: dict[bool, list[bool]] = {True: [], False: []}
    for p, answers_of, r in zip(prompts, greedy_views, refs):
        for form, written in list(zip(forms_of(pool, p, k), answers_of))[1:]:
            right[is_heldout(form)].append(same_answer(written[0], r))
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {"other_views_heldout_accuracy": mean(right[True]), "other_views_heldout_n": len(right[True]),
            "other_views_train_accuracy": mean(right[False]), "other_views_train_n": len(right[False])}


def view_diagnostics(greedy_views, refs) -> dict:
    """Greedy accuracy of each view position, and the mean correlation of the errors of view 0 and each other."""
    from stages.answers import same_answer

    k = max(len(p) for p in greedy_views)
    wrong = [[None if j >= len(p) else not same_answer(p[j][0], r) for j in range(k)]
             for p, r in zip(greedy_views, refs)]
    accuracy = [1 - sum(w[j] for w in wrong if w[j] is not None) / max(1, sum(w[j] is not None for w in wrong))
                for j in range(k)]
    corr = [phi([(w[0], w[j]) for w in wrong if w[j] is not None]) for j in range(1, k)]
    return {"view_accuracy": accuracy, "error_correlation_with_view0": corr}


def phi(pairs: list[tuple[bool, bool]]) -> Optional[float]:
    n = len(pairs)
    if n < 2:
        return None
    a = [float(x) for x, _ in pairs]
    b = [float(y) for _, y in pairs]
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va, vb = sum((x - ma) ** 2 for x in a), sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else None


def measure(args) -> dict:
    """Every answer the run needs, from the judge (and each committee member, loaded in place), then the rules."""
    from stages.answers import DEFAULT_ANSWER_PATTERN, same_answer
    from stages.views import signed_sum_views

    prompts, refs = task_prompts(args.terms, args.max_operand, args.prompts, args.seed, args.split)
    worker = start_judge(args.judge, args.max_tokens, args.seed)
    pool = LocalPool(worker, chat_renderer(args.judge), signed_sum_views)
    ask = lambda *a: answers(pool, prompts, *a, args.max_tokens, DEFAULT_ANSWER_PATTERN)  # noqa: E731
    t0 = time.perf_counter()
    greedy_views = ask(1, 0.0, args.views)
    print(f"greedy over {args.views} views: {time.perf_counter() - t0:.0f} s", flush=True)
    greedy_right = [same_answer(p[0][0], r) for p, r in zip(greedy_views, refs)]
    sampled = {t: ask(args.samples, t, 1) for t in args.temperatures}
    view_sampled = {t: ask(args.view_samples, t, args.views) for t in args.view_temperatures}
    steps = step_votes(pool, prompts, args, DEFAULT_ANSWER_PATTERN) if args.step_prompts else {}
    print(f"all samples: {time.perf_counter() - t0:.0f} s", flush=True)
    committee = []
    for member in args.committee:
        worker.load_model(member, worker.judge)
        committee.append(ask(1, 0.0, args.views))
    return {"judge": args.judge, "committee": args.committee,
            "task": f"arithmetic terms={args.terms} max_operand={args.max_operand}", "prompts": len(prompts),
            "split": args.split, "seed": args.seed, "max_tokens": args.max_tokens,
            "greedy_accuracy": sum(greedy_right) / len(refs), **view_diagnostics(greedy_views, refs),
            **heldout_views(pool, prompts, greedy_views, refs, args.views),
            "rules": rules(greedy_views, sampled, view_sampled, committee, refs, greedy_right, args, steps),
            "seconds": round(time.perf_counter() - t0, 1)}


def print_table(result: dict) -> None:
    print(f"\n{result['task']}, {result['prompts']} {result['split']} prompts; judge {result['judge']}"
          + (f" + committee {result['committee']}" if result["committee"] else ""))
    print(f"greedy accuracy {result['greedy_accuracy']:.3f}; greedy per view "
          + " ".join(f"{a:.3f}" for a in result["view_accuracy"])
          + "; error corr. with view 0 " + " ".join("-" if c is None else f"{c:.2f}"
                                                   for c in result["error_correlation_with_view0"]))
    held, train = result["other_views_heldout_accuracy"], result["other_views_train_accuracy"]
    if held is not None and train is not None:
        print(f"other views greedy: held-out texts {held:.3f} (n={result['other_views_heldout_n']}), "
              f"training-half texts {train:.3f} (n={result['other_views_train_n']})")
    print(f"{'rule':<34} {'min_share':>9} {'label acc':>9} {'coverage':>8} {'precision':>9} {'margin':>7} "
          f"{'G (95% CI)':>16} {'reach G':>8} {'fixes reached':>14} {'breaks reached':>15}")
    for r in result["rules"]:
        reached = (f" {r['reach_gain']:>+8.3f} {r['fixes_reached']:>6.3f}/{r['fixes']:.3f} "
                   f"{r['breaks_reached']:>7.3f}/{r['breaks']:.3f}") if "reach_gain" in r else ""
        print(f"{r['rule']:<34} {r['min_share']:>9.2f} {r['label_accuracy']:>9.3f} {r['coverage']:>8.3f} "
              f"{r['precision']:>9.3f} {r['margin']:>+7.3f} {r['net_gain']:>+8.3f} ±{r['net_gain_ci95']:.3f}"
              + reached)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--judge", required=True, help="The judge model's HF-format directory.")
    ap.add_argument("--committee", action="append", default=[], help="Another judge model (same architecture).")
    ap.add_argument("--terms", type=int, default=4)
    ap.add_argument("--max-operand", type=int, default=7)
    ap.add_argument("--prompts", type=int, default=512, help="Held-out prompts (>= 512 to tell 3 points from noise).")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--split", choices=["heldout", "train"], default="heldout",
                    help="heldout: prompts no model trained on; train: the training half a rung's judge labels.")
    ap.add_argument("--max-tokens", type=int, default=48, help="Tokens per judge answer (solve_max_tokens).")
    ap.add_argument("--temperatures", type=floats, default=[0.3, 0.7, 1.0])
    ap.add_argument("--samples", type=int, default=8, help="Most samples per prompt at each temperature.")
    ap.add_argument("--views", type=int, default=8, help="Most views (reorderings) per prompt.")
    ap.add_argument("--rollout-temperature", type=float, default=1.0,
                    help="The rung's rollout temperature: the samples at it (one of --temperatures) stand for the "
                         "student's, which start as the judge's (init: previous), for the reachable gain.")
    ap.add_argument("--view-temperatures", type=floats, default=[0.5])
    ap.add_argument("--view-samples", type=int, default=2, help="Most samples per view at each view temperature.")
    ap.add_argument("--step-prompts", type=int, default=1024,
                    help="Training prompts the step-votes rule's table is learnt from (judge.solve_steps); 0: no rule.")
    ap.add_argument("--step-votes", type=lambda t: [int(x) for x in t.split(",")], default=[0],
                    help="judge.solve_step_votes values, a step-votes rule each (0: every step any answer wrote).")
    ap.add_argument("--out", default=None)
    ap.add_argument("--note", default="", help="Written into the JSON (which judge this is, the machine).")
    args = ap.parse_args()
    result = {**measure(args), **({"note": args.note} if args.note else {})}
    print_table(result)
    out = Path(args.out or ROOT / "bench" / "results" / f"label_quality_{args.terms}x{args.max_operand}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
