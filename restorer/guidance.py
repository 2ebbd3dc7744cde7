"""Degradation-aware guidance for one image (ALGORITHM.md §3 steps 3–5, §4 training).

Holds everything that lives for exactly one restoration: x_lq, the GGD fit of its latents (α0, σ0), the
online-trained φ and its discriminator with their optimisers. Gives the PCDM training step and the guidance
loss J whose gradient w.r.t. ẑ0 steers sampling.
"""

from __future__ import annotations

import torch

from . import losses
from .config import RestoreConfig
from .pcdm import build_degrader, build_discriminator
from .prior import Prior

DISC_SEED_OFFSET = 1
"""The discriminator is seeded apart from φ so the two never share an initial draw."""


class DegradationGuidance:
    """J = λ_deg·J_deg + λ_mse·MSE + λ_pse·J_pse + λ_adv·J_adv (+ λ_q·Q for guidance), and φ's training."""

    def __init__(
        self, prior: Prior, x_lq: torch.Tensor, cfg: RestoreConfig, perceptual: losses.PerceptualLoss | None
    ) -> None:
        self.prior, self.cfg, self.x_lq, self.perceptual = prior, cfg, x_lq, perceptual
        with torch.no_grad():
            self.target = losses.latent_ggd(prior.encode(x_lq), cfg.ggd_center)  # (α0, σ0) per channel
        self.ggd_params = torch.cat(self.target).float().detach()
        device = x_lq.device
        self.phi = build_degrader(cfg.pcdm, prior.latent_channels, cfg.pcdm_width, cfg.seed, cfg.pcdm_init).to(device)
        self.disc = build_discriminator(cfg.pcdm_width, cfg.seed + DISC_SEED_OFFSET).to(device)
        self.opt_phi = torch.optim.Adam(self.phi.parameters(), lr=cfg.pcdm_lr, weight_decay=cfg.pcdm_weight_decay)
        self.opt_disc = torch.optim.Adam(self.disc.parameters(), lr=cfg.disc_lr)

    @property
    def active_terms(self) -> dict[str, bool]:
        c = self.cfg
        return {
            "deg": c.lambda_deg > 0,
            "mse": c.lambda_mse > 0,
            "pse": c.lambda_pse > 0 and self.perceptual is not None,
            "adv": c.lambda_adv > 0,
            "q": c.lambda_q > 0,
        }

    def degrade(self, x0: torch.Tensor) -> torch.Tensor:
        """ŷ = φ(x̂0)."""
        return self.phi(x0, self.ggd_params)

    def fidelity(self, y: torch.Tensor) -> torch.Tensor:
        """The data terms of J on ŷ = φ(x̂0) (no Q)."""
        c, on = self.cfg, self.active_terms
        total = y.new_zeros(())
        if on["deg"]:
            if c.degloss == "ggd":
                term = losses.degloss_ggd(self.prior.encode(y).float(), self.target, c.degloss_direction, c.ggd_center)
            else:
                term = losses.degloss_l1(y, self.x_lq)
            total = total + c.lambda_deg * term
        if on["mse"]:
            total = total + c.lambda_mse * losses.mse(y, self.x_lq)
        if on["pse"]:
            total = total + c.lambda_pse * self.perceptual(y, self.x_lq)
        if on["adv"]:
            total = total + c.lambda_adv * losses.adversarial(self.disc(y))
        return total

    def train_discriminator(self, x0: torch.Tensor) -> None:
        """One Adam step for the patch discriminator: x_lq is real, φ(x̂0) is fake."""
        if not self.active_terms["adv"]:
            return
        with torch.no_grad():
            fake = self.degrade(x0.detach())
        d_loss = losses.discriminator_loss(self.disc(self.x_lq), self.disc(fake))
        self.opt_disc.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_disc.step()

    def train_step(self, x0: torch.Tensor) -> float:
        """One Adam step for the discriminator and for φ on detached x̂0; returns φ's loss."""
        x0 = x0.detach()
        self.train_discriminator(x0)
        loss = self.fidelity(self.degrade(x0))
        self.opt_phi.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_phi.step()
        return float(loss.detach())

    def guidance_loss(self, x0: torch.Tensor, t: int) -> torch.Tensor:
        """J on x̂0 that carries the graph back to ẑ0; Q joins only late in the schedule (t < q_start_t)."""
        total = self.fidelity(self.degrade(x0))
        if self.active_terms["q"] and t < self.cfg.q_start_t * self.prior.num_train_timesteps / 1000:
            total = total + self.cfg.lambda_q * losses.quality_loss(x0, self.cfg.exposure_patch, self.cfg.exposure_level)
        return total

    @property
    def phi_params(self) -> list[torch.nn.Parameter]:
        return list(self.phi.parameters())

    def fused_loss(self, x0: torch.Tensor, t: int) -> torch.Tensor:
        """`pcdm_fused`: the discriminator step, then one J whose gradient serves both guidance (w.r.t. ẑ0) and
        φ's update (w.r.t. φ; Q does not depend on φ, so that gradient is the fidelity's). Saves a second
        forward and backward through φ and the encoder; guidance sees φ before this step's update."""
        self.train_discriminator(x0)
        return self.guidance_loss(x0, t)

    def apply_phi_grads(self, grads: tuple[torch.Tensor | None, ...]) -> None:
        """The Adam step for φ from gradients taken in the sampler's shared backward."""
        for param, grad in zip(self.phi.parameters(), grads):
            param.grad = grad
        self.opt_phi.step()
        self.opt_phi.zero_grad(set_to_none=True)
