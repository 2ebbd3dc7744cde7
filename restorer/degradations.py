"""Synthetic degradations with ground truth, reproducible from (image id, degradation name, seed).

Every function takes a clean image as a float array in [0, 1] (H, W, 3) and a numpy Generator, and
returns the degraded array in [0, 1]. `degrade(clean_pil, name, key)` seeds the Generator from the image
key and the degradation name (a stable hash, not Python's salted `hash`), so the same image always gets
the same noise, gamma, haze density... in every run and on every machine.

Names: `clean` (none), `noise15`, `noise25`, `noise50` (`noise` = σ 25), `lowlight`, `haze`, `lowlight+noise`,
`lowlight+haze+noise`. Compositions apply haze first (scene), then low light (exposure), then noise
(sensor) — the physical order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
from PIL import Image

Array = np.ndarray


def to_array(img: Image.Image) -> Array:
    return np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0


def to_pil(arr: Array) -> Image.Image:
    return Image.fromarray(np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8), "RGB")


def seed_for(key: str, name: str, base_seed: int = 0) -> int:
    """A stable 63-bit seed from the image key and degradation name."""
    digest = hashlib.sha256(f"{base_seed}|{key}|{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


# --- primitives ---------------------------------------------------------------------------------------
def gaussian_noise(x: Array, rng: np.random.Generator, sigma255: float) -> Array:
    """Additive white Gaussian noise, σ on the 0–255 scale."""
    return np.clip(x + rng.normal(0.0, sigma255 / 255.0, size=x.shape), 0.0, 1.0)


def lowlight(x: Array, rng: np.random.Generator, noise: bool = True) -> Array:
    """x ↦ k·x^γ, γ∈[1.5, 2.5], k∈[0.1, 0.3], plus mild Poisson–Gaussian sensor noise."""
    gamma = rng.uniform(1.5, 2.5)
    k = rng.uniform(0.1, 0.3)
    y = k * np.power(np.clip(x, 0.0, 1.0), gamma)
    if noise:
        # Poisson (shot) noise at a photon count that is mild in the dark image, plus read noise.
        photons = 400.0
        y = rng.poisson(np.clip(y, 0.0, None) * photons) / photons
        y = y + rng.normal(0.0, 2.0 / 255.0, size=y.shape)
    return np.clip(y, 0.0, 1.0)


def smooth_depth(h: int, w: int, rng: np.random.Generator) -> Array:
    """A smooth synthetic depth map in [0, 1]: a vertical gradient (far at the top) plus a seeded
    low-frequency field (a few random cosines), normalised."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yy /= max(h - 1, 1)
    xx /= max(w - 1, 1)
    d = 1.0 - yy  # horizon-like: the top of the picture is far away
    field = np.zeros((h, w))
    for _ in range(4):
        fy, fx = rng.uniform(0.3, 2.0, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        field += np.cos(2 * np.pi * (fy * yy + fx * xx) + phase)
    field /= 4.0
    d = 0.7 * d + 0.3 * (field + 1.0) / 2.0
    d -= d.min()
    return d / max(d.max(), 1e-8)


def haze(x: Array, rng: np.random.Generator) -> Array:
    """Atmospheric scattering: I = J·t + A(1−t), t = exp(−β·d), A∈[0.8, 1], β∈[0.6, 1.6]."""
    h, w = x.shape[:2]
    a = rng.uniform(0.8, 1.0)
    beta = rng.uniform(0.6, 1.6)
    t = np.exp(-beta * smooth_depth(h, w, rng))[..., None]
    return np.clip(x * t + a * (1.0 - t), 0.0, 1.0)


# --- named degradations -------------------------------------------------------------------------------
def _noise(sigma: float) -> Callable[[Array, np.random.Generator], Array]:
    return lambda x, rng: gaussian_noise(x, rng, sigma)


DEGRADATIONS: dict[str, Callable[[Array, np.random.Generator], Array]] = {
    "clean": lambda x, rng: x,  # no degradation: "do no harm" is measured on it
    "noise15": _noise(15),
    "noise25": _noise(25),
    "noise50": _noise(50),
    "noise": _noise(25),
    "lowlight": lambda x, rng: lowlight(x, rng),
    "haze": haze,
    "lowlight+noise": lambda x, rng: gaussian_noise(lowlight(x, rng, noise=False), rng, 15),
    "lowlight+haze+noise": lambda x, rng: gaussian_noise(lowlight(haze(x, rng), rng, noise=False), rng, 15),
}
"""The mixed settings use Gaussian σ=15 (on 0–255) after the low-light curve: a visible but not
overwhelming sensor noise in a dark image."""


def degrade(clean: Image.Image, name: str, key: str, base_seed: int = 0) -> tuple[Image.Image, Image.Image]:
    """(degraded, clean) as 8-bit RGB PIL images; deterministic for (key, name, base_seed)."""
    if name not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {name!r}; choose from {', '.join(DEGRADATIONS)}")
    clean = clean.convert("RGB")
    rng = np.random.default_rng(seed_for(key, name, base_seed))
    out = DEGRADATIONS[name](to_array(clean), rng)
    return to_pil(out), clean
