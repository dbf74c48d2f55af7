"""LoRA students without engines: the spec's and preflight's refusals (one line each), and the trainer's adapter
(peft, torch only): only the adapter trains, the reference is the base with the adapter off, the merged weights
are the adapted model, and a checkpoint of the adapter and optimizer restores."""
import copy

import pytest
import torch

from ladder.spec import SpecError, parse_spec
from stages.lora import LoraSettings, engine_rank, engine_refusal, matches, unmatched_targets
from stages.packing import completion_logprobs, pack
from stages.train import TrainConfig, Trainer

SPEC = {
    "name": "lora", "student": {"base": "models/base"},
    "judge": {"initial": {"kind": "verifier", "function": "ladder.tasks.arithmetic:exact"}},
    "task": {"source": {"kind": "builtin", "name": "arithmetic"}},
    "train": {"lora": {"rank": 8, "alpha": 16}},
}


def spec_with(base=None, **lora):
    spec = copy.deepcopy(SPEC)
    spec["train"]["lora"].update(lora)
    if base is not None:
        spec["student"]["base"] = base
    return spec


@pytest.mark.parametrize("lora, field", [
    ({"rank": 0}, "train.lora.rank"),
    ({"rank": -4}, "train.lora.rank"),
    ({"alpha": 0}, "train.lora.alpha"),
    ({"alpha": -1.0}, "train.lora.alpha"),
    ({"rank": 600}, "train.lora: Value error, rank 600: a vLLM engine takes adapters of rank at most 512"),
    ({"target_modules": []}, "train.lora.target_modules"),
    ({"sync": "sometimes"}, "train.lora.sync"),
    ({"rnak": 8}, "train.lora.rnak"),
])
def test_bad_lora_settings_are_refused_in_one_line(lora, field):
    with pytest.raises(SpecError) as err:
        parse_spec(spec_with(**lora))
    message = str(err.value)
    assert "\n" not in message and field.removeprefix("train.lora: Value error, ") in message, message
    assert message.startswith("spec: train.lora"), message


def test_a_rank_above_the_engines_is_taken_when_the_engines_get_merged_weights():
    assert parse_spec(spec_with(rank=600, sync="merged")).train.lora.rank == 600
    assert [engine_rank(r) for r in (1, 2, 8, 9, 300, 512)] == [1, 8, 8, 16, 320, 512]
    with pytest.raises(ValueError, match="at most 512"):
        engine_rank(513)


@pytest.mark.parametrize("change, message", [
    ({"train": {"lora": {"rank": 8, "alpha": 16}, "workers": 2}}, "one trainer rank"),
    ({"sync": {"backend": "collective"}}, "sync.backend: object_store"),
])
def test_lora_with_a_trainer_group_or_a_collective_sync_is_refused(change, message):
    with pytest.raises(SpecError, match=message):
        parse_spec({**copy.deepcopy(SPEC), **change})


MODULES = ["model.embed_tokens", "model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj",
           "model.layers.1.self_attn.q_proj", "lm_head"]


def test_targets_match_as_peft_matches_them():
    assert matches("model.layers.0.self_attn.q_proj", "q_proj")
    assert matches("model.layers.0.self_attn.q_proj", "self_attn.q_proj")
    assert not matches("model.layers.0.self_attn.q_proj", "proj")
    assert unmatched_targets(MODULES, ["q_proj", "qproj", "down_proj"]) == ["qproj"]
    assert engine_refusal(MODULES, ["q_proj", "down_proj"]) == ""
    assert "model.embed_tokens" in engine_refusal(MODULES, ["embed_tokens", "q_proj"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ladder.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("m") / "tiny", "nano", seed=0))


@pytest.mark.parametrize("lora, message", [
    ({"target_modules": ["q_proj", "qproj"]}, "train.lora.target_modules: 'qproj' matches no linear module"),
    ({"target_modules": ["input_layernorm"]}, "'input_layernorm' matches no linear module"),  # a norm: 1-D
    ({"target_modules": ["embed_tokens"], "sync": "adapter"}, "train.lora.sync: adapter: a vLLM engine cannot take"),
])
def test_validate_refuses_targets_the_student_or_the_engine_cannot_take(tiny, lora, message):
    from ladder.control.preflight import LoraError, preflight

    with pytest.raises(LoraError) as err:
        preflight(parse_spec(spec_with(tiny, **lora)), gate=False, offline=True)
    assert "\n" not in str(err.value) and message in str(err.value), err.value
    preflight(parse_spec(spec_with(tiny, target_modules=["embed_tokens"])), gate=False, offline=True)  # auto: merged
    preflight(parse_spec(spec_with(tiny)), gate=False, offline=True)


