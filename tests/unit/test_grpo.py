"""GRPO math and the trainer's update, in torch only (no Ray, no vLLM)."""

import pytest
import torch

from ladder.batches import JudgedBatch, RolloutBatch, Sample
from stages.train import TrainConfig, Trainer, group_advantages, pack


def test_group_advantages_are_normalised_within_groups():
    adv = group_advantages([1.0, 0.0, 1.0, 0.0, 0.5, 0.5], [0, 0, 0, 0, 1, 1])
    assert torch.allclose(adv[:4], torch.tensor([1.0, -1.0, 1.0, -1.0]), atol=1e-3)
    assert torch.equal(adv[4:], torch.zeros(2))  # a group with equal rewards teaches nothing


def test_pack_masks_only_completion_targets():
    s = Sample((5, 6, 7), (8, 9), "xy", (-0.1, -0.2))
    ids, attn, mask, lp = pack([s, Sample((5,), (8,), "x", (-0.3,))], pad_id=0)
    assert ids.shape == (2, 5)
    assert mask[0].tolist() == [0, 0, 1, 1]
    assert mask[1].tolist() == [1, 0, 0, 0]
    assert lp[0, 2:].tolist() == pytest.approx([-0.1, -0.2])


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


def test_trainer_step_changes_parameters_and_raises_rewarded_likelihood(tiny):
    trainer = Trainer(tiny, TrainConfig(lr=1e-3, kl_coef=0.0), seed=0)
    prompts = ["Q:1+1\nA:"] * 4
    completions = ["1+1=2#2", "1+1=3#3", "1+1=2#2", "1+1=3#3"]
    batch = _batch(trainer, prompts, completions, [1, 0, 1, 0], [0, 0, 0, 0])
    before = trainer.sequence_logprobs(batch.rollout.samples)
    checksum = trainer.parameter_checksum()
    for _ in range(5):
        trainer.step(batch)
    after = trainer.sequence_logprobs(batch.rollout.samples)
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


def test_state_blob_round_trips(tiny):
    from safetensors.torch import load

    trainer = Trainer(tiny, TrainConfig(), seed=0)
    state = load(trainer.state_blob())
    model_state = trainer.model.state_dict()
    for k, v in state.items():
        assert torch.equal(v, model_state[k])


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
