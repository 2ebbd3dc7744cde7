"""The final pixel-space step: lost detail comes back, noise does not, a clean input stays itself."""

import torch
import torch.nn.functional as F

from restorer.detail import noise_sigma, restore_detail


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def textured(seed: int = 0, size: int = 64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, size // 8, size // 8, generator=gen)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def blurred(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)


def test_noise_sigma_is_estimated_blindly():
    x = textured()
    for sigma in (0.0, 15 / 255, 25 / 255, 50 / 255):
        noisy = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        assert abs(float(noise_sigma(noisy).mean()) - sigma) < 0.1 * sigma + 2 / 255


def test_clean_input_comes_back_as_itself():
    """σ ≈ 0: the whole residual is detail, so a blurred estimate returns to the input."""
    x = textured()
    out = restore_detail(blurred(x), x, blurred(x), window=5)
    assert psnr(out, x) > psnr(blurred(x), x) + 10


def test_noise_is_not_given_back():
    """On a noisy input the output stays far closer to the clean image than the input is."""
    x = textured()
    noisy = (x + 25 / 255 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    estimate = blurred(x)
    out = restore_detail(estimate, noisy, estimate, window=5)
    assert psnr(out, x) > psnr(noisy, x) + 3
