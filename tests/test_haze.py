"""The dehaze step before sampling (restorer/haze.py): it inverts a veil, its gate leaves clean photos alone."""

import numpy as np
import pytest
import torch
from PIL import Image
from restorer_helpers import random_image

from restorer import Restorer, haze
from restorer.config import resolve_config
from restorer.images import pil_to_tensor
from restorer.judge import load_judge
from restorer.prior import load_prior

DEFAULTS = resolve_config()


def scene(size: int = 64, seed: int = 0) -> torch.Tensor:
    """A colourful scene with dark pixels in every window (what the dark channel prior assumes)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.0, 1.0, (1, 3, size // 8, size // 8))
    x = torch.nn.functional.interpolate(torch.tensor(base, dtype=torch.float32), size=size, mode="nearest")
    dots = torch.zeros(1, 1, size, size)
    dots[..., ::4, ::4] = 1
    return x * (1 - dots)  # a black pixel every 4: each window holds one


def veil(x: torch.Tensor, airlight: float = 0.9) -> torch.Tensor:
    """I = J·t + A(1 − t) with t rising from 0.2 (top, far) to 0.7 (bottom), as the benchmark's depth haze."""
    t = torch.linspace(0.2, 0.7, x.shape[-2]).view(1, 1, -1, 1)
    return x * t + airlight * (1 - t)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def dehaze(x: torch.Tensor, omega: float) -> tuple[torch.Tensor, float]:
    c = DEFAULTS
    return haze.dehaze(x, omega, c.dehaze_patch, c.dehaze_refine, c.dehaze_t_min, c.dehaze_top_share)


def test_dehaze_lifts_the_veil_more_as_omega_grows():
    clean = scene()
    hazy = veil(clean)
    weak, t_weak = dehaze(hazy, 0.3)
    strong, t_strong = dehaze(hazy, 0.9)
    assert psnr(hazy, clean) < psnr(weak, clean) < psnr(strong, clean)
    assert psnr(strong, clean) > psnr(hazy, clean) + 3
    assert 0 < t_strong < t_weak < 1


def test_gate_flags_a_veil_but_not_the_scene_or_its_noisy_version():
    clean = scene()
    gate = (DEFAULTS.dehaze_gate_dark, DEFAULTS.dehaze_gate_saturation)
    assert haze.haze_stats(veil(clean), DEFAULTS.dehaze_gate_patch).hazy(*gate)
    assert not haze.haze_stats(clean, DEFAULTS.dehaze_gate_patch).hazy(*gate)
    noisy = (veil(clean) + 0.15 * torch.randn_like(clean)).clamp(0, 1)  # noise fills the dark channel's floor
    assert haze.haze_stats(noisy, DEFAULTS.dehaze_gate_patch).dark < haze.haze_stats(veil(clean), 1 / 16).dark


def test_dark_channel_windows_are_a_share_of_the_size():
    """The same content at two sizes gets the same statistics: the window scales with the image."""
    small = veil(scene(64))
    large = torch.nn.functional.interpolate(small, scale_factor=2, mode="nearest")
    a, b = haze.haze_stats(small, 1 / 16), haze.haze_stats(large, 1 / 16)
    assert a.dark == pytest.approx(b.dark, abs=0.02) and a.saturation == pytest.approx(b.saturation, abs=0.02)


def _as_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


@pytest.fixture(scope="module")
def tiny_restorer(tiny_ldm_dir):
    return Restorer(load_prior(str(tiny_ldm_dir), device="cpu"), load_judge("piqe"), perceptual=None)


@pytest.mark.parametrize(
    "dehaze_mode, hazy_input, flagged", [("auto", True, True), ("auto", False, False), ("off", True, False)]
)
def test_restore_reports_whether_it_dehazed(tiny_restorer, dehaze_mode, hazy_input, flagged):
    img = _as_pil(veil(scene(32)) if hazy_input else pil_to_tensor(random_image(32, 32)))
    cfg = resolve_config("fast", {"steps": 2, "checkpoint_every": 1, "seed": 0, "dehaze": dehaze_mode})
    report = tiny_restorer.restore(img, cfg).report()
    assert (report["dehaze_transmission"] is not None) == flagged
    if flagged:
        assert 0 < report["dehaze_transmission"] < 1
