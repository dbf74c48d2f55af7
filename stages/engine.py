"""Construction of vLLM engines and in-place weight loading, shared by rollout and judge workers.

Engines run in-process (no engine-core subprocess) so `collective_rpc` can pass tensors directly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

ENGINE_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_LOGGING_LEVEL": "WARNING",
    "VLLM_CONFIGURE_LOGGING": "1",
}


@dataclass(frozen=True)
class EngineConfig:
    model: str
    seed: int = 0
    kv_cache_gib: float = 0.5
    max_model_len: int = 512
    dtype: str = "float32"        # float32 on CPU keeps trainer and engine logprobs identical
    full_logprobs: bool = False   # judges need the whole next-token distribution


class ModelNotFound(ValueError):
    """A model path that does not hold an HF-format model."""


def check_model_dir(path: str) -> None:
    """Fail early, in one line, when a local model directory is missing or incomplete."""
    looks_local = path.startswith((".", "/", "~")) or path.count("/") != 1
    if looks_local and not os.path.isdir(path):
        raise ModelNotFound(f"{path}: no such model directory")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelNotFound(f"{path}: not an HF model directory (no config.json)")


def build_llm(cfg: EngineConfig):
    """A vLLM `LLM` for `cfg`; the environment must be set before vLLM is imported."""
    for key, value in ENGINE_ENV.items():
        os.environ.setdefault(key, value)
    check_model_dir(cfg.model)
    from vllm import LLM

    return LLM(
        model=cfg.model, dtype=cfg.dtype, seed=cfg.seed, max_model_len=cfg.max_model_len,
        kv_cache_memory_bytes=int(cfg.kv_cache_gib * 2**30), enforce_eager=True,
        max_logprobs=-1 if cfg.full_logprobs else 20, enable_prefix_caching=False,
    )


def load_state_dict_into(llm, state: dict) -> None:
    """Replace the engine's weights in place (no restart) with `state` (HF parameter names)."""
    items = list(state.items())

    def reload(worker):
        worker.reload_weights(weights_iterator=iter(items))
        return True

    llm.collective_rpc(reload)
    llm.reset_prefix_cache()
