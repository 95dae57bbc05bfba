"""Bad inputs: each gets a ValueError whose message names the offending argument.

Every check is paired with the nearest valid input where that is cheap, so a check that
refused everything would fail too.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import flowsolve as fs
from flowsolve import toy
from flowsolve.fields import Field
from flowsolve.processes import StudentTKernel

META = torch.device("meta")
NONFINITE = [math.nan, math.inf, -math.inf]


def all_processes():
    return {
        "VE": fs.VE(),
        "VP": fs.VP(),
        "SubVP": fs.SubVP(),
        "EDM": fs.EDM(),
        "PFGMPP": fs.PFGMPP(D=16.0),
        "Poisson": fs.Poisson(),
        "Diffusion": fs.Diffusion(scale=lambda t: torch.exp(-t), sigma=lambda t: 0.1 + t, t_min=0.0, t_max=2.0),
        "LinearSDE": fs.LinearSDE(f=lambda t: -0.5 * t, g=lambda t: 1.0 + 0.0 * t, t_min=0.05, t_max=1.0),
    }


PROCS = all_processes()
PNAMES = list(PROCS)
DATA = toy.GaussianMixture([[0.0, 1.0], [1.0, -1.0]], [0.5, 1.0])


# ---------------------------------------------------------------------------- processes
@pytest.mark.parametrize("make", [
    lambda lo, hi: fs.VE(sigma_min=lo, sigma_max=hi),
    lambda lo, hi: fs.EDM(sigma_min=lo, sigma_max=hi),
    lambda lo, hi: fs.PFGMPP(D=4.0, sigma_min=lo, sigma_max=hi),
    lambda lo, hi: fs.Poisson(sigma_min=lo, sigma_max=hi),
], ids=["VE", "EDM", "PFGMPP", "Poisson"])
def test_sigma_min_must_be_below_sigma_max(make):
    for lo, hi in [(2.0, 1.0), (1.0, 1.0), (80.0, 0.002)]:
        with pytest.raises(ValueError, match="sigma_min"):
            make(lo, hi)
    for bad in [0.0, -1.0] + NONFINITE:
        with pytest.raises(ValueError, match="sigma_min"):
            make(bad, 10.0)
        with pytest.raises(ValueError, match="sigma_max"):
            make(0.1, bad)
    p = make(0.5, 1.0)
    assert math.isclose(p.sigma_min, 0.5) and math.isclose(p.sigma_max, 1.0)


@pytest.mark.parametrize("D", [0.0, -1.0, -1e-9] + NONFINITE)
def test_D_must_be_positive_and_finite(D):
    with pytest.raises(ValueError, match=r"\bD\b"):
        fs.PFGMPP(D=D)
    with pytest.raises(ValueError, match=r"\bD\b"):
        StudentTKernel(D)


def test_D_valid_values_accepted():
    for D in (1e-3, 1.0, 2.5, 1e9):
        assert fs.PFGMPP(D=D).kernel.D == D


@pytest.mark.parametrize("cls", [fs.VP, fs.SubVP])
def test_beta_checks(cls):
    for bad in [0.0, -0.1] + NONFINITE:
        with pytest.raises(ValueError, match="beta_min"):
            cls(beta_min=bad)
        with pytest.raises(ValueError, match="beta_max"):
            cls(beta_max=bad)
    with pytest.raises(ValueError, match="beta_max"):
        cls(beta_min=5.0, beta_max=1.0)
    cls(beta_min=1.0, beta_max=1.0)  # constant beta is allowed
    for bad in [0.0, -0.5]:
        with pytest.raises(ValueError, match="t_min"):
            cls(t_min=bad)
    with pytest.raises(ValueError, match="t_min"):
        cls(t_min=0.5, t_max=0.1)


def test_diffusion_schedule_checks():
    with pytest.raises(ValueError, match="sigma"):
        fs.Diffusion(sigma=lambda t: 2.0 - t)  # decreasing
    with pytest.raises(ValueError, match="sigma"):
        fs.Diffusion(sigma=lambda t: 1.0 + (t - 0.5) ** 2)  # not monotone
    with pytest.raises(ValueError, match="sigma"):
        fs.Diffusion(sigma=lambda t: 0.0 * t + 1.0)  # constant
    with pytest.raises(ValueError, match="sigma"):
        fs.Diffusion(sigma=None)
    with pytest.raises(ValueError, match="sigma"):
        fs.Diffusion(sigma=3.0)
    with pytest.raises(ValueError, match="scale"):
        fs.Diffusion(scale=lambda t: t - 0.5, sigma=lambda t: 1.0 + t)
    with pytest.raises(ValueError, match="scale"):
        fs.Diffusion(scale=2.0, sigma=lambda t: 1.0 + t)
    with pytest.raises(ValueError, match="t_min"):
        fs.Diffusion(sigma=lambda t: 1.0 + t, t_min=1.0, t_max=0.0)
    with pytest.raises(ValueError, match="t_max"):
        fs.Diffusion(sigma=lambda t: 1.0 + t, t_max=math.inf)
    fs.Diffusion(sigma=lambda t: 1.0 + t)


def test_linear_sde_checks():
    with pytest.raises(ValueError, match="g"):
        fs.LinearSDE(f=lambda t: 0.0 * t, g=lambda t: 0.0 * t, t_min=0.1, t_max=1.0)
    with pytest.raises(ValueError, match="g"):
        # zero on part of the span: sigma stops increasing
        fs.LinearSDE(f=lambda t: 0.0 * t, g=lambda t: torch.where(t < 0.5, 1.0, 0.0).double(), t_min=0.1, t_max=1.0)
    with pytest.raises(ValueError, match="f"):
        fs.LinearSDE(f=1.0, g=lambda t: 1.0 + 0.0 * t, t_min=0.1, t_max=1.0)
    with pytest.raises(ValueError, match="t0"):
        fs.LinearSDE(f=lambda t: 0.0 * t, g=lambda t: 1.0 + 0.0 * t, t_min=0.1, t_max=1.0, t0=0.5)
    p = fs.LinearSDE(f=lambda t: 0.0 * t, g=lambda t: 1.0 + 0.0 * t, t_min=0.1, t_max=1.0)
    assert math.isclose(float(p.sigma(1.0)), 1.0, rel_tol=1e-8)


def test_general_sde_checks():
    with pytest.raises(ValueError, match="drift"):
        fs.SDE(drift=3.0, diffusion=lambda t: 1.0)
    with pytest.raises(ValueError, match="diffusion"):
        fs.SDE(drift=lambda x, t: x, diffusion=None)
    with pytest.raises(ValueError, match="t_min"):
        fs.SDE(drift=lambda x, t: x, diffusion=lambda t: 1.0, t_min=1.0, t_max=1.0)


# ---------------------------------------------------------------------------- toy laws
MEANS2 = [[0.0, 0.0], [1.0, 1.0]]


@pytest.mark.parametrize("weights", [[1.5, -0.5], [-0.0001, 1.0001]])
def test_negative_weights(weights):
    with pytest.raises(ValueError, match="weights"):
        toy.GaussianMixture(MEANS2, 1.0, weights)
    with pytest.raises(ValueError, match="weights"):
        toy.Empirical(MEANS2, weights)


@pytest.mark.parametrize("weights", [[0.5, 0.6], [0.2, 0.2], [0.5, 0.5 + 1e-4], [math.nan, 0.5], [1.0], [0.2, 0.3, 0.5]])
def test_weights_must_sum_to_one_and_match_count(weights):
    with pytest.raises(ValueError, match="weights"):
        toy.GaussianMixture(MEANS2, 1.0, weights)
    with pytest.raises(ValueError, match="weights"):
        toy.Empirical(MEANS2, weights)


@given(st.lists(st.floats(0.01, 10.0), min_size=2, max_size=5), st.floats(0.05, 0.5))
def test_weights_off_by_a_fraction_refused(raw, off):
    w = torch.tensor(raw, dtype=torch.float64)
    w = w / w.sum() * (1.0 + off)
    means = torch.zeros(len(raw), 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="weights"):
        toy.GaussianMixture(means, 1.0, w)
    toy.GaussianMixture(means, 1.0, w / w.sum())  # normalised: accepted


def test_non_symmetric_covariance():
    cov = [[1.0, 0.5], [0.0, 1.0]]
    with pytest.raises(ValueError, match="cov"):
        toy.Gaussian([0.0, 0.0], cov)
    with pytest.raises(ValueError, match="cov"):
        toy.GaussianMixture([[0.0, 0.0]], [cov])


@pytest.mark.parametrize("cov", [[[1.0, 2.0], [2.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]],
                                 [[-1.0, 0.0], [0.0, 1.0]]], ids=["indefinite", "singular", "zero", "negative"])
def test_non_positive_definite_covariance(cov):
    with pytest.raises(ValueError, match="cov"):
        toy.Gaussian([0.0, 0.0], cov)
    with pytest.raises(ValueError, match="cov"):
        toy.GaussianMixture([[0.0, 0.0], [1.0, 1.0]], [[[1.0, 0.0], [0.0, 1.0]], cov])


@pytest.mark.parametrize("stds", [0.0, -1.0, [1.0, 0.0], [1.0, -2.0], [[1.0, 1.0], [1.0, 0.0]], [[1.0, -1.0], [1.0, 1.0]]],
                         ids=["scalar0", "scalar_neg", "iso0", "iso_neg", "diag0", "diag_neg"])
def test_zero_or_negative_stds(stds):
    with pytest.raises(ValueError, match="standard deviation|std"):
        toy.GaussianMixture(MEANS2, stds)


@pytest.mark.parametrize("cov", [0.0, -1.0, [1.0, 0.0], [-1.0, 1.0]])
def test_zero_or_negative_gaussian_variances(cov):
    with pytest.raises(ValueError, match="cov"):
        toy.Gaussian([0.0, 0.0], cov)


def test_covariance_shape_mismatch():
    with pytest.raises(ValueError, match="cov"):
        toy.GaussianMixture(MEANS2, torch.eye(3).expand(2, 3, 3))
    with pytest.raises(ValueError, match="std"):
        toy.GaussianMixture(MEANS2, [1.0, 1.0, 1.0])


def test_gaussian_variance_vector_wrong_length_names_cov():
    with pytest.raises(ValueError, match="cov"):
        toy.Gaussian([0.0, 0.0], [1.0, 2.0, 3.0])


def test_gaussian_mean_must_be_a_vector():
    with pytest.raises(ValueError, match="mean"):
        toy.Gaussian([[0.0, 0.0], [1.0, 1.0]], 1.0)


def test_mixture_needs_at_least_one_component():
    with pytest.raises(ValueError, match="means"):
        toy.GaussianMixture(torch.zeros(0, 2), 1.0)


def test_bad_means_and_points():
    with pytest.raises(ValueError, match="means"):
        toy.GaussianMixture([0.0, 0.0], 1.0)
    with pytest.raises(ValueError, match="means"):
        toy.GaussianMixture([[math.nan, 0.0]], 1.0)
    with pytest.raises(ValueError, match="points"):
        toy.Empirical([0.0, 1.0])
    with pytest.raises(ValueError, match="points"):
        toy.Empirical(torch.zeros(0, 2))
    with pytest.raises(ValueError, match="points"):
        toy.Empirical([[math.inf, 0.0]])


def test_named_law_arguments():
    cases = [
        (lambda: toy.ring(0), "n_modes"), (lambda: toy.ring(radius=-1.0), "radius"),
        (lambda: toy.ring(std=0.0), "std"), (lambda: toy.grid(0), "n_per_side"),
        (lambda: toy.grid(spacing=0.0), "spacing"), (lambda: toy.grid(std=-1.0), "std"),
        (lambda: toy.random_mixture(0), "dim"), (lambda: toy.random_mixture(2, n_components=0), "n_components"),
        (lambda: toy.random_mixture(2, spread=0.0), "spread"),
        (lambda: toy.random_mixture(2, std_range=(0.5, 0.1)), "std_range"),
        (lambda: toy.random_mixture(2, std_range=(-0.5, 0.1)), "std_range"),
        (lambda: toy.bimodal_1d(separation=0.0), "separation"), (lambda: toy.bimodal_1d(std=0.0), "std"),
        (lambda: toy.bimodal_1d(weight=0.0), "weight"), (lambda: toy.bimodal_1d(weight=1.0), "weight"),
        (lambda: toy.standard_gaussian(0), "dim"), (lambda: toy.standard_gaussian(1.5), "dim"),
    ]
    for make, name in cases:
        with pytest.raises(ValueError, match=name):
            make()


@pytest.mark.parametrize("law", [toy.standard_gaussian(2), DATA, toy.Empirical(MEANS2)], ids=["gauss", "mix", "emp"])
@pytest.mark.parametrize("n", [-1, 2.5, -0.5])
def test_toy_sample_bad_n(law, n):
    with pytest.raises(ValueError, match=r"\bn\b"):
        law.sample(n)


# ------------------------------------------------------------------- wrong dimension
@pytest.mark.parametrize("pname", ["VE", "VP", "EDM", "PFGMPP"])
def test_field_x_wrong_last_dim(pname):
    process = PROCS[pname]
    ex = fs.exact_field(process, DATA)
    t = 0.5 * (process.t_min + process.t_max)
    kinds = ["denoiser", "eps", "velocity", "score", "log_prob"] + (["poisson_field"] if pname == "PFGMPP" else [])
    for bad in (torch.zeros(4, 3), torch.zeros(4, 1), torch.zeros(2, 4, 5), torch.zeros(3)):
        for q in kinds:
            with pytest.raises(ValueError, match=r"\bx\b"):
                getattr(ex, q)(bad, t)
    for bad in (torch.zeros(()), torch.zeros(3, 2, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"\bx\b"):
            ex.denoiser(bad, t)


@pytest.mark.parametrize("pname", PNAMES)
def test_kernel_log_prob_x_wrong_last_dim(pname):
    process = PROCS[pname]
    t = 0.5 * (process.t_min + process.t_max)
    with pytest.raises(ValueError, match=r"\bx\b"):
        process.kernel_log_prob(torch.zeros(4, 3), torch.zeros(4, 2), t)
    with pytest.raises(ValueError, match=r"\bx\b"):
        process.kernel_log_prob(torch.zeros(4, 2), torch.zeros(3), t)
    assert process.kernel_log_prob(torch.zeros(4, 2), torch.zeros(4, 2), t).shape == (4,)


@pytest.mark.parametrize("law", [toy.standard_gaussian(2), DATA, toy.ring(), toy.random_mixture(3)],
                         ids=["gauss", "mix", "ring", "random"])
def test_toy_log_prob_x_wrong_last_dim(law):
    for bad in (torch.zeros(4, law.dim + 1), torch.zeros(law.dim + 2), torch.zeros(2, 2, law.dim - 1 or 5)):
        with pytest.raises(ValueError, match=r"\bx\b"):
            law.log_prob(bad)


# ------------------------------------------------------------------------ time range
def outside(process):
    lo, hi = process.t_min, process.t_max
    span = hi - lo
    return [lo - 0.01 * span, hi + 0.01 * span, hi * 2 + 1, math.nan, math.inf,
            torch.tensor([lo, hi + 0.5 * span], dtype=torch.float64),
            torch.tensor([0.5 * (lo + hi), math.nan], dtype=torch.float64)]


@pytest.mark.parametrize("pname", PNAMES)
def test_schedules_refuse_t_outside_span(pname):
    process = PROCS[pname]
    methods = [process.scale, process.sigma, process.scale_derivative, process.sigma_derivative]
    if hasattr(process, "drift_coefficient"):
        methods += [process.drift_coefficient, process.diffusion]
    for bad in outside(process):
        for m in methods:
            with pytest.raises(ValueError, match=r"\bt\b"):
                m(bad)
    # the end points themselves are inside
    for m in methods:
        m(process.t_min)
        m(process.t_max)
        m(torch.tensor([process.t_min, process.t_max], dtype=torch.float32))


@pytest.mark.parametrize("pname", PNAMES)
def test_perturb_and_kernel_refuse_t_outside_span(pname):
    process = PROCS[pname]
    x = torch.zeros(2, 2, dtype=torch.float64)
    for bad in outside(process):
        with pytest.raises(ValueError, match=r"\bt\b"):
            process.perturb(x, bad)
        with pytest.raises(ValueError, match=r"\bt\b"):
            process.kernel_log_prob(x, x, bad)
    with pytest.raises(ValueError, match=r"\bt\b"):
        process.perturb(x, torch.full((3,), process.t_max, dtype=torch.float64))  # does not broadcast to (2,)


@pytest.mark.parametrize("pname", PNAMES)
def test_field_methods_refuse_t_outside_span(pname):
    process = PROCS[pname]
    poisson = pname in ("PFGMPP", "Poisson")
    ex = fs.exact_field(process, DATA)
    called = []
    wrapped = Field.from_denoiser(process, lambda x, t: called.append(1) or x.clone())
    kinds = ["denoiser", "eps", "velocity"] + (["poisson_field"] if poisson else ["score"])
    x = torch.zeros(2, 2, dtype=torch.float64)
    for bad in outside(process):
        for q in kinds:
            with pytest.raises(ValueError, match=r"\bt\b"):
                getattr(ex, q)(x, bad)
            with pytest.raises(ValueError, match=r"\bt\b"):
                getattr(wrapped, q)(x, bad)
        with pytest.raises(ValueError, match=r"\bt\b"):
            ex.log_prob(x, bad)
        with pytest.raises(ValueError, match=r"\bt\b"):
            fs.probability_flow(process, ex).drift(x, bad)
    assert not called, "the wrapped network must not be evaluated at an invalid time"


@given(u=st.floats(-10.0, 10.0).filter(lambda u: not 0.0 <= u <= 1.0))
def test_t_outside_span_random(u):
    for process in (PROCS["VP"], PROCS["EDM"]):
        t = process.t_min + u * (process.t_max - process.t_min)
        if process.t_min - 1e-5 * process.t_max <= t <= process.t_max * (1 + 1e-5):
            continue  # within float32 slack
        with pytest.raises(ValueError, match=r"\bt\b"):
            process.sigma(t)
        with pytest.raises(ValueError, match=r"\bt\b"):
            process.perturb(torch.zeros(1, 2), t)


@pytest.mark.parametrize("pname", ["VE", "VP", "EDM"])
def test_reverse_sde_refuses_t_outside_span(pname):
    process = PROCS[pname]
    sde = fs.reverse_sde(process, fs.exact_field(process, DATA))
    x = torch.zeros(2, 2, dtype=torch.float64)
    for bad in outside(process):
        with pytest.raises(ValueError, match=r"\bt\b"):
            sde.drift(x, bad)
        with pytest.raises(ValueError, match=r"\bt\b"):
            sde.diffusion(bad)


def test_general_sde_refuses_t_outside_span():
    sde = fs.SDE(drift=lambda x, t: -x, diffusion=lambda t: 1.0, t_min=0.0, t_max=1.0)
    for bad in (-0.1, 1.1, math.nan):
        with pytest.raises(ValueError, match=r"\bt\b"):
            sde.drift(torch.zeros(2), bad)
        with pytest.raises(ValueError, match=r"\bt\b"):
            sde.diffusion(bad)
        with pytest.raises(ValueError, match=r"\bt\b"):
            fs.probability_flow(sde, score=lambda x, t: -x).drift(torch.zeros(2), bad)


@pytest.mark.parametrize("pname", PNAMES)
def test_t_of_sigma_outside_range(pname):
    process = PROCS[pname]
    smin, smax = process.sigma_min, process.sigma_max
    for bad in (smin - 1e-3 * (smax - smin), smax * 1.5, -1.0, math.nan,
                torch.tensor([smin, smax * 2.0], dtype=torch.float64)):
        with pytest.raises(ValueError, match="sigma"):
            process.t_of_sigma(bad)
    t = process.t_of_sigma(torch.tensor([smin, smax], dtype=torch.float64))
    torch.testing.assert_close(t, torch.tensor([process.t_min, process.t_max], dtype=torch.float64), rtol=1e-8, atol=1e-9)


def _t_of_sigma(pname, value):
    process = PROCS[pname]
    return lambda: process.t_of_sigma(value(process))


def _field_at(pname, factor):
    process = PROCS[pname]
    ex = fs.exact_field(process, DATA)
    return lambda: ex.denoiser(torch.zeros(1, 2, dtype=torch.float64), factor * process.t_min)


@pytest.mark.parametrize("call", [
    _t_of_sigma("SubVP", lambda p: 0.0),
    _t_of_sigma("SubVP", lambda p: -1e-5),
    _t_of_sigma("SubVP", lambda p: 0.5 * p.sigma_min),
    _field_at("EDM", 0.97),
    _field_at("PFGMPP", 0.97),
], ids=["subvp_sigma0", "subvp_sigma_neg", "subvp_half_sigma_min", "edm_t", "pfgmpp_t"])
def test_values_just_below_the_lower_end_refused(call):
    """A few per cent below t_min / sigma_min is far beyond float32 rounding (6e-8 relative)."""
    with pytest.raises(ValueError, match="sigma|t"):
        call()


def test_t_of_r_outside_range_names_r():
    with pytest.raises(ValueError, match=r"\br\b"):
        fs.PFGMPP(D=4.0).t_of_r(1e5)


# --------------------------------------------------------------------------- devices
@pytest.mark.parametrize("pname", ["VE", "VP", "PFGMPP"])
def test_t_and_x_on_different_devices(pname):
    """x on the meta device, t a CPU tensor (the time-range check needs t's values, so t
    stays on the CPU; with a real accelerator the roles can be swapped)."""
    process = PROCS[pname]
    x = torch.zeros(3, 2, device=META)
    t = torch.full((3,), 0.5 * (process.t_min + process.t_max))
    ex = fs.exact_field(process, DATA)
    kinds = ["denoiser", "eps", "velocity", "log_prob"] + (["poisson_field"] if pname == "PFGMPP" else ["score"])
    for q in kinds:
        with pytest.raises(ValueError, match="device"):
            getattr(ex, q)(x, t)
    with pytest.raises(ValueError, match="device"):
        process.perturb(x, t)
    with pytest.raises(ValueError, match="device"):
        process.kernel_log_prob(x, torch.zeros(3, 2, device=META), t)
    with pytest.raises(ValueError, match="device"):
        Field.from_denoiser(process, lambda x, t: x).eps(x, t)
    with pytest.raises(ValueError, match="device"):
        fs.probability_flow(process, ex).drift(x, t)
    # one device throughout is fine (meta tensors carry shapes only)
    assert ex.denoiser(x, float(t[0])).shape == (3, 2)


@pytest.mark.parametrize("swap", [False, True])
def test_kernel_log_prob_x_and_y_on_different_devices(swap):
    x, y = torch.zeros(3, 2), torch.zeros(3, 2, device=META)
    if swap:
        x, y = y, x
    with pytest.raises(ValueError, match="device"):
        PROCS["VE"].kernel_log_prob(x, y, 0.5)


def test_wrapped_output_on_another_device():
    wrapped = Field.from_denoiser(PROCS["VE"], lambda x, t: x.to(META))
    with pytest.raises(ValueError, match="device"):
        wrapped.eps(torch.zeros(3, 2), 0.5)


# ----------------------------------------------------------------- fields and priors
def test_exact_field_unsupported_data():
    for bad in ([1.0, 2.0], None, torch.zeros(3, 2), "ring", toy):
        with pytest.raises(ValueError, match="data"):
            fs.exact_field(PROCS["VE"], bad)


def test_exact_field_general_sde_or_non_process():
    sde = fs.SDE(drift=lambda x, t: -x, diffusion=lambda t: 1.0)
    for bad in (sde, None, "VE"):
        with pytest.raises(ValueError, match="process"):
            fs.exact_field(bad, DATA)
    with pytest.raises(ValueError, match="process"):
        Field.from_denoiser(sde, lambda x, t: x)


@pytest.mark.parametrize("pname", PNAMES)
def test_prior_sample_bad_n_and_dim(pname):
    process = PROCS[pname]
    for n in (-1, -10, 1.5):
        with pytest.raises(ValueError, match=r"\bn\b"):
            process.prior_sample(n, 2)
    for dim in (0, -1, 2.5):
        with pytest.raises(ValueError, match="dim"):
            process.prior_sample(3, dim)
    assert process.prior_sample(0, 2).shape == (0, 2)


def test_perturb_x0_must_be_tensor():
    with pytest.raises(ValueError, match="x0"):
        PROCS["VE"].perturb([1.0, 2.0], 0.5)
    with pytest.raises(ValueError, match="x0"):
        PROCS["VE"].perturb(torch.tensor(1.0), 0.5)


def test_flow_argument_checks():
    ve = PROCS["VE"]
    ex = fs.exact_field(ve, DATA)
    with pytest.raises(ValueError, match="field"):
        fs.probability_flow(ve)
    with pytest.raises(ValueError, match="field"):
        fs.probability_flow(ve, 3.0)
    with pytest.raises(ValueError, match="process"):
        fs.probability_flow("VE", ex)
    with pytest.raises(ValueError, match="field|score"):
        fs.reverse_sde(ve, ex, score=ex.score)
    with pytest.raises(ValueError, match="kind"):
        fs.fields.WrappedField(ve, lambda x, t: x, "energy")
