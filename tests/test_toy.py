"""Toy data laws (fs.toy): moments, densities, sampling, named constructors.

References are independent of flowsolve: means/covariances are recomputed with NumPy from
the constructor inputs (or from closed forms for the named laws), densities come from
``scipy.stats.multivariate_normal``, normalisation from ``scipy.integrate.quad``.

Monte-Carlo bound used throughout: a sample average of ``n`` i.i.d. draws of a quantity
``q`` is compared with its expectation within ``Z = 5`` standard errors
``sqrt(Var q / n)`` (two-sided probability of a false alarm per entry ~ 6e-7; samples are
drawn from a seeded ``torch.Generator`` so every run is identical anyway).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import flowsolve as fs
from flowsolve import toy

Z = 5.0  # Monte-Carlo tolerance in standard errors
N_MC = 200_000


# ---------------------------------------------------------------------------- helpers
def _np(a):
    return np.asarray(a, dtype=np.float64)


def ref_mixture_moments(means, covs, weights):
    """Mean and covariance of a Gaussian mixture, by the law of total variance (NumPy)."""
    means, covs, weights = _np(means), _np(covs), _np(weights)
    mu = weights @ means
    second = np.einsum("k,kij->ij", weights, covs + np.einsum("ki,kj->kij", means, means))
    return mu, second - np.outer(mu, mu)


def ref_mixture_logpdf(x, means, covs, weights):
    """log sum_k w_k N(x; m_k, C_k) with SciPy, x of shape (B, N)."""
    x = _np(x)
    comps = [math.log(w) + multivariate_normal(mean=m, cov=c).logpdf(x).reshape(len(x))
             for m, c, w in zip(_np(means), _np(covs), _np(weights)) if w > 0]
    return logsumexp(np.stack(comps), axis=0)


def assert_moments_match(samples, mean, cov, z=Z):
    """Sample mean and sample covariance (about the true mean) within z standard errors.

    SE of the mean of coordinate i: sqrt(C_ii / n). SE of the average of the products
    (x_i - m_i)(x_j - m_j): their sample standard deviation / sqrt(n) (fourth moments are
    not available in closed form for a mixture, so they are estimated; with n = 2e5 the
    estimate is accurate to a few per cent).
    """
    x = samples.to(torch.float64).numpy()
    n = x.shape[0]
    mean, cov = _np(mean), _np(cov)
    se_mean = np.sqrt(np.diag(cov) / n)
    err_mean = np.abs(x.mean(0) - mean)
    assert (err_mean <= z * se_mean).all(), (err_mean / se_mean, mean, x.mean(0))
    d = x - mean
    prods = d[:, :, None] * d[:, None, :]
    se_cov = prods.std(0, ddof=1) / math.sqrt(n)
    err_cov = np.abs(prods.mean(0) - cov)
    assert (err_cov <= z * se_cov + 1e-15).all(), (err_cov / se_cov, cov, prods.mean(0))


def spd(rng, n, lo=0.2, hi=2.0):
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = rng.uniform(lo, hi, n)
    c = q @ np.diag(lam) @ q.T
    return 0.5 * (c + c.T)


def mixture_cases():
    """(name, law, means (K,N), covs (K,N,N), weights) with covs built independently."""
    rng = np.random.default_rng(11)
    means3 = rng.standard_normal((3, 3)) * 2.0
    covs3 = np.stack([spd(rng, 3) for _ in range(3)])
    w3 = np.array([0.2, 0.5, 0.3])
    diag_stds = np.array([[0.5, 1.0, 2.0], [1.5, 0.3, 0.7]])
    means2 = np.array([[1.0, -2.0, 0.5], [-1.0, 0.0, 3.0]])
    iso = np.array([0.4, 1.3])
    return [
        ("full", toy.GaussianMixture(means3, covs3, w3), means3, covs3, w3),
        ("diag", toy.GaussianMixture(means2, diag_stds, [0.7, 0.3]), means2,
         np.stack([np.diag(s**2) for s in diag_stds]), np.array([0.7, 0.3])),
        ("iso_vec", toy.GaussianMixture(means2, iso), means2,
         np.stack([s**2 * np.eye(3) for s in iso]), np.array([0.5, 0.5])),
        ("iso_scalar", toy.GaussianMixture(means2, 0.8, [0.25, 0.75]), means2,
         np.stack([0.64 * np.eye(3)] * 2), np.array([0.25, 0.75])),
        ("gauss_full", toy.Gaussian([1.0, -1.0, 2.0], covs3[0]), np.array([[1.0, -1.0, 2.0]]),
         covs3[:1], np.array([1.0])),
        ("gauss_diag_var", toy.Gaussian([0.0, 1.0, 0.0], [4.0, 0.25, 1.0]), np.array([[0.0, 1.0, 0.0]]),
         np.diag([4.0, 0.25, 1.0])[None], np.array([1.0])),
        ("gauss_scalar_var", toy.Gaussian([0.5, 0.5, -0.5], 2.25), np.array([[0.5, 0.5, -0.5]]),
         2.25 * np.eye(3)[None], np.array([1.0])),
    ]


CASES = mixture_cases()
CASE_IDS = [c[0] for c in CASES]


# ---------------------------------------------------------------------------- moments
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_mean_and_covariance_methods_match_numpy(case):
    _, law, means, covs, weights = case
    mu, cov = ref_mixture_moments(means, covs, weights)
    np.testing.assert_allclose(law.mean().numpy(), mu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(law.covariance().numpy(), cov, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_sample_moments_within_monte_carlo_error(case):
    _, law, means, covs, weights = case
    mu, cov = ref_mixture_moments(means, covs, weights)
    x = law.sample(N_MC, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert x.shape == (N_MC, 3)
    assert_moments_match(x, mu, cov)


def test_mixture_component_frequencies_and_per_component_law():
    """Well separated components: assign each sample to its nearest mean and check the
    component counts (binomial SE) and each component's own mean/covariance."""
    means = np.array([[-20.0, 0.0], [0.0, 20.0], [20.0, 0.0]])
    rng = np.random.default_rng(3)
    covs = np.stack([spd(rng, 2, 0.1, 1.0) for _ in range(3)])
    w = np.array([0.1, 0.6, 0.3])
    law = toy.GaussianMixture(means, covs, w)
    x = law.sample(N_MC, generator=torch.Generator().manual_seed(9), dtype=torch.float64).numpy()
    label = np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(label, minlength=3)
    se = np.sqrt(N_MC * w * (1 - w))
    assert (np.abs(counts - N_MC * w) <= Z * se).all(), (counts, N_MC * w)
    for k in range(3):
        assert_moments_match(torch.as_tensor(x[label == k]), means[k], covs[k])


