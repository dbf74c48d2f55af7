"""The walk over a task's training prompts: deterministic for a seed, reshuffled each epoch, and resumable from
its saved state (a checkpoint's `cursor.json`)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class PromptCursor:
    """Deterministic, resumable walk over the training prompts (reshuffled each epoch)."""
    size: int
    seed: int
    epoch: int = 0
    index: int = 0
    _order: list = field(default_factory=list, repr=False)

    def next(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if not self._order or self.index >= self.size:
                if self._order:
                    self.epoch, self.index = self.epoch + 1, 0
                self._order = list(range(self.size))
                random.Random(self.seed * 1000 + self.epoch).shuffle(self._order)
            out.append(self._order[self.index])
            self.index += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    @classmethod
    def restore(cls, size: int, seed: int, state: dict) -> "PromptCursor":
        cur = cls(size, seed, state["epoch"], state["index"])
        cur._order = list(range(size))
        random.Random(seed * 1000 + cur.epoch).shuffle(cur._order)
        return cur
