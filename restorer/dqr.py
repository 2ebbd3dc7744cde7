"""DQR — dynamic quality refinement: the exit / refine / re-noise policy (ALGORITHM.md §7).

Pure decision logic on normalised scores (higher is better), so it is tested on scripted score sequences
without any model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .events import Decision


@dataclass
class DQRPolicy:
    """Decides after every checkpoint; keeps the previous score of the round and the best estimate so far."""

    enabled: bool = True
    eta: float = 0.01
    max_rounds: int = 3
    min_guided_steps: int = 0  # exit is allowed only after guidance has acted this many steps in the round
    _prev: float | None = field(default=None, init=False)
    best_score: float | None = field(default=None, init=False)
    best_index: int | None = field(default=None, init=False)
    _count: int = field(default=0, init=False)

    def new_round(self) -> None:
        """A re-noised round starts from a blurry estimate: its first score has no predecessor."""
        self._prev = None

    def decide(self, score: float, *, round_end: bool, round: int, guided_steps: int) -> Decision:
        """Record `score` (index = checkpoint count so far) and return the decision."""
        index = self._count
        self._count += 1
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_index = score, index
        prev, self._prev = self._prev, score
        if not self.enabled:
            return Decision.DONE if round_end else Decision.CONTINUE
        if prev is None:
            return Decision.DONE if round_end else Decision.CONTINUE
        if score - prev < self.eta:
            if guided_steps >= self.min_guided_steps:
                return Decision.EXIT
            return Decision.DONE if round_end else Decision.CONTINUE
        if round_end:
            return Decision.RENOISE if round < self.max_rounds else Decision.DONE
        return Decision.REFINE
