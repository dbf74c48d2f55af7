"""GRPO math and the trainer's update, in torch only (no Ray, no vLLM)."""

from pathlib import Path

import pytest
import torch

from stages.batches import JudgedBatch, RolloutBatch, Sample
from stages.packing import advantages, completion_logprobs, fill_rows, group_advantages, micro_batches, pack
from stages.train import TrainConfig, Trainer


def test_group_advantages_are_normalised_within_groups():
    adv = group_advantages([1.0, 0.0, 1.0, 0.0, 0.5, 0.5], [0, 0, 0, 0, 1, 1])
    assert torch.allclose(adv[:4], torch.tensor([1.0, -1.0, 1.0, -1.0]), atol=1e-3)
    assert torch.equal(adv[4:], torch.zeros(2))  # a group with equal rewards teaches nothing


def test_pack_lays_samples_end_to_end_and_restarts_positions():
    long = Sample((5, 6, 7), (8, 9), "xy", (-0.1, -0.2))
    short = Sample((5,), (8,), "x", (-0.3,))
    mid = Sample((4, 4), (3,), "z", (-0.4,))
    packed = pack([long, short, mid], pad_id=0)
    assert packed.ids.tolist() == [[5, 6, 7, 8, 9], [4, 4, 3, 5, 8]]  # rows of the longest sample, no padding
    assert packed.positions.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]  # each sample counts from 0
    assert packed.targets.tolist() == [8, 9, 8, 3]  # the completion tokens, sample by sample
    assert packed.sample.tolist() == [0, 0, 1, 2]
    assert packed.ids[packed.rows, packed.cols].tolist() == [7, 8, 5, 4]  # each one's logits: the token before
    assert packed.vllm_lp.tolist() == pytest.approx([-0.1, -0.2, -0.3, -0.4])
    wide = pack([long, short, mid], pad_id=0, width=12)
    assert wide.ids.tolist() == [[5, 6, 7, 8, 9, 4, 4, 3, 5, 8, 0, 0]]
    assert wide.positions[0, 10:].tolist() == [0, 1]  # the padding is a segment of its own


def test_micro_batches_fill_rows_and_keep_the_token_budget():
    lengths = [5, 30, 7, 29, 6, 31]
    rows = fill_rows(lengths, 31)
    assert rows == [[5], [1], [3], [2, 4, 0]]  # longest first; the short ones share a row
    groups = micro_batches(lengths, budget=64)
    assert groups == [[5, 1], [3, 2, 4, 0]]  # two rows of 31 tokens each
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert micro_batches(lengths, 0) == [[5, 1, 3, 2, 4, 0]]
    assert micro_batches([100], 10) == [[0]]  # a sample longer than the budget still trains


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ladder.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("m") / "tiny", "nano", seed=0))


def _batch(trainer, prompts, completions, scores, groups):
    tok = trainer.tokenizer
    samples = tuple(Sample(tuple(tok.encode(p, add_special_tokens=False)), tuple(tok.encode(c, add_special_tokens=False)),
                           c, ()) for p, c in zip(prompts, completions))
    rb = RolloutBatch(tuple(prompts), (None,) * len(prompts), samples, tuple(groups))
    return JudgedBatch(rb, tuple(scores))


def sequence_logprobs(trainer, samples) -> list[float]:
    """Sum of the student's logprobs over each sample's completion."""
    packed = pack(samples, trainer.pad_id).to(trainer.device)
    with torch.no_grad(), trainer.autocast():
        lp = completion_logprobs(trainer.model, packed)
    return torch.zeros(len(samples), device=trainer.device).index_add_(0, packed.sample, lp).tolist()


def test_trainer_step_changes_parameters_and_raises_rewarded_likelihood(tiny):
    trainer = Trainer(tiny, TrainConfig(lr=1e-3, kl_coef=0.0), seed=0)
    prompts = ["Q:1+1\nA:"] * 4
    completions = ["1+1=2#2", "1+1=3#3", "1+1=2#2", "1+1=3#3"]
    batch = _batch(trainer, prompts, completions, [1, 0, 1, 0], [0, 0, 0, 0])
    before = sequence_logprobs(trainer, batch.rollout.samples)
    checksum = trainer.parameter_checksum()
    for _ in range(5):
        trainer.step(batch)
    after = sequence_logprobs(trainer, batch.rollout.samples)
    assert trainer.parameter_checksum() != checksum
    # the GRPO objective, sum of advantage * log-likelihood, went up: rewarded answers became likelier
    adv = group_advantages(batch.scores, batch.rollout.group).tolist()
    objective = lambda lps: sum(a * lp for a, lp in zip(adv, lps))  # noqa: E731
    assert objective(after) > objective(before) + 0.1


