"""The collapse guard: a rung whose held-out accuracy or reward accuracy falls from its best stops early.

Pure bookkeeping over the step loop's metrics; the rung keeps the best weights (`Rung.keep_best`) and puts them
back when the guard fires (`Rung.restore_best`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class CollapseGuard:
    """`after_eval(accuracy)` says whether the weights are the best so far ("best") or have collapsed
    ("collapse"); `after_step(metrics)` watches the mean reward accuracy over `window` steps. `reason` says why."""
    tolerance: float
    window: int
    best_accuracy: Optional[float] = None
    best_reward_accuracy: Optional[float] = None
    reward_accuracies: list = field(default_factory=list)
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
        """True when the mean reward accuracy of the last `window` steps fell below its best by the tolerance."""
        value = metrics.get("judge/reward_accuracy")
        if value is None:
            return False
        self.reward_accuracies.append(value)
        if len(self.reward_accuracies) < self.window:
            return False
        mean = sum(self.reward_accuracies[-self.window:]) / self.window
        if self.best_reward_accuracy is None or mean > self.best_reward_accuracy:
            self.best_reward_accuracy = mean
            return False
        if mean < self.best_reward_accuracy - self.tolerance:
            self.reason = (f"collapse guard: reward accuracy over {self.window} steps {mean:.3f} fell below its best "
                           f"{self.best_reward_accuracy:.3f} - tolerance {self.tolerance}")
            return True
        return False
