"""GRPO trainer: the student and a frozen reference in torch, AdamW, clipped-ratio loss with KL.

`step(judged)` updates the student; `export_weights()` puts a safetensors blob in the Ray object store.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ladder.batches import JudgedBatch, TrainStats, WeightsRef


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-5
    kl_coef: float = 0.02
    clip_eps: float = 0.2
    epochs_per_step: int = 1
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    trust_remote_code: bool = False  # the model's own Python code runs only when the spec says so

    @classmethod
    def from_spec(cls, train_spec, trust_remote_code: bool = False) -> "TrainConfig":
        fields = [k for k in cls.__dataclass_fields__ if k != "trust_remote_code"]
        return cls(**{k: getattr(train_spec, k) for k in fields}, trust_remote_code=trust_remote_code)


def group_advantages(scores, groups, keep=None, eps: float = 1e-4):
    """GRPO advantages: (r - mean of the prompt's group) / (std of the group + eps); [n_samples].
    Samples not kept (`keep[i]` False) take no part in their group's statistics and get advantage 0."""
    import torch

    r = torch.tensor(scores, dtype=torch.float32)
    g = torch.tensor(groups)
    kept = torch.ones_like(r, dtype=torch.bool) if keep is None else torch.tensor(keep, dtype=torch.bool)
    adv = torch.zeros_like(r)
    for k in g.unique():
        m = (g == k) & kept
        if m.any():
            adv[m] = (r[m] - r[m].mean()) / (r[m].std(unbiased=False) + eps)
    return adv


def pack(samples, pad_id: int):
    """Right-padded `input_ids [B, T]`, `completion_mask [B, T-1]` (over next-token targets), old logprobs."""
    import torch

    seqs = [list(s.prompt_ids) + list(s.completion_ids) for s in samples]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width - 1), dtype=torch.float32)
    vllm_lp = torch.zeros((len(seqs), width - 1), dtype=torch.float32)
    for i, (s, seq) in enumerate(zip(samples, seqs)):
        ids[i, : len(seq)] = torch.tensor(seq)
        attn[i, : len(seq)] = 1
        p, c = len(s.prompt_ids), len(s.completion_ids)
        mask[i, p - 1: p - 1 + c] = 1
        if s.logprobs:
            vllm_lp[i, p - 1: p - 1 + c] = torch.tensor(s.logprobs)
    return ids, attn, mask, vllm_lp


def token_logprobs(model, ids, attn):
    """log p(ids[:, t+1] | ids[:, :t+1]) for every position; [B, T-1]."""
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    return logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)