def test_kl_term_is_zero_at_start_and_grows(tiny):
    trainer = Trainer(tiny, TrainConfig(lr=1e-3, kl_coef=0.1), seed=0)
    batch = _batch(trainer, ["Q:2+2\nA:"] * 2, ["2+2=4#4", "2+2=5#5"], [1, 0], [0, 0])
    first = trainer.step(batch)
    for _ in range(3):
        last = trainer.step(batch)
    assert first.kl == pytest.approx(0.0, abs=1e-6)
    assert last.kl > 1e-5


def test_state_arrays_hold_every_weight(tiny):
    trainer = Trainer(tiny, TrainConfig(), seed=0)
    arrays = trainer.state_arrays()
    model_state = trainer.model.state_dict()
    assert set(arrays) == set(model_state)
    for k, v in arrays.items():
        assert torch.equal(torch.from_numpy(v), model_state[k])


def test_dropped_samples_take_no_part_in_their_group():
    adv = group_advantages([1.0, 0.0, 0.0, 0.9], [0, 0, 0, 0], keep=[True, True, True, False])
    assert adv[3] == 0.0
    assert torch.allclose(adv[:3], group_advantages([1.0, 0.0, 0.0], [0, 0, 0]), atol=1e-6)


def test_a_step_with_nothing_to_train_on_is_skipped(tiny):
    trainer = Trainer(tiny, TrainConfig(lr=1e-2, kl_coef=0.0), seed=0)
    before = trainer.parameter_checksum()
    judged = _batch(trainer, ["1+1="] * 2, ["2#2", "3#3"], [1.0, 0.0], [0, 0])
    stats = trainer.step(JudgedBatch(judged.rollout, judged.scores, keep=(False, False)))
    assert stats.skipped.startswith("no sample left") and trainer.steps == 0
    assert trainer.parameter_checksum() == before


def test_filter_advantage_trains_the_rewarded_samples_only():
    adv, rows = advantages([1.0, 0.0, 1.0, 0.5, 0.9], [0, 0, 0, 1, 1], [True, True, False, True, True], "filter")
    assert rows == [True, False, False, False, True] and adv.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]
    adv, rows = advantages([1.0, 0.0], [0, 0], [True, True], "group")
    assert rows == [True, True] and adv[0] > 0 > adv[1]


def test_a_filter_step_learns_from_a_group_whose_samples_are_all_right_where_grpo_learns_nothing(tiny):
    """Both samples rewarded: GRPO's advantages are 0 (the weights do not move), `filter` raises their likelihood
    (by 27 nats over the two samples in 5 steps at lr 1e-3, an untrained model; the test asks for 0.5). Nothing
    rewarded under filter: skipped."""
    moved = {}
    for rule in ("group", "filter"):
        trainer = Trainer(tiny, TrainConfig(lr=1e-3, kl_coef=0.0, advantage=rule), seed=0)
        batch = _batch(trainer, ["Q:1+1\nA:"] * 2, ["1+1=2#2", "1+1=2#2"], [1.0, 1.0], [0, 0])
        before = sum(sequence_logprobs(trainer, batch.rollout.samples))
        for _ in range(5):
            trainer.step(batch)
        moved[rule] = sum(sequence_logprobs(trainer, batch.rollout.samples)) - before
    assert abs(moved["group"]) < 1e-4 and moved["filter"] > 0.5, moved
    none = trainer.step(_batch(trainer, ["Q:1+1\nA:"] * 2, ["1+1=3#3", "#4"], [0.0, 0.5], [0, 0]))
    assert none.skipped.startswith("no sample left") and trainer.steps == 5


