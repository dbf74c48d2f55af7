"""The trainer on the models users bring: bfloat16 compute, gradient checkpointing, no pad token, sharded
checkpoints (tiny models built from configs, torch only)."""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from stages.batches import JudgedBatch, RolloutBatch, Sample
from stages.packing import pack
from stages.train import TrainConfig, Trainer, pad_id, resolve_dtype

PROMPTS = ["1+1=", "Q:12+30\nA:", "2*3=", "Q:7-5\nA:", "9+9=", "Q:1\nA:"]
COMPLETIONS = ["2#2", "12+30=42#42", "7#7", "7-5=2 so #2", "18#18", "#1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ladder.models.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("m") / "tiny", "nano", seed=0))


def _without_pad(tiny: str, out: Path, unset: bool) -> str:
    """The tiny model with a tokenizer whose pad token is null (`unset`, as Llama 3's), or not named at all
    (then Qwen2's tokenizer adds a default <|endoftext|> past the model's embeddings)."""
    shutil.copytree(tiny, out)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    if unset:
        cfg["pad_token"] = None
    else:
        del cfg["pad_token"]
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    return str(out)


def _judged(trainer) -> JudgedBatch:
    tok = trainer.tokenizer
    ids = lambda text: tuple(tok.encode(text, add_special_tokens=False))  # noqa: E731
    samples = tuple(Sample(ids(p), ids(c), c, ()) for p, c in zip(PROMPTS, COMPLETIONS))
    rollout = RolloutBatch(tuple(PROMPTS), (None,) * len(PROMPTS), samples, (0, 0, 0, 1, 1, 1))
    return JudgedBatch(rollout, (1.0, 0.2, 0.0, 0.7, 0.4, 0.9))


def _nudged(path: str, cfg: TrainConfig) -> Trainer:
    """A trainer whose student is moved off its reference (seeded), so the KL term and its gradient are not 0."""
    trainer = Trainer(path, cfg, seed=0)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return trainer


def _loss_and_grads(trainer: Trainer, judged: JudgedBatch):
    """The batch's loss, the gradients and how many times the student's first decoder layer ran."""
    layer, calls = trainer.model.model.layers[0], []
    forward = layer.forward  # counted in place: a recompute runs no forward hooks

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    layer.forward = counted
    trainer.model.train()  # as in `step` (checkpointing acts only in training mode)
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.accumulate(judged, {})["loss"].item()
    del layer.forward
    return loss, {n: p.grad.clone() for n, p in trainer.model.named_parameters()}, len(calls)


def test_dtype_auto_is_bfloat16_only_on_a_gpu_that_supports_it(monkeypatch):
    assert resolve_dtype("auto") == torch.float32  # this machine: no GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto") == torch.bfloat16
    assert resolve_dtype("float32") == torch.float32
    with pytest.raises(ValueError, match="train.dtype 'float16'"):
        resolve_dtype("float16")


def test_a_bfloat16_trainer_computes_in_bfloat16_and_keeps_float32_weights(tiny, tmp_path):
    """Mixed precision: the student's weights (and AdamW's updates) float32, its forward in bfloat16 (autocast),
    the reference held in bfloat16; log-probs and loss in float32; a small learning rate still moves every weight
    (in bfloat16 weights most updates at lr 1e-5 round away); the weights handed to vLLM are the student's own."""
    from stages.engine import architecture_difference
    from stages.packing import completion_logprobs

    trainer = Trainer(tiny, TrainConfig(lr=1e-5, kl_coef=0.1, dtype="bfloat16"), seed=0)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    assert {p.dtype for p in trainer.ref.parameters()} == {torch.bfloat16}
    judged = _judged(trainer)
    packed = pack(judged.rollout.samples, trainer.pad_id)
    with torch.no_grad(), trainer.autocast():
        assert trainer.model(input_ids=packed.ids).logits.dtype == torch.bfloat16  # the forward runs in bfloat16
        assert completion_logprobs(trainer.model, packed).dtype == torch.float32
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    stats = [trainer.step(judged) for _ in range(2)]
    assert all(not s.skipped and torch.isfinite(torch.tensor(s.loss)) for s in stats)
    assert stats[1].kl > 0
    moved = sum((v != start[k]).sum().item() for k, v in trainer.model.state_dict().items())
    total = sum(v.numel() for v in start.values())
    assert moved / total > 0.9  # measured: 16% with bfloat16 weights at this learning rate, ~100% here
    arrays = trainer.state_arrays()
    for name, value in trainer.model.state_dict().items():
        assert arrays[name].dtype.name == "float32" and torch.equal(torch.from_numpy(arrays[name]), value)
    assert architecture_difference(tiny, trainer.save(str(tmp_path / "student"))) == ""


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny, tmp_path):
    """Packed rows (positions restarting in a row, padding at its end), micro-batches and the KL term: the same
    numbers with activations recomputed, and the decoder layers did run twice. The saved config is the base's
    (use_cache untouched), so the student still loads in place into the engines."""
    from stages.engine import architecture_difference

    cfg = TrainConfig(kl_coef=0.1, micro_batch_tokens=40)
    plain_loss, plain, plain_forwards = _loss_and_grads(_nudged(tiny, cfg), _judged(Trainer(tiny, cfg)))
    trainer = _nudged(tiny, TrainConfig(kl_coef=0.1, micro_batch_tokens=40, gradient_checkpointing=True))
    loss, grads, forwards = _loss_and_grads(trainer, _judged(trainer))
    assert plain_forwards > 1 and forwards == 2 * plain_forwards  # each micro-batch's layers ran again in backward
    assert loss == pytest.approx(plain_loss, abs=1e-5) and abs(loss) > 1e-3
    for name, g in grads.items():
        assert (g - plain[name]).abs().max().item() <= 1e-5, name
    assert architecture_difference(tiny, trainer.save(str(tmp_path / "student"))) == ""


