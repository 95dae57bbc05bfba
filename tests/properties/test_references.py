"""flowsolve.testing.references against independent derivations: Monte Carlo of the forward
process, mpmath, scipy quadrature, our own ODE solves and closed forms written out here."""

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

import flowsolve as fs
from flowsolve.testing import references as ref

MIX1 = fs.toy.GaussianMixture([[-1.0], [1.5]], [0.3, 0.6], weights=[0.3, 0.7])
SHARP1 = fs.toy.GaussianMixture([[-2.0], [2.0]], [0.01, 0.01])
POINTS1 = fs.toy.Empirical([[-1.0], [0.2], [2.0]], weights=[0.2, 0.5, 0.3])
_A = torch.tensor([[1.0, 0.3, -0.2], [0.3, 0.5, 0.1], [-0.2, 0.1, 0.8]], dtype=torch.float64)
MIX3 = fs.toy.GaussianMixture([[0.0, 1.0, -1.0], [1.0, -0.5, 0.5]], torch.stack([_A, 0.5 * _A @ _A]),
                              weights=[0.4, 0.6])
POINTS3 = fs.toy.Empirical([[0.0, 1.0, 2.0], [-1.0, 0.5, 0.0], [1.0, -1.0, 1.0]])
DIR3 = [1.0, -2.0, 0.5]  # unnormalised on purpose


def _unit(u):
    u = np.asarray(u, dtype=np.float64)
    return u / np.linalg.norm(u)


# -- marginal_1d ----------------------------------------------------------------------------------
@pytest.mark.parametrize("process, law, t, direction", [
    (fs.EDM(0.002, 80.0), MIX1, 0.7, None),
    (fs.VP(), MIX3, 0.4, DIR3),
    (fs.VE(0.01, 50.0), POINTS3, 0.3, DIR3),
    (fs.Poisson(0.002, 80.0), POINTS1, 0.3, None),
    (fs.PFGMPP(1.0, 0.002, 80.0), MIX1, 0.5, None),
    (fs.PFGMPP(4.0, 0.002, 80.0), POINTS3, 0.8, DIR3),
    (fs.PFGMPP(4.0, 0.002, 80.0), MIX3, 0.6, DIR3),
    (fs.PFGMPP(1e4, 0.002, 80.0), MIX3, 0.6, DIR3),
], ids=["edm-mix1", "vp-mix3", "ve-points3", "poisson-points1", "D1-mix1", "D4-points3", "D4-mix3", "D1e4-mix3"])
def test_marginal_cdf_matches_monte_carlo(process, law, t, direction):
    gen = torch.Generator().manual_seed(7)
    n = 4000
    x = process.perturb(law.sample(n, generator=gen, dtype=torch.float64), t, generator=gen)
    u = np.ones(1) if direction is None else _unit(direction)
    projected = x.reshape(n, -1).numpy() @ u
    marginal = ref.marginal_1d(process, law, t, direction)
    assert stats.kstest(projected, marginal.cdf).pvalue > 1e-3


MARGINALS = {
    "gauss-mix": ref.marginal_1d(fs.EDM(0.002, 80.0), MIX1, 0.4),
    "D0.5-mix": ref.marginal_1d(fs.PFGMPP(0.5, 0.002, 80.0), MIX1, 0.4),
    "D4-points": ref.marginal_1d(fs.PFGMPP(4.0, 0.002, 80.0), POINTS1, 0.4),
    "D1e4-mix3": ref.marginal_1d(fs.PFGMPP(1e4, 0.002, 80.0), MIX3, 0.4, DIR3),
}


