"""Generalized Gaussian fit and KL (restorer/ggd.py) against scipy's `gennorm` and numerical integration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import gennorm

from restorer.ggd import ALPHA_MAX, ALPHA_MIN, _dlog_r, fit_ggd, ggd_kl, ggd_logpdf, ggd_scale

F64 = torch.float64
N_SAMPLES = 200_000
SIGMA = 1.5
# Tolerance in standard errors of the moment estimator (delta method, see `_moment_se`): with a fixed
# seed the test is deterministic; 4 SE keeps it valid for any seed with probability ~1 − 6e-5.
N_SE = 4


def t64(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=F64)


def _gennorm_sample(alpha: float, sigma: float, n: int, seed: int) -> torch.Tensor:
    b = float(ggd_scale(t64(alpha), t64(sigma)))
    return torch.from_numpy(gennorm.rvs(beta=alpha, scale=b, size=n, random_state=seed))


def _moment_se(alpha: float, n: int) -> tuple[float, float]:
    """Relative standard errors of the fitted (α, σ) from n samples, by the delta method.

    With E|x|^k = b^k Γ((k+1)/α)/Γ(1/α): Var(log ρ) from the covariance of (mean x², mean |x|), mapped
    to α through (log r)'(α). This is why α=8 needs a looser tolerance (r is flat there: SE ≈ 2.6%)
    and so does α=0.3 (huge kurtosis: SE of σ ≈ 1.5%), while α in [0.5, 4] is fitted to ≈1%.
    """
    m1, m2, m3, m4 = (math.exp(math.lgamma((k + 1) / alpha) - math.lgamma(1 / alpha)) for k in (1, 2, 3, 4))
    var_log_rho = (m4 - m2**2) / m2**2 + 4 * (m2 - m1**2) / m1**2 - 4 * (m3 - m2 * m1) / (m2 * m1)
    se_alpha = math.sqrt(var_log_rho / n) / abs(float(_dlog_r(t64(alpha)))) / alpha
    se_sigma = 0.5 * math.sqrt((m4 - m2**2) / m2**2 / n)
    return se_alpha, se_sigma


@pytest.mark.parametrize("alpha", [0.3, 0.5, 1.0, 2.0, 4.0, 8.0])
def test_fit_recovers_gennorm_parameters(alpha: float) -> None:
    x = _gennorm_sample(alpha, SIGMA, N_SAMPLES, seed=0)
    a_hat, s_hat = fit_ggd(x)
    assert a_hat.shape == () and s_hat.shape == ()
    se_a, se_s = _moment_se(alpha, N_SAMPLES)
    assert a_hat.item() == pytest.approx(alpha, rel=N_SE * se_a)
    assert s_hat.item() == pytest.approx(SIGMA, rel=N_SE * se_s)
    if 0.5 <= alpha <= 4:  # the design doc's plain bounds hold where the estimator is well conditioned
        assert a_hat.item() == pytest.approx(alpha, rel=0.05)
        assert s_hat.item() == pytest.approx(SIGMA, rel=0.02)


def test_fit_per_dim_shapes_and_values() -> None:
    alphas, sigmas = [0.5, 1.0, 2.0], [0.5, 1.0, 3.0]
    n = 4 * 64 * 64  # B * H * W
    chans = [_gennorm_sample(a, s, n, seed=i).reshape(4, 64, 64) for i, (a, s) in enumerate(zip(alphas, sigmas))]
    x = torch.stack(chans, dim=1)  # (B, C, H, W) = (4, 3, 64, 64)
    a_hat, s_hat = fit_ggd(x, dim=(0, 2, 3))
    assert a_hat.shape == (3,) and s_hat.shape == (3,) and a_hat.dtype == F64
    for c, (a, s) in enumerate(zip(alphas, sigmas)):
        se_a, se_s = _moment_se(a, n)
        assert a_hat[c].item() == pytest.approx(a, rel=N_SE * se_a)
        assert s_hat[c].item() == pytest.approx(s, rel=N_SE * se_s)
    a_bc, s_bc = fit_ggd(x, dim=(2, 3))
    assert a_bc.shape == (4, 3) and s_bc.shape == (4, 3)
    # Each per-(B,C) fit equals the fit of that slice on its own.
    a_01, s_01 = fit_ggd(x[0, 1])
    assert torch.allclose(a_bc[0, 1], a_01) and torch.allclose(s_bc[0, 1], s_01)
    assert fit_ggd(x, dim=-1)[0].shape == (4, 3, 64)


def test_center_removes_the_mean() -> None:
    x = _gennorm_sample(1.0, 1.0, 50_000, seed=3)
    a0, s0 = fit_ggd(x, center=True)
    a1, s1 = fit_ggd(x + 5.0, center=True)
    assert torch.allclose(a0, a1, rtol=1e-9) and torch.allclose(s0, s1, rtol=1e-9)
    _, s_raw = fit_ggd(x + 5.0)  # uncentred: σ includes the offset
    assert s_raw.item() > 4.0


def test_fit_gradcheck() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, dtype=F64, generator=gen, requires_grad=True)
    a, _ = fit_ggd(x.detach())
    assert ALPHA_MIN * 2 < a.item() < ALPHA_MAX / 2  # interior, away from the clamp
    assert torch.autograd.gradcheck(lambda t: fit_ggd(t), (x,))
    assert torch.autograd.gradcheck(lambda t: fit_ggd(t, center=True), (x,))
    xc = torch.randn(2, 3, 5, 5, dtype=F64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fit_ggd(t, dim=(0, 2, 3)), (xc,))


def test_fit_newton_step_keeps_the_bisection_value() -> None:
    """The differentiable Newton step must not move α: r(α̂) equals the sample ρ to round-off."""
    x = _gennorm_sample(1.3, 1.0, 10_000, seed=5)
    a_hat, _ = fit_ggd(x)
    rho = x.square().mean() / x.abs().mean().square()
    r = torch.exp(torch.lgamma(1 / a_hat) + torch.lgamma(3 / a_hat) - 2 * torch.lgamma(2 / a_hat))
    assert r.item() == pytest.approx(rho.item(), rel=1e-12)


def test_fit_clamps_shape() -> None:
    signs = torch.where(torch.arange(100) % 2 == 0, 1.0, -1.0).to(F64).requires_grad_()
    a, s = fit_ggd(signs)  # ρ = 1 < 4/3: flatter than any GGD
    assert a.item() == ALPHA_MAX and s.item() == pytest.approx(1.0)
    (a + s).backward()
    assert torch.isfinite(signs.grad).all()

    spike = torch.zeros(1000, dtype=F64)
    spike[0] = 1.0
    spike.requires_grad_()
    a, s = fit_ggd(spike)  # ρ = 1000 ≫ r(0.2) ≈ 15.9
    assert a.item() == ALPHA_MIN and torch.isfinite(s)
    grad_a = torch.autograd.grad(a, spike, retain_graph=True)[0]
    assert torch.equal(grad_a, torch.zeros_like(grad_a))  # clamped: no gradient through α
    assert torch.isfinite(torch.autograd.grad(s, spike)[0]).all()


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_fit_all_zero_input_is_finite(dtype: torch.dtype) -> None:
    x = torch.zeros(2, 8, dtype=dtype, requires_grad=True)
    a, s = fit_ggd(x, dim=1)
    assert torch.isfinite(a).all() and torch.equal(s, torch.zeros(2, dtype=dtype))
    (a.sum() + s.sum()).backward()
    assert torch.isfinite(x.grad).all()


def test_fit_dtypes() -> None:
    x = torch.randn(1000)
    assert all(t.dtype == torch.float32 for t in fit_ggd(x))
    assert all(t.dtype == F64 for t in fit_ggd(x.double()))
    for low in (torch.float16, torch.bfloat16):
        a, s = fit_ggd(x.to(low))
        assert a.dtype == s.dtype == torch.float32 and torch.isfinite(a) and torch.isfinite(s)


def _kl_quad(a1: float, s1: float, a2: float, s2: float) -> float:
    """KL by quadrature with scipy's own gennorm, in t = log|x| so that every scale is resolved."""
    b1 = float(ggd_scale(t64(a1), t64(s1)))
    b2 = float(ggd_scale(t64(a2), t64(s2)))

    def integrand(t: float) -> float:
        x = math.exp(t)
        lp1, lp2 = gennorm.logpdf(x, a1, scale=b1), gennorm.logpdf(x, a2, scale=b2)
        return 2 * x * math.exp(lp1) * (lp1 - lp2)  # symmetric: 2∫_0^∞, dx = x dt

    # Above: (x/b1)^α1 > 200, p1 < e^-200. Below b1·e^-60 the integrand vanishes like x (the dx = x dt).
    lo, hi = math.log(b1) - 60, math.log(b1) + math.log(200) / a1
    val, _ = integrate.quad(integrand, lo, hi, limit=500, epsabs=1e-12, epsrel=1e-10)
    return val


