"""The guidance loss terms (ALGORITHM.md §5–6): DegLoss, MSE, perceptual, adversarial and Q.

Each is a plain function (or a small module for the perceptual net) on [0, 1] images so a reader can match
it to the paper's J = λ_deg·J_deg + λ_mse·MSE + λ_pse·J_pse + λ_adv·J_adv + λ_q·Q.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ModelLoadError
from .ggd import fit_ggd, ggd_kl

log = logging.getLogger(__name__)

LATENT_CHANNEL_DIMS = (0, 2, 3)
"""GGD fits are per latent channel: pool batch and space."""

COLOR_EPS = 1e-8
"""Inside the colour-constancy square root so its gradient stays finite at perfect balance."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG_RELU2_2 = 9
"""VGG16 `features[:9]` ends at relu2_2."""


# -- DegLoss ------------------------------------------------------------------------------------
def latent_ggd(z: torch.Tensor, center: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel GGD (α, σ) of a latent batch."""
    return fit_ggd(z.float(), dim=LATENT_CHANNEL_DIMS, center=center)


def degloss_ggd(
    z_y: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor], direction: str, center: bool
) -> torch.Tensor:
    """J_deg = Σ_channels KL between the GGD of E(ŷ) and the GGD of E(x_lq)."""
    a1, s1 = latent_ggd(z_y, center)
    a2, s2 = target
    if direction == "forward":
        kl = ggd_kl(a1, s1, a2, s2)
    elif direction == "reverse":
        kl = ggd_kl(a2, s2, a1, s1)
    elif direction == "symmetric":
        kl = ggd_kl(a1, s1, a2, s2) + ggd_kl(a2, s2, a1, s1)
    else:
        raise ValueError(f"unknown DegLoss direction {direction!r}")
    return kl.sum()


def degloss_l1(y: torch.Tensor, x_lq: torch.Tensor) -> torch.Tensor:
    """Ablation `degloss=l1`: pixel L1 in place of the latent GGD KL."""
    return F.l1_loss(y, x_lq)


# -- tone statistics (what φ's global part is fitted on) -------------------------------------------
def tone_stats_loss(y: torch.Tensor, x_lq: torch.Tensor, pool: int) -> torch.Tensor:
    """Squared gaps of the per-channel mean and std of the two images after `pool`×`pool` average pooling.

    A distribution match, not a pixel match: fitted by pixel MSE, a global gain regresses x_lq on an x̂0 that
    still holds content x_lq lacks and shrinks toward a flat image (regression dilution), which weakens the
    guidance, which lets x̂0 drift further. Pooling first keeps pixel noise (σ/pool after pooling) out of the
    std, so noise is not mistaken for contrast.
    """
    p = max(1, min(pool, y.shape[-2], y.shape[-1]))
    a, b = F.avg_pool2d(y, p), F.avg_pool2d(x_lq, p)
    gap_mean = a.mean(dim=(2, 3)) - b.mean(dim=(2, 3))
    gap_std = a.std(dim=(2, 3)) - b.std(dim=(2, 3))
    return (gap_mean.square() + gap_std.square()).mean()


# -- pixel and adversarial terms ----------------------------------------------------------------
def mse(y: torch.Tensor, x_lq: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(y, x_lq)


def adversarial(disc_out_fake: torch.Tensor) -> torch.Tensor:
    """Generator side: φ(x̂0) patches should look like x_lq patches to the discriminator."""
    return F.binary_cross_entropy(disc_out_fake, torch.ones_like(disc_out_fake))


def discriminator_loss(disc_real: torch.Tensor, disc_fake: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy(disc_real, torch.ones_like(disc_real)) + F.binary_cross_entropy(
        disc_fake, torch.zeros_like(disc_fake)
    )


# -- Q: luminance and chrominance ---------------------------------------------------------------
def exposure_loss(x: torch.Tensor, patch: int, level: float) -> torch.Tensor:
    """Mean squared distance of P×P patch brightness (grey = mean RGB) from the well-exposed level E."""
    grey = x.mean(dim=1, keepdim=True)
    p = max(1, min(patch, grey.shape[-2], grey.shape[-1]))
    return ((F.avg_pool2d(grey, p) - level) ** 2).mean()


def color_constancy_loss(x: torch.Tensor) -> torch.Tensor:
    """Grey-world colour constancy: channel means should agree."""
    m = x.mean(dim=(2, 3))
    mr, mg, mb = m[:, 0], m[:, 1], m[:, 2]
    return torch.sqrt((mr - mg) ** 4 + (mr - mb) ** 4 + (mg - mb) ** 4 + COLOR_EPS).mean()


def dark_channel(x: torch.Tensor, patch: int) -> torch.Tensor:
    """He et al.'s dark channel: the minimum over colour channels and a patch×patch neighbourhood."""
    p = max(1, min(patch, x.shape[-2], x.shape[-1])) | 1  # odd, so the output keeps the input's size
    return -F.max_pool2d(-x.min(dim=1, keepdim=True).values, p, stride=1, padding=p // 2)


def haze_loss(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Q's haze term: mean dark channel. In haze-free outdoor photos most patches hold a near-black pixel
    (the dark channel prior); the veil A(1−t) lifts them all."""
    return dark_channel(x, patch).mean()


def quality_loss(x: torch.Tensor, patch: int, level: float) -> torch.Tensor:
    """Q(x̂0) = exposure + colour constancy."""
    return exposure_loss(x, patch, level) + color_constancy_loss(x)


# -- perceptual ---------------------------------------------------------------------------------
class PerceptualLoss(nn.Module):
    """VGG16 relu2_2 feature MSE on ImageNet-normalised [0,1] inputs. Only ever with pretrained weights."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, y: torch.Tensor, x_lq: torch.Tensor) -> torch.Tensor:
        f = lambda x: self.features((x - self.mean) / self.std)  # noqa: E731
        return F.mse_loss(f(y), f(x_lq))


def vgg16_weights_path() -> Path:
    """Where torchvision caches VGG16 ImageNet weights (under TORCH_HOME)."""
    from torchvision.models import VGG16_Weights

    name = VGG16_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def load_perceptual(mode: str, device: torch.device) -> PerceptualLoss | None:
    """`auto`: the VGG16 term if its weights are cached (or download), else None (reported as off).
    `on`: ModelLoadError when they cannot be had. `off`: None. Never random weights."""
    if mode == "off":
        return None
    from torchvision.models import VGG16_Weights, vgg16

    try:
        net = vgg16(weights=VGG16_Weights.IMAGENET1K_V1)
    except Exception as exc:  # offline: URLError / OSError from the download
        msg = (
            f"VGG16 ImageNet weights are not available ({vgg16_weights_path()} missing and no download: "
            f"{type(exc).__name__}); put vgg16-397923af.pth under $TORCH_HOME/hub/checkpoints/ or set perceptual=off"
        )
        if mode == "on":
            raise ModelLoadError(msg) from exc
        log.warning("perceptual term off: %s", msg)
        return None
    return PerceptualLoss(net.features[:VGG_RELU2_2]).to(device)