@pytest.mark.parametrize("name", list(MARGINALS))
def test_pdf_is_derivative_of_cdf_and_tails_sum_to_one(name):
    m = MARGINALS[name]
    x = np.linspace(-4.0, 5.0, 91)
    h = 1e-4
    # fourth-order central difference: truncation ~h^4, rounding ~1e-16/h
    deriv = (8 * (m.cdf(x + h) - m.cdf(x - h)) - (m.cdf(x + 2 * h) - m.cdf(x - 2 * h))) / (12 * h)
    np.testing.assert_allclose(deriv, m.pdf(x), rtol=0, atol=1e-10)
    wide = np.concatenate([np.linspace(-60, 60, 121), [-1e8, 1e8]])
    np.testing.assert_allclose(m.cdf(wide) + np.exp(m.logsf(wide)), 1.0, rtol=0, atol=5e-16)
    assert np.all(m.logcdf(wide) <= 0) and np.all(m.logsf(wide) <= 0)
    assert np.all(np.diff(m.logcdf(wide[:-2])) >= 0)


def test_logcdf_of_normal_mixture_far_in_the_tails_matches_mpmath():
    m = ref.marginal_1d(fs.VP(), MIX3, 0.3, DIR3)
    lo, hi = np.min(m.loc - 40 * m.sd), np.max(m.loc + 40 * m.sd)

    @mpmath.workdps(50)
    def mp_cdf(x, upper):
        return mpmath.log(sum(mpmath.mpf(w) * mpmath.ncdf((-1 if upper else 1) * (mpmath.mpf(x) - mu) / sd)
                              for w, mu, sd in zip(m.weights, m.loc, m.sd)))

    assert abs(m.logcdf(np.array([lo]))[0] / float(mp_cdf(lo, False)) - 1) < 1e-13
    assert abs(m.logsf(np.array([hi]))[0] / float(mp_cdf(hi, True)) - 1) < 1e-13
    assert float(mp_cdf(lo, False)) < -700  # beyond what log(cdf) could give


@pytest.mark.parametrize("D", [1.0, 4.0, 1e4])
def test_student_t_logcdf_far_in_the_tail_matches_mpmath(D):
    # points under PFGM++ give shifted, scaled Student-t's: P(T <= -c) = I_{D/(D+c^2)}(D/2, 1/2) / 2
    sigma = 0.5
    m = ref.marginal_1d(fs.PFGMPP(D, 0.002, 80.0), POINTS1, sigma)

    @mpmath.workdps(40)
    def mp_logcdf(x):
        total = 0
        for w, y in zip(POINTS1.weights.tolist(), POINTS1.points[:, 0].tolist()):
            c = (mpmath.mpf(x) - y) / sigma
            tail = mpmath.betainc(D / 2, 0.5, 0, D / (D + c * c), regularized=True) / 2
            total += w * (tail if c < 0 else 1 - tail)
        return float(mpmath.log(total))

    # closed form (stdtr) where it is representable, quadrature past its underflow (-1e300; D = 1e4 at -21)
    for x in [-1.0 - 40 * sigma, -1e6, -1e300, 0.5, 3.0]:
        assert abs(m.logcdf(np.array([x]))[0] / mp_logcdf(x) - 1) < 1e-12, x
    np.testing.assert_allclose(m.cdf(np.linspace(-3, 3, 13)), sum(
        w * stats.t.cdf((np.linspace(-3, 3, 13) - y) / sigma, D)
        for w, y in zip(POINTS1.weights.tolist(), POINTS1.points[:, 0].tolist())), rtol=1e-13, atol=0)


def test_student_t_marginal_tends_to_the_gaussian_one_like_1_over_D():
    # t_D = N(0, 1) + O(1/D), so D * max|F_D - F_gauss| -> a constant; a quadrature error of the
    # concentrated mixing variable (sd sqrt(2/D)) at large D would break the pattern
    x = np.linspace(-5.0, 5.0, 41)
    gauss = ref.marginal_1d(fs.EDM(0.002, 80.0), MIX1, 0.5).cdf(x)
    scaled = [D * np.max(np.abs(ref.marginal_1d(fs.PFGMPP(D, 0.002, 80.0), MIX1, 0.5).cdf(x) - gauss))
              for D in (1e4, 1e6, 1e8)]
    assert abs(scaled[1] / scaled[0] - 1) < 1e-3 and abs(scaled[2] / scaled[1] - 1) < 1e-5


