"""Zero-mean generalized Gaussian (GGD): moment fit and closed-form KL.

p(x) = α / (2 b Γ(1/α)) · exp(−(|x|/b)^α),  b = σ·√(Γ(1/α)/Γ(3/α)),  α > 0 the shape, σ the std.
α = 2 is a Gaussian, α = 1 a Laplacian. The sampler fits a GGD to latents and to the degradation
residual and aligns them through the KL, so every function here is differentiable and runs in
float64 internally (Γ of 1/α overflows float32 for small α; the ratios below cancel badly in float32).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["ALPHA_MAX", "ALPHA_MIN", "fit_ggd", "ggd_kl", "ggd_logpdf", "ggd_scale"]

# Shape range of the fit. r(α) (see `_log_r`) is ≈15.9 at α=0.2 and tends to 4/3 as α→∞; below 0.2 the
# sample ratio ρ is dominated by a handful of outliers, above 10 r is so flat (r(10)≈1.35) that sampling
# noise in ρ moves α by orders of magnitude. Samples outside r([0.2, 10]) are clamped (zero gradient in α).
ALPHA_MIN = 0.2
ALPHA_MAX = 10.0
# Bisection on log α over [log 0.2, log 10]: the bracket (width ln 50 ≈ 3.9) halves each step, so 60
# steps shrink it to ~3e-18, below float64 resolution; the one Newton step after it only adds the gradient.
BISECTION_STEPS = 60
_COMPUTE = torch.float64


def _r_scalar(alpha: float) -> float:
    return math.exp(math.lgamma(1 / alpha) + math.lgamma(3 / alpha) - 2 * math.lgamma(2 / alpha))


_R_AT_MIN, _R_AT_MAX = _r_scalar(ALPHA_MIN), _r_scalar(ALPHA_MAX)  # ρ beyond these is clamped
DimArg = int | tuple[int, ...] | None


def _out_dtype(*xs: Tensor) -> torch.dtype:
    """float64 stays float64; everything else (float32, half, bf16, ints) comes back as float32."""
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


def _log_r(alpha: Tensor) -> Tensor:
    """log r(α), r(α) = Γ(1/α)Γ(3/α)/Γ(2/α)² = E[x²]/E[|x|]² of a GGD (independent of σ)."""
    return torch.lgamma(1 / alpha) + torch.lgamma(3 / alpha) - 2 * torch.lgamma(2 / alpha)


def _dlog_r(alpha: Tensor) -> Tensor:
    """d/dα log r(α); from d/dα lgamma(k/α) = −k/α² · ψ(k/α). Negative: r decreases monotonically."""
    a = 1 / alpha
    return -(a * a) * (torch.digamma(a) + 3 * torch.digamma(3 * a) - 4 * torch.digamma(2 * a))


def _solve_alpha(rho: Tensor) -> Tensor:
    """Differentiable α with r(α) = ρ, clamped to [ALPHA_MIN, ALPHA_MAX].

    Bisection (no grad, vectorised, BISECTION_STEPS steps) finds α*; one Newton step on
    log r(α) − log ρ taken *with* the graph, α* − (log r(α*) − log ρ)/(log r)'(α*), leaves the value
    unchanged but gives dα/dρ = 1/r'(α*): exactly the implicit-function gradient.
    """
    with torch.no_grad():
        target = rho.log()
        lo = torch.full_like(rho, math.log(ALPHA_MIN))
        hi = torch.full_like(rho, math.log(ALPHA_MAX))
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) / 2
            too_small = _log_r(mid.exp()) > target  # r too large → α must grow
            lo = torch.where(too_small, mid, lo)
            hi = torch.where(too_small, hi, mid)
        alpha0 = ((lo + hi) / 2).exp()
        lo_clip, hi_clip = rho >= _R_AT_MIN, rho <= _R_AT_MAX
        alpha0 = torch.where(lo_clip, ALPHA_MIN, torch.where(hi_clip, ALPHA_MAX, alpha0))
        clipped = lo_clip | hi_clip
    # Clamped entries get a constant ρ so log(ρ) never sees ρ=0 (a NaN gradient would leak through where).
    rho_safe = torch.where(clipped, _log_r(alpha0).exp(), rho)
    newton = alpha0 - (_log_r(alpha0) - rho_safe.log()) / _dlog_r(alpha0)
    return torch.where(clipped, alpha0, newton)


def fit_ggd(x: Tensor, dim: DimArg = None, center: bool = False) -> tuple[Tensor, Tensor]:
    """Moment-matched (α, σ) of `x`, over all elements (dim=None → scalars) or reduced over `dim`.

    σ = √mean(x²); α solves r(α) = mean(x²)/mean(|x|)². E.g. latents (B,C,H,W) with dim=(0,2,3) give
    per-channel (C,) fits, dim=(2,3) per-image-and-channel (B,C). `center=True` subtracts the mean over
    the same dims first. Differentiable w.r.t. x (implicit gradient, see `_solve_alpha`).
    Computed in float64; returns float64 for float64 input and float32 otherwise (including half/bf16).
    An all-zero input gives σ = 0 and α = ALPHA_MAX (ρ is taken as 0), finite with finite gradients.
    """
    out = _out_dtype(x)
    xd = x.to(_COMPUTE)
    if dim is None:
        xd, dim = xd.reshape(-1), 0
    if center:
        xd = xd - xd.mean(dim=dim, keepdim=True)
    m2 = xd.square().mean(dim=dim)
    m1 = xd.abs().mean(dim=dim)
    pos2, pos1 = m2 > 0, m1 > 0
    # Safe sqrt/division: the other branch of torch.where must stay finite or its NaN gradient leaks.
    sigma = torch.where(pos2, torch.where(pos2, m2, 1.0).sqrt(), 0.0)
    rho = torch.where(pos1, m2 / torch.where(pos1, m1, 1.0).square(), 0.0)
    return _solve_alpha(rho).to(out), sigma.to(out)


def ggd_scale(alpha: Tensor, sigma: Tensor) -> Tensor:
    """Scale b = σ·√(Γ(1/α)/Γ(3/α)) of the GGD with std σ (scipy's `gennorm` `scale`)."""
    alpha, sigma = torch.as_tensor(alpha), torch.as_tensor(sigma)
    return _log_scale(alpha.to(_COMPUTE), sigma.to(_COMPUTE)).exp().to(_out_dtype(alpha, sigma))


def _log_scale(alpha: Tensor, sigma: Tensor) -> Tensor:
    """log b, in log space so that Γ(1/α) ≈ 1e13 at α = 0.2 never materialises."""
    return sigma.log() + 0.5 * (torch.lgamma(1 / alpha) - torch.lgamma(3 / alpha))


def ggd_logpdf(x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """log p(x) of the zero-mean GGD (α, σ), elementwise with broadcasting."""
    x, alpha, sigma = (torch.as_tensor(t) for t in (x, alpha, sigma))
    out = _out_dtype(x, alpha, sigma)
    xd, a, s = x.to(_COMPUTE), alpha.to(_COMPUTE), sigma.to(_COMPUTE)
    log_b = _log_scale(a, s)
    logp = a.log() - math.log(2) - log_b - torch.lgamma(1 / a) - (xd.abs() / log_b.exp()).pow(a)
    return logp.to(out)


def ggd_kl(alpha1: Tensor, sigma1: Tensor, alpha2: Tensor, sigma2: Tensor) -> Tensor:
    """KL(p1 ‖ p2) between zero-mean GGDs in closed form (Do & Vetterli 2002), with broadcasting.

    KL = ln(α1 b2 Γ(1/α2) / (α2 b1 Γ(1/α1))) + (b1/b2)^α2 · Γ((α2+1)/α1)/Γ(1/α1) − 1/α1.
    The second term is evaluated as exp(α2 ln(b1/b2) + lgamma((α2+1)/α1) − lgamma(1/α1)) since
    Γ((α2+1)/α1) alone overflows float32 for small α1. Computed in float64; returns float64 if any input
    is float64, else float32. Not clamped at 0: round-off may leave |KL| ~ 1e-16 of either sign.
    Caveat: the true KL can exceed float32's range (α1=0.2, α2=10, σ1/σ2 ≳ 1e2 gives ~e^100); such
    values are finite in float64 but become inf when cast to float32.
    """
    ts = [torch.as_tensor(t) for t in (alpha1, sigma1, alpha2, sigma2)]
    out = _out_dtype(*ts)
    a1, s1, a2, s2 = (t.to(_COMPUTE) for t in ts)
    log_b1, log_b2 = _log_scale(a1, s1), _log_scale(a2, s2)
    lg1 = torch.lgamma(1 / a1)
    first = a1.log() - a2.log() + log_b2 - log_b1 + torch.lgamma(1 / a2) - lg1
    second = (a2 * (log_b1 - log_b2) + torch.lgamma((a2 + 1) / a1) - lg1).exp()
    return (first + second - 1 / a1).to(out)
