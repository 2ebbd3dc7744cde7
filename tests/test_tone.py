"""The exposure curve: chosen blind from the image, applied only to under-exposed inputs."""

import pytest
import torch
from PIL import Image

from restorer import Restorer, resolve_config
from restorer.denoise import shrink_noise
from restorer.judge import load_judge
from restorer.prior import load_prior
from restorer.tone import correct_exposure, exposure_gamma, white_level


def test_gamma_brings_the_mean_to_the_level():
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)).pow(3) * 0.2
    gamma = exposure_gamma(x, 0.45, 0.1)
    assert 0.1 < gamma < 1
    assert abs(float(correct_exposure(x, gamma).mean()) - 0.45) < 1e-3


def test_well_exposed_input_is_left_alone_and_black_is_bounded():
    assert exposure_gamma(torch.full((1, 3, 8, 8), 0.6), 0.45, 0.1) == 1.0
    assert exposure_gamma(torch.zeros(1, 3, 8, 8), 0.45, 0.1) == pytest.approx(0.1)


def test_white_stretch_undoes_the_gain_but_never_lifts_the_mean_past_the_level():
    x = torch.full((1, 3, 32, 32), 0.02)
    x[..., :4, :4] = 0.1  # a few bright pixels: the image's white
    assert white_level(x, 99.0, 0.0, 0.45) == pytest.approx(0.1)
    assert float(correct_exposure(x, 1.0, 0.0, 0.1).amax()) == pytest.approx(1.0)
    flat = torch.full((1, 3, 16, 16), 0.05)  # nothing bright: stretched to the level, not to white
    white = white_level(flat, 99.9, 0.0, 0.45)
    assert float(correct_exposure(flat, 1.0, 0.0, white).mean()) == pytest.approx(0.45, abs=1e-4)
    assert white_level(x, 100.0, 0.0, 0.45) == 1.0  # 100: no stretch


def test_dark_denoise_removes_noise_and_keeps_a_clean_image():
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0.02, 0.12, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64)
    noisy = (ramp + 0.02 * torch.randn(1, 3, 64, 64, generator=g)).clamp(0, 1)
    out = shrink_noise(noisy, max_shifts=1, wavelet="db1")
    assert out.shape == noisy.shape and out.dtype == noisy.dtype
    assert (out - ramp).square().mean() < 0.25 * (noisy - ramp).square().mean()
    assert (
        shrink_noise(ramp.clone(), max_shifts=0, wavelet="sym4") - ramp
    ).abs().max() < 0.01  # no noise: σ at its floor, no NaN
    crushed = noisy.clone()
    crushed[..., :40, :] = 0  # most pixels clipped to black: the MAD estimate is 0
    assert torch.isfinite(shrink_noise(crushed, max_shifts=1, wavelet="db1")).all()


@pytest.fixture(scope="module")
def restorer(tiny_ldm_dir):
    return Restorer(load_prior(str(tiny_ldm_dir), device="cpu"), load_judge("piqe"), perceptual=None)


@pytest.mark.parametrize(("level", "curved"), [(12, True), (140, False)])
def test_the_curve_runs_only_on_dark_inputs(restorer, level, curved):
    img = Image.new("RGB", (24, 24), (level, level, level))
    result = restorer.restore(img, resolve_config("fast", {"steps": 4, "checkpoint_every": 2}))
    assert (result.tone_white is not None) is curved
    assert result.report()["tone_gamma"] == round(result.tone_gamma, 4)
    assert result.report()["tone_white"] == (round(result.tone_white, 4) if curved else None)
    if curved:  # the dark input comes back brightened toward the level
        assert sum(result.image.convert("L").getdata()) / 24**2 > 2 * level