def test_a_cosine_schedule_warms_up_then_ends_the_rung_on_small_updates_and_resumes_where_it_stopped(tiny):
    from stages.schedule import lr_factor

    factors = [lr_factor("cosine", k, 20) for k in range(20)]
    assert factors[0] < factors[1] == 1.0 and factors[-1] < 0.02
    assert all(a > b for a, b in zip(factors[1:], factors[2:]))  # down from the warmup's end to the last update
    assert {lr_factor("constant", k, 20) for k in range(20)} == {1.0}
    cfg = TrainConfig(lr=1e-3, kl_coef=0.0, lr_schedule="cosine", steps=10)
    trainer = Trainer(tiny, cfg, seed=0)
    batch = _batch(trainer, ["Q:1+1\nA:"] * 2, ["1+1=2#2", "1+1=3#3"], [1.0, 0.0], [0, 0])
    for _ in range(4):
        trainer.step(batch)
    assert trainer.opt.param_groups[0]["lr"] == pytest.approx(1e-3 * lr_factor("cosine", 3, 10))
    resumed = Trainer(tiny, cfg, seed=0)  # a rung resumed from step 4's checkpoint goes on at update 4's rate
    weights = {name: data for name, data in trainer.checkpoint_files().items() if name.endswith(".safetensors")}
    assert resumed.restore(weights, trainer.trainer_state()) == 4
    resumed.step(batch)
    assert resumed.opt.param_groups[0]["lr"] == pytest.approx(1e-3 * lr_factor("cosine", 4, 10))
    assert lr_factor("cosine", 4, 10) < 0.9


def test_non_finite_loss_skips_the_update_and_keeps_the_optimizer_clean(tiny):
    trainer = Trainer(tiny, TrainConfig(lr=1e-2, kl_coef=0.0), seed=0)
    judged = _batch(trainer, ["1+1="] * 2, ["2#2", "3#3"], [1.0, 0.0], [0, 0])
    with torch.no_grad():
        trainer.model.model.norm.weight[0] = float("nan")  # every logit NaN from here on
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    stats = trainer.step(judged)
    assert stats.skipped == "non-finite loss" and trainer.steps == 0
    assert not trainer.opt.state  # AdamW never stepped: no moments were written
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) or torch.isnan(before[k]).any() for k in before)
    with torch.no_grad():
        trainer.model.model.norm.weight[0] = 1.0
    assert not trainer.step(judged).skipped and trainer.steps == 1  # healthy numbers: it trains again


def _straightforward_loss(model, ref, samples, adv, keep, pad_id, cfg, behaviour=False):
    """The GRPO loss as written first: one right-padded batch, full-vocabulary log-softmax, three forwards
    (reference, old policy, policy), mean over the kept samples' completion tokens. `behaviour`: the old policy
    is the one that sampled, its logprobs those the samples carry."""
    seqs = [list(s.prompt_ids) + list(s.completion_ids) for s in samples]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width - 1))
    for i, (s, seq) in enumerate(zip(samples, seqs)):
        ids[i, : len(seq)], attn[i, : len(seq)] = torch.tensor(seq), 1
        p = len(s.prompt_ids)
        mask[i, p - 1: p - 1 + len(s.completion_ids)] = float(keep[i])

    def logprobs(m):
        logits = m(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        return logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)

    with torch.no_grad():
        ref_lp, old_lp = logprobs(ref), logprobs(model)
    if behaviour:
        for i, s in enumerate(samples):
            p = len(s.prompt_ids)
            old_lp[i, p - 1: p - 1 + len(s.completion_ids)] = torch.tensor(s.logprobs)
    lp = logprobs(model)
    ratio = torch.exp(lp - old_lp)
    a = adv[:, None]
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps) * a)
    log_r = ref_lp - lp
    kl = torch.exp(log_r) - log_r - 1
    return ((-(surrogate - cfg.kl_coef * kl)) * mask).sum() / mask.sum()


@pytest.mark.parametrize("budget", [0, 40])
def test_optimised_loss_and_gradients_equal_the_straightforward_computation(tiny, budget):
    """Micro-batches sorted by length, left-padded prompts, logits for completion columns only, no second
    forward for the old policy: the same loss and the same gradients as the plain computation."""
    cfg = TrainConfig(lr=1e-3, kl_coef=0.1, micro_batch_tokens=budget)
    trainer = Trainer(tiny, cfg, seed=0)
    with torch.no_grad():  # policy and reference apart, so the KL term and its gradient are not zero
        for p in trainer.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    prompts = ["1+1=", "Q:12+30\nA:", "2*3=", "Q:7-5\nA:", "9+9=", "Q:1\nA:"]
    completions = ["2#2", "12+30=42#42", "7#7", "7-5=2 so #2", "18#18", "#1"]
    judged = _batch(trainer, prompts, completions, [1.0, 0.2, 0.0, 0.7, 0.4, 0.9], [0, 0, 0, 1, 1, 1])
    keep = (True, True, True, True, False, True)
    judged = JudgedBatch(judged.rollout, judged.scores, keep=keep)
    lengths = [len(s.prompt_ids) + len(s.completion_ids) for s, k in zip(judged.rollout.samples, keep) if k]
    if budget:
        assert len(micro_batches(lengths, budget)) > 2, "the batch should be split (else the test proves less)"
    assert any(len(row) > 1 for row in fill_rows(lengths, max(lengths))), "some samples should share a row"

    trainer.model.zero_grad(set_to_none=True)
    totals = trainer.accumulate(judged, {})
    fast = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    trainer.model.zero_grad(set_to_none=True)
    adv = group_advantages(judged.scores, judged.rollout.group, keep)
    plain = _straightforward_loss(trainer.model, trainer.ref, judged.rollout.samples, adv, keep,
                                  trainer.tokenizer.pad_token_id, cfg)
    plain.backward()
    assert totals["loss"].item() == pytest.approx(plain.item(), rel=1e-4, abs=1e-6)
    assert abs(plain.item()) > 1e-3 and totals["kl"].item() > 1e-5
    for name, p in trainer.model.named_parameters():
        scale = p.grad.abs().max().item()
        assert (fast[name] - p.grad).abs().max().item() <= 1e-4 * max(scale, 1e-3), name
    assert sum(g.abs().sum().item() for g in fast.values()) > 0


