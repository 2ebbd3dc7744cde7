"""The UP-ZeroIR sampling loop: guided DDIM (η=0) with PCDM, DegLoss and DQR (ALGORITHM.md §3, §7).

One function, `sample_upzir`, that reads like the algorithm. Per step: predict ε, form ẑ0, decode x̂0 with
grad, train φ once, take the guidance gradient through the decoder, DDIM step + g. Every Δ steps the judge
scores x̂0 and DQR decides exit / refine / re-noise. Callbacks: `on_step(StepEvent)` each step and
`on_checkpoint(Checkpoint)` each checkpoint; `should_cancel()` is polled every step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from .config import RestoreConfig
from .dqr import DQRPolicy
from .errors import RestoreCanceled
from .events import Checkpoint, Decision, StepEvent
from .guidance import DegradationGuidance
from .judge import QualityJudge
from .prior import Prior

StepCallback = Callable[[StepEvent], None]
CheckpointCallback = Callable[[Checkpoint], None]
CancelCheck = Callable[[], bool]

RMS_EPS = 1e-12
"""Keeps the RMS cap finite when the gradient is exactly zero."""

RENOISE_SEED_OFFSET = 7919
"""Re-noise draws use their own generator stream, offset from the seed of z_T."""


@dataclass
class SampleOutput:
    chosen: Checkpoint  # the returned estimate: best eligible score (DQR on) or the last checkpoint
    checkpoints: list[Checkpoint]
    steps_run: int
    rounds: int
    early_exit: bool


def predict_z0(prior: Prior, z: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
    """ẑ0 = (z_t − √(1−ᾱ_t)·ε) / √ᾱ_t."""
    a = prior.alpha_bar(t)
    return (z - (1 - a) ** 0.5 * eps) / a**0.5


def clamp_outliers(z0: torch.Tensor, percentile: float | None) -> torch.Tensor:
    """Clamp |ẑ0| to its given percentile (clamp only; never rescale)."""
    if percentile is None or percentile >= 100:
        return z0
    bound = torch.quantile(z0.detach().abs().flatten().float(), percentile / 100.0)
    return z0.clamp(-bound, bound)


def ddim_step(prior: Prior, z0: torch.Tensor, eps: torch.Tensor, t_prev: int) -> torch.Tensor:
    """Deterministic DDIM (η=0): z_{t−1} = √ᾱ_prev·ẑ0 + √(1−ᾱ_prev)·ε."""
    a = prior.alpha_bar(t_prev)
    return a**0.5 * z0 + (1 - a) ** 0.5 * eps


def guidance_step(grad: torch.Tensor, kappa: float, rms_cap: float | None) -> torch.Tensor:
    """g = −κ·∂J/∂ẑ0, its per-element RMS capped at `rms_cap` (a guard against rare gradient spikes)."""
    g = -kappa * grad
    if rms_cap is not None:
        rms = g.pow(2).mean().sqrt()
        g = g * torch.clamp(rms_cap / (rms + RMS_EPS), max=1.0)
    return g


def renoise(prior: Prior, z0: torch.Tensor, t: int, generator: torch.Generator) -> torch.Tensor:
    """z_t' = √ᾱ_t'·ẑ0 + √(1−ᾱ_t')·ε: start a new posterior-sampling round from the current estimate."""
    a = prior.alpha_bar(t)
    noise = torch.randn(z0.shape, generator=generator, dtype=torch.float32).to(z0.device)
    return a**0.5 * z0 + (1 - a) ** 0.5 * noise


def sample_upzir(
    prior: Prior,
    guidance: DegradationGuidance,
    judge: QualityJudge,
    cfg: RestoreConfig,
    crop: Callable[[torch.Tensor], torch.Tensor],
    on_step: StepCallback | None = None,
    on_checkpoint: CheckpointCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> SampleOutput:
    """UP-ZeroIR posterior sampling with dynamic quality refinement."""
    start = time.perf_counter()
    T = prior.num_train_timesteps
    guide_below = cfg.guidance_start_t * T / 1000  # warm-up: no guidance while t ≥ this
    x_lq = guidance.x_lq
    h, w = x_lq.shape[-2] // prior.vae_factor, x_lq.shape[-1] // prior.vae_factor
    gen = torch.Generator().manual_seed(cfg.seed)
    z = torch.randn((1, prior.latent_channels, h, w), generator=gen).to(prior.device)
    renoise_gen = torch.Generator().manual_seed(cfg.seed + RENOISE_SEED_OFFSET)
    policy = DQRPolicy(cfg.dqr == "on", cfg.eta, cfg.max_rounds, cfg.min_guided_intervals * cfg.checkpoint_every)

    full_schedule = prior.timesteps(cfg.steps)
    schedule, rnd, steps_run = full_schedule, 1, 0
    checkpoints: list[Checkpoint] = []
    while True:
        guided_steps = 0
        for i, t in enumerate(schedule):
            if should_cancel is not None and should_cancel():
                raise RestoreCanceled(steps_run)
            t_prev = schedule[i + 1] if i + 1 < len(schedule) else -1
            guided = t < guide_below

            # 1. ε = UNet(z_t, t, c); ẑ0 from z_t; clamp latent outliers
            eps = prior.predict_noise(z, t)
            z0 = clamp_outliers(predict_z0(prior, z, eps, t), cfg.clamp_percentile)
            # 2. x̂0 = (D(ẑ0)+1)/2, with gradient w.r.t. ẑ0 only when guidance acts
            z0 = z0.detach().requires_grad_(guided)
            with torch.set_grad_enabled(guided):
                x0 = prior.decode(z0)
            # 3. PCDM: one optimiser step on detached x̂0
            guidance.train_step(x0)
            # 4–5. J through φ(x̂0) and the decoder; g = −κ·∂J/∂ẑ0; z_{t−1} = DDIM(z_t, ε) + g
            z_next = ddim_step(prior, z0.detach(), eps, t_prev)
            if guided:
                (grad,) = torch.autograd.grad(guidance.guidance_loss(x0, t), z0)
                z_next = z_next + guidance_step(grad, cfg.kappa, cfg.guidance_rms_cap)
                guided_steps += 1
            z = z_next.detach()
            steps_run += 1
            if on_step is not None:
                on_step(StepEvent(rnd, i + 1, len(schedule), steps_run, t, time.perf_counter() - start))

            # DQR checkpoint every Δ steps (and at the end of the round)
            round_end = i + 1 == len(schedule)
            if (i + 1) % cfg.checkpoint_every and not round_end:
                continue
            estimate = crop(x0.detach().clamp(0, 1))
            score, raw = judge.score(estimate)
            decision = policy.decide(score, round_end=round_end, round=rnd, guided_steps=guided_steps)
            cp = Checkpoint(rnd, i + 1, len(schedule), steps_run, t, score, raw, decision,
                            time.perf_counter() - start, estimate.cpu())
            checkpoints.append(cp)
            if on_checkpoint is not None:
                on_checkpoint(cp)
            if decision is Decision.EXIT:
                return SampleOutput(checkpoints[policy.best_index], checkpoints, steps_run, rnd, not round_end)

        if decision is Decision.RENOISE:
            t_restart = round(cfg.renoise_strength * T)
            schedule = [t for t in full_schedule if t <= t_restart] or full_schedule[-1:]
            z = renoise(prior, z0.detach(), schedule[0], renoise_gen)
            rnd += 1
            policy.new_round()
            continue
        chosen = checkpoints[policy.best_index] if policy.enabled else checkpoints[-1]
        return SampleOutput(chosen, checkpoints, steps_run, rnd, False)
