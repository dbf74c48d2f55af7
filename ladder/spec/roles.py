"""The sections of the ladder spec for the roles of a rung: the student, its rollout workers, the judge pool,
the trainer and evaluation."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, SerializeAsAny, model_validator

from ladder.spec.judge import ChatSpec
from ladder.spec.task import TaskSource
from stages.settings import Strict

class StudentSpec(Strict):
    base: str = Field(description="HF-format directory (or hub id) of the student's base model.")
    init: Literal["base", "previous"] = Field(
        "base", description="Where each rung's student starts: the base model, or the last promoted rung.")
    chat: ChatSpec = Field(default_factory=ChatSpec, description="How the student's prompts are rendered.")

class RolloutSpec(Strict):
    workers: int = Field(1, ge=1, le=512, description="Rollout workers, one vLLM engine each.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Engine dtype (rollout and judge): auto is float32 on CPU and bfloat16 on GPU.")
    gpu_memory_utilization: float = Field(
        0.5, gt=0, le=1, description="Share of its GPU an engine may take (GPU engines; two roles may share one).")
    group_size: int = Field(4, ge=2, le=256, description="Samples per prompt (the GRPO group).")
    max_tokens: int = Field(32, ge=1, le=32768, description="Most tokens generated per sample.")
    max_model_len: Optional[int] = Field(
        None, ge=16, description="Context length of the engines (prompt + generated tokens). Default: the longest "
                                 "rendered prompt (student's or judge's) plus what is generated after it, within the "
                                 "model's own limit; a prompt that cannot fit is refused in one line.")
    temperature: float = Field(1.0, gt=0, le=5, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    kv_cache_gib: float = Field(0.5, gt=0, description="KV cache per engine in GiB (CPU engines).")
    compiled: bool = Field(
        False, description="Engines (rollout and judge) run vLLM's compiled model, not eager mode: faster steps, a "
                           "start slower by tens of seconds.")
    tensor_parallel_size: int = Field(
        1, ge=1, le=64, description="Worker processes each rollout engine splits the student over (vLLM tensor "
                                    "parallel, on the engine's node): for a student one device cannot hold. Each "
                                    "worker gets resources.rollout; the model's attention heads must divide by it.")

class JudgePoolSpec(Strict):
    workers: int = Field(1, ge=1, le=512, description="Judge workers, one vLLM engine each.")
    batch_size: int = Field(64, ge=1, description="Pairs scored per request to one worker.")
    tensor_parallel_size: int = Field(
        1, ge=1, le=64, description="Worker processes each judge engine (the gate's too) splits the judge over (vLLM "
                                    "tensor parallel, on the engine's node): a judge larger than one device. Each "
                                    "worker gets resources.judge; the judge's attention heads must divide by it.")

class LoraSpec(Strict):
    """A LoRA student: the base stays frozen and only a low-rank adapter on the named modules trains (peft)."""
    rank: int = Field(ge=1, description="The adapter's rank r (a vLLM engine takes adapters of rank at most 512).")
    alpha: float = Field(gt=0, description="LoRA alpha: the adapter's update is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input while training.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1, description="Modules that get an adapter, by name or by the last parts of their dotted name "
                                  "(peft's matching); each must match a linear module of the student.")
    sync: Literal["auto", "adapter", "merged"] = Field(
        "auto", description="What the rollout engines receive after each step: adapter (the base is loaded once, "
                            "the adapter replaced in place), merged (the whole merged weights), or auto (the adapter "
                            "where the engine can take it, else merged); the choice is logged.")

    @model_validator(mode="after")
    def _engine_rank(self) -> "LoraSpec":
        if self.sync != "merged" and self.rank > 512:
            raise ValueError(f"rank {self.rank}: a vLLM engine takes adapters of rank at most 512 "
                             "(or set sync: merged)")
        return self


class TrainSpec(Strict):
    lr: float = Field(1e-5, gt=0, lt=1, description="AdamW learning rate.")
    kl_coef: float = Field(0.02, ge=0, description="Weight of the KL penalty to the reference model.")
    clip_eps: float = Field(0.2, gt=0, lt=1, description="PPO ratio clip range.")
    advantage: Literal["group", "filter"] = Field(
        "group", description="group: GRPO (each sample's reward against its prompt's group). filter: reward-filtered "
                             "fine-tuning (RAFT, ReST-EM): only samples rewarded above 0.5 train, each with advantage "
                             "1: the student learns what the judge accepts, also where all its samples were right. "
                             "bench/distill_chain.py measures both.")
    steps: int = Field(20, ge=1, description="Training steps per rung (at most).")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="The learning rate over a rung: constant, or cosine (a warmup over the first tenth of "
                                "`steps`, then down to almost 0 at the last step), so the rung ends on small updates.")
    prompts_per_step: int = Field(8, ge=1, description="Prompts per step; samples = prompts * group_size.")
    epochs_per_step: int = Field(1, ge=1, le=16, description="Optimizer passes over each step's batch.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    micro_batch_tokens: int = Field(
        4096, ge=0, description="Tokens per forward pass: samples are packed end to end into rows as wide as the "
                                "longest, and the rows grouped into micro-batches of at most this many tokens "
                                "(gradients accumulate; the loss is that of the whole batch). 0: the whole batch in "
                                "one pass.")
    overlap: bool = Field(
        False, description="Generate and judge step n+1's batch while step n trains: one step off-policy, the ratio "
                           "taken against the sampling engine's logprobs. It pays where rollout, judge and trainer "
                           "have devices of their own; on one CPU they share its cores.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="The trainer's compute dtype (mixed precision: the student's weights and updates stay "
                            "float32, the forward and the frozen reference use this): auto is bfloat16 on a GPU that "
                            "supports it, float32 on CPU (where bf16 is slow and the engines' float32 logprobs then "
                            "agree).")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass instead of keeping them: less memory for "
                           "long sequences and large models, about a third more compute.")
    workers: int = Field(
        1, ge=1, le=1024, description="Trainer ranks: 1 trains the student in one process; N shards it over N ranks "
                                      "(FSDP2, one torch.distributed world: gloo on CPU, NCCL on GPUs), each step's "
                                      "batch split across them, the same update as one rank's. Each rank takes "
                                      "`resources.trainer`.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="How the trainer ranks' placement group spreads them over nodes (Ray's strategies).")
    lora: Optional[LoraSpec] = Field(
        None, description="Train a LoRA adapter instead of the whole student (less trainer memory, a smaller "
                          "sync); the rung's candidate is the base with the adapter merged in.")
    max_skipped_steps: int = Field(
        5, ge=1, description="Steps in a row without an update (non-finite loss or gradients, or no sample left to "
                             "train on) after which the rung fails, with the reason in MLflow.")

class SyncSpec(Strict):
    """How the trainer's weights reach the rollout engines after each step, in place."""
    backend: Literal["object_store", "collective"] = Field(
        "object_store", description="object_store: the weights as arrays through Ray's object store (any cluster); "
                                    "collective: broadcast over a process group of the trainer's rank 0 and every "
                                    "engine worker (gloo on CPU, NCCL on GPUs), in buckets, no copy in the store.")


class EvalSpec(Strict):
    every: int = Field(10, ge=1, description="Evaluate every this many steps (and at rung end).")
    calibration_size: int = Field(64, ge=4, description="Items in the judge calibration set of the gate.")
    yardstick: Optional[SerializeAsAny[TaskSource]] = Field(
        None, description="The one fixed task every version of the ladder is measured on (greedy accuracy on its "
                          "held-out prompts), so the chart shows whether the chain climbs; default: the task of the "
                          "ladder's last rung (its hardest, in a curriculum): a built-in generator's own prompts, or "
                          "a file's held-out rows.")
    yardstick_size: int = Field(
        512, ge=0, description="Held-out prompts of the yardstick (0: no yardstick); >= 512 tells a 3-point gain "
                               "from noise. A file yardstick needs more rows than this.")