def test_diagonal_stds_are_standard_deviations_not_variances():
    """(K, N) stds for GaussianMixture are std devs; (N,) for Gaussian are variances."""
    mix = toy.GaussianMixture([[0.0, 0.0]], [[3.0, 0.5]])
    np.testing.assert_allclose(mix.covariance().numpy(), np.diag([9.0, 0.25]), rtol=1e-14)
    gauss = toy.Gaussian([0.0, 0.0], [3.0, 0.5])
    np.testing.assert_allclose(gauss.covariance().numpy(), np.diag([3.0, 0.5]), rtol=1e-14)
    gauss_s = toy.Gaussian([0.0, 0.0], 3.0)
    np.testing.assert_allclose(gauss_s.covariance().numpy(), 3.0 * np.eye(2), rtol=1e-14)


# ---------------------------------------------------------------------------- densities
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_log_prob_matches_scipy(case):
    _, law, means, covs, weights = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)) * 3.0
    got = law.log_prob(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(got, ref_mixture_logpdf(x, means, covs, weights), rtol=1e-10, atol=1e-10)


@st.composite
def random_mixtures(draw):
    k = draw(st.integers(1, 4))
    n = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["full", "diag", "iso", "scalar"]))
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((k, n)) * draw(st.floats(0.1, 10.0))
    w = rng.dirichlet(np.full(k, 1.5))
    scale = draw(st.floats(0.05, 5.0))
    if kind == "full":
        arg = np.stack([scale * spd(rng, n) for _ in range(k)])
        covs = arg
    elif kind == "diag":
        arg = scale * rng.uniform(0.2, 2.0, (k, n))
        covs = np.stack([np.diag(s**2) for s in arg])
    elif kind == "iso":
        arg = scale * rng.uniform(0.2, 2.0, k)
        covs = np.stack([s**2 * np.eye(n) for s in arg])
    else:
        arg = scale
        covs = np.stack([scale**2 * np.eye(n)] * k)
    x = means[rng.integers(0, k, 16)] + rng.standard_normal((16, n)) * scale * 2.0
    return toy.GaussianMixture(means, arg, w), means, covs, w, x


