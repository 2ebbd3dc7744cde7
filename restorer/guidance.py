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
        # Q's exposure term and φ's global (tone) part are switched on by the input's own statistics: a
        # well-exposed photo needs no brightening, and a φ free to change tone on it co-adapts with x̂0 (a
        # contraction toward x_lq's mean fits an x̂0 that still holds unmatched content, the pull weakens, x̂0
        # drifts): measured −5 to −8 dB on clean crops (ALGORITHM.md §10).
        self.exposure_on = float(x_lq.mean()) < cfg.exposure_gate
        self.haze_patch = max(1, round(cfg.haze_patch * min(x_lq.shape[-2:])))
        self.hazy = cfg.lambda_haze > 0 and float(losses.dark_channel(x_lq, self.haze_patch).mean()) > cfg.haze_gate
        self.tone_on = self.exposure_on or self.hazy  # φ may change tone only when the input asks for it
        global_lr = cfg.pcdm_global_lr if self.tone_on else 0.0
        self.opt_phi = torch.optim.Adam(
            [
                {"params": self.phi.local_parameters(), "lr": cfg.pcdm_lr},
                {"params": self.phi.global_parameters(), "lr": global_lr},
            ],
            weight_decay=cfg.pcdm_weight_decay,
        )
        self.opt_disc = torch.optim.Adam(self.disc.parameters(), lr=cfg.disc_lr)
        self._update_credit = 0.0
        self._fused_update = False

    def schedule_updates(self, step_fraction: float) -> int:
        """How many Adam steps φ takes now: `pcdm_updates` per whole diffusion time, spread over the steps.

        A step covering h of the schedule earns h·pcdm_updates; whole updates are spent as they accrue, so φ
        learns as much at 25 steps (2 per step at 50 updates) as at 1000 (one every 20 steps).
        """
        self._update_credit += step_fraction * self.cfg.pcdm_updates
        n = int(self._update_credit + 1e-9)
        self._update_credit -= n
        return n

    @property
    def active_terms(self) -> dict[str, bool]:
        c = self.cfg
        return {
            "deg": c.lambda_deg > 0,
            "mse": c.lambda_mse > 0,
            "pse": c.lambda_pse > 0 and self.perceptual is not None,
            "adv": c.lambda_adv > 0,
            "exposure": c.lambda_exposure > 0 and self.exposure_on,
            "haze": self.hazy,
            "color": c.lambda_color > 0,
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
        y = self.degrade(x0)
        loss = self.fidelity(y)
        if self.cfg.pcdm_anchor > 0:  # "no degradation" unless the data ask for one: φ cannot drift with x̂0
            loss = loss + self.cfg.pcdm_anchor * losses.mse(y, x0)
        if self.cfg.pcdm_global_fit == "fidelity":  # the paper: every parameter of φ on J
            grads = torch.autograd.grad(loss, self.phi_params, allow_unused=True)
        else:  # the global part on the tone statistics, the convolutions on J
            local, glob = self.phi.local_parameters(), self.phi.global_parameters()
            g_local = torch.autograd.grad(loss, local, retain_graph=True, allow_unused=True)
            g_glob = torch.autograd.grad(self.tone_loss(y), glob, allow_unused=True)
            grads = self._in_phi_order(dict(zip(map(id, local), g_local)) | dict(zip(map(id, glob), g_glob)))
        self._adam_step(grads)
        return float(loss.detach())

    def tone_loss(self, y: torch.Tensor) -> torch.Tensor:
        return losses.tone_stats_loss(y, self.x_lq, self.cfg.pcdm_tone_pool)

    def _in_phi_order(self, by_id: dict[int, torch.Tensor | None]) -> tuple[torch.Tensor | None, ...]:
        return tuple(by_id.get(id(p)) for p in self.phi.parameters())

    def _adam_step(self, grads: tuple[torch.Tensor | None, ...]) -> None:
        for param, grad in zip(self.phi.parameters(), grads):
            param.grad = grad
        self.opt_phi.step()
        self.opt_phi.zero_grad(set_to_none=True)

    def guidance_loss(self, x0: torch.Tensor, t: int) -> torch.Tensor:
        """J on x̂0 that carries the graph back to ẑ0; Q (exposure, colour) only for t < q_start_t."""
        c, on = self.cfg, self.active_terms
        total = self.fidelity(self.degrade(x0))
        if t < c.q_start_t * self.prior.num_train_timesteps / 1000:
            if on["exposure"]:
                patch = max(1, round(c.exposure_patch * min(x0.shape[-2:])))
                total = total + c.lambda_exposure * losses.exposure_loss(x0, patch, c.exposure_level)
            if on["haze"]:
                total = total + c.lambda_haze * losses.haze_loss(x0, self.haze_patch)
            if on["color"]:
                total = total + c.lambda_color * losses.color_constancy_loss(x0)
        return total

    @property
    def phi_params(self) -> list[torch.nn.Parameter]:
        return list(self.phi.parameters())

    def fused_loss(self, x0: torch.Tensor, t: int, update_phi: bool = True) -> torch.Tensor:
        """`pcdm_fused`: the discriminator step, then one J whose gradient serves both guidance (w.r.t. ẑ0) and
        φ's update (w.r.t. φ; Q does not depend on φ, so that gradient is the fidelity's). Saves a second
        forward and backward through φ and the encoder; guidance sees φ before this step's update."""
        self._fused_update = update_phi
        self._fused_x0 = x0.detach()
        if update_phi:
            self.train_discriminator(x0)
        return self.guidance_loss(x0, t)

    def apply_phi_grads(self, grads: tuple[torch.Tensor | None, ...]) -> None:
        """The Adam step for φ from gradients taken in the sampler's shared backward (when one is due)."""
        if not self._fused_update:
            return
        if self.cfg.pcdm_global_fit == "stats":  # the global part learns from the tone statistics, as unfused
            glob = self.phi.global_parameters()
            g_glob = torch.autograd.grad(self.tone_loss(self.degrade(self._fused_x0)), glob, allow_unused=True)
            by_id = dict(zip(map(id, self.phi.parameters()), grads)) | dict(zip(map(id, glob), g_glob))
            grads = self._in_phi_order(by_id)
        self._adam_step(grads)