KL_PAIRS = [
    (2.0, 1.0, 2.0, 2.0),
    (1.0, 1.0, 2.0, 1.0),
    (2.0, 1.0, 1.0, 3.0),
    (0.5, 2.0, 1.5, 0.7),
    (0.2, 1.0, 2.0, 1.0),
    (10.0, 1.0, 2.0, 1.0),
    (2.0, 1.0, 0.2, 1.0),
    (2.0, 1.0, 10.0, 1.0),
    (0.2, 0.01, 10.0, 1.0),
    (10.0, 1.0, 0.2, 1.0),
    (10.0, 100.0, 0.2, 0.1),
    (0.2, 5.0, 0.2, 0.005),
    (10.0, 0.001, 10.0, 1.0),
]


@pytest.mark.parametrize("a1,s1,a2,s2", KL_PAIRS)
def test_kl_matches_quadrature(a1: float, s1: float, a2: float, s2: float) -> None:
    kl = ggd_kl(t64(a1), t64(s1), t64(a2), t64(s2)).item()
    assert kl >= 0
    assert kl == pytest.approx(_kl_quad(a1, s1, a2, s2), rel=1e-6, abs=1e-9)


def test_kl_gaussian_closed_form_and_equal_distributions() -> None:
    s1 = torch.tensor([0.1, 1.0, 3.0], dtype=F64)
    s2 = torch.tensor([[1.0], [0.02], [50.0]], dtype=F64)  # broadcasts to (3, 3)
    kl = ggd_kl(t64(2.0), s1, t64(2.0), s2)
    expected = torch.log(s2 / s1) + s1**2 / (2 * s2**2) - 0.5
    assert kl.shape == (3, 3) and torch.allclose(kl, expected, rtol=1e-12, atol=1e-12)

    alphas = torch.tensor([ALPHA_MIN, 0.5, 1.0, 2.0, 4.0, ALPHA_MAX])
    sigmas = torch.tensor([1e-3, 1.0, 1e3, 1.0, 7.0, 1e-2])
    same = ggd_kl(alphas, sigmas, alphas, sigmas)
    assert same.dtype == torch.float32 and same.abs().max().item() < 1e-6


