"""Tiny models built from configs: a Qwen2-architecture LM and a character-level tokenizer.

Nothing is downloaded; both transformers and vLLM load what `build_tiny_model` writes.
"""
from ladder.models.tiny import SIZES, TinySize, build_tiny_model, build_char_tokenizer

__all__ = ["SIZES", "TinySize", "build_tiny_model", "build_char_tokenizer"]
