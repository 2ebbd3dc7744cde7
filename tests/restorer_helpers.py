"""Small real components for restorer tests: scripted quality metrics and image makers.

The scripted judge is a genuine `QualityJudge` whose metric is a tiny nn.Module returning a planned
sequence of scores, so DQR paths (exit, refine, re-noise) can be driven deterministically through the
production sampler.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from restorer.judge import QualityJudge


class ScriptedMetric(torch.nn.Module):
    """Returns scores[i] on the i-th call (the last one repeated), whatever the image."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores = list(scores)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = self.scores[min(self.calls, len(self.scores) - 1)]
        self.calls += 1
        return torch.full((x.shape[0],), float(value))


def scripted_judge(scores: list[float], lower_better: bool = False) -> QualityJudge:
    return QualityJudge("scripted", ScriptedMetric(scores), lower_better, 0.0, 1.0)


def rising_judge(step: float = 0.05) -> QualityJudge:
    """A judge whose score keeps rising: DQR refines and re-noises until the round cap."""
    return scripted_judge([min(1.0, i * step) for i in range(200)])


def random_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")
