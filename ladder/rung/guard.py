"""The collapse guard: a rung whose held-out accuracy or reward accuracy falls from its best stops early, or whose
samples' answers grow consistent while reward accuracy drops (the early sign of a collapse into consistent wrong
answers).

Pure bookkeeping over the step loop's metrics; the rung keeps the best weights (`Rung.keep_best`) and puts them
back when the guard fires (`Rung.restore_best`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class CollapseGuard:
    """`after_eval(accuracy)` says whether the weights are the best so far ("best") or have collapsed
    ("collapse"); `after_step(metrics)` watches the mean reward accuracy over `window` steps, and the mean answer
    consistency beside it: it fires when consistency rose `consistency_rise` above its level at the best reward
    accuracy while reward accuracy fell `consistency_drop` below that best. `reason` says why.

    `rewards=False` (a judge whose label of a prompt is fixed before the rung, as step votes are) watches held-out
    accuracy alone: a fixed label cannot drift with the student, and reward accuracy then falls toward the label's
    own accuracy as the student learns it (it agrees with the label's errors too), which is the rung working."""
    tolerance: float
    window: int
    consistency_rise: float = 1.0
    consistency_drop: float = 1.0
    rewards: bool = True
    best_accuracy: Optional[float] = None
    best_reward_accuracy: Optional[float] = None
    consistency_at_best: Optional[float] = None
    reward_accuracies: list = field(default_factory=list)
    consistencies: list = field(default_factory=list)
    reason: str = ""

    def after_eval(self, accuracy: Optional[float]) -> str:
        if accuracy is None:
            return ""
        if self.best_accuracy is None or accuracy >= self.best_accuracy:
            self.best_accuracy = accuracy
            return "best"
        if accuracy < self.best_accuracy - self.tolerance:
            self.reason = (f"collapse guard: held-out accuracy {accuracy:.3f} fell below its best "
                           f"{self.best_accuracy:.3f} - tolerance {self.tolerance}")
            return "collapse"
        return ""

    def after_step(self, metrics: dict) -> bool:
        """True when the mean reward accuracy of the last `window` steps fell below its best by the tolerance, or
        fell `consistency_drop` below it while the mean answer consistency rose `consistency_rise` above its level
        at that best."""
        value = metrics.get("judge/reward_accuracy")
        if value is None or not self.rewards:
            return False
        self.reward_accuracies.append(value)
        self.consistencies.append(metrics.get("rollout/answer_consistency", 0.0))
        if len(self.reward_accuracies) < self.window:
            return False
        mean = sum(self.reward_accuracies[-self.window:]) / self.window
        consistency = sum(self.consistencies[-self.window:]) / self.window
        if self.best_reward_accuracy is None or mean > self.best_reward_accuracy:
            self.best_reward_accuracy, self.consistency_at_best = mean, consistency
            return False
        if mean < self.best_reward_accuracy - self.tolerance:
            self.reason = (f"collapse guard: reward accuracy over {self.window} steps {mean:.3f} fell below its best "
                           f"{self.best_reward_accuracy:.3f} - tolerance {self.tolerance}")
            return True
        if (mean < self.best_reward_accuracy - self.consistency_drop
                and consistency > self.consistency_at_best + self.consistency_rise):
            self.reason = (f"collapse guard: answers grew consistent ({self.consistency_at_best:.3f} -> "
                           f"{consistency:.3f} over {self.window} steps) while reward accuracy fell from "
                           f"{self.best_reward_accuracy:.3f} to {mean:.3f}")
            return True
        return False
