"""The learning rate over a rung (`train.lr_schedule`): a function of the updates made, so a resumed rung (whose
trainer restores its step count) goes on where it stopped."""
from __future__ import annotations

import math


def lr_factor(schedule: str, step: int, steps: int, warmup: float = 0.1) -> float:
    """The share of `train.lr` that the rung's update `step` (0-based: the updates made before it) of `steps` uses.
    constant: 1. cosine: a linear warmup over the first tenth of the rung, then a half cosine down to almost 0 at
    its last update (the shape of the bootstrap's fine-tuning): the rung ends on small steps, where a constant rate
    leaves its last weights a few points off its trajectory (README, reward-filtered fine-tuning)."""
    if schedule == "constant" or steps <= 1:
        return 1.0
    warm = max(1, round(warmup * steps))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm + 1) / (steps - warm + 1))))


def set_lr(optimizer, cfg, step: int) -> None:
    """Every parameter group of `optimizer` at `cfg.lr` times the schedule's factor for update `step`."""
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * lr_factor(cfg.lr_schedule, step, cfg.steps)
