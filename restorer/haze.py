"""Haze: the veil part of the degradation, lifted by a gated dark-channel step before sampling.

Neither of the paper's ways moved a hazy input here: Q's haze term (the mean dark channel of x̂0) lost
3.7–4.9 dB on hazy tuning crops (its gradient reaches only each patch's darkest pixel), and φ's tone part,
which is global, cannot model a veil whose density follows the depth of the scene. So, like the exposure curve
(restorer/tone.py), the veil is undone before sampling: I = J·t + A(1 − t) inverted with He et al.'s dark
channel prior (A from the brightest dark-channel pixels, t = 1 − ω·dark(I/A), box-smoothed), and the sampler
then restores the rest.

Blind haze detection is ambiguous: a bright, washed-out clean photo has a hazy crop's statistics. The gate
(median dark channel high *and* median saturation low) was chosen on tuning crops to flag ≤ 5% of clean photos
while catching ~85% of hazy ones, and ω below He's 0.95 bounds what a wrongly flagged clean photo loses
(`python -m benchmarks.haze_tradeoff`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .losses import dark_channel

SATURATION_EPS = 1e-3
"""Keeps (max − min)/max finite on black pixels."""
AIRLIGHT_FLOOR = 1e-3
"""Keeps I/A finite on a black image."""


def _odd_side(x: torch.Tensor, share: float) -> int:
    """A window side (odd, ≥ 3) as a share of the image's shorter side: the same meaning at any size."""
    return max(3, round(min(x.shape[-2:]) * share) | 1)


@dataclass(frozen=True)
class HazeStats:
    dark: float  # median dark channel
    saturation: float  # median (max − min)/max over pixels

    def hazy(self, dark_min: float, saturation_max: float) -> bool:
        return self.dark > dark_min and self.saturation < saturation_max


def haze_stats(x: torch.Tensor, patch_share: float) -> HazeStats:
    """The gate's two statistics of an image (1, 3, H, W) in [0, 1]: haze lifts the first, washes out the second."""
    hi, lo = x.amax(dim=1), x.amin(dim=1)
    return HazeStats(
        dark=float(dark_channel(x, _odd_side(x, patch_share)).median()),
        saturation=float(((hi - lo) / hi.clamp_min(SATURATION_EPS)).median()),
    )


def dehaze(
    x: torch.Tensor, omega: float, patch_share: float, refine_share: float, t_min: float, top_share: float
) -> tuple[torch.Tensor, float]:
    """He et al.'s inversion of I = J·t + A(1 − t) on (1, 3, H, W) in [0, 1]; returns (J, mean t)."""
    side = _odd_side(x, patch_share)
    dark = dark_channel(x, side).flatten()
    n_top = max(1, round(dark.numel() * top_share))
    brightest = dark.topk(n_top).indices
    airlight = x.flatten(2)[0][:, brightest].amax(dim=1).clamp_min(AIRLIGHT_FLOOR).view(1, 3, 1, 1)
    t = 1 - omega * dark_channel(x / airlight, side)
    refine = _odd_side(x, refine_share)
    t = F.avg_pool2d(t, refine, stride=1, padding=refine // 2, count_include_pad=False).clamp(t_min, 1)
    return ((x - airlight) / t + airlight).clamp(0, 1), float(t.mean())
