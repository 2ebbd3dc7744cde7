"""The exposure curve: chosen blind from the image, applied only to under-exposed inputs."""

import pytest
import torch
from PIL import Image

from restorer import Restorer, resolve_config
from restorer.judge import load_judge
from restorer.prior import load_prior
from restorer.tone import correct_exposure, exposure_gamma


def test_gamma_brings_the_mean_to_the_level():
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)).pow(3) * 0.2
    gamma = exposure_gamma(x, 0.45, 0.1)
    assert 0.1 < gamma < 1
    assert abs(float(correct_exposure(x, gamma).mean()) - 0.45) < 1e-3


def test_well_exposed_input_is_left_alone_and_black_is_bounded():
    assert exposure_gamma(torch.full((1, 3, 8, 8), 0.6), 0.45, 0.1) == 1.0
    assert exposure_gamma(torch.zeros(1, 3, 8, 8), 0.45, 0.1) == pytest.approx(0.1)


@pytest.fixture(scope="module")
def restorer(tiny_ldm_dir):
    return Restorer(load_prior(str(tiny_ldm_dir), device="cpu"), load_judge("piqe"), perceptual=None)


@pytest.mark.parametrize(("level", "curved"), [(12, True), (140, False)])
def test_the_curve_runs_only_on_dark_inputs(restorer, level, curved):
    img = Image.new("RGB", (24, 24), (level, level, level))
    result = restorer.restore(img, resolve_config("fast", {"steps": 4, "checkpoint_every": 2}))
    assert (result.tone_gamma < 1.0) is curved
    assert result.report()["tone_gamma"] == round(result.tone_gamma, 4)
    if curved:  # the dark input comes back brightened toward the level
        assert sum(result.image.convert("L").getdata()) / 24**2 > 2 * level
