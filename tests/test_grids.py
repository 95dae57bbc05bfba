"""Time grids (``fs.make_grid``, ``fs.available_grids``) against formulas written here.

Each named grid is defined in sigma (or t) by its paper; the map back to t is checked with
inverse schedules derived here from the DESIGN table (VE: ``t = ln(sigma/smin)/ln(smax/smin)``;
VP: ``sigma^2 = e^{2L} - 1``; sub-VP: ``sigma = 2 sinh L``, with ``L = a t^2 + b t``,
``a = (bmax - bmin)/4``, ``b = bmin/2``; EDM/PFGM++: ``t = sigma``), not with flowsolve's own.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import flowsolve as fs

F64 = torch.float64
NAMED = ["uniform", "log_sigma", "logsnr", "karras", "quadratic"]


# -- independent schedules (default parameters) -----------------------------------------
def _L(t, bmin=0.1, bmax=20.0):
    return (bmax - bmin) / 4.0 * t * t + bmin / 2.0 * t


def _t_of_L(L, bmin=0.1, bmax=20.0):
    a, b = (bmax - bmin) / 4.0, bmin / 2.0
    return 2.0 * L / (b + np.sqrt(b * b + 4.0 * a * L))


SIGMA = {  # sigma(t), numpy float64
    "VE": lambda t: 0.01 * (50.0 / 0.01) ** t,
    "VP": lambda t: np.sqrt(np.expm1(2.0 * _L(t))),
    "SubVP": lambda t: 2.0 * np.sinh(_L(t)),
    "EDM": lambda t: t,
    "PFGMPP": lambda t: t,
    "Poisson": lambda t: t,
}
T_OF_SIGMA = {
    "VE": lambda s: np.log(s / 0.01) / np.log(50.0 / 0.01),
    "VP": lambda s: _t_of_L(0.5 * np.log1p(s * s)),
    "SubVP": lambda s: _t_of_L(np.arcsinh(0.5 * s)),
    "EDM": lambda s: s,
    "PFGMPP": lambda s: s,
    "Poisson": lambda s: s,
}
SPAN = {"VE": (0.0, 1.0), "VP": (1e-3, 1.0), "SubVP": (1e-3, 1.0), "EDM": (0.002, 80.0),
        "PFGMPP": (0.002, 80.0), "Poisson": (0.002, 80.0)}


def make(name):
    return {"VE": fs.VE, "VP": fs.VP, "SubVP": fs.SubVP, "EDM": fs.EDM, "PFGMPP": lambda: fs.PFGMPP(D=16.0),
            "Poisson": fs.Poisson}[name]()


PROCS = list(SIGMA)


def custom_processes():
    return {
        "Diffusion": fs.Diffusion(scale=lambda t: torch.exp(-t), sigma=lambda t: 0.1 + t**2, t_min=0.0, t_max=2.0),
        "LinearSDE": fs.LinearSDE(f=lambda t: -0.5 * t, g=lambda t: 1.0 + 0.0 * t, t_min=0.05, t_max=1.0),
    }


# =========================================================================================

def test_available_grids_names():
    grids = fs.available_grids()
    assert set(grids) == {"uniform", "log_sigma", "logsnr", "karras", "kl_optimal", "quadratic", "dmn",
                          "explicit"}
    assert all(isinstance(v, str) and v for v in grids.values())


def test_spans_used_here_match_the_processes():
    for name in PROCS:
        p = make(name)
        assert (p.t_min, p.t_max) == SPAN[name]
        assert math.isclose(p.sigma_max, float(SIGMA[name](p.t_max)), rel_tol=1e-12)


@pytest.mark.parametrize("steps", [1, 2, 7, 50])
@pytest.mark.parametrize("grid", NAMED)
@pytest.mark.parametrize("name", PROCS + ["Diffusion", "LinearSDE"])
def test_grid_shape_ends_monotone_inside(name, grid, steps):
    proc = custom_processes()[name] if name in ("Diffusion", "LinearSDE") else make(name)
    t = fs.make_grid(proc, grid, steps)
    assert isinstance(t, torch.Tensor) and t.dtype == F64 and t.shape == (steps + 1,)
    assert float(t[0]) == proc.t_max and float(t[-1]) == proc.t_min  # exactly, not round-tripped
    assert bool((t[1:] < t[:-1]).all()), t
    assert bool(((t >= proc.t_min) & (t <= proc.t_max)).all())


@pytest.mark.parametrize("rho", [7.0, 3.0, 1.0])
@pytest.mark.parametrize("name", PROCS)
def test_karras_grid_equals_edm_formula(name, rho):
    proc, n = make(name), 12
    smin, smax = float(SIGMA[name](SPAN[name][0])), float(SIGMA[name](SPAN[name][1]))
    i = np.arange(n)
    sig = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    want = T_OF_SIGMA[name](sig)
    got = fs.make_grid(proc, "karras", n - 1, rho=rho).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
    # and in sigma
    np.testing.assert_allclose(SIGMA[name](got), sig, rtol=1e-10)


def test_karras_default_rho_is_7():
    proc = fs.EDM()
    assert torch.equal(fs.make_grid(proc, "karras", 9), fs.make_grid(proc, "karras", 9, rho=7.0))
    assert not torch.equal(fs.make_grid(proc, "karras", 9), fs.make_grid(proc, "karras", 9, rho=3.0))


@pytest.mark.parametrize("name", PROCS)
def test_log_sigma_grid_uniform_in_log_sigma(name):
    proc, steps = make(name), 16
    t = fs.make_grid(proc, "log_sigma", steps).numpy()
    logs = np.log(SIGMA[name](t))
    want = np.linspace(math.log(SIGMA[name](SPAN[name][1])), math.log(SIGMA[name](SPAN[name][0])), steps + 1)
    np.testing.assert_allclose(logs, want, rtol=0, atol=1e-10)
    # logSNR of x_t = s (y + sigma n) is -2 log sigma, so the logsnr grid is the same grid
    assert torch.equal(fs.make_grid(proc, "logsnr", steps), fs.make_grid(proc, "log_sigma", steps))


@pytest.mark.parametrize("name", PROCS)
def test_uniform_and_quadratic_grids(name):
    proc, steps = make(name), 10
    lo, hi = SPAN[name]
    frac = 1.0 - np.arange(steps + 1) / steps
    np.testing.assert_allclose(fs.make_grid(proc, "uniform", steps).numpy(), lo + (hi - lo) * frac, rtol=1e-14,
                               atol=1e-15)
    np.testing.assert_allclose(fs.make_grid(proc, "quadratic", steps).numpy(), lo + (hi - lo) * frac**2,
                               rtol=1e-14, atol=1e-15)


def test_custom_process_karras_through_bisection():
    """A composed process has no closed-form inverse: t_of_sigma by bisection must still put
    the grid's sigmas on the formula."""
    proc = custom_processes()["Diffusion"]  # sigma = 0.1 + t^2 on [0, 2]
    n, rho = 9, 7.0
    smin, smax = 0.1, 4.1
    i = np.arange(n)
    sig = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    t = fs.make_grid(proc, "karras", n - 1).numpy()
    np.testing.assert_allclose(t[1:-1], np.sqrt(sig[1:-1] - 0.1), rtol=1e-9)