@pytest.mark.parametrize("D", [0.5, 1.0, 2.0, 100.0])
def test_pfgm_gaussian_data_cdf_matches_quadrature_over_t(D):
    # u.x_t = s (Y + sigma T), Y ~ N(m, v), T ~ t_D:  F(c) = E_T[Phi((c/s - m - sigma T) / sqrt(v))]
    process, t, m_, v = fs.PFGMPP(D, 0.002, 80.0), 0.6, 0.5, 0.3**2
    law = fs.toy.Gaussian([m_], [[v]])
    marginal = ref.marginal_1d(process, law, t)
    for c in [-30.0, -3.0, -0.4, 0.5, 1.2, 6.0]:
        def integrand(T):
            return stats.t.pdf(T, D) * special.ndtr((c - m_ - t * T) / math.sqrt(v))
        kink = (c - m_) / t  # where the normal factor switches from 0 to 1
        pieces = [(-np.inf, kink - 5.0), (kink - 5.0, kink + 5.0), (kink + 5.0, np.inf)]
        quad = sum(integrate.quad(integrand, a, b, epsabs=1e-15, epsrel=1e-13, limit=400)[0] for a, b in pieces)
        assert abs(marginal.cdf(np.array([c]))[0] - quad) < 1e-10, c


@pytest.mark.parametrize("name", list(MARGINALS))
def test_ppf_log_inverts_logcdf_and_logsf(name):
    m = MARGINALS[name]
    # D = 0.5: P(X < x) ~ |x|^-0.5, so log-probabilities below ~ -350 have no float64 quantile
    logq = np.concatenate([-np.logspace(2.4 if name == "D0.5-mix" else 3, -1, 30), [math.log(0.5)]])
    for upper, fn in [(False, m.logcdf), (True, m.logsf)]:
        x = m.ppf_log(logq, upper=upper)
        np.testing.assert_allclose(fn(x), logq, rtol=1e-12)
    x0 = np.linspace(-6, 6, 25)
    lc, ls = m.logcdf(x0), m.logsf(x0)
    back = np.where(lc <= ls, m.ppf_log(lc, upper=False), m.ppf_log(ls, upper=True))
    np.testing.assert_allclose(back, x0, rtol=1e-12, atol=1e-13)
    q = np.array([0.0, 1e-10, 0.3, 0.5, 0.9, 1.0])
    np.testing.assert_allclose(m.cdf(m.ppf(q))[1:-1], q[1:-1], rtol=1e-12)
    assert m.ppf(q)[0] == -np.inf and m.ppf(q)[-1] == np.inf


# -- flow maps ----------------------------------------------------------------------------------
GAUSS1 = fs.toy.Gaussian([0.3], [[0.5]])


@pytest.mark.parametrize("process", [fs.EDM(0.002, 80.0), fs.VP(), fs.SubVP(), fs.VE(0.01, 50.0)],
                         ids=["edm", "vp", "subvp", "ve"])
