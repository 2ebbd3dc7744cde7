"""Noise: its blind estimate, and its wavelet shrinkage — used on an under-exposed input before the exposure curve
(here) and on the final residual (restorer/detail.py).

The exposure curve x ↦ ((x − b)/(w − b))^γ (restorer/tone.py) multiplies noise by its slope γ·x^(γ−1), which is largest in
the shadows (≈ 4× at x = 0.02 for γ = 0.35), so a dark input reaches the sampler with heavy, signal-dependent
noise that the guidance then asks x̂0 to match; the prior turns it into invented texture (kodim05 low light +
haze + noise: a grey textured field, the scene lost). Before the curve the noise is still near-stationary,
where a classic blind shrinkage works as designed: wavelet BayesShrink (scikit-image; per-subband soft
thresholds from the blind MAD σ estimate, on YCbCr so chroma noise is shrunk on its own) — the same order as a user's
gamma-then-BM3D, the other way round, so the curve never sees the noise. Measured on dark tuning crops
(`cbsd68_even` + `bsds500_clean`, 32 crops, the sampler's target before sampling, with the white stretch of
restorer/tone.py; `python -m benchmarks.dark_targets`): low light + noise 10.08 → 18.19 dB, SSIM 0.13 → 0.49.
The wavelet is sym4 at the Haar basis's depth, cycle-spun over 4 shifts: Haar scored the same but left a
staircase of blocks on the darkest inputs. Decomposition depth follows the image size (three levels fewer than
the maximum), so the step means the same at any size.
"""

from __future__ import annotations

import numpy as np
import pywt
import torch
from skimage.restoration import cycle_spin, denoise_wavelet

MAD_TO_SIGMA = 0.6745
"""Median absolute deviation of a standard normal: MAD/0.6745 estimates σ."""

LEVELS_BELOW_MAX = 3
"""Decomposition depth: the Haar basis's maximum for the image size minus this (scikit-image's own default for
Haar), whatever the wavelet, so a longer filter does not mean fewer levels (which left heavy noise in)."""

SIGMA_FLOOR = 1e-3
"""σ never below 8-bit quantisation's (1/255/√12 ≈ 1.1e-3): a noiseless channel's MAD estimate is 0, and BayesShrink
divides by it (NaN on a smooth or crushed-black image); at the floor a clean image comes back as itself."""


def noise_sigma(x: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel noise σ of (B, C, H, W) in [0, 1] from finest Haar diagonal coefficients."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    if h == 0 or w == 0:  # a 1-pixel-wide image has no 2×2 block: nothing to tell noise from detail by
        return x.new_zeros(x.shape[:2])
    v = x[..., :h, :w]
    hh = (v[..., 0::2, 0::2] - v[..., 0::2, 1::2] - v[..., 1::2, 0::2] + v[..., 1::2, 1::2]) / 2
    return hh.abs().flatten(2).median(dim=-1).values / MAD_TO_SIGMA


def wavelet_shrink(x: torch.Tensor, sigma: torch.Tensor, max_shifts: int, wavelet: str = "db1") -> torch.Tensor:
    """Wavelet BayesShrink of (B, 3, H, W), any range (a signed residual too), with the given per-image, per-RGB-
    channel noise σ (B, 3) (carried into YCbCr by scikit-image), averaged over (max_shifts + 1)² circular shifts
    (cycle spinning: the basis's block edges average out); same shape, dtype and device, not clipped."""
    levels = max(1, pywt.dwtn_max_level(x.shape[-2:], "db1") - LEVELS_BELOW_MAX)
    out = []
    for img, sig in zip(x.detach().double().cpu().numpy(), sigma.clamp_min(SIGMA_FLOOR).tolist()):

        def bayes_shrink(arr: np.ndarray, sig: list[float] = sig) -> np.ndarray:
            return denoise_wavelet(
                arr,
                sigma=sig,
                wavelet=wavelet,
                wavelet_levels=levels,
                method="BayesShrink",
                mode="soft",
                channel_axis=-1,
                convert2ycbcr=True,
                rescale_sigma=True,
            )

        arr = img.transpose(1, 2, 0)
        out.append(cycle_spin(arr, bayes_shrink, max_shifts=max_shifts, channel_axis=-1, workers=1).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out)).to(x.device, x.dtype)


def shrink_noise(x: torch.Tensor, max_shifts: int, wavelet: str) -> torch.Tensor:
    """The dark-input step: `wavelet_shrink` of (B, 3, H, W) in [0, 1] at its own blind σ (`noise_sigma`)."""
    return wavelet_shrink(x, noise_sigma(x), max_shifts, wavelet).clamp(0, 1)
