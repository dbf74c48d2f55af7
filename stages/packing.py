"""How the trainer lays a batch's samples into rows: packed end to end without padding between them (`pack`),
grouped into micro-batches of a token budget, each sample's GRPO advantage within its prompt's group, and the
completion tokens' logprobs read from one forward pass."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Packed:
    """Samples laid end to end in rows of `width` tokens, no padding between them (first-fit, longest first).
    Positions restart at 0 with each sample, so attention stays within it (transformers builds the
    block-causal mask from the positions). Per completion token, flattened over the samples in the given order
    (`[N]`): where its logits are (`rows`, `cols`: the column before it), the token (`targets`), its sample's
    index (`sample`) and vLLM's sampling logprob (`vllm_lp`)."""
    ids: Any            # [R, width]
    positions: Any      # [R, width]
    rows: Any           # [N]
    cols: Any           # [N]
    targets: Any        # [N]
    sample: Any         # [N]
    vllm_lp: Any        # [N]

    def to(self, device) -> "Packed":
        return Packed(*(t.to(device) for t in (self.ids, self.positions, self.rows, self.cols, self.targets,
                                               self.sample, self.vllm_lp)))


def fill_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Indices into `lengths` in rows that each hold at most `width` tokens (first-fit, longest first;
    a sample longer than `width` gets a row of its own)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, left in enumerate(room) if left >= lengths[i]), None)
        if r is None:
            rows.append([])
            room.append(width)
            r = len(rows) - 1
        rows[r].append(i)
        room[r] -= lengths[i]
    return rows


def pack(samples, pad_id: int, width: int = 0) -> Packed:
    """`samples` packed into rows of `width` tokens (0: the longest sample's length); see `Packed`."""
    import torch

    lengths = [len(s.prompt_ids) + len(s.completion_ids) for s in samples]
    width = max(width, max(lengths))
    layout = fill_rows(lengths, width)
    ids = torch.full((len(layout), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(layout), width), dtype=torch.long)
    where: dict[int, tuple[int, int]] = {}
    for r, row in enumerate(layout):
        start = 0
        for i in row:
            s = samples[i]
            ids[r, start:start + lengths[i]] = torch.tensor(list(s.prompt_ids) + list(s.completion_ids))
            positions[r, start:start + lengths[i]] = torch.arange(lengths[i])
            where[i] = (r, start + len(s.prompt_ids))
            start += lengths[i]
        positions[r, start:] = torch.arange(width - start)  # the padding after the last sample: a segment of its own
    rows, cols, sample, vllm_lp = [], [], [], []
    for i, s in enumerate(samples):
        r, first = where[i]
        c = len(s.completion_ids)
        rows += [r] * c
        cols += range(first - 1, first - 1 + c)
        sample += [i] * c
        vllm_lp += list(s.logprobs) if len(s.logprobs) == c else [0.0] * c
    rows_t, cols_t = torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)
    return Packed(ids, positions, rows_t, cols_t, ids[rows_t, cols_t + 1], torch.tensor(sample, dtype=torch.long),
                  torch.tensor(vllm_lp, dtype=torch.float32))


def completion_logprobs(model, packed: Packed):
    """log p(token | the sample's tokens before it) of every completion token; `[N]`. No `[.., V]`
    log-softmax is built: the logits of the completion tokens, gathered, minus their logsumexp."""
    logits = model(input_ids=packed.ids, position_ids=packed.positions, use_cache=False).logits
    picked = logits[packed.rows, packed.cols].float()
    return picked.gather(-1, packed.targets[:, None]).squeeze(-1) - picked.logsumexp(-1)


def micro_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Sample indices in groups whose packed rows (of the longest sample's length) hold at most `budget`
    tokens together (at least one row per group; `budget` 0: one group)."""
    if not lengths:
        return []
    width = max(lengths)
    rows = fill_rows(lengths, width)
    per = len(rows) if budget <= 0 else max(1, budget // width)
    return [[i for row in rows[k:k + per] for i in row] for k in range(0, len(rows), per)]


def pad_id(tokenizer, vocab_size: int) -> int:
    """The id packed rows are padded with: the pad token, else EOS (Llama 3 has no pad token), else 0; one the
    model embeds (a tokenizer may add a default pad token past the embeddings). Padding is never a target and no
    sample attends to it (`pack`), so any embedded id serves; no token is added."""
    for tok_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tok_id is not None and 0 <= tok_id < vocab_size:
            return tok_id
    return 0


def group_advantages(scores, groups, keep=None, eps: float = 1e-4):
    """GRPO advantages: (r - mean of the prompt's group) / (std of the group + eps); [n_samples].
    Samples not kept (`keep[i]` False) take no part in their group's statistics and get advantage 0."""
    import torch

    r = torch.tensor(scores, dtype=torch.float32)
    g = torch.tensor(groups)
    kept = torch.ones_like(r, dtype=torch.bool) if keep is None else torch.tensor(keep, dtype=torch.bool)
    adv = torch.zeros_like(r)
    for k in g.unique():
        m = (g == k) & kept
        if m.any():
            adv[m] = (r[m] - r[m].mean()) / (r[m].std(unbiased=False) + eps)
    return adv


def loss_rows(scores, keep, rule: str = "group") -> list[bool]:
    """Which samples take part in the loss (`train.advantage`): group, every kept one; filter, the kept ones
    rewarded above 0.5."""
    return [bool(k) and (rule == "group" or s > 0.5) for s, k in zip(scores, keep)]


def advantages(scores, groups, keep, rule: str = "group"):
    """Each sample's advantage, and which samples take part in the loss (`loss_rows`). `group`: GRPO's
    (`group_advantages`). `filter`: reward-filtered fine-tuning (RAFT, ReST-EM): a sample in the loss has advantage
    1, so the step raises the likelihood of what the judge accepts, in groups whose samples are all right too
    (GRPO learns nothing from those), and pushes no response down."""
    import torch

    rows = loss_rows(scores, keep, rule)
    if rule == "group":
        return group_advantages(scores, groups, keep), rows
    return torch.tensor([float(r) for r in rows]), rows


def tokenized(samples, tokenizer) -> list:
    """`samples` with each completion given as text alone (a judge's own answer, `judge.solve_guide`) in this
    student's token ids, ended by its end-of-sequence token; their sampling logprobs are unknown (NaN: they count
    nowhere, not in the trainer-vs-vLLM mismatch either)."""
    from stages.batches import Sample

    end = () if tokenizer.eos_token_id is None else (tokenizer.eos_token_id,)
    out = []
    for s in samples:
        if not s.completion_ids and s.completion_text:
            ids = tuple(tokenizer.encode(s.completion_text, add_special_tokens=False)) + end
            s = Sample(s.prompt_ids, ids, s.completion_text, (float("nan"),) * len(ids))
        out.append(s)
    return out
