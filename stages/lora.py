"""LoRA students: the adapter settings, which of a model's modules they target, what ranks a vLLM engine takes, and
the trainer's adapter (peft) beside its frozen base: reference forwards, merged weights, adapter files.

Pure functions and one class the trainer holds (`Adapter`); torch and peft are imported where they are used.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from stages.files import as_bytes

# vLLM's LoRAConfig.max_lora_rank takes one of these (vllm/config/lora.py, MaxLoRARanks); an adapter's rank must be
# at most the engine's
ENGINE_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
ADAPTER_NAME = "default"  # peft's name of a model's one adapter


@dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: float
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    sync: str = "auto"   # auto | adapter | merged: what the rollout engines receive each step

    @classmethod
    def from_spec(cls, lora_spec) -> "LoraSettings":
        return cls(lora_spec.rank, lora_spec.alpha, lora_spec.dropout, tuple(lora_spec.target_modules),
                   lora_spec.sync)


def engine_rank(rank: int) -> int:
    """The smallest `max_lora_rank` a vLLM engine takes that holds an adapter of `rank`; ValueError beyond."""
    for allowed in ENGINE_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"rank {rank}: a vLLM engine takes adapters of rank at most {ENGINE_RANKS[-1]}")


def matches(module: str, target: str) -> bool:
    """Whether peft's `target_modules` entry `target` selects the module named `module`: the whole name or its
    last dotted parts (`q_proj`, `self_attn.q_proj`)."""
    return module == target or module.endswith("." + target)


def linear_modules(model_dir: str) -> list[str]:
    """The names of the modules of an HF model folder that hold a 2-D weight (linear layers and embeddings), read
    from its safetensors headers alone (no torch; `check_safetensors` reads and checks them)."""
    from stages.models import check_safetensors

    names: list[str] = []
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        names += [k.removesuffix(".weight") for k, v in check_safetensors(str(path)).items()
                  if k.endswith(".weight") and isinstance(v, dict) and len(v.get("shape", ())) == 2]
    return sorted(set(names))


def unmatched_targets(modules: list[str], targets) -> list[str]:
    """The `targets` that select none of `modules`."""
    return [t for t in targets if not any(matches(m, t) for m in modules)]


def engine_refusal(modules: list[str], targets) -> str:
    """Why a vLLM engine cannot take an adapter on `targets` ("" when it can): vLLM applies adapters to the linear
    projections of the decoder layers, not to the embeddings or the head."""
    outside = sorted({m for m in modules for t in targets if matches(m, t) and not re.search(r"\.layers\.\d+\.", m)})
    return f"adapters on {', '.join(outside[:3])} (outside the decoder layers)" if outside else ""


class Adapter:
    """The trainer's adapter on its student (a peft model whose base stays frozen): the reference is the base with
    the adapter disabled, so no second copy of the model is held."""

    def __init__(self, model, settings: LoraSettings):
        from peft import LoraConfig, get_peft_model

        self.settings = settings
        config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                            target_modules=list(settings.target_modules), bias="none")
        self.model = get_peft_model(model, config)

    def reference_logprobs(self, packed):
        """The completion tokens' logprobs under the base alone (the KL reference)."""
        from stages.packing import completion_logprobs

        with self.model.disable_adapter():
            return completion_logprobs(self.model, packed)

    def trained_state(self) -> dict:
        """{peft name: tensor} of the adapter's weights (what training changes)."""
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.model)

    def arrays(self) -> dict:
        """The adapter's weights as numpy arrays (copies), {peft name: array}."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.trained_state().items()}

    def load_trained_state(self, state: dict) -> None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.model, state)
        missing = [k for k in result.missing_keys if ".lora_" in k]
        if missing:
            raise ValueError(f"adapter checkpoint lacks {len(missing)} of the adapter's weights (e.g. {missing[0]})")

    def merged_state(self) -> dict:
        """{HF name: tensor} of the base with the adapter merged in (W + scale * B A), computed beside the base:
        the base's own weights are never touched (a merge and unmerge would round them)."""
        from peft.tuners.lora import LoraLayer

        base = self.model.get_base_model()
        deltas = {f"{name}.weight": m.get_delta_weight(ADAPTER_NAME) for name, m in base.named_modules()
                  if isinstance(m, LoraLayer)}
        out = {}
        for key, value in base.state_dict().items():
            if ".lora_" in key:
                continue
            key = key.replace(".base_layer.", ".")
            out[key] = (value + deltas[key]).detach() if key in deltas else value
        return out

    def files(self) -> dict[str, bytes]:
        """The adapter as peft writes it ({file name: bytes}: its safetensors and config), which vLLM and
        `peft.PeftModel.from_pretrained` load."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="ladder-adapter-") as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            return {name: (Path(tmp) / name).read_bytes() for name in ADAPTER_FILES}

    def load_files(self, files: dict[str, bytes]) -> None:
        """Adapter weights written by `files` back into the adapter."""
        from safetensors.torch import load

        if ADAPTER_FILES[0] not in files:
            raise ValueError(f"adapter checkpoint lacks {ADAPTER_FILES[0]} (has {', '.join(sorted(files)) or 'none'})")
        self.load_trained_state(load(as_bytes(files[ADAPTER_FILES[0]])))  # bytes, or a blob as restores pass it

    def checksums(self) -> dict[str, float]:
        """Sums of |weights| of the frozen base and of the adapter."""
        out = {"base": 0.0, "adapter": 0.0}
        for p in self.model.parameters():
            out["adapter" if p.requires_grad else "base"] += float(p.detach().double().abs().sum())
        return out


def write_adapter(files: dict[str, bytes], folder: Path) -> str:
    """The adapter files into `folder` (made if missing); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return str(folder)
