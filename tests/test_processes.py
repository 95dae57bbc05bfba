"""Processes checked against independent derivations: quadrature of the forward SDE's
moment ODEs, autograd, SciPy's distributions, mpmath."""

import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from scipy.integrate import solve_ivp

import flowsolve as fs
from flowsolve.processes.kernels import log_gamma_density_norm, log_gamma_ratio

DIFFUSIONS = [fs.VE(), fs.VE(sigma_min=0.002, sigma_max=380.0), fs.VP(), fs.VP(beta_min=1.0, beta_max=1.0),
              fs.SubVP(), fs.EDM()]
ALL = DIFFUSIONS + [fs.PFGMPP(D=128), fs.PFGMPP(D=2.5), fs.Poisson()]


@pytest.mark.parametrize("process", DIFFUSIONS, ids=repr)
def test_marginal_moments_follow_forward_sde(process):
    """Mean and variance ODEs of dx = f x dt + g dW: m' = f m, V' = 2 f V + g^2, solved by
    SciPy from t_min, must reproduce s(t) and s(t)^2 sigma(t)^2 of the closed forms."""
    f = lambda t: float(process.drift_coefficient(float(t)))
    g = lambda t: float(process.diffusion(float(t)))
    t0 = process.t_min
    m0, v0 = float(process.scale(t0)), float(process.scale(t0) * process.sigma(t0)) ** 2
    ts = np.linspace(t0, process.t_max, 9)
    sol = solve_ivp(lambda t, y: [f(t) * y[0], 2 * f(t) * y[1] + g(t) ** 2], (t0, process.t_max), [m0, v0],
                    t_eval=ts, rtol=1e-11, atol=1e-14, method="DOP853")
    s = process.scale(torch.tensor(ts)).numpy()
    std = (process.scale(torch.tensor(ts)) * process.sigma(torch.tensor(ts))).numpy()
    np.testing.assert_allclose(sol.y[0], s, rtol=1e-8)
    np.testing.assert_allclose(np.sqrt(sol.y[1]), std, rtol=1e-7)


