"""`ladder bootstrap`: SFT a tiny model on the arithmetic task *and* on judging examples.

The result answers problems (the student base) and says yes/no to worked answers (a weak judge).
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from ladder.tasks.arithmetic import build as build_arithmetic
from stages.settings import fill


@dataclass(frozen=True)
class BootstrapReport:
    model_dir: str
    parameters: int
    steps: int
    seconds: float
    final_loss: float
    answer_accuracy: float     # greedy, held-out prompts
    worked_share: float        # share of greedy held-out answers that show their steps (not a bare `#answer`)
    judge_accuracy: Optional[float]  # verdict P(yes) > P(no) agrees with ground truth (None: not taught to judge)
    terms: int = 3
    max_operand: int = 9
    direct_share: float = 0.0
    judge_share: float = 0.5
    levels: tuple = ()         # harder levels also taught: per level terms, max_operand, share and held-out accuracy


def _examples(task, template: str, rng: random.Random, n: int, yes: str, no: str,
              judge_share: float = 0.5, direct_share: float = 0.0, harder: tuple = ()):
    """(prefix, target, is_solve) triples: solve-the-problem or judge-this-answer.

    A solve target is the worked solution, or with probability `direct_share` the bare answer
    (`#5`): the base model then mixes a reliable worked style with an unreliable direct one.
    `harder` is ((task, share), ...): that share of the examples comes from a harder level's task instead.
    """
    out = []
    for _ in range(n):
        ex = rng.choice(_pick_level(rng, task, harder).train)
        if rng.random() >= judge_share:
            direct = rng.random() < direct_share
            out.append((ex.prompt, "#" + ex.solution.split("#")[1] if direct else ex.solution, True))
        else:
            good = rng.random() < 0.5
            response = ex.solution if good else task.corrupt(rng, ex)
            prefix = fill(template, prompt=ex.prompt, response=response)
            out.append((prefix, yes if good else no, False))
    return out


def _pick_level(rng: random.Random, task, harder: tuple):
    if not harder:  # no draw: a one-level recipe gives the same model as before levels existed
        return task
    draw = rng.random()
    for level, share in harder:
        if draw < share:
            return level
        draw -= share
    return task


def _encode(tokenizer, pairs):
    import torch

    rows = []
    for prefix, target, add_eos in pairs:
        p = tokenizer.encode(prefix, add_special_tokens=False)
        t = tokenizer.encode(target, add_special_tokens=False) + ([tokenizer.eos_token_id] if add_eos else [])
        rows.append((p + t, len(p)))
    width = max(len(r) for r, _ in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (seq, plen) in enumerate(rows):
        ids[i, : len(seq)] = torch.tensor(seq)
        attn[i, : len(seq)] = 1
        labels[i, plen: len(seq)] = torch.tensor(seq[plen:])
    return ids, attn, labels


def _balanced_loss(logits, labels, is_solve, tokens: dict):
    """Mean token loss of solving plus mean token loss of judging, so one-token verdicts are not drowned.
    `tokens`: each kind's count of target tokens over the whole batch these rows are a part of (the parts'
    losses then add up to the whole batch's)."""
    import torch.nn.functional as F

    tok_loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none", ignore_index=-100)
    valid = (labels[:, 1:] != -100).float()
    total = 0.0
    for kind, rows in ((True, is_solve), (False, ~is_solve)):
        if rows.any():
            total = total + (tok_loss[rows] * valid[rows]).sum() / tokens[kind]
    return total