# -- explicit grids and validation ------------------------------------------------------------

def test_explicit_grid_is_returned_as_given():
    proc = fs.VP()
    ts = [1.0, 0.5, 0.25, 0.001]
    t = fs.make_grid(proc, "explicit", ts=ts)
    assert t.dtype == F64 and t.tolist() == ts
    t = fs.make_grid(proc, "explicit", ts=torch.tensor(ts, dtype=torch.float32))
    assert t.dtype == F64 and torch.equal(t, torch.tensor(ts, dtype=torch.float32).double())
    up = fs.make_grid(proc, "explicit", ts=ts[::-1])  # increasing is monotone too
    assert up.tolist() == ts[::-1]


@pytest.mark.parametrize("ts, match", [
    (None, "ts"),
    ([0.5], "at least 2"),
    ([], "at least 2"),
    ([1.0, 0.5, 0.7, 0.1], "monotone"),
    ([1.0, 0.5, 0.5, 0.1], "monotone"),
    ([1.5, 0.5, 0.1], "ts"),
    ([1.0, 0.5, 0.0], "ts"),  # below VP's t_min = 1e-3
    ([1.0, float("nan"), 0.1], "ts"),
])
def test_explicit_grid_validation(ts, match):
    with pytest.raises(ValueError, match=match):
        fs.make_grid(fs.VP(), "explicit", ts=ts)