def _batch(trainer):
    from stages.batches import JudgedBatch, RolloutBatch, Sample

    tok = trainer.tokenizer
    completions = ["1+1=2#2", "1+1=3#3", "1+1=2#2", "1+1=3#3"]
    samples = tuple(Sample(tuple(tok.encode("Q:1+1\nA:", add_special_tokens=False)),
                           tuple(tok.encode(c, add_special_tokens=False)), c, ()) for c in completions)
    return JudgedBatch(RolloutBatch(("p",) * 4, (None,) * 4, samples, (0, 0, 0, 0)), (1.0, 0.0, 1.0, 0.0))


def lora_trainer(tiny) -> Trainer:
    settings = LoraSettings(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj", "down_proj"))
    return Trainer(tiny, TrainConfig(lr=1e-2, kl_coef=0.1, lora=settings), seed=0)


def logprobs(model, trainer, batch):
    with torch.no_grad():
        return completion_logprobs(model, pack(batch.rollout.samples, trainer.pad_id))


def test_a_lora_trainer_trains_the_adapter_alone_against_its_base(tiny, tmp_path):
    """Only adapter parameters are in the optimizer and move (the base's checksum is the same to the bit); there
    is no second model (the reference is the base with the adapter off, equal to a fresh base's logprobs); the
    merged weights, saved as a plain HF model, answer as the adapted model does; the adapter and optimizer
    restore into a fresh trainer."""
    from transformers import AutoModelForCausalLM

    trainer, batch = lora_trainer(tiny), _batch(lora_trainer(tiny))
    before = trainer.adapter.checksums()
    held = trainer.state_bytes()
    stats = [trainer.step(batch) for _ in range(4)]
    after = trainer.adapter.checksums()
    assert after["base"] == before["base"] and after["adapter"] != before["adapter"]
    assert trainer.ref is None and held["reference"] == 0 and stats[-1].kl > 1e-6
    assert held["trained"] < held["parameters"] / 20  # 3 of 7 projections at rank 4: a few % of the model
    assert 4 * sum(p.numel() for g in trainer.opt.param_groups for p in g["params"]) == held["trained"]
    assert trainer.state_bytes()["optimizer"] == 2 * held["trained"]  # AdamW's two moments of the adapter alone
    base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    packed_ref = trainer.adapter.reference_logprobs(pack(batch.rollout.samples, trainer.pad_id))
    assert torch.allclose(packed_ref.detach(), logprobs(base, trainer, batch), atol=1e-6)
    adapted = logprobs(trainer.model, trainer, batch)
    assert not torch.allclose(adapted, packed_ref.detach(), atol=1e-3)  # the adapter changed the answers' odds

    merged = AutoModelForCausalLM.from_pretrained(trainer.save(str(tmp_path / "merged")), dtype=torch.float32)
    assert not any("lora" in k for k in merged.state_dict())
    assert torch.allclose(logprobs(merged, trainer, batch), adapted, atol=1e-4)

    files, state = trainer.checkpoint_files(), trainer.trainer_state()
    assert set(files) == {"adapter_model.safetensors", "adapter_config.json"}
    assert len(files["adapter_model.safetensors"]) < held["parameters"] / 10  # the checkpoint shrinks too
    fresh = lora_trainer(tiny)
    assert fresh.restore({"adapter_model.safetensors": files["adapter_model.safetensors"]}, state) == 4
    assert fresh.adapter.checksums() == after
    assert torch.equal(logprobs(fresh.model, fresh, batch), adapted)
    moments = lambda t: [v["exp_avg"].sum().item() for v in t.opt.state.values()]  # noqa: E731
    assert moments(fresh) == moments(trainer) and len(moments(fresh)) > 0


def test_the_rollout_engines_get_the_adapter_where_they_can_take_it_else_the_merged_weights(tiny):
    """`sync: auto` sends the adapter alone unless a target lies outside the decoder layers (the embeddings), where
    a vLLM engine takes no adapter: then the merged weights, with the reason (the rung logs both)."""
    from ladder.rung.roles import lora_sync

    assert lora_sync(parse_spec(spec_with(tiny)), tiny) == ("adapter", "")
    mode, why = lora_sync(parse_spec(spec_with(tiny, target_modules=["embed_tokens", "q_proj"])), tiny)
    assert mode == "merged" and "model.embed_tokens" in why
    assert lora_sync(parse_spec(spec_with(tiny, sync="merged")), tiny) == ("merged", "train.lora.sync is merged")
    no_lora = copy.deepcopy(SPEC)
    no_lora["train"].pop("lora")
    assert lora_sync(parse_spec(no_lora), tiny) == ("", "")
