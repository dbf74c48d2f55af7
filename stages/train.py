"""GRPO trainer: the student and a frozen reference in torch, AdamW, clipped-ratio loss with KL.

`step(judged)` updates the student; `export_weights()` puts its weights (numpy arrays) in the Ray object store.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from stages.batches import JudgedBatch, TrainStats, WeightsRef
from stages.files import as_bytes, blob
from stages.lora import Adapter, LoraSettings
from stages.models import TOKENIZER_FILES, check_model_dir, safetensors_names, without_unused_libraries
from stages.schedule import set_lr
from stages.startup import few_collections
from stages.packing import advantages, completion_logprobs, loss_rows, micro_batches, pack, pad_id, tokenized
from stages.weight_sync import WeightSender


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-5
    kl_coef: float = 0.02
    clip_eps: float = 0.2
    advantage: str = "group"            # group: GRPO's; filter: the rewarded samples only (`stages.packing.advantages`)
    lr_schedule: str = "constant"       # constant, or cosine over the rung's `steps` (`stages.schedule.lr_factor`)
    steps: int = 20                     # the rung's updates (train.steps), what a schedule spans
    epochs_per_step: int = 1
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    micro_batch_tokens: int = 4096      # tokens (packed rows) per forward pass (0: the whole batch at once)
    overlap: bool = False               # batches sampled one update ago: the ratio is taken against vLLM's logprobs
    dtype: str = "auto"                 # the forward's compute dtype (weights stay float32): see `resolve_dtype`
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (less memory)
    trust_remote_code: bool = False  # the model's own Python code runs only when the spec says so
    checkpoint_shard_size: Optional[str] = None  # largest safetensors file `save` writes ("200KB"); None: HF's
    lora: Optional[LoraSettings] = None  # a LoRA student: only the adapter trains, the base is the reference

    @classmethod
    def from_spec(cls, train_spec, trust_remote_code: bool = False) -> "TrainConfig":
        fields = [k for k in cls.__dataclass_fields__ if k not in ("trust_remote_code", "checkpoint_shard_size", "lora")]
        lora = LoraSettings.from_spec(train_spec.lora) if train_spec.lora is not None else None
        return cls(**{k: getattr(train_spec, k) for k in fields}, trust_remote_code=trust_remote_code, lora=lora)


def resolve_dtype(name: str):
    """The torch dtype of `train.dtype`: auto is bfloat16 on a GPU that supports it, float32 otherwise."""
    import torch

    if name == "auto":
        name = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"train.dtype {name!r}: must be auto, float32 or bfloat16")
    return getattr(torch, name)


class Trainer(WeightSender):
    """Holds the student (trained), the reference (frozen) and the optimizer."""

    @few_collections()
    def __init__(self, model_path: str, cfg: TrainConfig, seed: int = 0, store=None):
        without_unused_libraries()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.store = store
        if store is not None:
            model_path = store.local(model_path)
        check_model_dir(model_path)  # a truncated file is named in one line, not as the loader's traceback
        self.model_dir = model_path
        torch.manual_seed(seed)
        self.cfg = cfg
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the GPU Ray gave this actor
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
        # mixed precision: the student's weights (and AdamW's updates) stay float32, its forward runs in the compute
        # dtype; the frozen reference is held in it. Updates below half a bfloat16 step would round away in
        # bfloat16 weights (measured: 16% of the weights moved at lr 1e-5 on the tiny model, against 100%).
        self.compute_dtype = resolve_dtype(cfg.dtype)
        load = dict(use_safetensors=True, trust_remote_code=cfg.trust_remote_code)  # never unpickle weights
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, **load).to(self.device)
        if cfg.gradient_checkpointing:
            # config.use_cache stays (a saved student's config must equal its base's); every forward passes False
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.pad_id = pad_id(self.tokenizer, self.model.get_input_embeddings().num_embeddings)
        self.adapter = self.ref = None
        if cfg.lora is not None:  # the base frozen, the adapter trained; the reference is the base alone
            self.adapter = Adapter(self.model, cfg.lora)
            self.model = self.adapter.model
        else:
            self.ref = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.compute_dtype, **load).to(
                self.device).eval()
            self.ref.requires_grad_(False)
            self.ref = self.place(self.ref)
        self.model = self.place(self.model)
        # fused: one kernel per parameter instead of a dozen passes (on the bench model 12 ms a step against 58)
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=cfg.lr,
                                     weight_decay=cfg.weight_decay, fused=True)
        self.steps = 0
        self.version = 0

    # The seams a rank of a trainer group (stages/train_rank.py) fills in: where the modules live, which
    # micro-batches this process runs, how its numbers and gradients become the batch's, and the full weights.
    def place(self, module):
        """The module as this process holds it (here: whole)."""
        return module

    def micro_groups(self, rows: list[int], lengths: list[int]) -> list[list[int]]:
        """The sample indices of each micro-batch this process runs (`rows` kept, `lengths` their tokens); an
        empty group is a pass that adds nothing (a group's ranks all run the same number of passes)."""
        return [[rows[j] for j in g] for g in micro_batches(lengths, self.cfg.micro_batch_tokens)]

    def reduce_totals(self, totals: dict) -> dict:
        """The step's loss, KL, clip share and mismatch over the whole batch (here: this process's)."""
        return totals

    def clip_gradients(self):
        """Clip the gradients to `max_grad_norm`; returns their norm before clipping (a plain tensor)."""
        import torch

        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)

    def full_state_dict(self) -> dict:
        """{HF name: tensor} of the student's whole weights (a LoRA student's: the adapter merged into the base)."""
        return self.model.state_dict() if self.adapter is None else self.adapter.merged_state()

    def load_full_state(self, state: dict, strict: bool = True) -> None:
        """Whole weights ({HF name: tensor}) into the student (not a LoRA student: its adapter is what loads)."""
        self.model.load_state_dict(state, strict=strict)

    def reference_logprobs(self, packed):
        """The completion tokens' logprobs under the frozen reference (a LoRA student's: its base alone)."""
        if self.adapter is not None:
            return self.adapter.reference_logprobs(packed)
        return completion_logprobs(self.ref, packed)

    def autocast(self):
        """The forward's precision: the compute dtype (bfloat16 autocast), or plain float32."""
        import torch

        return torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32)

    def reset(self, model_path: str, cfg: TrainConfig, seed: int = 0) -> int:
        """Start over on another student (a new rung) in this process: new weights, reference and optimizer."""
        self.let_go()
        self.__init__(model_path, cfg, seed, self.store)
        return self.parameter_count()

    def let_go(self) -> None:
        """Drop the student, reference and optimizer before another student is loaded: the process holds one set
        at a time (with both, a reset's peak was about twice a trainer's memory: ~24 bytes a parameter)."""
        import gc
        import torch

        self.model = self.ref = self.opt = self.adapter = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def step(self, judged: JudgedBatch) -> TrainStats:
        import torch

        t0 = time.perf_counter()
        if not any(loss_rows(judged.scores, judged.trainable, self.cfg.advantage)):
            return self._skip(judged, "no sample left to train on (every judge output unreadable, or none "
                                      "rewarded above 0.5 under train.advantage: filter)", t0)
        if self.cfg.overlap and any(len(s.logprobs) != len(s.completion_ids) for s in judged.rollout.samples):
            raise ValueError("train.overlap needs the sampling logprobs of every completion token")
        self.model.train()
        cache: dict = {}
        set_lr(self.opt, self.cfg, self.steps)
        for epoch in range(self.cfg.epochs_per_step):
            self.opt.zero_grad(set_to_none=True)
            totals = self.reduce_totals(self.accumulate(judged, cache))
            loss = totals["loss"]
            grad_norm = self.clip_gradients()
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                self.opt.zero_grad(set_to_none=True)
                self.model.eval()
                return self._skip(judged, f"non-finite {'loss' if not torch.isfinite(loss) else 'gradients'}", t0)
            if epoch == 0:
                mismatch = totals["mismatch"].item()  # of the policy that sampled, before any update
            self.opt.step()
        self.model.eval()
        self.steps += 1
        r = torch.tensor(judged.scores, dtype=torch.float32)
        return TrainStats(self.steps, loss.item(), totals["kl"].item(), totals["clip_frac"].item(), float(grad_norm),
                          r.mean().item(), r.std(unbiased=False).item(), mismatch,
                          time.perf_counter() - t0)

    def accumulate(self, judged: JudgedBatch, cache: dict) -> dict:
        """One pass over the step's batch in packed micro-batches, gradients accumulated: afterwards the
        parameters' `.grad` is the gradient of the whole batch's loss. Returns the loss, KL, clip share and
        (in the first pass) the trainer-vs-vLLM logprob mismatch, all per completion token.

        Samples are packed end to end (`pack`), so no padding is computed between them. With one epoch per step
        the "old" policy is the current one: its logprobs are the detached ones of the forward that is
        differentiated (ratio 1, same gradient), not a second forward. With `overlap` the batch was sampled by
        the weights before the last update, and the old policy is that one: vLLM's sampling logprobs (as verl's
        one-step off-policy recipe and TRL's async GRPO take them; a guide's unknown ones: the current policy's).
        The reference forward (a KL term only) runs once per step: `cache` (empty at a step's start) keeps it."""
        import torch

        batch = judged.rollout
        adv, keep = advantages(judged.scores, batch.group, judged.trainable, self.cfg.advantage)
        rows = [i for i, k in enumerate(keep) if k]  # dropped samples take no part in the loss
        samples = tokenized(batch.samples, self.tokenizer)  # a judge's answer given as text (solve_guide)
        lengths = [len(samples[i].prompt_ids) + len(samples[i].completion_ids) for i in rows]
        width = max(lengths)
        groups = self.micro_groups(rows, lengths)
        n_tok = float(sum(len(samples[i].completion_ids) for i in rows)) or 1.0
        first_pass = not cache
        totals = {k: torch.zeros((), device=self.device) for k in ("loss", "kl", "clip_frac", "mismatch")}
        for key, g in enumerate(groups):
            weight = 1.0 if g else 0.0  # an empty group: a pass over the first sample that adds nothing
            g = g or rows[:1]
            packed = pack([samples[i] for i in g], self.pad_id, width).to(self.device)
            if key not in cache:
                with torch.no_grad(), self.autocast():
                    ref = self.reference_logprobs(packed) if self.cfg.kl_coef > 0 else None
                    old = (completion_logprobs(self.model, packed)
                           if self.cfg.epochs_per_step > 1 and not self.cfg.overlap else None)
                cache[key] = (ref, old)
            ref_lp, old_lp = cache[key]
            with self.autocast():
                lp = completion_logprobs(self.model, packed)
            old_lp = (packed.vllm_lp.where(packed.vllm_lp.isfinite(), lp.detach()) if self.cfg.overlap  # guides: on
                      else lp.detach() if old_lp is None else old_lp)
            loss, kl, clipped = self._loss(lp, old_lp, ref_lp, adv[g].to(self.device)[packed.sample])
            (loss * weight / n_tok).backward()
            totals["loss"] += loss.detach() * weight / n_tok
            totals["kl"] += kl * weight / n_tok
            totals["clip_frac"] += clipped * weight / n_tok
            if first_pass:  # the policy before this step's update against the sampling engine's numbers
                totals["mismatch"] += (lp.detach() - packed.vllm_lp).abs().nan_to_num(0.0).sum() * weight / n_tok
        return totals

    def _skip(self, judged: JudgedBatch, reason: str, t0: float) -> TrainStats:
        """No update this step (the weights and the optimizer are untouched); the reason is reported."""
        import torch

        r = torch.tensor(judged.scores, dtype=torch.float32)
        return TrainStats(self.steps, 0.0, 0.0, 0.0, 0.0, r.mean().item(), r.std(unbiased=False).item(), 0.0,
                          time.perf_counter() - t0, skipped=reason)

    def _loss(self, lp, old_lp, ref_lp, adv):
        """Sums over the completion tokens (all `[N]`; `adv` is each token's sample's advantage): the
        clipped-ratio loss with the k3 KL penalty, the KL (0 without a reference), and the number of clipped
        tokens."""
        import torch

        ratio = torch.exp(lp - old_lp)
        eps = self.cfg.clip_eps
        per_token = -torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
        kl = torch.zeros((), device=lp.device)
        if ref_lp is not None:
            log_r = ref_lp - lp
            k3 = torch.exp(log_r) - log_r - 1  # k3 estimator of KL(policy || reference), per token
            per_token = per_token + self.cfg.kl_coef * k3
            kl = k3.detach().sum()
        clipped = ((ratio - 1).abs() > eps).float().sum()
        return per_token.sum(), kl, clipped

    def state_arrays(self) -> dict:
        """The student's weights as float32 numpy arrays, {HF parameter name: array} (the student's weights are
        float32 whatever the compute dtype); on CPU they share the parameters' memory (no copy)."""
        import torch

        return {k: v.detach().to("cpu", torch.float32).contiguous().numpy() for k, v in self.full_state_dict().items()}

    def snapshot(self):
        """A copy of the current weights in the Ray object store (no new version): the collapse guard's best (a LoRA
        student's: its adapter)."""
        import ray

        return ray.put(self.state_arrays() if self.adapter is None else self.adapter.arrays())

    def load_arrays(self, arrays: dict) -> None:
        """Weights ({HF name: numpy array}, as `snapshot` gives them) back into the student; the optimizer's
        state is kept."""
        import warnings

        import torch

        with warnings.catch_warnings():  # read-only views of the object store: load_state_dict copies them in
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            state = {k: torch.from_numpy(v) for k, v in arrays.items()}
            self.adapter.load_trained_state(state) if self.adapter is not None else self.load_full_state(state)

    def export_weights(self) -> WeightsRef:
        """The current weights in the Ray object store, as numpy arrays: `ray.put` copies them in once and a
        worker on this node reads them in place (a safetensors blob took two copies more on each side)."""
        import ray

        t0 = time.perf_counter()
        arrays = self.state_arrays()
        self.version += 1
        return WeightsRef(self.version, ray.put(arrays), sum(a.nbytes for a in arrays.values()),
                          {"step": self.steps, "seconds": time.perf_counter() - t0})

    def state_bytes(self) -> dict[str, int]:
        """Bytes of the student's parameters (those trained among them), gradients, optimizer state and frozen
        reference that this process holds (a group's rank: its shards)."""
        local = lambda t: t.to_local() if hasattr(t, "to_local") else t  # noqa: E731
        size = lambda ts: sum(local(t).numel() * local(t).element_size() for t in ts)  # noqa: E731
        params = list(self.model.parameters())
        optim = [v for st in self.opt.state.values() for v in st.values() if hasattr(v, "numel") and v.dim() > 0]
        return {"parameters": size(params), "trained": size(p for p in params if p.requires_grad),
                "gradients": size(p.grad for p in params if p.grad is not None), "optimizer": size(optim),
                "reference": size(self.ref.parameters()) if self.ref is not None else 0}

    def parameter_checksum(self) -> float:
        return float(sum(p.detach().double().abs().sum() for p in self.model.parameters()))

    def export_adapter(self) -> WeightsRef:
        """(a LoRA student) Its adapter's files ({name: bytes}, a few MB at most) in the Ray object store."""
        import ray

        t0, files = time.perf_counter(), self.adapter.files()
        self.version += 1
        return WeightsRef(self.version, ray.put(files), sum(map(len, files.values())),
                          {"step": self.steps, "seconds": time.perf_counter() - t0, "adapter": True})

    def save(self, out_dir: str, max_shard_size: Optional[str] = None, state_dict: Optional[dict] = None) -> str:
        """An HF-format checkpoint (model + tokenizer) that transformers and vLLM load. Weights above
        `max_shard_size` (default `cfg.checkpoint_shard_size`, else transformers' own, 50GB) are split into
        `model-0000k-of-0000n.safetensors` files with a `model.safetensors.index.json`. `state_dict`: the weights
        to write (default: the student's own)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        shard = max_shard_size or self.cfg.checkpoint_shard_size
        model = self.model if self.adapter is None else self.model.get_base_model()  # a plain HF model, merged
        if self.adapter is not None and state_dict is None:
            state_dict = self.adapter.merged_state()
        model.save_pretrained(out, safe_serialization=True, state_dict=state_dict,
                              **({"max_shard_size": shard} if shard else {}))
        source = Path(self.model_dir)
        copied = [f for f in TOKENIZER_FILES if (source / f).is_file()]
        for name in copied:  # the student's own files, byte for byte: re-saving would rewrite the tokenizer
            shutil.copyfile(source / name, out / name)
        if not copied:  # a hub id: no local files to copy
            self.tokenizer.save_pretrained(out)
        return str(out)

    def model_files(self) -> dict:
        """The HF-format checkpoint as {file name: its bytes as a `stages.files.blob`} (a LoRA student's: merged):
        it reaches the controller through the object store (the two need not share a disk), mapped there."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="ladder-model-") as tmp:
            self.save(tmp)
            return {f.name: blob(f.read_bytes()) for f in Path(tmp).iterdir() if f.is_file()}

    def checkpoint_files(self) -> dict:
        """A checkpoint's weights: `model_files`, or a LoRA student's adapter files alone (its base: the rung's)."""
        return self.model_files() if self.adapter is None else self.adapter.files()

    def trainer_state(self):
        """Optimizer, step counters and RNG (a blob): with `model_files` everything a resumed rung needs."""
        import io
        import torch

        buf = io.BytesIO()
        torch.save({"optimizer": self.opt.state_dict(), "steps": self.steps, "version": self.version,
                    "rng": torch.get_rng_state()}, buf)
        return blob(buf.getvalue())

    def restore(self, weights: dict[str, bytes], state: bytes) -> int:
        """Load a checkpoint written by `checkpoint_files` + `trainer_state` (bytes or blobs): `weights` holds each
        of its *.safetensors files (one, or every shard; a LoRA student's adapter). Returns the restored step."""
        import io
        import torch

        self.adapter.load_files(weights) if self.adapter is not None else self.load_weight_files(weights)
        saved = torch.load(io.BytesIO(state), map_location=self.device, weights_only=True)  # bytes or a blob
        self.opt.load_state_dict(saved["optimizer"])
        self.steps, self.version = saved["steps"], saved["version"]
        torch.set_rng_state(saved["rng"].cpu())
        return self.steps

    def load_weight_files(self, weights: dict[str, bytes]) -> None:
        """Load safetensors files into the student, one at a time. ValueError (one line), the student untouched,
        when their union lacks a weight (a tied lm_head may be absent)."""
        from safetensors.torch import load

        weights = {name: as_bytes(data) for name, data in weights.items()}  # blobs, mapped files or bytes
        missing = set(self.model.state_dict()) - set().union(*map(safetensors_names, weights.values()))
        if self.model.config.tie_word_embeddings:
            missing = {k for k in missing if not k.endswith("lm_head.weight")}
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} of the model's weights (e.g. "
                             f"{', '.join(sorted(missing)[:3])}) in its {len(weights)} safetensors file(s)")
        for name in sorted(weights):
            self.load_full_state(load(weights[name]), strict=False)

