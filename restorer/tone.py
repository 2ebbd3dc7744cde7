"""Tone: the exposure part of the degradation, undone by a global curve before sampling.

The paper leaves darkening to φ (learned online) and Q's exposure term. Measured on low-light crops, that
barely works with a short schedule: φ's darkening gain shrinks the guidance gradient by itself and its
curvature by its square, so a dark input pulls the sampler weakly and the prior invents the scene (low light
+ noise on kodim05: +1.3 dB, structure lost). An under-exposed input is therefore first brought to a
well-exposed level, chosen blind from the image, by x ↦ ((x − b)/(w − b))^γ: the black level b that clipped
noise lifts is taken off, the white level w (a high percentile) is stretched to 1, which undoes the
darkening's gain, and γ then sets mean = E, which undoes its curvature (the benchmark's low light is
y = k·x^g; a power curve alone had to bend to x^0.1 and washed colours out). The noise is removed before
this curve, whose slope would amplify it (restorer/denoise.py). The sampler then restores what the curve cannot
(residual noise, haze, lost detail) as for any well-exposed photo, with φ near the identity. The final
pixel-space step stays off after a curve: it gives back the target's leftover noise, which the curve amplified
most in the shadows (kodim05 low light: a speckled field), even though it raised the dark families' means.
"""

from __future__ import annotations

import math

import torch

WHITE_FLOOR = 1e-3
"""Keeps the stretch finite on an all-black image."""
GAMMA_BISECTION_STEPS = 40
"""Bisection on log γ over [log γ_min, 0]: 40 halvings leave ~1e-12 of the bracket."""


def exposure_gamma(x: torch.Tensor, level: float, gamma_min: float) -> float:
    """γ ∈ [gamma_min, 1] with mean(x^γ) = level (or the bound that comes closest); x in [0, 1]."""
    x = x.detach().double().clamp(0, 1)
    if float(x.mean()) >= level:
        return 1.0
    lo, hi = math.log(gamma_min), 0.0  # mean(x^γ) falls as γ grows
    for _ in range(GAMMA_BISECTION_STEPS):
        mid = (lo + hi) / 2
        if float(x.pow(math.exp(mid)).mean()) > level:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def white_level(x: torch.Tensor, percentile: float, black: float, level: float) -> float:
    """The brightness that `percentile` % of pixels (their brightest channel) stay below: the image's white.

    Never so low that the stretch alone lifts the mean above `level`: a dark picture with nothing bright in it (a
    night scene, a flat grey) is brightened to the level, not to white.
    """
    white = (
        1.0 if percentile >= 100 else float(torch.quantile(x.detach().amax(dim=1).flatten().float(), percentile / 100))
    )
    return min(1.0, max(white, black + (float(x.mean()) - black) / level))


def correct_exposure(x: torch.Tensor, gamma: float, black: float = 0.0, white: float = 1.0) -> torch.Tensor:
    """x ↦ ((x − b)/(w − b))^γ: the black level b (the floor sensor noise lifts a dark image to) is taken off
    before the curve, which would otherwise lift it into a grey veil; the white level w is stretched to 1 first,
    so the gain of the darkening is undone by a gain and γ has only its curvature left to undo (a power curve
    alone must bend hard, x^0.1, to brighten, and that washes colours out: per-channel ratios go as r^γ)."""
    return ((x - black) / max(white - black, WHITE_FLOOR)).clamp(0, 1).pow(gamma)