@given(random_mixtures())
def test_log_prob_matches_scipy_random_mixtures(args):
    law, means, covs, w, x = args
    got = law.log_prob(torch.as_tensor(x)).numpy()
    ref = ref_mixture_logpdf(x, means, covs, w)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)
    mu, cov = ref_mixture_moments(means, covs, w)
    np.testing.assert_allclose(law.mean().numpy(), mu, rtol=1e-10, atol=1e-10 * (1 + np.abs(mu).max()))
    np.testing.assert_allclose(law.covariance().numpy(), cov, rtol=1e-10, atol=1e-10 * (1 + np.abs(cov).max()))


def test_log_prob_batch_shape_and_dtype():
    law = toy.random_mixture(2, n_components=3, seed=1)
    x = torch.randn(4, 5, 2, generator=torch.Generator().manual_seed(0))
    lp32 = law.log_prob(x)
    assert lp32.shape == (4, 5) and lp32.dtype == torch.float32 and lp32.device == x.device
    lp64 = law.log_prob(x.double())
    assert lp64.shape == (4, 5) and lp64.dtype == torch.float64
    np.testing.assert_allclose(lp32.numpy(), lp64.numpy(), rtol=1e-5, atol=1e-5)
    flat = law.log_prob(x.double().reshape(20, 2)).reshape(4, 5)
    torch.testing.assert_close(flat, lp64, rtol=1e-14, atol=1e-14)


ONE_D = [
    ("bimodal_default", toy.bimodal_1d()),
    ("bimodal_skewed", toy.bimodal_1d(separation=10.0, std=0.2, weight=0.1)),
    ("gaussian", toy.Gaussian([1.5], [[0.09]])),
    ("mixture3", toy.GaussianMixture([[-3.0], [0.0], [5.0]], [0.1, 1.0, 0.5], [0.3, 0.3, 0.4])),
    ("std_normal", toy.standard_gaussian(1)),
]


@pytest.mark.parametrize("law", [c[1] for c in ONE_D], ids=[c[0] for c in ONE_D])
def test_log_prob_integrates_to_one_in_1d(law):
    means = law.means[:, 0].numpy()
    stds = law.eigvals[:, 0].sqrt().numpy()
    lo, hi = (means - 15 * stds).min(), (means + 15 * stds).max()

    def pdf(u):
        return math.exp(float(law.log_prob(torch.tensor([[u]], dtype=torch.float64))[0]))

    total, err = integrate.quad(pdf, lo, hi, points=sorted(means), limit=200, epsabs=1e-12, epsrel=1e-11)
    assert abs(total - 1.0) < 1e-8, (total, err)
    # and the first moment by quadrature matches mean()
    m1, _ = integrate.quad(lambda u: u * pdf(u), lo, hi, points=sorted(means), limit=200, epsabs=1e-11)
    assert abs(m1 - float(law.mean()[0])) < 1e-7