def _by_length(pairs, parts: int = 2) -> list[list]:
    """The batch in `parts` runs of similar length (shortest first): a bare answer (`#13`) is padded to the worked
    ones' length only within its own run, so a step computes about a third fewer tokens for the same loss."""
    ordered = sorted(pairs, key=lambda p: len(p[0]) + len(p[1]))
    size = -(-len(ordered) // parts)
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def _backward(model, tokenizer, pairs, parts: int = 2) -> float:
    """The batch's balanced loss, backpropagated in `parts` runs of similar length (`_by_length`); returns it.
    Each run's loss divides by the whole batch's token counts, so the runs' gradients add up to the batch's."""
    import torch

    encoded = [(_encode(tokenizer, run), torch.tensor([solve for _, _, solve in run]))
               for run in _by_length(pairs, parts)]
    tokens = {kind: sum(float((labels[:, 1:] != -100)[is_solve == kind].sum()) for (_, _, labels), is_solve
                        in encoded) for kind in (True, False)}
    loss = 0.0
    for (ids, attn, labels), is_solve in encoded:
        run_loss = _balanced_loss(model(input_ids=ids, attention_mask=attn).logits, labels, is_solve, tokens)
        run_loss.backward()
        loss += run_loss.item()
    return loss


def greedy_answers(model, tokenizer, task, n: int, max_new_tokens: int = 40) -> list[str]:
    import torch

    rows = task.eval[:n]
    tokenizer.padding_side = "left"
    enc = tokenizer([e.prompt for e in rows], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)


def greedy_accuracy(model, tokenizer, task, n: int, max_new_tokens: int = 40) -> float:
    texts = greedy_answers(model, tokenizer, task, n, max_new_tokens)
    return task.accuracy(texts, [e.answer for e in task.eval[:n]])


def verdicts(model, tokenizer, texts: list[str], yes: str, no: str) -> list[float]:
    """P(yes)/(P(yes)+P(no)) of the next token, computed with transformers."""
    import torch

    y, n = tokenizer.convert_tokens_to_ids(yes), tokenizer.convert_tokens_to_ids(no)
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        logits = model(**enc).logits[:, -1].float()
    p = logits.softmax(-1)
    return (p[:, y] / (p[:, y] + p[:, n])).tolist()


def judge_accuracy(model, tokenizer, items, template: str, yes: str, no: str) -> float:
    texts = [fill(template, prompt=c.prompt, response=c.response) for c in items]
    scores = verdicts(model, tokenizer, texts, yes, no)
    return sum((s > 0.5) == c.correct for s, c in zip(scores, items)) / len(items)


def bootstrap(out_dir: str | Path, size: str = "micro", steps: int = 600, batch: int = 64,
              lr: float = 3e-3, seed: int = 0, template: str = "{prompt}{response}\nok?",
              yes: str = "yes", no: str = "no", judge_share: float = 0.5, direct_share: float = 0.0,
              terms: int = 3, max_operand: int = 9, levels: tuple = (),
              log: Callable[[str], None] = print) -> BootstrapReport:
    """SFT from scratch; `judge_share` of examples teach yes/no judging, `direct_share` of the solving
    examples give the bare answer instead of the worked steps. `levels` are harder versions of the task,
    ((terms, max_operand, share), ...): that share of the examples comes from each, so a curriculum's later
    rungs meet problems the base model has seen but solves poorly. Held-out prompts are never trained on."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ladder.models.tiny import build_tiny_model, count_parameters

    out = Path(out_dir)
    t0 = time.perf_counter()
    build_tiny_model(out, size=size, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    task = build_arithmetic(terms=terms, max_operand=max_operand, train_size=4000, eval_size=128, seed=seed + 1)
    harder = tuple((build_arithmetic(terms=t, max_operand=m, train_size=4000, eval_size=128, seed=seed + 1), share)
                   for t, m, share in levels)
    examples = lambda rng: _examples(task, template, rng, batch, yes, no, judge_share, direct_share, harder)  # noqa: E731
    loss = _sft(model, tokenizer, examples, steps, lr, seed, lambda m: log(f"{m} ({time.perf_counter() - t0:.0f}s)"))
    model.save_pretrained(out, safe_serialization=True)
    texts = greedy_answers(model, tokenizer, task, 128)
    judge_acc = judge_accuracy(model, tokenizer, task.calibration(128, seed + 2), template, yes, no) \
        if judge_share > 0 else None
    report = BootstrapReport(
        str(out), count_parameters(out), steps, round(time.perf_counter() - t0, 1), round(loss, 4),
        task.accuracy(texts, [e.answer for e in task.eval[:128]]),
        sum(not t.startswith("#") for t in texts) / len(texts), judge_acc, terms, max_operand, direct_share,
        judge_share, tuple({"terms": t, "max_operand": m, "share": share,
                            "answer_accuracy": greedy_accuracy(model, tokenizer, level, 128, _max_tokens(t))}
                           for (t, m, share), (level, _) in zip(levels, harder)))
    (out / "bootstrap.json").write_text(json.dumps(asdict(report), indent=2))
    return report


def _max_tokens(terms: int) -> int:
    """Room for a worked answer of `terms` operands (`12+3=15,` per step, `#15` and the end)."""
    return max(40, 9 * terms + 8)


def _sft(model, tokenizer, examples, steps: int, lr: float, seed: int, log) -> float:
    """AdamW with a one-cycle schedule over `steps` batches from `examples(rng)`; returns the last loss."""
    import torch

    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    loss = 0.0
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = _backward(model, tokenizer, examples(rng))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps:
            log(f"bootstrap step {step}/{steps} loss {loss:.3f}")
    model.eval()
    return loss