@pytest.mark.parametrize("steps", [0, -3, 2.5, None, "3", float("nan"), float("inf")])
def test_steps_validation(steps):
    with pytest.raises(ValueError, match="steps"):
        fs.make_grid(fs.EDM(), "karras", steps)
    fs.make_grid(fs.EDM(), "karras", 1)  # nearest valid


def test_unknown_grid_and_bad_rho():
    with pytest.raises(ValueError, match="grid must be one of"):
        fs.make_grid(fs.EDM(), "cosine", 10)
    for rho in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="rho"):
            fs.make_grid(fs.EDM(), "karras", 10, rho=rho)


def test_sigma_grids_need_a_canonical_process():
    sde = fs.SDE(drift=lambda x, t: -x, diffusion=lambda t: 1.0 + 0.0 * t, t_min=0.0, t_max=1.0)
    for grid in ("log_sigma", "logsnr", "karras"):
        with pytest.raises(ValueError, match="canonical"):
            fs.make_grid(sde, grid, 4)


# -- round 2: names, options, bounds, shapes and collapse -------------------------------------

def test_unknown_grid_lists_the_names_and_the_closest():
    with pytest.raises(ValueError) as info:
        fs.make_grid(fs.EDM(), "karas", 10)
    assert str(info.value) == ("grid must be one of ['uniform', 'log_sigma', 'logsnr', 'karras', 'quadratic', "
                               "'kl_optimal', 'dmn', 'explicit'], got 'karas'; did you mean 'karras'?")
    with pytest.raises(ValueError, match=r"did you mean 'log_sigma'\?"):
        fs.make_grid(fs.EDM(), "log-sigma", 10)
    with pytest.raises(ValueError, match=r"got 'cosine'$"):  # nothing close: no suggestion
        fs.make_grid(fs.EDM(), "cosine", 10)
    for bad in (None, 3, ["karras"]):
        with pytest.raises(ValueError, match=r"^grid must be one of"):
            fs.make_grid(fs.EDM(), bad, 10)


@pytest.mark.parametrize("grid", ["uniform", "log_sigma", "logsnr", "quadratic"])
def test_rho_refused_where_unused(grid):
    with pytest.raises(ValueError, match=rf"^rho= is not used by grid='{grid}'; only grid='karras' takes it"):
        fs.make_grid(fs.VP(), grid, 10, rho=3)
    fs.make_grid(fs.VP(), grid, 10)


def test_unknown_and_misplaced_options_refused():
    with pytest.raises(ValueError, match=r"^unknown option foo= for grid='karras': its options are \['rho'\]"):
        fs.make_grid(fs.EDM(), "karras", 10, foo=1)
    with pytest.raises(ValueError, match=r"^unknown option sigma_max= for grid='uniform': it takes no options"):
        fs.make_grid(fs.EDM(), "uniform", 10, sigma_max=1)
    with pytest.raises(ValueError, match=r"^ts= is not used by grid='karras'; only grid='explicit' takes it"):
        fs.make_grid(fs.EDM(), "karras", 10, ts=[80.0, 1.0])
    with pytest.raises(ValueError, match=r"^rho= is not used by grid='explicit'; only grid='karras' takes it"):
        fs.make_grid(fs.EDM(), "explicit", ts=[80.0, 1.0], rho=7)
    with pytest.raises(ValueError, match=r"^steps is not used by grid='explicit'"):
        fs.make_grid(fs.EDM(), "explicit", 1, ts=[80.0, 1.0])


@pytest.mark.parametrize("steps", [10**7 + 1, 1e30, 10**100, True, "10"])
def test_steps_upper_bound(steps):
    with pytest.raises(ValueError, match=r"^steps must be an integer in \[1, 10000000\]"):
        fs.make_grid(fs.EDM(), "uniform", steps)


def test_steps_near_the_bound_accepted():
    assert fs.make_grid(fs.EDM(), "uniform", 10**6).shape == (10**6 + 1,)