@pytest.mark.parametrize("process", ALL, ids=repr)
def test_closed_form_derivatives_match_autograd(process):
    t = torch.linspace(process.t_min, process.t_max, 33, dtype=torch.float64)[1:]
    ds = torch.func.vmap(torch.func.grad(lambda u: process._scale(u)))(t)
    dsig = torch.func.vmap(torch.func.grad(lambda u: process._sigma(u)))(t)
    torch.testing.assert_close(process.scale_derivative(t), ds, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(process.sigma_derivative(t), dsig, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("process", ALL, ids=repr)
@given(u=st.floats(0.0, 1.0))
def test_t_of_sigma_inverts_sigma(process, u):
    t = process.t_min + u * (process.t_max - process.t_min)
    t_back = process.t_of_sigma(process.sigma(t))
    assert abs(float(t_back) - t) <= 1e-9 * max(1.0, abs(t))


def test_generic_bisection_inverse_matches_closed_form():
    vp = fs.VP()
    sig = vp.sigma(torch.linspace(vp.t_min, 1.0, 11, dtype=torch.float64))
    torch.testing.assert_close(fs.Process._t_of_sigma(vp, sig), vp._t_of_sigma(sig), rtol=1e-12, atol=1e-14)


def _vp_fg(beta_min=0.1, beta_max=20.0):
    beta = lambda t: beta_min + t * (beta_max - beta_min)
    return (lambda t: -0.5 * beta(t)), (lambda t: torch.sqrt(beta(t)))


def test_linear_sde_quadrature_reproduces_vp():
    f, g = _vp_fg()
    lin = fs.LinearSDE(f=f, g=g, t_min=1e-3, t_max=1.0, t0=0.0)
    vp = fs.VP()
    t = torch.linspace(1e-3, 1.0, 50, dtype=torch.float64)
    torch.testing.assert_close(lin.scale(t), vp.scale(t), rtol=1e-9, atol=0)
    torch.testing.assert_close(lin.sigma(t), vp.sigma(t), rtol=1e-8, atol=0)
    torch.testing.assert_close(lin.sigma_derivative(t), vp.sigma_derivative(t), rtol=1e-7, atol=0)
    torch.testing.assert_close(lin.diffusion(t), vp.diffusion(t), rtol=1e-12, atol=0)
    torch.testing.assert_close(lin.t_of_sigma(vp.sigma(t)), t, rtol=1e-8, atol=1e-12)


def test_linear_sde_gives_the_offset_ve_kernel():
    """VE's forward SDE started from clean data at t = 0 has variance sigma(t)^2 - sigma_min^2."""
    ve = fs.VE()
    lin = fs.LinearSDE(f=lambda t: 0.0 * t, g=lambda t: ve._g(t), t_min=0.05, t_max=1.0, t0=0.0)
    t = torch.linspace(0.05, 1.0, 20, dtype=torch.float64)
    torch.testing.assert_close(lin.sigma(t) ** 2, ve.sigma(t) ** 2 - ve.sigma_min**2, rtol=1e-8, atol=0)


def test_composed_diffusion_matches_vp_with_autograd_derivatives():
    a, b = 0.25 * 19.9, 0.05
    proc = fs.Diffusion(scale=lambda t: torch.exp(-(a * t * t + b * t)),
                        sigma=lambda t: torch.sqrt(torch.expm1(2 * (a * t * t + b * t))), t_min=1e-3, t_max=1.0)
    vp = fs.VP()
    t = torch.linspace(1e-3, 1.0, 17, dtype=torch.float64)
    torch.testing.assert_close(proc.diffusion(t), vp.diffusion(t), rtol=1e-9, atol=0)
    torch.testing.assert_close(proc.drift_coefficient(t), vp.drift_coefficient(t), rtol=1e-9, atol=0)
    torch.testing.assert_close(proc.t_of_sigma(vp.sigma(t)), t, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("process", DIFFUSIONS[:3] + [fs.SubVP(), fs.EDM()], ids=repr)
def test_perturb_gaussian_moments(process, gen):
    n, dim = 200_000, 2
    x0 = torch.tensor([[1.5, -0.5]], dtype=torch.float64).expand(n, dim)
    t = process.t_min + 0.3 * (process.t_max - process.t_min)
    xt = process.perturb(x0, t, generator=gen)
    s, sig = float(process.scale(t)), float(process.sigma(t))
    se = s * sig / math.sqrt(n)
    assert torch.all((xt.mean(0) - s * x0[0]).abs() < 5 * se)
    var = xt.var(0)
    assert torch.all((var / (s * sig) ** 2 - 1).abs() < 5 * math.sqrt(2 / n))


def test_perturb_per_sample_times(gen):
    proc = fs.VP()
    t = torch.tensor([0.001, 0.5, 1.0], dtype=torch.float64)
    x0 = torch.zeros(3, 4, dtype=torch.float64)
    xt = proc.perturb(x0, t, generator=gen)
    assert xt.shape == (3, 4)
    g2 = torch.Generator().manual_seed(1234)
    n = torch.randn(3, 4, generator=g2, dtype=torch.float64)
    torch.testing.assert_close(xt, (proc.scale(t) * proc.sigma(t)).unsqueeze(-1) * n)


@pytest.mark.parametrize("D,dim", [(1.0, 2), (3.0, 1), (128.0, 5), (2048.0, 3)])
def test_pfgmpp_radius_law_ks(D, dim, gen):
    """R^2 / r^2 = ||x - y||^2 / (D sigma^2) must follow Beta-prime(N/2, D/2) (PFGM++ App. B)."""
    proc = fs.PFGMPP(D=D)
    sigma = 0.7
    x = proc.perturb(torch.zeros(20_000, dim, dtype=torch.float64), sigma, generator=gen)
    ratio = (x**2).sum(-1) / (D * sigma**2)
    p = stats.kstest(ratio.numpy(), stats.betaprime(dim / 2, D / 2).cdf).pvalue
    assert p > 1e-4


@pytest.mark.parametrize("D,dim", [(8.0, 3), (40.0, 2)])
def test_pfgmpp_mean_square_distance(D, dim, gen):
    """E||x - y||^2 = sigma^2 N D / (D - 2)."""
    proc, sigma, n = fs.PFGMPP(D=D), 1.3, 400_000
    sq = (proc.perturb(torch.zeros(n, dim, dtype=torch.float64), sigma, generator=gen) ** 2).sum(-1)
    expected = sigma**2 * dim * D / (D - 2)
    assert proc.kernel.mean_sq_norm(dim) * sigma**2 == pytest.approx(expected)
    assert abs(float(sq.mean()) - expected) < 5 * float(sq.std()) / math.sqrt(n)


def test_poisson_kernel_is_multivariate_cauchy():
    proc = fs.Poisson()
    x = torch.tensor([[0.3, -2.0, 1.0], [10.0, 0.0, 4.0]], dtype=torch.float64)
    y = torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64)
    sigma = 2.5
    ref = stats.multivariate_t(loc=y.numpy(), shape=sigma**2 * np.eye(3), df=1).logpdf(x.numpy())
    torch.testing.assert_close(proc.kernel_log_prob(x, y, sigma), torch.tensor(ref), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("D", [0.5, 7.0, 1e3])
def test_pfgmpp_kernel_matches_scipy_t_and_radius_form(D):
    proc = fs.PFGMPP(D=D)
    x = torch.tensor([[0.3, -2.0], [10.0, 0.5]], dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.float64)
    sigma = 0.9
    ref = stats.multivariate_t(loc=[0, 0], shape=sigma**2 * np.eye(2), df=D).logpdf(x.numpy())
    lp = proc.kernel_log_prob(x, y, sigma)
    torch.testing.assert_close(lp, torch.tensor(ref), rtol=1e-10, atol=1e-10)
    # radius form: p ∝ (||x - y||^2 + r^2)^(-(N+D)/2) with r = sigma sqrt(D)
    r2 = sigma**2 * D
    rel = lp[0] - lp[1]
    expected = -(2 + D) / 2 * (math.log(float((x[0] ** 2).sum()) + r2) - math.log(float((x[1] ** 2).sum()) + r2))
    assert float(rel) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("D", [1e6, 1e9, 1e12])
def test_huge_D_kernel_is_gaussian_without_overflow(D):
    x = torch.tensor([[0.3, -2.0, 0.1]], dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.float64)
    lp = fs.PFGMPP(D=D).kernel_log_prob(x, y, 1.7)
    gauss = fs.EDM().kernel_log_prob(x, y, 1.7)
    assert torch.isfinite(lp).all()
    assert abs(float(lp - gauss)) < 50.0 / D
    x32 = fs.PFGMPP(D=D).perturb(torch.zeros(1000, 3), 80.0, generator=torch.Generator().manual_seed(0))
    assert x32.dtype == torch.float32 and torch.isfinite(x32).all()


@pytest.mark.parametrize("a,h", [(0.5, 1.5), (12.0, 0.5), (5e8, 1.0), (1e15, 32.0), (3e4, 500.0)])
def test_log_gamma_ratio_against_mpmath(a, h):
    mpmath.mp.dps = 50
    ref = float(mpmath.loggamma(mpmath.mpf(a) + h) - mpmath.loggamma(mpmath.mpf(a)))
    assert log_gamma_ratio(a, h) == pytest.approx(ref, rel=1e-13, abs=1e-12)
    ref_norm = float(a * mpmath.log(a) - mpmath.loggamma(mpmath.mpf(a)) - a)
    assert log_gamma_density_norm(a) == pytest.approx(ref_norm, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("process", ALL, ids=repr)
def test_prior_sample_and_log_prob(process, gen):
    x = process.prior_sample(50_000, 2, generator=gen, dtype=torch.float64)
    assert x.shape == (50_000, 2) and x.dtype == torch.float64
    scale = process.prior_std
    # median radius of the kernel: compare with the law of ||n|| (Gaussian or Beta-prime)
    radius2 = ((x / scale) ** 2).sum(-1).numpy()
    D = process.kernel.D
    law = stats.chi2(2) if math.isinf(D) else stats.betaprime(1.0, D / 2, scale=D)
    assert stats.kstest(radius2, law.cdf).pvalue > 1e-4
    lp = process.prior_log_prob(x[:5])
    # the prior is the law of x_t given y = 0 at t_max
    torch.testing.assert_close(lp, process.kernel_log_prob(x[:5], torch.zeros(2, dtype=torch.float64), process.t_max))


def test_prior_of_named_processes():
    assert fs.VE().prior_std == pytest.approx(50.0)
    assert fs.EDM().prior_std == 80.0
    assert fs.VP().prior_std == pytest.approx(1.0, abs=1e-4)
    assert fs.SubVP().prior_std == pytest.approx(1.0, abs=1e-4)


def test_schedules_follow_caller_dtype():
    p = fs.VP()
    t32 = torch.tensor([0.5, 0.9], dtype=torch.float32)
    assert p.sigma(t32).dtype == torch.float32
    assert p.scale(0.5).dtype == torch.float64
    assert fs.PFGMPP(D=9.0).r(4.0) == pytest.approx(12.0)
    assert fs.PFGMPP(D=9.0).t_of_r(12.0) == pytest.approx(4.0)
