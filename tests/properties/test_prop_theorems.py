"""The seed's theorems as properties: the D -> infinity limit of PFGM++, convergence of the
perturbed marginal to the prior, and the push-forward Lipschitz bound with its 1-D
optimal-transport corollary."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flowsolve as fs
import flowsolve.testing as ft
from flowsolve.testing import references
from flowsolve.testing.strategies import processes, toy_laws

EXAMPLES = settings().max_examples


def few(k: int = 5) -> settings:
    """A fifth of the profile's examples (at least 3) for properties that solve ODEs."""
    return settings(max_examples=max(3, EXAMPLES // k))


def points(law, n: int, seed: int, spread: float = 2.0) -> torch.Tensor:
    """Evaluation points around the data: data draws plus seeded normal offsets."""
    g = torch.Generator().manual_seed(seed)
    return law.sample(n, generator=g, dtype=torch.float64) + spread * torch.randn(n, *law.event_shape, generator=g, dtype=torch.float64)


@given(law=toy_laws(dims=(1, 4), kinds=("empirical", "mixture")), log_sigma=st.floats(-1.0, 1.0),
       seed=st.integers(0, 3))
@few(2)
def test_d_limit_of_the_poisson_field(law, log_sigma, seed):
    """PFGM++ Theorem 4.1 (Xu et al. 2023), with the sign the seed text drops:
    sqrt(D) E_x/E_r -> -sigma grad log p_sigma as D -> infinity at r = sigma sqrt(D), at rate 1/D."""
    result = ft.check_d_limit(law, points(law, 4, seed), 10.0**log_sigma)
    assert result, result
    if result.value > 1e-12:  # one data point: both kernels give the same field, no rate to see
        assert 0.8 < result.details["rate"] < 1.2  # O(1/D), not faster: the limit is not reached early


@given(law=toy_laws(dims=(1, 4), kinds=("empirical", "mixture")), log_sigma=st.floats(-1.0, 1.0))
@few(2)
def test_the_sign_dropped_identity_fails(law, log_sigma):
    """The seed's statement (no minus sign) is false: the check rejects it and says so."""

    def sign_dropped(x, sigma, D):
        return -fs.exact_field(fs.PFGMPP(D=D), law).poisson_field(x, sigma)

    result = ft.check_d_limit(law, points(law, 4, 0), 10.0**log_sigma, poisson_field=sign_dropped)
    assert not result
    assert "minus sign is dropped" in result.explanation


@given(law=toy_laws(dims=(1, 3), kinds=("empirical",)), seed=st.integers(0, 3))
@few()
def test_d_limit_of_trajectories(law, seed):
    """PFGM++ Theorem 4.1, second part: from the same start point the PFGM++ ODE trajectory
    matches the diffusion ODE's as D -> infinity (end-point gap O(1/D))."""
    x_init = 80.0 * torch.randn(6, *law.event_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    result = ft.check_d_limit_trajectory(law, x_init, Ds=(1e2, 1e3, 1e4), steps=16)
    assert result, result


@given(process=processes(kinds=("VE", "VP", "SubVP", "EDM", "Diffusion", "LinearSDE")),
       law=toy_laws(dims=(1, 4), kinds=("gaussian",)))
@settings(max_examples=EXAMPLES)
def test_prior_kl_closed_form_matches_monte_carlo(process, law):
    """KL(N(s mu, s^2(Sigma + sigma^2 I)) || N(0, prior_std^2 I)) in closed form equals the
    Monte Carlo estimate E[log p_t_max - log prior] (the same law written as a two-component
    mixture takes the estimator's path), within 5 standard errors."""
    closed, _ = ft.prior_kl(process, law)
    twice = fs.toy.GaussianMixture(law.means.repeat(2, 1), law.covs.repeat(2, 1, 1), [0.5, 0.5])
    estimate, se = ft.prior_kl(process, twice, n=4096)
    assert abs(estimate - closed) <= 5 * se + 1e-12 + 1e-9 * closed


@given(kind=st.sampled_from(["VE", "EDM", "VP", "SubVP"]), law=toy_laws(dims=(1, 4), kinds=("gaussian",)))
def test_forward_marginal_converges_to_the_gaussian_prior(kind, law):
    """score_sde's prior limit: KL(p_t_max || prior) falls monotonically to 0 as sigma_max
    (VE, EDM) or beta_max (VP, sub-VP) grows, like sigma(t_max)^-2 (sigma(t_max)^-4 for a
    centred law) once sigma(t_max) dominates the data."""
    family = {"VE": lambda a: fs.VE(sigma_max=a), "EDM": lambda a: fs.EDM(sigma_max=a),
              "VP": lambda a: fs.VP(beta_max=a / 4), "SubVP": lambda a: fs.SubVP(beta_max=a / 4)}[kind]
    # KL ~ |mu|^2 / (2 sigma^2) + tr(C^2) / (4 sigma^4): the rate is -2 or -4 where one term dominates
    mean_term = float(law.mean().square().sum()) / 2
    variance_term = float(torch.trace(law.covariance() @ law.covariance())) / (4 * 40.0**2)
    expected = -2.0 if mean_term > 100 * variance_term else -4.0 if mean_term < variance_term / 100 else None
    settled = kind in ("VE", "EDM")  # VP's sigma(t_max) grows like exp(beta_max / 4): far past the data
    result = ft.check_prior_convergence([family(a) for a in (40.0, 80.0, 160.0)], law, tolerance=1e-2,
                                        expected_rate=expected if settled else None, rate_tolerance=0.3)
    assert result, result


@given(log_D=st.floats(0.0, 4.0), law=toy_laws(dims=(1, 3), kinds=("empirical",)))
@few()
def test_pfgmpp_marginal_converges_to_its_prior(log_D, law):
    """PFGM++ Theorem 1: as r_max = sigma_max sqrt(D) grows, p_r_max tends to the kernel prior
    prod r_max^D / (||x||^2 + r_max^2)^((N+D)/2) (estimated KL with standard errors)."""
    result = ft.check_prior_convergence([fs.PFGMPP(D=10.0**log_D, sigma_max=s) for s in (10.0, 40.0, 160.0)], law,
                                        n=2048)
    assert result, result


@given(process=processes(), law=toy_laws(dims=(1, 1), kinds=("mixture", "gaussian")), frac=st.floats(0.05, 1.0))
@few(2)
def test_one_dimensional_flow_map_is_the_optimal_transport_map(process, law, frac):
    """In 1-D the probability-flow map is monotone, hence the optimal-transport map between the
    marginals: x(t_min) = F_t_min^-1(F_t(x(t))) (the seed's 1-D corollary). An adaptive solve at
    tight tolerance lands on it, sharp modes included. (PFGM++ mixtures need the quadrature
    field, about 100x slower, so they are drawn as the Gaussian-kernel processes here and
    covered with point data below.)"""
    if isinstance(process.kernel, fs.processes.StudentTKernel):
        law = fs.toy.Empirical(law.means, law.weights)
    t = process.t_min + frac * (process.t_max - process.t_min)
    result = ft.check_flow_map(process, law, t, process.t_min, n=16, rtol=1e-10, atol=1e-10, tolerance=1e-6)
    assert result, result


# Two distinct modes: a Gaussian law makes the ODE linear, where some methods beat their order
# (midpoint measures 3 on Gaussian data).
bimodal = st.builds(lambda left, gap, s1, s2, w: fs.toy.GaussianMixture([[left], [left + gap]], [s1, s2], [w, 1.0 - w]),
                    st.floats(-2.0, 0.0), st.floats(1.0, 3.0), st.floats(0.3, 0.8), st.floats(0.3, 0.8),
                    st.sampled_from([0.25, 0.5, 0.75]))


@given(law=bimodal, solver=st.sampled_from(
    ["euler", "heun", "midpoint", "ralston", "rk4", "dpm_solver_2", "dpm_solver_3", "dpmpp_2m", "dpmpp_3m", "unipc"]))
@few()
def test_ode_solvers_converge_to_the_ot_map_at_their_order(law, solver):
    """Every fixed-step ODE solver converges to the exact 1-D optimal-transport map at its
    registered order (Karras rho=7 and rho=3 and log-sigma grids, 64 -> 128 -> 256 steps on EDM)."""
    result = ft.check_solver_order(solver, law=law)
    assert result, result


@given(law=toy_laws(dims=(1, 2), kinds=("mixture", "gaussian"), sharp=False), seed=st.integers(0, 3))
@few()
def test_sampling_map_is_at_least_as_steep_as_the_ot_bound(law, seed):
    """The seed's Theorem 1 corollary: any map g pushing N(0, I) to nu has Lip(g) >= Lip(T_OT),
    T_OT = F_nu^-1 o Phi; in 1-D the probability-flow sampling map is T_OT itself (up to the
    solver's error and the gap between p_t_max and the prior), so the two are equal (RK4, 48
    steps, resolves the map's slope to well within 1 %)."""
    result = ft.check_lipschitz_bound(fs.EDM(), law, solver="rk4", steps=48, seed=seed)
    assert result, result
    if law.dim == 1:
        assert abs(result.details["ratio"] - 1.0) < 0.01


@given(separation=st.floats(1.0, 6.0), std=st.floats(0.05, 0.5), factor=st.floats(1.5, 4.0))
def test_ot_lipschitz_grows_as_modes_sharpen(separation, std, factor):
    """Sharper modes need a steeper sampling map: Lip(T_OT) of a two-mode mixture grows when
    the modes' width shrinks at fixed separation (why sharp mixtures are hard at low NFE)."""

    def lip(s):  # log Lip: the constant overflows float64 for sharp, distant modes
        law = fs.toy.GaussianMixture([[-separation / 2], [separation / 2]], [s, s])
        return references.ot_lipschitz_1d(references.marginal_1d(fs.EDM(), law, 0.002), log=True)[0]

    assert lip(std / factor) > lip(std)


def test_published_3m_weight_fails_the_order_check():
    """The reference codes' DPM-Solver++(3M) puts half the needed weight on the second
    difference; the order check catches it (it measures about 2, not 3)."""
    assert ft.check_solver_order("dpmpp_3m")
    result = ft.check_solver_order("dpmpp_3m", variant="published")
    assert not result
    with pytest.raises(AssertionError, match="registered 3"):
        ft.assert_solver_order("dpmpp_3m", variant="published")
    assert math.isfinite(result.value) and result.value < 2.6