def test_a_tokenizer_without_a_pad_token_trains(tiny, tmp_path):
    """No pad token (Llama 3): rows are padded with EOS, nothing is added to the vocabulary, and the loss is the
    one with the model's own pad token (padding is never a target, nor attended to)."""
    cfg = TrainConfig(lr=1e-3, kl_coef=0.1)
    trainer = _nudged(_without_pad(tiny, tmp_path / "null-pad", unset=True), cfg)
    eos, embedded = trainer.tokenizer.eos_token_id, trainer.model.get_input_embeddings().num_embeddings
    assert trainer.tokenizer.pad_token_id is None and trainer.pad_id == eos
    judged = _judged(trainer)
    lengths = [len(s.prompt_ids) + len(s.completion_ids) for s in judged.rollout.samples]
    assert pack(judged.rollout.samples, trainer.pad_id).ids.numel() > sum(lengths), "the rows should hold padding"
    with_pad = _nudged(tiny, cfg)
    assert with_pad.pad_id != trainer.pad_id
    assert len(trainer.tokenizer) == len(with_pad.tokenizer) and embedded == trainer.model.config.vocab_size
    assert _loss_and_grads(trainer, judged)[0] == pytest.approx(_loss_and_grads(with_pad, judged)[0], abs=1e-6)
    before = trainer.parameter_checksum()
    stats = trainer.step(judged)
    assert not stats.skipped and torch.isfinite(torch.tensor(stats.loss))
    assert trainer.parameter_checksum() != before
    unnamed = Trainer(_without_pad(tiny, tmp_path / "no-pad", unset=False), cfg)
    assert unnamed.tokenizer.pad_token_id >= embedded and unnamed.pad_id == eos  # not an id past the embeddings
    assert not unnamed.step(_judged(unnamed)).skipped
    assert pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=None), embedded) == 0


def _sharded(trainer: Trainer) -> dict[str, bytes]:
    files = trainer.model_files()
    assert "model.safetensors.index.json" in files and "model.safetensors" not in files
    return {name: data for name, data in files.items() if name.endswith(".safetensors")}


def test_a_sharded_checkpoint_restores_weights_and_optimizer(tiny):
    """A student saved in small shards (as big models are) restores into a fresh trainer: every parameter, the
    optimizer's moments and the step counters."""
    trainer = Trainer(tiny, TrainConfig(lr=1e-3, kl_coef=0.1, checkpoint_shard_size="200KB"), seed=0)
    judged = _judged(trainer)
    for _ in range(2):
        trainer.step(judged)
    shards = _sharded(trainer)
    assert len(shards) >= 3
    fresh = Trainer(tiny, TrainConfig(lr=1e-3, kl_coef=0.1), seed=1)
    assert fresh.restore(shards, trainer.trainer_state()) == 2
    restored = fresh.model.state_dict()
    assert all(torch.equal(v, restored[k]) for k, v in trainer.model.state_dict().items())
    saved, loaded = trainer.opt.state_dict()["state"], fresh.opt.state_dict()["state"]
    assert saved.keys() == loaded.keys() and len(saved) == len(list(trainer.model.parameters()))
    for i, moments in saved.items():
        assert all(torch.equal(v, loaded[i][k]) for k, v in moments.items())
    trainer.step(judged), fresh.step(judged)  # the same next update
    assert fresh.parameter_checksum() == trainer.parameter_checksum()


def test_restore_refuses_a_shard_set_missing_a_shard(tiny):
    trainer = Trainer(tiny, TrainConfig(checkpoint_shard_size="200KB"), seed=0)
    shards = _sharded(trainer)
    lost = sorted(shards)[1]
    fresh = _nudged(tiny, TrainConfig())
    before = fresh.parameter_checksum()
    with pytest.raises(ValueError) as refused:
        fresh.restore({k: v for k, v in shards.items() if k != lost}, trainer.trainer_state())
    message = str(refused.value)
    assert "\n" not in message and message.startswith("checkpoint lacks")
    assert any(name in message for name in trainer.model.state_dict())  # names a missing weight
    assert fresh.parameter_checksum() == before  # refused before anything was loaded


def test_a_reset_lets_go_of_the_old_student_before_loading_the_next(tiny, monkeypatch):
    """A new rung's student in the same trainer: the old student, reference and optimizer are freed before the
    new ones load, so the process never holds two sets (a trainer's peak at a rung switch stays one trainer's)."""
    import gc
    import weakref

    import transformers

    trainer = Trainer(tiny, TrainConfig(lr=1e-3))
    old = [weakref.ref(trainer.model), weakref.ref(trainer.ref), weakref.ref(trainer.opt)]
    held_at_load = []
    load = transformers.AutoModelForCausalLM.from_pretrained

    def loading(*args, **kwargs):
        gc.collect()
        held_at_load.append(sum(r() is not None for r in old))
        return load(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", loading)
    trainer.reset(tiny, TrainConfig(lr=1e-3))
    assert held_at_load == [0, 0]  # the student and the reference each loaded with nothing of the old one alive


def test_a_truncated_student_is_named_in_one_line_by_the_trainer(tiny, tmp_path):
    """A broken model reaches the trainer (a version promoted by hand, copied short): its error names the file,
    not the loader's traceback, when the trainer starts or takes a new rung's student."""
    from stages.models import ModelBroken

    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    trainer = Trainer(tiny, TrainConfig(lr=1e-3))
    for start in (lambda: Trainer(str(broken), TrainConfig(lr=1e-3)), lambda: trainer.reset(str(broken), TrainConfig())):
        with pytest.raises(ModelBroken, match=f"^{weights}: "):
            start()
