"""PCDM φ — the physically consistent degradation model learned online for one image (ALGORITHM.md §4).

`φ(x) = f3( f2(f1(x)) + l(α0, σ0) ⊙ f1(x) )`: a light conv re-degrader whose residual branch is modulated
by the GGD parameters of the input's latents, so the degradation it learns is tied to the statistics the
DegLoss aligns. `f3` starts as the identity. A small patch discriminator supplies the adversarial term.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LEAKY_SLOPE = 0.2
"""LeakyReLU slope used throughout (the usual GAN choice)."""


def _identity_1x1(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
        conv.bias.zero_()
    return conv


class PCDM(nn.Module):
    """φ with GGD conditioning; `ggd_params` is (α0, σ0) per latent channel, flattened to 2·C numbers.

    `init="identity"` (default) starts φ as the identity map: f1 passes x through its first three channels,
    f2's last conv and l's weight start at zero with l's bias at one, f3 is the identity. Guidance through an
    untrained random φ points nowhere useful, and a short schedule gives φ only tens of Adam steps, so
    starting from "no degradation" and learning away from it is what works at 30–100 steps (measured:
    benchmarks/results). `init="random"` keeps only f3 at identity, as the paper states.
    """

    def __init__(self, latent_channels: int, width: int = 64, init: str = "identity") -> None:
        super().__init__()
        act = nn.LeakyReLU(LEAKY_SLOPE)
        self.f1 = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), act, nn.Conv2d(width, 3, 1))
        self.f2 = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            act,
            nn.Conv2d(width, 2 * width, 3, padding=1),
            act,
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            act,
            nn.Conv2d(4 * width, 3, 1),
        )
        self.l = nn.Linear(2 * latent_channels, 3)
        self.f3 = _identity_1x1(3)
        if init == "identity":
            self._init_identity()
        elif init != "random":
            raise ValueError(f"unknown PCDM init {init!r}")

    @torch.no_grad()
    def _init_identity(self) -> None:
        first, last = self.f1[0], self.f1[2]
        first.weight[:3].zero_()
        first.bias[:3].zero_()
        last.weight.zero_()
        last.bias.zero_()
        for c in range(3):
            first.weight[c, c, 1, 1] = 1.0  # centre tap of the 3×3 kernel
            last.weight[c, c, 0, 0] = 1.0
        self.f2[-1].weight.zero_()
        self.f2[-1].bias.zero_()
        self.l.weight.zero_()
        self.l.bias.fill_(1.0)

    def global_parameters(self) -> list[nn.Parameter]:
        """Per-channel gain l(α0, σ0) and the colour/affine map f3: what darkening, haze veil and colour cast
        need to move by O(1), so they learn at `pcdm_global_lr`."""
        return [*self.l.parameters(), *self.f3.parameters()]

    def local_parameters(self) -> list[nn.Parameter]:
        """The convolutions f1, f2 (spatial, able to copy image content), at the slower `pcdm_lr`."""
        return [*self.f1.parameters(), *self.f2.parameters()]

    def forward(self, x: torch.Tensor, ggd_params: torch.Tensor) -> torch.Tensor:
        h = self.f1(x)
        mod = self.l(ggd_params.reshape(1, -1)).view(1, 3, 1, 1)
        return self.f3(self.f2(h) + mod * h)


class ResBlockDegrader(nn.Module):
    """Ablation `pcdm=resblock`: a plain residual block with about PCDM's parameter count, no GGD input."""

    def __init__(self, target_params: int, init: str = "identity") -> None:
        super().__init__()
        hidden = self.width_for(target_params)
        act = nn.LeakyReLU(LEAKY_SLOPE)
        self.body = nn.Sequential(
            nn.Conv2d(3, hidden, 3, padding=1),
            act,
            nn.Conv2d(hidden, hidden, 3, padding=1),
            act,
            nn.Conv2d(hidden, 3, 1),
        )
        if init == "identity":  # the same start as PCDM's identity init: the ablation changes one thing
            with torch.no_grad():
                self.body[-1].weight.zero_()
                self.body[-1].bias.zero_()
        elif init != "random":
            raise ValueError(f"unknown ResBlock init {init!r}")

    def global_parameters(self) -> list[nn.Parameter]:
        """The output 1×1 conv, PCDM's f3 counterpart, learns at `pcdm_global_lr`."""
        return list(self.body[-1].parameters())

    def local_parameters(self) -> list[nn.Parameter]:
        return [p for m in list(self.body)[:-1] for p in m.parameters()]

    @staticmethod
    def width_for(target_params: int) -> int:
        # params(h) = (27h + h) + (9h² + h) + (3h + 3) = 9h² + 32h + 3; solve for h.
        return max(1, round((-32 + math.sqrt(32**2 + 36 * (target_params - 3))) / 18))

    def forward(self, x: torch.Tensor, ggd_params: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.body(x)


class PatchDiscriminator(nn.Module):
    """Three stride-2 convs + sigmoid: tells patches of φ(x̂0) from patches of x_lq."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        act = nn.LeakyReLU(LEAKY_SLOPE)
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=2, padding=1),
            act,
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            act,
            nn.Conv2d(2 * width, 1, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_degrader(kind: str, latent_channels: int, width: int, seed: int, init: str = "identity") -> nn.Module:
    """A freshly initialised φ for one image; seeded so the same seed gives the same run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "pcdm":
            return PCDM(latent_channels, width, init)
        if kind == "resblock":
            return ResBlockDegrader(count_params(PCDM(latent_channels, width)), init)
    raise ValueError(f"unknown degrader {kind!r}")


def build_discriminator(width: int, seed: int) -> PatchDiscriminator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PatchDiscriminator(width)
