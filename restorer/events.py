"""Typed records that flow out of the sampler: step ticks, DQR checkpoints and the final result.

They are the protocol between the library and its callers (CLI progress bar, worker progress writer),
kept free of any web or queue code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # keep `import restorer.config` light for the API process (no torch import)
    import torch
    from PIL import Image


class Decision(str, Enum):
    """What DQR decided at a checkpoint (section 7 of ALGORITHM.md)."""

    CONTINUE = "continue"  # first checkpoint, exit not allowed yet, or DQR is off
    REFINE = "refine"  # score still rising: go on with this round
    EXIT = "exit"  # gain below eta: stop and return the best estimate so far ("great")
    RENOISE = "renoise"  # end of the round while still improving: re-noise and run a new round
    DONE = "done"  # end of the schedule with no further round (round cap or DQR off)


@dataclass(frozen=True)
class StepEvent:
    """One denoising step finished; cheap, for progress bars."""

    round: int
    step: int  # steps done in this round
    total_steps: int  # steps in this round's schedule
    steps_run: int  # steps done over all rounds
    t: int
    elapsed_s: float


@dataclass(frozen=True)
class Checkpoint:
    """A DQR checkpoint: the judge scored x̂0 and DQR decided what to do next."""

    round: int
    step: int
    total_steps: int
    steps_run: int
    t: int
    score: float  # normalised: higher is better, in [0, 1]
    raw_score: float  # the metric's own value
    decision: Decision
    elapsed_s: float
    estimate: torch.Tensor | None = field(default=None, repr=False, compare=False)
    """x̂0 at this checkpoint, (1, 3, H, W) in [0, 1], cropped to the sampled input size, on the CPU."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "step": self.step,
            "total_steps": self.total_steps,
            "steps_run": self.steps_run,
            "t": self.t,
            "score": self.score,
            "raw_score": self.raw_score,
            "decision": self.decision.value,
            "elapsed_s": round(self.elapsed_s, 3),
        }


@dataclass
class RestoreResult:
    """What one restoration produced, plus everything a report needs."""

    image: Image.Image
    steps_run: int
    rounds: int
    early_exit: bool
    final_score: float | None
    judge: str | None
    terms: dict[str, bool]  # which loss terms were active (e.g. perceptual off when VGG weights are absent)
    checkpoints: list[Checkpoint]
    seconds: float
    config: dict[str, Any]
    input_size: tuple[int, int]
    sampled_size: tuple[int, int]
    peak_memory_bytes: int | None = None
    chosen_checkpoint: int | None = None  # index in `checkpoints` of the estimate returned
    tone_gamma: float = 1.0  # exposure curve x ↦ ((x − b)/(w − b))^γ before sampling: γ (restorer/tone.py) ...
    tone_white: float | None = None  # ... and w (None: not under-exposed, no denoising or curve ran)
    dehaze_transmission: float | None = (
        None  # mean transmission of the dehaze step (None: not flagged; restorer/haze.py)
    )

    def report(self) -> dict[str, Any]:
        return {
            "steps_run": self.steps_run,
            "rounds": self.rounds,
            "early_exit": self.early_exit,
            "final_score": self.final_score,
            "judge": self.judge,
            "terms": self.terms,
            "seconds": round(self.seconds, 3),
            "input_size": list(self.input_size),
            "sampled_size": list(self.sampled_size),
            "peak_memory_bytes": self.peak_memory_bytes,
            "chosen_checkpoint": self.chosen_checkpoint,
            "tone_gamma": round(self.tone_gamma, 4),
            "tone_white": None if self.tone_white is None else round(self.tone_white, 4),
            "dehaze_transmission": None if self.dehaze_transmission is None else round(self.dehaze_transmission, 4),
            "config": self.config,
            "checkpoints": [c.to_dict() for c in self.checkpoints],
        }