@pytest.mark.parametrize("budget", [0, 40])
def test_overlap_takes_the_ratio_against_the_sampling_logprobs(tiny, budget):
    """`train.overlap`: a batch sampled one update ago, so the old policy is the one that sampled, and its
    logprobs are those vLLM returned with the samples (here the model's own, moved by up to +-0.5 so that some
    ratios leave the clip range): the same loss and gradients as the plain computation with those as old."""
    from stages.packing import completion_logprobs

    cfg = TrainConfig(lr=1e-3, kl_coef=0.1, micro_batch_tokens=budget, overlap=True)
    trainer = Trainer(tiny, cfg, seed=0)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    prompts = ["1+1=", "Q:12+30\nA:", "2*3=", "Q:7-5\nA:", "9+9=", "Q:1\nA:"]
    completions = ["2#2", "12+30=42#42", "7#7", "7-5=2 so #2", "18#18", "#1"]
    plain_batch = _batch(trainer, prompts, completions, [1.0, 0.2, 0.0, 0.7, 0.4, 0.9], [0, 0, 0, 1, 1, 1])
    rb = plain_batch.rollout
    packed = pack(rb.samples, trainer.tokenizer.pad_token_id)
    with torch.no_grad():
        own = completion_logprobs(trainer.model, packed)
    shift = torch.Generator().manual_seed(0)
    samples = tuple(Sample(s.prompt_ids, s.completion_ids, s.completion_text, tuple(
        (own[packed.sample == i] + torch.rand(len(s.completion_ids), generator=shift) - 0.5).tolist()))
        for i, s in enumerate(rb.samples))
    keep = (True, True, True, True, False, True)
    judged = JudgedBatch(RolloutBatch(rb.prompts, rb.references, samples, rb.group), plain_batch.scores, keep=keep)

    trainer.model.zero_grad(set_to_none=True)
    totals = trainer.accumulate(judged, {})
    fast = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    trainer.model.zero_grad(set_to_none=True)
    adv = group_advantages(judged.scores, rb.group, keep)
    plain = _straightforward_loss(trainer.model, trainer.ref, samples, adv, keep, trainer.tokenizer.pad_token_id,
                                  cfg, behaviour=True)
    plain.backward()
    assert totals["loss"].item() == pytest.approx(plain.item(), rel=1e-4, abs=1e-6)
    assert totals["clip_frac"].item() > 0.1  # ratios away from 1: the old policy is not the current one
    assert totals["mismatch"].item() > 0.1  # reported against the sampling logprobs
    for name, p in trainer.model.named_parameters():
        scale = p.grad.abs().max().item()
        assert (fast[name] - p.grad).abs().max().item() <= 1e-4 * max(scale, 1e-3), name
    with pytest.raises(ValueError, match="overlap needs the sampling logprobs"):
        trainer.step(plain_batch)  # samples without logprobs cannot be trained one step off-policy


def test_a_saved_student_keeps_its_base_tokenizer_byte_for_byte(tiny, tmp_path):
    """A trained student can be loaded in place into an engine serving its base (next rung): same config and the
    same tokenizer files (transformers' own re-save would rewrite tokenizer.json)."""
    from stages.engine import architecture_difference

    trainer = Trainer(tiny, TrainConfig(), seed=0)
    saved = trainer.save(str(tmp_path / "student"))
    assert architecture_difference(tiny, saved) == ""
    assert (tmp_path / "student" / "tokenizer.json").read_bytes() == (Path(tiny) / "tokenizer.json").read_bytes()