class Trainer:
    """Holds the student (trained), the reference (frozen) and the optimizer."""

    def __init__(self, model_path: str, cfg: TrainConfig, seed: int = 0, store=None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if store is not None:
            model_path = store.local(model_path)
        torch.manual_seed(seed)
        self.cfg = cfg
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the GPU Ray gave this actor
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
        load = dict(dtype=torch.float32, use_safetensors=True,  # never unpickle weights
                    trust_remote_code=cfg.trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, **load).to(self.device)
        self.ref = AutoModelForCausalLM.from_pretrained(model_path, **load).to(self.device).eval()
        self.ref.requires_grad_(False)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps = 0
        self.version = 0

    def step(self, judged: JudgedBatch) -> TrainStats:
        import torch

        t0 = time.perf_counter()
        batch = judged.rollout
        keep = judged.trainable
        adv = group_advantages(judged.scores, batch.group, keep)
        ids, attn, mask, vllm_lp = (t.to(self.device) for t in pack(batch.samples, self.tokenizer.pad_token_id))
        mask = mask * torch.tensor(keep, dtype=mask.dtype, device=self.device)[:, None]  # dropped samples: no loss
        adv = adv.to(self.device)
        r = torch.tensor(judged.scores, dtype=torch.float32)
        if not any(keep):
            return self._skip(judged, "no sample left to train on (every judge output unreadable)", t0)
        with torch.no_grad():
            ref_lp = token_logprobs(self.ref, ids, attn)
            old_lp = token_logprobs(self.model, ids, attn)
        n_tok = mask.sum().clamp(min=1)
        mismatch = ((old_lp - vllm_lp).abs() * mask).sum() / n_tok
        self.model.train()
        for _ in range(self.cfg.epochs_per_step):
            loss, kl, clip_frac = self._loss(ids, attn, mask, adv, old_lp, ref_lp, n_tok)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                self.opt.zero_grad(set_to_none=True)
                self.model.eval()
                return self._skip(judged, f"non-finite {'loss' if not torch.isfinite(loss) else 'gradients'}", t0)
            self.opt.step()
        self.model.eval()
        self.steps += 1
        return TrainStats(self.steps, loss.item(), kl.item(), clip_frac.item(), float(grad_norm),
                          r.mean().item(), r.std(unbiased=False).item(), mismatch.item(),
                          time.perf_counter() - t0)

    def _skip(self, judged: JudgedBatch, reason: str, t0: float) -> TrainStats:
        """No update this step (the weights and the optimizer are untouched); the reason is reported."""
        import torch

        r = torch.tensor(judged.scores, dtype=torch.float32)
        return TrainStats(self.steps, 0.0, 0.0, 0.0, 0.0, r.mean().item(), r.std(unbiased=False).item(), 0.0,
                          time.perf_counter() - t0, skipped=reason)

    def _loss(self, ids, attn, mask, adv, old_lp, ref_lp, n_tok):
        import torch

        lp = token_logprobs(self.model, ids, attn)
        ratio = torch.exp(lp - old_lp)
        a = adv[:, None]
        eps = self.cfg.clip_eps
        surrogate = torch.minimum(ratio * a, ratio.clamp(1 - eps, 1 + eps) * a)
        log_r = ref_lp - lp
        kl = torch.exp(log_r) - log_r - 1  # k3 estimator of KL(policy || reference), per token
        per_token = -(surrogate - self.cfg.kl_coef * kl)
        loss = (per_token * mask).sum() / n_tok
        clipped = ((ratio - 1).abs() > eps).float()
        return loss, (kl.detach() * mask).sum() / n_tok, (clipped * mask).sum() / n_tok

    def sequence_logprobs(self, samples) -> list[float]:
        """Sum of the student's logprobs over each sample's completion (for tests and diagnostics)."""
        import torch

        ids, attn, mask, _ = (t.to(self.device) for t in pack(samples, self.tokenizer.pad_token_id))
        with torch.no_grad():
            return ((token_logprobs(self.model, ids, attn) * mask).sum(-1)).tolist()

    def state_blob(self) -> bytes:
        from safetensors.torch import save

        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.model.state_dict().items()}
        return save(state)

    def export_weights(self) -> WeightsRef:
        """The current weights as a safetensors blob in the Ray object store."""
        import ray

        blob = self.state_blob()
        self.version += 1
        return WeightsRef(self.version, ray.put(blob), len(blob), {"step": self.steps})

    def parameter_checksum(self) -> float:
        return float(sum(p.detach().double().abs().sum() for p in self.model.parameters()))

    def save(self, out_dir: str) -> str:
        """An HF-format checkpoint (model + tokenizer) that transformers and vLLM load."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        return str(out)

    def model_files(self) -> dict[str, bytes]:
        """The HF-format checkpoint as {file name: bytes}: it reaches the controller through the object
        store, so the trainer's node and the controller's need not share a disk."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="ladder-model-") as tmp:
            self.save(tmp)
            return {f.name: f.read_bytes() for f in Path(tmp).iterdir() if f.is_file()}

    def trainer_state(self) -> bytes:
        """Optimizer, step counters and RNG: with `model_files` everything a resumed rung needs."""
        import io

        import torch

        buf = io.BytesIO()
        torch.save({"optimizer": self.opt.state_dict(), "steps": self.steps, "version": self.version,
                    "rng": torch.get_rng_state()}, buf)
        return buf.getvalue()

    def restore(self, weights: bytes, state: bytes) -> int:
        """Load a checkpoint written by `model_files` + `trainer_state`; returns the restored step."""
        import io

        import torch
        from safetensors.torch import load

        tensors = load(weights)
        missing = self.model.load_state_dict(tensors, strict=False).missing_keys
        tied = {k for k in missing if k.endswith("lm_head.weight")} if self.model.config.tie_word_embeddings else set()
        if set(missing) - tied:
            raise ValueError(f"checkpoint lacks weights: {sorted(set(missing) - tied)[:3]}")
        saved = torch.load(io.BytesIO(state), map_location=self.device, weights_only=True)
        self.opt.load_state_dict(saved["optimizer"])
        self.steps, self.version = saved["steps"], saved["version"]
        torch.set_rng_state(saved["rng"].cpu())
        return self.steps