def test_kl_finite_and_nonnegative_over_the_range() -> None:
    alphas = torch.tensor([ALPHA_MIN, 0.5, 1.0, 2.0, 5.0, ALPHA_MAX], dtype=F64)
    ratios = torch.tensor([1e-3, 1e-1, 1.0, 1e1, 1e3], dtype=F64)
    a1, a2, r = alphas[:, None, None], alphas[None, :, None], ratios[None, None, :]
    kl = ggd_kl(a1, r, a2, torch.ones((), dtype=F64))
    assert kl.shape == (6, 6, 5) and torch.isfinite(kl).all() and (kl >= -1e-12).all()
    # float32 at the α extremes: finite where the true value fits float32 (see ggd_kl's caveat).
    r32 = ratios.float()
    one = torch.ones(())
    lo_hi = ggd_kl(torch.tensor(ALPHA_MIN), r32[:4], torch.tensor(ALPHA_MAX), one)
    hi_lo = ggd_kl(torch.tensor(ALPHA_MAX), r32, torch.tensor(ALPHA_MIN), one)
    for kl32 in (lo_hi, hi_lo):
        assert kl32.dtype == torch.float32 and torch.isfinite(kl32).all() and (kl32 >= 0).all()
    assert torch.allclose(lo_hi.double(), kl[0, -1, :4], rtol=1e-5)
    assert torch.allclose(hi_lo.double(), kl[-1, 0], rtol=1e-5)


def test_kl_gradcheck_all_parameters() -> None:
    args = (
        torch.tensor([0.4, 1.0, 3.0], dtype=F64, requires_grad=True),
        torch.tensor([0.5, 1.0, 2.0], dtype=F64, requires_grad=True),
        torch.tensor([2.0, 0.7, 8.0], dtype=F64, requires_grad=True),
        torch.tensor([1.5, 0.3, 1.0], dtype=F64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(ggd_kl, args)


def test_kl_dtype_and_broadcasting() -> None:
    a1 = torch.full((4, 1), 1.5)
    s1 = torch.ones(4, 1)
    a2 = torch.tensor([1.0, 2.0, 3.0])
    kl = ggd_kl(a1, s1, a2, torch.tensor(2.0))
    assert kl.shape == (4, 3) and kl.dtype == torch.float32
    assert ggd_kl(a1.double(), s1, a2, 2.0).dtype == F64
    assert ggd_kl(1.0, 1.0, 2.0, 1.0).dtype == torch.float32


def test_logpdf_and_scale_match_scipy() -> None:
    x = np.linspace(-5, 5, 41)
    for a, s in [(0.2, 1.0), (1.0, 2.0), (2.0, 0.5), (10.0, 1.0)]:
        b = ggd_scale(t64(a), t64(s)).item()
        assert gennorm.std(a, scale=b) == pytest.approx(s, rel=1e-12)
        lp = ggd_logpdf(torch.from_numpy(x), t64(a), t64(s)).numpy()
        np.testing.assert_allclose(lp, gennorm.logpdf(x, a, scale=b), rtol=1e-10, atol=1e-12)
    # Density integrates to one (α=1, σ=1 Laplacian).
    total, _ = integrate.quad(lambda v: math.exp(ggd_logpdf(t64(v), t64(1.0), t64(1.0)).item()), -60, 60, points=[0])
    assert total == pytest.approx(1.0, rel=1e-9)
