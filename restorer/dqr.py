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
    min_guided_steps: int = 0  # a checkpoint counts only once guidance has acted this many steps in the round
    _prev: float | None = field(default=None, init=False)
    best_score: float | None = field(default=None, init=False)
    best_index: int | None = field(default=None, init=False)
    _count: int = field(default=0, init=False)

    def new_round(self) -> None:
        """A re-noised round starts from a blurry estimate: its first score has no predecessor."""
        self._prev = None

    def decide(self, score: float, *, round_end: bool, round: int, guided_steps: int) -> Decision:
        """Record `score` (index = checkpoint count so far) and return the decision.

        Checkpoints before guidance has acted for `min_guided_steps` are unconditional samples, unrelated
        to the input: they are reported but neither compared against nor ever returned as the result.
        """
        index = self._count
        self._count += 1
        idle = Decision.DONE if round_end else Decision.CONTINUE
        eligible = guided_steps >= self.min_guided_steps
        if not eligible and not round_end:
            return idle
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_index = score, index
        prev, self._prev = self._prev, score
        if not self.enabled or prev is None:
            return idle
        if score - prev < self.eta:
            return Decision.EXIT
        if round_end:
            return Decision.RENOISE if round < self.max_rounds else Decision.DONE
        return Decision.REFINE