def test_log_prob_integrates_to_one_in_2d():
    """A full-covariance 2-D mixture on a fine grid (trapezoid; the integrand is smooth and
    negligible at the border, so the rule is accurate far beyond the 1e-6 asserted)."""
    rng = np.random.default_rng(4)
    law = toy.GaussianMixture([[-1.0, 0.5], [2.0, -1.0]], np.stack([spd(rng, 2, 0.3, 1.0) for _ in range(2)]),
                              [0.35, 0.65])
    u = torch.linspace(-12.0, 12.0, 801, dtype=torch.float64)
    gx, gy = torch.meshgrid(u, u, indexing="ij")
    p = law.log_prob(torch.stack([gx, gy], -1)).exp().numpy()
    total = integrate.trapezoid(integrate.trapezoid(p, u.numpy(), axis=1), u.numpy())
    assert abs(total - 1.0) < 1e-6


# ---------------------------------------------------------------------------- sampling
LAWS = [
    ("mixture", toy.random_mixture(3, n_components=4, seed=2)),
    ("gaussian", toy.Gaussian([0.0, 1.0], [[1.0, 0.3], [0.3, 2.0]])),
    ("empirical", toy.Empirical([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], [0.2, 0.3, 0.5])),
    ("ring", toy.ring()),
    ("grid", toy.grid()),
    ("bimodal", toy.bimodal_1d()),
    ("std", toy.standard_gaussian(4)),
]
LAW_IDS = [c[0] for c in LAWS]


@pytest.mark.parametrize("law", [c[1] for c in LAWS], ids=LAW_IDS)
def test_sample_reproducible_with_generator(law):
    a = law.sample(500, generator=torch.Generator().manual_seed(42), dtype=torch.float64)
    b = law.sample(500, generator=torch.Generator().manual_seed(42), dtype=torch.float64)
    c = law.sample(500, generator=torch.Generator().manual_seed(43), dtype=torch.float64)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # the generator is advanced: two consecutive draws differ
    g = torch.Generator().manual_seed(42)
    assert not torch.equal(law.sample(500, generator=g), law.sample(500, generator=g))


@pytest.mark.parametrize("law", [c[1] for c in LAWS], ids=LAW_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_dtype_device_shape(law, dtype):
    x = law.sample(7, generator=torch.Generator().manual_seed(0), dtype=dtype, device=torch.device("cpu"))
    assert x.shape == (7, law.dim) and x.dtype == dtype and x.device.type == "cpu"
    assert bool(torch.isfinite(x).all())
    assert law.sample(0).shape == (0, law.dim)
    assert law.sample(3).dtype == torch.get_default_dtype()


def test_empirical_samples_are_points_with_weight_frequencies():
    pts = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [-1.0, -1.0]])
    w = np.array([0.1, 0.2, 0.3, 0.4])
    law = toy.Empirical(pts, w)
    x = law.sample(N_MC, generator=torch.Generator().manual_seed(1), dtype=torch.float64).numpy()
    match = (x[:, None, :] == pts[None]).all(-1)
    assert (match.sum(1) == 1).all(), "every sample must be exactly one of the points"
    counts = match.sum(0)
    se = np.sqrt(N_MC * w * (1 - w))
    assert (np.abs(counts - N_MC * w) <= Z * se).all(), (counts, N_MC * w)


