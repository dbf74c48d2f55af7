"""Typed data that travels between the roles: prompts, rollouts, judged rollouts, train stats, weights.

Frozen dataclasses; sequences are tuples indexed by sample (`[n_samples]`), token lists by token.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class PromptBatch:
    prompts: tuple[str, ...]                      # [n_prompts]
    references: tuple[Optional[str], ...]         # [n_prompts] ground-truth answers, None where unknown


@dataclass(frozen=True)
class Sample:
    """One generated completion."""
    prompt_ids: tuple[int, ...]                   # [prompt_len]
    completion_ids: tuple[int, ...]               # [completion_len]
    completion_text: str
    logprobs: tuple[float, ...]                   # [completion_len] sampling logprobs from vLLM


@dataclass(frozen=True)
class RolloutBatch:
    prompts: tuple[str, ...]                      # [n_samples] (each prompt repeated group_size times)
    references: tuple[Optional[str], ...]         # [n_samples]
    samples: tuple[Sample, ...]                   # [n_samples]
    group: tuple[int, ...]                        # [n_samples] index of the prompt's group

    @property
    def responses(self) -> list[str]:
        return [s.completion_text for s in self.samples]

    @property
    def n_tokens(self) -> int:
        return sum(len(s.completion_ids) for s in self.samples)


@dataclass(frozen=True)
class JudgedBatch:
    rollout: RolloutBatch
    scores: tuple[float, ...]                     # [n_samples] rewards in [0, 1]
    parse_failures: int = 0
    judge_tokens: int = 0                         # tokens the judge generated to score this batch
    examples: tuple[dict, ...] = ()               # a few judge outputs, for people to read
    keep: tuple[bool, ...] = ()                   # [n_samples] False: left out of training (empty: all kept)
    invalid_scores: int = 0                       # scores that were NaN or outside [0, 1]
    coverage: float = 1.0                         # share of prompts the judge labelled (the rest: abstained)
    guided: int = 0                               # groups given the judge's own answer (judge.solve_guide)

    @property
    def trainable(self) -> tuple[bool, ...]:
        return self.keep or (True,) * len(self.scores)


@dataclass(frozen=True)
class TrainStats:
    step: int
    loss: float
    kl: float
    clip_frac: float
    grad_norm: float
    reward_mean: float
    reward_std: float
    logprob_mismatch: float                       # mean |trainer logprob - vLLM logprob| before the update
    seconds: float
    skipped: str = ""                             # why no update was made ("" when one was)


@dataclass(frozen=True)
class WeightsRef:
    """A version of the student's weights in the Ray object store."""
    version: int
    blob: Any            # ray.ObjectRef of {HF parameter name: float32 numpy array} (an adapter: {file name: bytes})
    n_bytes: int = 0
    meta: dict = field(default_factory=dict)