def test_rho_upper_bound():
    t = fs.make_grid(fs.EDM(), "karras", 12, rho=1e6)  # close to the log_sigma limit
    np.testing.assert_allclose(t.numpy(), fs.make_grid(fs.EDM(), "log_sigma", 12).numpy(), rtol=1e-4)
    for rho in (1.1e6, 1e16, "7", True):
        with pytest.raises(ValueError, match=r"^rho must be a finite real number in \(0, 1000000\]"):
            fs.make_grid(fs.EDM(), "karras", 12, rho=rho)


def test_karras_with_a_huge_rho_no_longer_returns_a_collapsed_grid():
    """rho = 1e16 (a user reaching for the rho -> inf limit) used to give a grid with a
    repeated time on VP ([1, 0.94, 0.66, 0.26, 0.26, ...]): now refused by the rho bound."""
    with pytest.raises(ValueError, match=r"^rho must be"):
        fs.make_grid(fs.VP(), "karras", 8, rho=1e16)


@pytest.mark.parametrize("ts", [[[1.0, 0.5], [0.2, 0.1]], torch.tensor([[1.0, 0.5, 0.1]]), np.array([[1.0], [0.5]]),
                                torch.tensor(0.5), 0.5])
def test_explicit_ts_must_be_one_dimensional(ts):
    with pytest.raises(ValueError, match=r"^ts must be 1-D \(one time per grid point\), got shape"):
        fs.make_grid(fs.VP(), "explicit", ts=ts)


@pytest.mark.parametrize("ts", [["1.0", "0.5"], [1.0, [0.5, 0.2]], [1.0 + 1j, 0.5], [True, False]])
def test_explicit_ts_must_be_real_times(ts):
    with pytest.raises(ValueError, match=r"^ts must"):
        fs.make_grid(fs.VP(), "explicit", ts=ts)


def test_explicit_repeated_time_is_named():
    with pytest.raises(ValueError, match=r"^ts must be strictly monotone \(ts\[1\] = ts\[2\] = 0.5\)"):
        fs.make_grid(fs.VP(), "explicit", ts=[1.0, 0.5, 0.5, 0.1])


def _collapse(call):
    with pytest.raises(ValueError) as info:
        call()
    return str(info.value)


def test_karras_grid_on_a_narrow_sigma_range_collapses_with_an_error():
    """sigma in [1, 1 + 1e-12]: a valid process, but 1000 Karras steps cannot be distinct in
    float64 (the grid returned to this change had 357 repeated times)."""
    p = fs.EDM(sigma_min=1.0, sigma_max=1.0 + 1e-12)
    msg = _collapse(lambda: fs.make_grid(p, "karras", 1000))
    m = re.match(r"^the karras grid with steps=1000 collapses in float64: t\[(\d+)\] = (\S+) and t\[(\d+)\] = (\S+) "
                 r"are not distinct", msg)
    assert m, msg
    i, a, j, b = int(m[1]), float(m[2]), int(m[3]), float(m[4])
    assert j == i + 1 and a <= b and 1.0 <= a <= 1.0 + 1e-12  # the first repeat, a value inside the range
    assert "use fewer steps" in msg
    t = fs.make_grid(p, "karras", 20)  # few enough steps: fine
    assert bool((t[1:] < t[:-1]).all())


def test_uniform_grid_with_repeated_sigmas_is_an_error():
    """Distinct times whose sigmas repeat in float64 (VE with sigma in [1, 1 + 1e-11])."""
    p = fs.VE(sigma_min=1.0, sigma_max=1.0 + 1e-11)
    msg = _collapse(lambda: fs.make_grid(p, "uniform", 100_000))
    m = re.match(r"^the uniform grid with steps=100000 collapses in float64: sigma\[(\d+)\] = (\S+) and "
                 r"sigma\[(\d+)\] = (\S+) are not distinct", msg)
    assert m, msg
    t = fs.make_grid(p, "uniform", 100)
    sig = p.sigma(t)
    assert bool((sig[1:] < sig[:-1]).all())
    # the same for an explicit grid: distinct times, one sigma
    with pytest.raises(ValueError, match=r"^the explicit grid ts collapses in float64: sigma\[0\]"):
        fs.make_grid(p, "explicit", ts=[0.5, 0.5 - 1e-6, 0.0])