def test_flow_map_1d_of_gaussian_equals_closed_form(process):
    x = np.linspace(-40.0, 40.0, 41)
    a, b = process.t_min, process.t_max
    for t_from, t_to in [(a, b), (b, a), (0.5 * (a + b), a), (a + 0.1 * (b - a), a + 0.3 * (b - a))]:
        got = ref.flow_map_1d(process, GAUSS1, x, t_from, t_to)
        closed = ref.gaussian_flow_map(process, GAUSS1, torch.tensor(x)[:, None], t_from, t_to).numpy()[:, 0]
        np.testing.assert_allclose(got, closed, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("process, law", [(fs.EDM(0.002, 80.0), MIX1), (fs.PFGMPP(1.0, 0.002, 80.0), MIX1),
                                          (fs.PFGMPP(4.0, 0.002, 80.0), POINTS1), (fs.EDM(0.002, 80.0), SHARP1)],
                         ids=["edm-mix", "D1-mix", "D4-points", "edm-sharp"])
def test_flow_map_1d_carries_quantiles_and_composes_to_identity(process, law):
    q = np.array([1e-12, 1e-3, 0.1, 0.3, 0.45, 0.55, 0.8, 0.999, 1 - 1e-12])
    src, dst = ref.marginal_1d(process, law, 1.5), ref.marginal_1d(process, law, process.t_min)
    mapped = ref.flow_map_1d(process, law, src.ppf(q)[:, None], 1.5, process.t_min)
    assert mapped.shape == (q.size, 1)
    np.testing.assert_allclose(mapped[:, 0], dst.ppf(q), rtol=1e-12)
    back = ref.flow_map_1d(process, law, mapped[:, 0], process.t_min, 1.5)
    np.testing.assert_allclose(back, src.ppf(q), rtol=1e-11)


def _posterior_mean_gaussian_mixture(x, sigma, means, variances, weights):
    """E[y | y + sigma n = x] for a 1-D normal mixture (written out independently of flowsolve)."""
    total = variances + sigma**2
    log_r = np.log(weights) - 0.5 * np.log(total) - 0.5 * (x[:, None] - means) ** 2 / total
    r = np.exp(log_r - log_r.max(axis=1, keepdims=True))
    r /= r.sum(axis=1, keepdims=True)
    return np.sum(r * (means + variances / total * (x[:, None] - means)), axis=1)


def _posterior_mean_points_student_t(x, sigma, D, points, weights):
    """PFGM++ (N = 1): weights of y_i ∝ w_i (|x - y_i|^2 + sigma^2 D)^(-(1+D)/2)."""
    log_r = np.log(weights) - 0.5 * (1 + D) * np.log((x[:, None] - points) ** 2 + sigma**2 * D)
    r = np.exp(log_r - log_r.max(axis=1, keepdims=True))
    return (r * points).sum(axis=1) / r.sum(axis=1)


@pytest.mark.parametrize("case", ["mix", "sharp", "points-D1", "points-D4"])
def test_flow_map_1d_matches_a_tight_ode_solve(case):
    # dx/dsigma = (x - D(x; sigma)) / sigma (s = 1), solved with DOP853 at rtol 1e-12
    if case in ("mix", "sharp"):
        law = MIX1 if case == "mix" else SHARP1
        process = fs.EDM(0.002, 80.0)
        means, variances, weights = law.means[:, 0].numpy(), law.covs[:, 0, 0].numpy(), law.weights.numpy()

        def denoise(x, sigma):
            return _posterior_mean_gaussian_mixture(x, sigma, means, variances, weights)
    else:
        D = 1.0 if case == "points-D1" else 4.0
        law, process = POINTS1, fs.PFGMPP(D, 0.002, 80.0)

        def denoise(x, sigma):
            return _posterior_mean_points_student_t(x, sigma, D, POINTS1.points[:, 0].numpy(),
                                                    POINTS1.weights.numpy())
    sigma_from, sigma_to = 2.0, (0.002 if case == "sharp" else 0.05)
    src = ref.marginal_1d(process, law, sigma_from)
    # not the median: under the sharp mixture it maps into the gap, where the map is ill-conditioned
    x0 = np.concatenate([src.ppf(np.array([0.02, 0.1, 0.25, 0.4, 0.6, 0.75, 0.9, 0.98])),
                         src.ppf_log(np.array([-60.0]), upper=False),
                         src.ppf_log(np.array([-60.0]), upper=True)])
    sol = integrate.solve_ivp(lambda s, x: (x - denoise(x, s)) / s, (sigma_from, sigma_to), x0, method="DOP853",
                              rtol=1e-12, atol=1e-13)
    exact = ref.flow_map_1d(process, law, x0, sigma_from, sigma_to)
    np.testing.assert_allclose(exact, sol.y[:, -1], rtol=1e-8, atol=1e-8)
    # and forward in time (t_from < t_to)
    sol_fwd = integrate.solve_ivp(lambda s, x: (x - denoise(x, s)) / s, (sigma_to, sigma_from), exact,
                                  method="DOP853", rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ref.flow_map_1d(process, law, exact, sigma_to, sigma_from), sol_fwd.y[:, -1],
                               rtol=1e-8, atol=1e-8)


def test_gaussian_flow_map_matches_vp_ode_solve():
    process = fs.VP(0.1, 20.0, 1e-3, 1.0)
    mu = np.array([0.5, -1.0])
    cov = np.array([[1.0, 0.6], [0.6, 0.5]])
    law = fs.toy.Gaussian(mu, cov)
    b0, b1 = 0.1, 20.0

    def velocity(t, flat):  # dx/dt = -beta/2 x - beta/2 score, score = -C_t^-1 (x - alpha mu)
        beta = b0 + t * (b1 - b0)
        alpha = math.exp(-0.25 * t * t * (b1 - b0) - 0.5 * t * b0)
        c_t = alpha**2 * cov + (1 - alpha**2) * np.eye(2)
        x = flat.reshape(-1, 2)
        score = -np.linalg.solve(c_t, (x - alpha * mu).T).T
        return (-0.5 * beta * x - 0.5 * beta * score).reshape(-1)

    x0 = np.array([[0.0, 0.0], [1.0, -2.0], [-3.0, 0.5]])
    for t_from, t_to in [(0.9, 0.01), (0.01, 0.6)]:
        sol = integrate.solve_ivp(velocity, (t_from, t_to), x0.reshape(-1), method="DOP853", rtol=1e-12, atol=1e-13)
        got = ref.gaussian_flow_map(process, law, torch.tensor(x0), t_from, t_to)
        np.testing.assert_allclose(got.numpy(), sol.y[:, -1].reshape(-1, 2), rtol=1e-9, atol=1e-9)


def test_gaussian_flow_map_keeps_dtype_and_event_shape():
    law = fs.toy.Gaussian([0.5, -1.0], [0.3, 2.0], event_shape=(1, 2))
    x = torch.randn(5, 1, 2, generator=torch.Generator().manual_seed(0))
    out = ref.gaussian_flow_map(fs.EDM(0.002, 80.0), law, x, 3.0, 0.5)
    assert out.shape == x.shape and out.dtype == torch.float32
    back = ref.gaussian_flow_map(fs.EDM(0.002, 80.0), law, out.double(), 0.5, 3.0)
    np.testing.assert_allclose(back.numpy(), x.double().numpy(), rtol=1e-6, atol=1e-6)


# -- Gaussian closed forms ------------------------------------------------------------------------------
@pytest.mark.parametrize("process, law, t", [(fs.VP(), MIX3, 0.3), (fs.VE(0.01, 50.0), POINTS3, 0.4),
                                             (fs.SubVP(), GAUSS1, 0.5)], ids=["vp-mix3", "ve-points3", "subvp-g1"])
def test_gaussian_marginal_matches_monte_carlo(process, law, t):
    marginal = ref.gaussian_marginal(process, law, t)
    assert isinstance(marginal, fs.toy.GaussianMixture) and marginal.event_shape == law.event_shape
    np.testing.assert_array_equal(marginal.weights.numpy(), law.weights.numpy())
    n = 20000
    gen = torch.Generator().manual_seed(3)
    x = process.perturb(law.sample(n, generator=gen, dtype=torch.float64), t, generator=gen).reshape(n, -1).numpy()
    mean, cov = marginal.mean().reshape(-1).numpy(), marginal.covariance().numpy()
    centred = x - x.mean(0)
    se_mean = x.std(0) / math.sqrt(n)
    assert np.all(np.abs(x.mean(0) - mean) < 5 * se_mean)
    products = centred[:, :, None] * centred[:, None, :]
    se_cov = products.std(0) / math.sqrt(n)
    assert np.all(np.abs(products.mean(0) - cov) < 5 * se_cov + 1e-12)


def test_gaussian_kl_against_monte_carlo_and_closed_forms():
    m0, m1 = np.array([0.0, 1.0, -0.5]), np.array([0.3, 0.5, 0.0])
    c0, c1 = _A.numpy(), 0.5 * (_A @ _A).numpy() + 0.2 * np.eye(3)
    kl = ref.gaussian_kl(m0, c0, m1, c1)
    samples = np.random.default_rng(0).multivariate_normal(m0, c0, size=20000)
    log_ratio = stats.multivariate_normal(m0, c0).logpdf(samples) - stats.multivariate_normal(m1, c1).logpdf(samples)
    assert abs(kl - log_ratio.mean()) < 5 * log_ratio.std() / math.sqrt(samples.shape[0])
    assert ref.gaussian_kl(m0, c0, m0, c0) == 0.0
    assert ref.gaussian_kl(torch.tensor(m1), torch.tensor(c1), m1, c1) == 0.0
    # 1-D: log(s1/s0) + (s0^2 + (m0 - m1)^2) / (2 s1^2) - 1/2
    s0, s1 = 0.7, 1.3
    one_d = math.log(s1 / s0) + (s0**2 + 0.4**2) / (2 * s1**2) - 0.5
    assert abs(ref.gaussian_kl([0.1], [[s0**2]], [0.5], [[s1**2]]) - one_d) < 1e-15
    # nearly equal Gaussians: second-order formula KL ~ (eps^2 / 2) * N / 2 for cov1 = (1 + eps) cov0
    eps = 1e-6
    assert abs(ref.gaussian_kl(m0, c0, m0, (1 + eps) * c0) / (3 * eps**2 / 4) - 1) < 1e-5


def test_prior_kl_decreases_and_has_the_stated_asymptotics():
    law = fs.toy.Gaussian([1.0, -2.0], [[1.0, 0.3], [0.3, 0.5]])
    ve = [ref.prior_kl(fs.VE(0.01, s), law) for s in (5.0, 10.0, 50.0, 1000.0)]
    assert all(a > b > 0 for a, b in zip(ve, ve[1:]))
    vp = [ref.prior_kl(fs.VP(0.1, b), law) for b in (2.0, 5.0, 10.0, 20.0)]
    assert all(a > b > 0 for a, b in zip(vp, vp[1:]))
    # against gaussian_kl with the matrices written out (VP at t_max)
    process = fs.VP(0.1, 5.0)
    s, sig = float(process.scale(1.0)), float(process.sigma(1.0))
    cov = law.covs[0].numpy()
    full = ref.gaussian_kl(s * law.means[0].numpy(), s * s * (cov + sig**2 * np.eye(2)), np.zeros(2),
                           process.prior_std**2 * np.eye(2))
    assert abs(ref.prior_kl(process, law) / full - 1) < 1e-12
    # EDM, mu != 0: KL sigma_max^2 -> |mu|^2 / 2 with an O(sigma_max^-2) relative error
    mu_sq, tr_sq = 5.0, float(np.trace(cov @ cov))
    errors = [abs(ref.prior_kl(fs.EDM(0.002, s), law) * s**2 / (mu_sq / 2) - 1) for s in (10.0, 100.0, 1000.0)]
    assert errors[0] > 50 * errors[1] > 2500 * errors[2]
    assert abs(errors[2] / (tr_sq / (2 * mu_sq * 1000.0**2)) - 1) < 1e-3
    # mu = 0: KL sigma_max^4 -> tr(S^2) / 4
    centred = fs.toy.Gaussian(np.zeros(2), cov)
    assert abs(ref.prior_kl(fs.EDM(0.002, 1e3), centred) * 1e12 / (tr_sq / 4) - 1) < 1e-5


# -- optimal-transport Lipschitz constant ------------------------------------------------------
def test_ot_lipschitz_of_a_gaussian_is_its_std_and_of_a_scale_mixture_matches_brute_force():
    marginal = ref.marginal_1d(fs.EDM(0.002, 80.0), GAUSS1, 0.7)
    lip, z = ref.ot_lipschitz_1d(marginal)
    assert abs(lip / math.sqrt(0.5 + 0.7**2) - 1) < 1e-14 and abs(z) < 1e-2  # T_OT' = std everywhere
    # a scale mixture: T_OT' tends to the wider sd in the tails, but peaks above it in between
    sds = [math.sqrt(1.0 + 0.002**2), math.sqrt(4.0 + 0.002**2)]
    lip, z = ref.ot_lipschitz_1d(ref.marginal_1d(fs.EDM(0.002, 80.0), fs.toy.GaussianMixture([[0.0], [0.0]],
                                                                                          [1.0, 2.0]), 0.002))
    assert lip > sds[1] and math.isfinite(z)
    assert abs(lip / _brute_force_lipschitz([0.0, 0.0], sds, [0.5, 0.5]) - 1) < 1e-9


@mpmath.workdps(40)
def _brute_force_lipschitz(means, sds, weights):
    """max slope of z -> F^{-1}(Phi(z)) for a normal mixture, F written out here: secants on a dense
    numpy grid find the steepest cell, then mpmath (40 digits) central differences inside it."""
    means, sds, weights = (np.asarray(v, dtype=np.float64) for v in (means, sds, weights))
    x = np.linspace(np.min(means - 8 * sds), np.max(means + 8 * sds), 200_001)
    cdf = sum(w * stats.norm.cdf(x, m, s) for m, s, w in zip(means, sds, weights))
    sf = sum(w * stats.norm.sf(x, m, s) for m, s, w in zip(means, sds, weights))
    z = np.where(cdf < sf, stats.norm.ppf(cdf), -stats.norm.ppf(sf))
    i = int(np.argmax(np.diff(x) / np.diff(z)))

    def z_of(v):
        F = sum(w * mpmath.ncdf((v - m) / s) for m, s, w in zip(means, sds, weights))
        return mpmath.sqrt(2) * mpmath.erfinv(2 * F - 1)

    h = mpmath.mpf(10) ** -15
    centres = mpmath.linspace(mpmath.mpf(x[max(i - 1, 0)]), mpmath.mpf(x[min(i + 2, x.size - 1)]), 61)
    return float(max(2 * h / (z_of(c + h) - z_of(c - h)) for c in centres))


def test_ot_lipschitz_of_a_two_mode_mixture_matches_brute_force_and_grows():
    process = fs.EDM(0.002, 80.0)
    lips = []
    for sd in (0.8, 0.6, 0.5, 0.4):
        law = fs.toy.GaussianMixture([[-2.0], [2.0]], [sd, sd])
        lip, z = ref.ot_lipschitz_1d(ref.marginal_1d(process, law, 0.002))
        total_sd = math.sqrt(sd**2 + 0.002**2)
        assert abs(lip / _brute_force_lipschitz([-2.0, 2.0], [total_sd, total_sd], [0.5, 0.5]) - 1) < 1e-9
        assert abs(z) < 1e-6  # symmetric: the steepest point is the median
        lips.append(lip)
    assert all(a < b for a, b in zip(lips, lips[1:]))
    # very sharp modes: the value overflows but its log does not; at the median z = 0, so
    # log Lip >= log phi(0) - log p(0) = 2^2 / (2 sd^2) + log sd
    sharp = ref.marginal_1d(process, SHARP1, 0.002)
    assert ref.ot_lipschitz_1d(sharp)[0] == math.inf
    log_lip, z = ref.ot_lipschitz_1d(sharp, log=True)
    total_sd = math.sqrt(0.01**2 + 0.002**2)
    assert abs(log_lip - (2.0 / total_sd**2 + math.log(total_sd))) < 1e-9 * log_lip and z == 0.0
    assert ref.ot_lipschitz_1d(ref.marginal_1d(fs.PFGMPP(4.0, 0.002, 80.0), SHARP1, 0.002)) == (math.inf, math.inf)


# -- argument checks ----------------------------------------------------------------------------------
def test_arguments_are_validated():
    edm, pfgm = fs.EDM(0.002, 80.0), fs.PFGMPP(4.0, 0.002, 80.0)
    with pytest.raises(ValueError, match="direction is required"):
        ref.marginal_1d(edm, MIX3, 1.0)
    with pytest.raises(ValueError, match="non-zero"):
        ref.marginal_1d(edm, MIX3, 1.0, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="3 entries"):
        ref.marginal_1d(edm, MIX3, 1.0, [1.0, 0.0])
    with pytest.raises(ValueError, match="non-zero"):
        ref.marginal_1d(edm, MIX3, 1.0, [np.nan, 1.0, 0.0])
    with pytest.raises(ValueError, match=r"t must lie in \[0.002, 80.0\]"):
        ref.marginal_1d(edm, MIX1, 100.0)
    with pytest.raises(ValueError, match="GaussianMixture, Gaussian or Empirical"):
        ref.marginal_1d(edm, torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="law.dim == 1"):
        ref.flow_map_1d(edm, MIX3, np.zeros(3), 1.0, 0.5)
    with pytest.raises(ValueError, match="shape"):
        ref.flow_map_1d(edm, MIX1, np.zeros((3, 2)), 1.0, 0.5)
    with pytest.raises(ValueError, match="t_to must lie"):
        ref.flow_map_1d(edm, MIX1, np.zeros(3), 1.0, 0.001)
    with pytest.raises(ValueError, match="t_from must lie"):
        ref.gaussian_flow_map(edm, GAUSS1, torch.zeros(3, 1), 81.0, 1.0)
    for fn, args in [(ref.gaussian_flow_map, (GAUSS1, torch.zeros(3, 1), 1.0, 0.5)),
                     (ref.gaussian_marginal, (GAUSS1, 1.0)), (ref.prior_kl, (GAUSS1,))]:
        with pytest.raises(ValueError, match="Gaussian kernel only"):
            fn(pfgm, *args)
    with pytest.raises(ValueError, match="needs Gaussian data"):
        ref.gaussian_flow_map(edm, MIX1, torch.zeros(3, 1), 1.0, 0.5)
    with pytest.raises(ValueError, match="needs Gaussian data"):
        ref.prior_kl(edm, POINTS1)
    with pytest.raises(ValueError, match="x must be a floating tensor"):
        ref.gaussian_flow_map(edm, GAUSS1, torch.zeros(3, 2), 1.0, 0.5)
    with pytest.raises(ValueError, match="cov1 must be symmetric positive definite"):
        ref.gaussian_kl([0.0, 0.0], np.eye(2), [0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="shapes must agree"):
        ref.gaussian_kl([0.0], np.eye(2), [0.0, 0.0], np.eye(2))
    m = MARGINALS["gauss-mix"]
    with pytest.raises(ValueError, match="logq must hold log-probabilities"):
        m.ppf_log(np.array([0.1]))
    with pytest.raises(ValueError, match="upper must be True or False"):
        m.ppf_log(np.array([-1.0]), upper="yes")
    with pytest.raises(ValueError, match="q must hold probabilities"):
        m.ppf(np.array([1.5]))
    with pytest.raises(ValueError, match="marginal must be a Marginal1D"):
        ref.ot_lipschitz_1d(MIX1)
