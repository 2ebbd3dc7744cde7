"""What a user would reach for instead of the restorer: blind BM3D, an auto-gamma curve, the dark channel
prior, gamma then BM3D. Each maps a degraded [0, 1] RGB array (H, W, 3) to a restored one, knowing nothing
of the degradation (σ is estimated from the image), so they stand beside the restorer on equal terms.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.ndimage import minimum_filter, uniform_filter

from restorer.denoise import noise_sigma

Array = np.ndarray

GAMMA_TARGET = 0.45
"""Auto-gamma maps the image's mean luminance to this (a typical well-exposed photo's mean)."""
MEAN_FLOOR = 1e-3
"""Keeps log(mean) finite on an all-black image."""

DCP_PATCH_SHARE = 1 / 32
"""Dark-channel patch side as a share of the shorter side (He et al.: 15 px on ~500-px images)."""
DCP_OMEGA = 0.95
"""He et al.: keep a little haze so distant objects still look distant."""
DCP_T0 = 0.1
"""He et al.: lower bound on the transmission (avoids dividing by ~0 in dense haze)."""
DCP_TOP_SHARE = 0.001
"""Atmospheric light: the brightest 0.1% of the dark channel, as in He et al."""
DCP_REFINE_SHARE = 1 / 16
"""Box-filter smoothing of the transmission (a cheap stand-in for soft matting / the guided filter)."""


def estimate_sigma(x: Array) -> float:
    """Blind noise σ (0–1 scale): Donoho's MAD estimate on finest Haar diagonals, mean over channels."""
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].float()
    return float(noise_sigma(t).mean())


def bm3d_blind(x: Array) -> Array:
    """BM3D (the `bm3d` package, colour version) with σ estimated from the image."""
    import bm3d

    sigma = max(estimate_sigma(x), 1e-3)
    return np.clip(bm3d.bm3d_rgb(x, sigma), 0.0, 1.0)


def auto_gamma(x: Array) -> Array:
    """x ↦ x^γ with γ chosen so the mean luminance lands on GAMMA_TARGET."""
    mean = float(np.clip(x.mean(), MEAN_FLOOR, 1 - MEAN_FLOOR))
    gamma = np.log(GAMMA_TARGET) / np.log(mean)
    return np.clip(np.power(np.clip(x, 0.0, 1.0), gamma), 0.0, 1.0)


def gamma_then_bm3d(x: Array) -> Array:
    return bm3d_blind(auto_gamma(x))


def dark_channel_prior(x: Array, omega: float = DCP_OMEGA, patch_share: float = DCP_PATCH_SHARE) -> Array:
    """He, Sun & Tang's dark channel prior dehazing (box-filtered transmission instead of soft matting).
    A smaller `omega` removes less haze (and changes a clean photo less)."""
    h, w = x.shape[:2]
    patch = max(3, round(min(h, w) * patch_share) | 1)
    dark = minimum_filter(x.min(axis=2), size=patch)
    n_top = max(1, round(h * w * DCP_TOP_SHARE))
    idx = np.argsort(dark.ravel())[-n_top:]
    a = x.reshape(-1, 3)[idx].max(axis=0).clip(1e-3, None)
    t = 1.0 - omega * minimum_filter((x / a).min(axis=2), size=patch)
    t = uniform_filter(t, size=max(3, round(min(h, w) * DCP_REFINE_SHARE)))
    t = np.clip(t, DCP_T0, 1.0)[..., None]
    return np.clip((x - a) / t + a, 0.0, 1.0)


BASELINES: dict[str, Callable[[Array], Array]] = {
    "bm3d": bm3d_blind,
    "gamma": auto_gamma,
    "dcp": dark_channel_prior,
    "gamma+bm3d": gamma_then_bm3d,
}