def test_uniform_grid_on_a_narrow_span_is_an_error():
    p = fs.EDM(sigma_min=1.0, sigma_max=1.0 + 1e-12)
    assert re.match(r"^the uniform grid with steps=10000 collapses in float64: t\[\d+\]",
                    _collapse(lambda: fs.make_grid(p, "uniform", 10_000)))


def test_explicit_times_within_the_dtype_slack_are_clamped_onto_the_span():
    """A bfloat16 t_min rounds to 0.0019989 < 0.002: accepted (within its dtype's slack) and
    returned as t_min itself, so no field is ever evaluated below the span; the same check serves
    fs.solve's ts (grids.check_times)."""
    process = fs.EDM()
    ts = torch.tensor([80.0, 1.0, 0.002], dtype=torch.bfloat16)
    assert float(ts[-1]) < process.t_min
    assert fs.make_grid(process, "explicit", ts=ts).tolist() == [80.0, 1.0, process.t_min]
    flow = fs.probability_flow(process, fs.exact_field(process, fs.toy.Gaussian([0.0], [1.0])))
    assert float(fs.solve(flow, torch.zeros(2, 1), ts, "euler").t[0]) == process.t_min


# -- DMN (Xue et al. 2024) ----------------------------------------------------------------------
# Published output: scxue/DM-NonUniform step_optim.py, StepOptim(NoiseScheduleVP('linear',
# continuous_beta_0=0.1, continuous_beta_1=20.)).get_ts_lambdas(N, 1e-3, 'unif'), run in a scratch
# folder (torch 2.13, scipy as installed here).
DMN_PUBLISHED_TS = {
    4: [0.9999999999999998, 0.629100045909629, 0.41664592939600065, 0.1202306246166189, 0.0010000000000000588],
    6: [0.9999999999999998, 0.7106528497470868, 0.5351537735095682, 0.4206297931079492, 0.2402705354679129,
        0.08355078424340252, 0.0010000000000000588],
}
#: step_optim.py's 10-step optimum (lambdas) and its bound, sel_lambdas_lof_obj = 11.887490248455979
DMN_PUBLISHED_LAMBDAS_10 = [-5.024978406659204, -3.422761395810948, -2.765810080929479, -2.44294320706893,
                            -1.5062478071787357, -0.6453779140089088, 0.2378720572749645, 1.0817588783771899,
                            1.7740252042612452, 2.6121558222579453, 4.557714932729866]


@pytest.mark.parametrize("steps", sorted(DMN_PUBLISHED_TS))
def test_dmn_grid_matches_the_published_code(steps):
    process = fs.VP(beta_min=0.1, beta_max=20.0, t_min=1e-3, t_max=1.0)
    t = fs.make_grid(process, "dmn", steps)
    assert t[0] == process.t_max and t[-1] == process.t_min and bool((t[1:] < t[:-1]).all())
    np.testing.assert_allclose(t.numpy(), DMN_PUBLISHED_TS[steps], rtol=0, atol=1e-7)


def test_dmn_bound_is_the_published_objective():
    from flowsolve.grids import dmn_objective
    assert dmn_objective(DMN_PUBLISHED_LAMBDAS_10) == pytest.approx(11.887490248455979, rel=1e-14)
    # by hand for one step: only |e^{lambda_1} - e^{lambda_0}| * sigma_vp(lambda_0)^2 / alpha(lambda_0)
    lam = np.array([-1.0, 2.0])
    alpha, sigma = 1 / np.sqrt(1 + np.exp(2.0)), 1 / np.sqrt(1 + np.exp(-2.0))
    assert dmn_objective(lam) == pytest.approx((np.exp(2.0) - np.exp(-1.0)) * sigma**2 / alpha, rel=1e-14)


def test_dmn_grid_works_for_every_canonical_process_and_refuses_options():
    for name in ("EDM", "VE", "PFGMPP"):
        t = fs.make_grid(make(name), "dmn", 3)
        assert t.numel() == 4 and bool((t[1:] < t[:-1]).all())
    with pytest.raises(ValueError, match="rho= is not used by grid='dmn'"):
        fs.make_grid(fs.EDM(), "dmn", 5, rho=7.0)
