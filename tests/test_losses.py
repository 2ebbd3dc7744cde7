import pytest
import torch

from restorer import ModelLoadError, losses


def test_degloss_is_zero_for_matching_latents_and_positive_otherwise():
    z = torch.randn(1, 4, 16, 16)
    target = losses.latent_ggd(z, center=False)
    assert abs(float(losses.degloss_ggd(z, target, "forward", False))) < 1e-5
    for direction in ("forward", "reverse", "symmetric"):
        assert float(losses.degloss_ggd(2.0 * z, target, direction, False)) > 0.1


def test_degloss_gradient_reaches_the_latent():
    z = torch.randn(1, 4, 8, 8, requires_grad=True)
    target = losses.latent_ggd(torch.randn(1, 4, 8, 8) * 3, center=False)
    losses.degloss_ggd(z, target, "forward", False).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_exposure_and_colour_terms():
    grey = torch.full((1, 3, 32, 32), 0.5)
    assert float(losses.quality_loss(grey, 8, 0.5)) == pytest.approx(0.0, abs=1e-3)
    dark = torch.full((1, 3, 32, 32), 0.1)
    assert float(losses.exposure_loss(dark, 8, 0.5)) == pytest.approx(0.16, rel=1e-4)
    red = grey.clone()
    red[:, 0] = 1.0
    assert float(losses.color_constancy_loss(red)) > 0.3
    x = grey.clone().requires_grad_(True)  # perfectly balanced: gradient must stay finite
    losses.color_constancy_loss(x).backward()
    assert torch.isfinite(x.grad).all()


def test_exposure_patch_larger_than_image_is_clamped():
    assert torch.isfinite(losses.exposure_loss(torch.rand(1, 3, 5, 7), 32, 0.5))


@pytest.mark.skipif(losses.vgg16_weights_path().exists(), reason="VGG16 weights are cached on this machine")
def test_perceptual_is_off_without_weights_and_on_fails_loudly():
    assert losses.load_perceptual("auto", torch.device("cpu")) is None
    assert losses.load_perceptual("off", torch.device("cpu")) is None
    with pytest.raises(ModelLoadError, match="VGG16"):
        losses.load_perceptual("on", torch.device("cpu"))