def test_empirical_mean_covariance_and_sample_moments():
    rng = np.random.default_rng(8)
    pts = rng.standard_normal((6, 3)) * 2
    w = rng.dirichlet(np.ones(6))
    law = toy.Empirical(pts, w)
    mu = w @ pts
    cov = np.cov(pts.T, aweights=w, bias=True)
    np.testing.assert_allclose(law.mean().numpy(), mu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(law.covariance().numpy(), cov, rtol=1e-12, atol=1e-12)
    x = law.sample(N_MC, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert_moments_match(x, mu, cov)
    # uniform weights by default
    np.testing.assert_allclose(toy.Empirical(pts).mean().numpy(), pts.mean(0), rtol=1e-12, atol=1e-12)


def test_weights_accepted_within_tolerance_and_default_uniform():
    law = toy.GaussianMixture([[0.0], [1.0], [2.0]], 1.0)
    np.testing.assert_allclose(law.weights.numpy(), np.full(3, 1 / 3), rtol=1e-14)
    law2 = toy.GaussianMixture([[0.0], [1.0]], 1.0, [0.3, 0.7 + 1e-9])
    np.testing.assert_allclose(law2.weights.sum().item(), 1.0, rtol=1e-14)


# ---------------------------------------------------------------------------- named laws
@pytest.mark.parametrize("n_modes,radius,std", [(8, 4.0, 0.05), (3, 1.0, 0.5), (5, 2.5, 0.1)])
def test_ring(n_modes, radius, std):
    law = toy.ring(n_modes, radius, std)
    assert law.dim == 2 and law.n_components == n_modes
    m = law.means.numpy()
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), radius, rtol=1e-13)
    ang = np.sort(np.mod(np.arctan2(m[:, 1], m[:, 0]), 2 * np.pi))
    np.testing.assert_allclose(np.diff(np.r_[ang, ang[0] + 2 * np.pi]), 2 * np.pi / n_modes, rtol=1e-12)
    np.testing.assert_allclose(law.weights.numpy(), 1.0 / n_modes, rtol=1e-14)
    np.testing.assert_allclose(law.covs.numpy(), np.broadcast_to(std**2 * np.eye(2), (n_modes, 2, 2)), rtol=1e-14)
    # closed form for n_modes >= 3: mean 0, covariance (radius^2 / 2 + std^2) I
    np.testing.assert_allclose(law.mean().numpy(), 0.0, atol=1e-13 * radius)
    np.testing.assert_allclose(law.covariance().numpy(), (radius**2 / 2 + std**2) * np.eye(2), rtol=1e-12,
                               atol=1e-12 * radius**2)
    x = law.sample(N_MC, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert_moments_match(x, np.zeros(2), (radius**2 / 2 + std**2) * np.eye(2))


@pytest.mark.parametrize("n,spacing,std", [(5, 2.0, 0.05), (2, 1.0, 0.3), (4, 0.5, 0.1)])
def test_grid(n, spacing, std):
    law = toy.grid(n, spacing, std)
    assert law.dim == 2 and law.n_components == n * n
    axis = (np.arange(n) - (n - 1) / 2) * spacing
    ref = {(float(a), float(b)) for a in axis for b in axis}
    got = {(float(a), float(b)) for a, b in np.round(law.means.numpy(), 12)}
    assert got == {(round(a, 12), round(b, 12)) for a, b in ref}
    var = spacing**2 * (n * n - 1) / 12 + std**2  # discrete uniform + kernel
    np.testing.assert_allclose(law.mean().numpy(), 0.0, atol=1e-13)
    np.testing.assert_allclose(law.covariance().numpy(), var * np.eye(2), rtol=1e-12, atol=1e-13)
    x = law.sample(N_MC, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert_moments_match(x, np.zeros(2), var * np.eye(2))


@pytest.mark.parametrize("sep,std,w", [(4.0, 0.5, 0.5), (6.0, 1.0, 0.2), (1.0, 0.1, 0.9)])
def test_bimodal_1d(sep, std, w):
    law = toy.bimodal_1d(sep, std, w)
    mean = w * (-sep / 2) + (1 - w) * sep / 2
    var = std**2 + sep**2 * w * (1 - w)
    np.testing.assert_allclose(law.mean().numpy(), [mean], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(law.covariance().numpy(), [[var]], rtol=1e-13)
    xs = np.linspace(-5, 5, 41)
    ref = np.logaddexp(math.log(w) - 0.5 * ((xs + sep / 2) / std) ** 2,
                       math.log(1 - w) - 0.5 * ((xs - sep / 2) / std) ** 2) - math.log(std * math.sqrt(2 * math.pi))
    got = law.log_prob(torch.as_tensor(xs[:, None])).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)
    x = law.sample(N_MC, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    assert_moments_match(x, [mean], [[var]])


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_standard_gaussian(dim):
    law = toy.standard_gaussian(dim)
    np.testing.assert_array_equal(law.mean().numpy(), np.zeros(dim))
    np.testing.assert_allclose(law.covariance().numpy(), np.eye(dim), rtol=1e-15)
    x = torch.randn(10, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = -0.5 * (x**2).sum(-1) - 0.5 * dim * math.log(2 * math.pi)
    torch.testing.assert_close(law.log_prob(x), ref, rtol=1e-13, atol=1e-13)
    s = law.sample(N_MC, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert_moments_match(s, np.zeros(dim), np.eye(dim))


def test_random_mixture_reproducible_per_seed():
    a = toy.random_mixture(3, n_components=5, seed=123)
    b = toy.random_mixture(3, n_components=5, seed=123)
    for attr in ("means", "covs", "weights"):
        assert torch.equal(getattr(a, attr), getattr(b, attr)), attr
    # and independent of the global torch RNG state
    torch.manual_seed(0)
    c = toy.random_mixture(3, n_components=5, seed=123)
    torch.rand(17)
    d = toy.random_mixture(3, n_components=5, seed=123)
    assert torch.equal(c.means, d.means) and torch.equal(c.covs, a.covs)


def test_random_mixture_differs_across_seeds():
    laws = [toy.random_mixture(2, n_components=3, seed=s) for s in range(6)]
    for i in range(len(laws)):
        for j in range(i + 1, len(laws)):
            assert not torch.allclose(laws[i].means, laws[j].means)
            assert not torch.allclose(laws[i].covs, laws[j].covs)
            assert not torch.allclose(laws[i].weights, laws[j].weights)


@given(dim=st.integers(1, 6), k=st.integers(1, 6), seed=st.integers(0, 10**6),
       lo=st.floats(0.05, 1.0), ratio=st.floats(1.0, 5.0))
def test_random_mixture_covariances_spd_and_in_std_range(dim, k, seed, lo, ratio):
    hi = lo * ratio
    law = toy.random_mixture(dim, n_components=k, seed=seed, std_range=(lo, hi))
    assert law.means.shape == (k, dim) and law.covs.shape == (k, dim, dim) and law.dim == dim
    covs = law.covs.numpy()
    np.testing.assert_allclose(covs, np.swapaxes(covs, -1, -2), rtol=0, atol=1e-12 * hi**2)
    eig = np.linalg.eigvalsh(covs)
    assert (eig > 0).all()
    assert (eig >= lo**2 * (1 - 1e-9)).all() and (eig <= hi**2 * (1 + 1e-9)).all(), (eig, lo, hi)
    np.linalg.cholesky(covs)  # raises if not PD
    w = law.weights.numpy()
    assert (w > 0).all() and abs(w.sum() - 1.0) < 1e-12
    # log_prob agrees with SciPy on the stored parameters
    x = np.random.default_rng(seed).standard_normal((5, dim)) * 3
    np.testing.assert_allclose(law.log_prob(torch.as_tensor(x)).numpy(),
                               ref_mixture_logpdf(x, law.means, covs, w), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("law", [c[1] for c in CASES] + [toy.ring(), toy.grid(3), toy.random_mixture(4, seed=3)],
                         ids=CASE_IDS + ["ring", "grid", "random"])
def test_all_covariances_spd(law):
    covs = law.covs.numpy()
    np.testing.assert_allclose(covs, np.swapaxes(covs, -1, -2), atol=1e-12)
    assert (np.linalg.eigvalsh(covs) > 0).all()
    total = law.covariance().numpy()
    np.testing.assert_allclose(total, total.T, atol=1e-12)
    assert (np.linalg.eigvalsh(total) > 0).all()


def test_toy_laws_have_exact_fields():
    """Every toy law is accepted by exact_field (Gaussian kernel) with a matching dim."""
    for _, law in LAWS:
        f = fs.exact_field(fs.EDM(), law)
        assert f.dim == law.dim
