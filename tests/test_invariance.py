"""Guidance and φ's learning mean the same at any image size and step count (ALGORITHM.md §10)."""

import pytest
import torch

from restorer import resolve_config
from restorer.guidance import DegradationGuidance
from restorer.prior import load_prior
from restorer.sampler import guidance_step


@pytest.fixture(scope="module")
def prior(tiny_ldm_dir):
    return load_prior(str(tiny_ldm_dir), device="cpu")


def displacement(prior, z: torch.Tensor, x_lq: torch.Tensor, cfg) -> torch.Tensor:
    """The guidance correction to ẑ0 for one step, through the production guidance loss and step."""
    guidance = DegradationGuidance(prior, x_lq, cfg, perceptual=None)
    z = z.clone().requires_grad_(True)
    loss = guidance.guidance_loss(prior.decode(z), t=100)
    (grad,) = torch.autograd.grad(loss, z)
    return guidance_step(grad, cfg.kappa, cfg.guidance_rms_cap, 1.0 / cfg.steps)


@pytest.mark.parametrize("terms", [{"lambda_deg": 0.0}, {"degloss": "l1"}, {"lambda_deg": 0.0, "lambda_adv": 0.0}])
def test_displacement_per_latent_element_is_the_same_at_two_sizes(prior, terms):
    """The same content at 64² and tiled 2×2 at 128²: the per-element correction agrees within 10%.

    The GGD DegLoss is checked apart (below) on exactly tiled latents: through this tiny random autoencoder
    the border latents are outliers whose share halves when the image doubles, and the shape α (a kurtosis-
    like statistic) moves with them — a change of content statistics, not of scale (measured: loss +18%).
    """
    gen = torch.Generator().manual_seed(0)
    x_small = torch.rand(1, 3, 64, 64, generator=gen)
    target_small = (x_small + 0.2 * torch.randn(x_small.shape, generator=gen)).clamp(0, 1)
    cfg = resolve_config(None, {"lambda_exposure": 0.0, **terms})
    with torch.no_grad():
        z_small = prior.encode(x_small)
    z_big, target_big = z_small.repeat(1, 1, 2, 2), target_small.repeat(1, 1, 2, 2)
    d_small = displacement(prior, z_small, target_small, cfg)
    d_big = displacement(prior, z_big, target_big, cfg)
    rms = lambda d: float(d.pow(2).mean().sqrt())  # noqa: E731
    assert rms(d_small) > 0
    assert abs(rms(d_big) / rms(d_small) - 1) < 0.10, (rms(d_small), rms(d_big))


def test_total_pull_over_the_schedule_does_not_depend_on_the_step_count():
    """A constant gradient moves ẑ0 by the same total over a schedule of 25 or 1000 steps."""
    grad = torch.full((1, 4, 8, 8), 1e-4)
    totals = [sum(guidance_step(grad, 30.0, None, 1.0 / n) for _ in range(n)) for n in (25, 1000)]
    assert torch.allclose(totals[0], totals[1], rtol=1e-4)


@pytest.mark.parametrize("steps", [7, 25, 50, 1000])
def test_phi_takes_the_same_number_of_updates_at_any_step_count(prior, steps):
    cfg = resolve_config(None, {"steps": steps, "checkpoint_every": 1, "pcdm_updates": 25})
    guidance = DegradationGuidance(prior, torch.rand(1, 3, 32, 32), cfg, perceptual=None)
    assert sum(guidance.schedule_updates(1.0 / steps) for _ in range(steps)) == 25


def test_tone_gate_follows_the_input_exposure(prior):
    """Q's exposure term and φ's tone part act on a dark input, not on a well-exposed one."""
    cfg = resolve_config()
    dark = DegradationGuidance(prior, torch.full((1, 3, 32, 32), 0.05), cfg, perceptual=None)
    bright = DegradationGuidance(prior, torch.full((1, 3, 32, 32), 0.5), cfg, perceptual=None)
    assert dark.tone_on and dark.active_terms["exposure"]
    assert not bright.tone_on and not bright.active_terms["exposure"]
    tone_lr = lambda g: g.opt_phi.param_groups[1]["lr"]  # noqa: E731
    assert tone_lr(dark) == cfg.pcdm_global_lr and tone_lr(bright) == 0.0


def test_ggd_degloss_gradient_per_element_is_size_invariant():
    """N·∂J_deg/∂z for exactly tiled latents (the same per-channel statistics) equals the small one's."""
    from restorer import losses

    gen = torch.Generator().manual_seed(1)
    z_small = torch.randn(1, 4, 16, 16, generator=gen) * 0.8 + 0.3
    target = losses.latent_ggd(torch.randn(1, 4, 16, 16, generator=gen), center=True)
    grads = []
    for z in (z_small, z_small.repeat(1, 1, 2, 2)):
        z = z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(losses.degloss_ggd(z, target, "forward", center=True), z)
        grads.append(g * z.numel())
    assert torch.allclose(grads[1], grads[0].repeat(1, 1, 2, 2), rtol=1e-3, atol=1e-7)
