"""Marginal consistency, field identities and sampler laws as properties over the strategies."""

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import flowsolve as fs
import flowsolve.testing as ft
from flowsolve.testing.strategies import processes, times, toy_laws

EXAMPLES = settings().max_examples
ALPHA = 1e-5  # per-example false-alarm rate of the KS checks: rare even over a thorough run


def few(k: int = 5) -> settings:
    return settings(max_examples=max(3, EXAMPLES // k))


def is_poisson(process) -> bool:
    return isinstance(process.kernel, fs.processes.StudentTKernel)


def points(law, n: int, seed: int, spread: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return law.sample(n, generator=g, dtype=torch.float64) + spread * torch.randn(n, *law.event_shape, generator=g, dtype=torch.float64)


@given(data=st.data(), process=processes(), law=toy_laws(dims=(1, 4)))
def test_perturbed_samples_follow_the_marginal(data, process, law):
    """DESIGN.md section 1: x_t = s(t)(y + sigma(t) n), n ~ N(0, I) or the PFGM++ Student-t
    kernel with D degrees of freedom; KS tests on projections against the exact marginal."""
    t = data.draw(times(process))
    result = ft.check_perturb_marginal(process, law, t, n=1000, alpha=ALPHA)
    assert result, result


@given(D=st.floats(1.0, 4.0), law=toy_laws(dims=(1, 3)))
@few(2)
def test_gaussian_noise_for_a_poisson_process_is_detected(D, law):
    """A planted bug, Gaussian noise drawn for a PFGM++ process (D <= 4) instead of its
    Student-t kernel, fails the marginal check at sigma = 5 (the kernel dominates the data)."""
    process, edm = fs.PFGMPP(D=D), fs.EDM()
    result = ft.check_perturb_marginal(process, law, 5.0, n=4000, alpha=ALPHA,
                                       perturb=lambda y, t, generator: edm.perturb(y, t, generator=generator))
    assert not result


@given(data=st.data(), process=processes(kinds=("VE", "VP", "SubVP", "EDM", "Diffusion", "LinearSDE")),
       law=toy_laws(dims=(1, 4), kinds=("gaussian",)))
@few(2)
def test_flow_map_of_gaussian_data_is_the_closed_form(data, process, law):
    """For Gaussian data N(mu, Q diag(lambda) Q^T) the probability-flow ODE maps x_t to
    x_s = s_s (mu + Q diag(sqrt((lambda + sigma_s^2)/(lambda + sigma_t^2))) Q^T (x_t/s_t - mu))."""
    t, s = sorted([data.draw(times(process)), data.draw(times(process))], reverse=True)
    assume(t > s)
    result = ft.check_flow_map(process, law, t, s, n=8, rtol=1e-10, atol=1e-10, tolerance=1e-6)
    assert result, result


@given(data=st.data(), process=processes(kinds=("VE", "VP", "EDM", "Diffusion")), law=toy_laws(dims=(1, 3)))
@few()
def test_flow_pushes_the_marginal_at_t_to_the_marginal_at_s(data, process, law):
    """The probability-flow ODE transports p_t to p_s (Song et al. 2021, eq. 13): marginal
    samples at t solved to s follow p_s (projected KS tests)."""
    t = data.draw(times(process))
    s = data.draw(times(process, hi=t))
    assume(t > s)
    result = ft.check_marginal_pushforward(process, law, t, s, n=500, rtol=1e-7, alpha=ALPHA)
    assert result, result


@given(data=st.data(), process=processes(kinds=("VE", "EDM", "VP")), law=toy_laws(dims=(1, 2)))
@few()
def test_flow_map_round_trip_is_the_identity(data, process, law):
    """The probability-flow ODE is a bijection: solving t -> s and back returns the start."""
    t, s = sorted([data.draw(times(process)), data.draw(times(process))], reverse=True)
    assume(t > s)
    flow = fs.probability_flow(process, fs.exact_field(process, law))
    x = process.perturb(law.sample(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64), t)
    there = fs.solve(flow, x, (t, s), "dopri5", rtol=1e-10, atol=1e-10).x
    back = fs.solve(flow, there, (s, t), "dopri5", rtol=1e-10, atol=1e-10).x
    assert float((back - x).abs().max()) <= 1e-6 * max(1.0, float(x.abs().max()))


@given(law=toy_laws(dims=(1, 1), kinds=("mixture",), sharp=False))
@few()
def test_reverse_sde_and_ode_end_in_the_same_law(law):
    """Song et al. 2021, section 4.3: the reverse SDE and the probability-flow ODE share their
    marginals, so both samplers end in p_t_min (1000 samples, 400 Euler-Maruyama steps)."""
    result = ft.check_sde_ode_same_law(fs.EDM(), law, n=1000, sde_steps=400, alpha=ALPHA)
    assert result, result


@given(data=st.data(), process=processes(), law=toy_laws(dims=(1, 4)), seed=st.integers(0, 3))
def test_score_is_the_gradient_of_log_p(data, process, law, seed):
    """grad_x log p_t(x) = score(x, t): autograd of the exact field's log density."""
    t = data.draw(times(process))
    if isinstance(law, fs.toy.GaussianMixture) and is_poisson(process):
        law = fs.toy.Empirical(law.means, law.weights)  # the quadrature field is tested in test_fields.py
    field = fs.exact_field(process, law)
    result = ft.check_score_autograd(field, points(law, 4, seed), t, rtol=1e-6)
    assert result, result


@given(data=st.data(), process=processes(), law=toy_laws(dims=(1, 4)), seed=st.integers(0, 3))
def test_field_quantities_are_conversions_of_the_denoiser(data, process, law, seed):
    """DESIGN.md section 2: eps, score, velocity and E_x/E_r are the stated conversions of
    D(x; sigma), and each round-trips through its Field.from_* wrapper."""
    t = data.draw(times(process))
    if isinstance(law, fs.toy.GaussianMixture) and is_poisson(process):
        law = fs.toy.Empirical(law.means, law.weights)
    result = ft.check_field_conversions(fs.exact_field(process, law), points(law, 4, seed), t, rtol=1e-7)
    assert result, result


@given(log_D=st.floats(0.0, 6.0), log_sigma=st.floats(-1.5, 1.5), law=toy_laws(dims=(1, 6), kinds=("empirical",)),
       seed=st.integers(0, 3))
def test_poisson_field_is_its_integral_over_point_data(log_D, log_sigma, law, seed):
    """PFGM++ eq. 3: E(x~) ∝ ∫ (x~ - y~)/||x~ - y~||^(N+D) p(y) dy; for point data the integral
    is a finite sum, and E_x/E_r equals the closed form."""
    result = ft.check_poisson_field_monte_carlo(fs.PFGMPP(D=10.0**log_D), law, points(law, 4, seed), 10.0**log_sigma)
    assert result, result


@given(log_D=st.floats(0.0, 3.0), log_sigma=st.floats(0.0, 1.0), law=toy_laws(dims=(1, 3), kinds=("mixture",), sharp=False))
@few(2)
def test_poisson_field_matches_monte_carlo_of_its_integral(log_D, log_sigma, law):
    """PFGM++ eq. 3 for a Gaussian mixture, by Monte Carlo over the data (delta-method standard
    errors): the quadrature field agrees within 5 standard errors."""
    result = ft.check_poisson_field_monte_carlo(fs.PFGMPP(D=10.0**log_D), law, points(law, 3, 0), 10.0**log_sigma,
                                                n=20_000)
    assert result, result


@given(log_D=st.floats(0.5, 6.0), law=toy_laws(dims=(1, 3)))
@few(2)
def test_kernel_second_moment(log_D, law):
    """E||x_t/s - y||^2 = sigma^2 N D/(D - 2) under the PFGM++ kernel (D > 2): the sample
    covariance of perturbed draws matches marginal_moments within 5 standard errors."""
    D = 2.0 + 10.0**log_D
    process = fs.PFGMPP(D=D)
    mean, cov = ft.marginal_moments(process, law, 0.5)
    x = process.perturb(law.sample(20_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 0.5,
                        generator=torch.Generator().manual_seed(1)).reshape(20_000, -1)
    total = ((x - mean) ** 2).sum(1)
    assert abs(float(total.mean()) - float(torch.trace(cov))) <= 5 * float(total.std()) / 20_000**0.5


def test_sampler_law_sees_the_bias_of_the_per_sample_langevin_rule():
    """score_sde's Langevin corrector step size (per-sample norms) inflates the variance in low
    dimensions; the "ald" default does not."""
    law = fs.toy.Gaussian([1.0], [[0.09]])
    assert ft.check_sampler_law(fs.VP(), law, "pc", steps=200, n=2000)
    biased = ft.check_sampler_law(fs.VP(), law, "pc", steps=200, n=2000, corrector="langevin")
    assert not biased and max(biased.details["variance_ratio"]) > 1.2
