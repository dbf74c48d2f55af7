"""Paired comparisons of model versions on the same yardstick items (`bench/ladder_vs_oracle.py --seeds`).

`greedy_right` answers a ladder's yardstick prompts with one version's weights, greedy, as the rung measures its
yardstick (`Rung.accuracy_on`: the student's chat rendering, the rollout's token limit, the task's checker), and
says per item whether the answer is right. `chain_share` is the judged chain's gain over rung 1 as a share of the
oracle chain's, on the items of every seed pooled, with a bootstrap interval that resamples items within each seed
(the three versions of one item stay paired). `mcnemar` is the exact two-sided test of two versions on the same
items (only the items where they differ count).
"""
from __future__ import annotations

import math
import random
from typing import Sequence


def greedy_right(runs: list[tuple[str, object]]) -> list[list[bool]]:
    """For each (model folder, spec): per yardstick item of the spec (its prompts fixed by the ladder's seed),
    whether that model answers it right. One engine; each model loaded into it in place."""
    from transformers import AutoTokenizer

    from ladder.rung.prompts import renderer
    from ladder.tasks.sets import build_yardstick
    from stages.engine import EngineConfig
    from stages.rollout import RolloutWorker

    worker, out = None, []
    for model_dir, spec in runs:
        if worker is None:
            worker = RolloutWorker(EngineConfig(model=model_dir, seed=spec.seed, kv_cache_gib=0.5))
        else:
            worker.load_model(model_dir)
        task = build_yardstick(spec, lambda: None)
        rows = task.eval
        chat = renderer(AutoTokenizer.from_pretrained(model_dir), spec.student.chat, "student.chat")
        answers = worker.generate([chat.user(r.prompt) for r in rows], 1, spec.rollout.max_tokens, 0.0, 1.0)
        out.append(task.correct([a[0].completion_text for a in answers], [r.answer for r in rows], [r.prompt for r in rows]))
    return out


def mean(xs: Sequence[bool]) -> float:
    return sum(xs) / len(xs)


def share(first: Sequence[bool], judged: Sequence[bool], oracle: Sequence[bool]):
    """(judged - first) / (oracle - first) of the items' accuracies; None where the oracle gained nothing."""
    gain = mean(oracle) - mean(first)
    return None if abs(gain) < 1e-12 else (mean(judged) - mean(first)) / gain


def chain_share(seeds: list[dict], draws: int = 10000, rng_seed: int = 0) -> dict:
    """`seeds`: per seed {"first", "judged", "oracle"}, per-item right/wrong on that seed's yardstick items.
    The pooled share, each seed's, and a 95% percentile bootstrap interval of the pooled share."""
    pooled = {k: [x for s in seeds for x in s[k]] for k in ("first", "judged", "oracle")}
    rng = random.Random(rng_seed)
    samples = []
    for _ in range(draws):
        pick = {k: [] for k in pooled}
        for s in seeds:
            idx = [rng.randrange(len(s["first"])) for _ in s["first"]]
            for k in pick:
                pick[k].extend(s[k][i] for i in idx)
        value = share(pick["first"], pick["judged"], pick["oracle"])
        if value is not None:
            samples.append(value)
    samples.sort()
    lo, hi = (samples[int(0.025 * len(samples))], samples[int(0.975 * len(samples)) - 1]) if samples else (None, None)
    return {"share": share(pooled["first"], pooled["judged"], pooled["oracle"]),
            "ci95": [lo, hi], "p_share_below_half": (sum(v < 0.5 for v in samples) / len(samples)) if samples else None,
            "per_seed": [share(s["first"], s["judged"], s["oracle"]) for s in seeds],
            "items": len(pooled["first"]), "draws": draws}


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Exact two-sided McNemar test of `b` against `a` on the same items: b right where a is wrong (`b_only`)
    against the reverse (`a_only`)."""
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    n, k = b_only + a_only, min(b_only, a_only)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    return {"b_only": b_only, "a_only": a_only, "p_value": p, "difference": (b_only - a_only) / len(a)}
