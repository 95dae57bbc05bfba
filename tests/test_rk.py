"""Runge-Kutta solvers (fixed-step and adaptive) through ``fs.solve``, checked against exact
solutions derived here, not taken from flowsolve; per-sample faults of both loops; and, in the
last section, every registered ODE solver at the entry (options and defaults, docstrings,
unknown options, bare spans, steps=/dt=, refused flows and randomness).

Exact probability-flow map for Gaussian data ``N(mu, Q diag(lam) Q^T)`` under a Gaussian
kernel: the marginal of ``xhat = x/s`` at noise level sigma is ``N(mu, Q diag(lam + sigma^2) Q^T)``
and the PF-ODE ``dxhat/dsigma = (xhat - D)/sigma`` with ``D = mu + Q diag(lam/(lam+sigma^2)) Q^T
(xhat - mu)`` reads, per eigen-coordinate ``z``, ``dz/dsigma = sigma z/(lam + sigma^2)``, so
``z(sigma) = z(sigma0) sqrt((lam + sigma^2)/(lam + sigma0^2))``. The schedules ``s(t)``, ``sigma(t)``
are written below from the DESIGN table with each process's default parameters.

Superconvergence noted (not a bug): for ``z' = f(sigma) z`` with ``f = sigma/(lam + sigma^2)``
one explicit-midpoint step is ``z (1 + h f(s + h/2) (1 + h f(s)/2))`` and its Taylor series
agrees with the exact ``sqrt((lam + (s+h)^2)/(lam + s^2))`` through ``h^3`` (the principal
error ``f''/24 + f^3/6 + f f'/4`` vanishes identically), so on EDM, where ``t = sigma``, the
midpoint rule is 3rd order on Gaussian data. On VE/VP time is not sigma and it is 2nd order.
"""

from __future__ import annotations

import math
import pydoc

import numpy as np
import pytest
import torch

import flowsolve as fs
from flowsolve.solvers import registry
from flowsolve.solvers.fixed import run_fixed_grid
from flowsolve.solvers.rk import DOPRI5, TSIT5, rk_step
from flowsolve.solvers.term import Term

F64 = torch.float64
NAN = float("nan")

MEAN = np.array([1.0, -0.5, 0.3])
COV = np.array([[1.0, 0.3, 0.1], [0.3, 0.5, 0.0], [0.1, 0.0, 0.2]])
LAM, Q = np.linalg.eigh(COV)
DATA = fs.toy.Gaussian(torch.tensor(MEAN), torch.tensor(COV))

FIXED = {"euler": 1, "midpoint": 2, "heun": 2, "ralston": 2, "rk4": 4}
STAGES = {"euler": 1, "midpoint": 2, "heun": 2, "ralston": 2, "rk4": 4}
NODES = {"euler": (0.0,), "midpoint": (0.0, 0.5), "heun": (0.0, 1.0), "ralston": (0.0, 2 / 3),
         "rk4": (0.0, 0.5, 0.5, 1.0)}  # textbook c vectors
ADAPTIVE = ["bosh3", "dopri5"]
ALL_ADAPTIVE = ["bosh3", "tsit5", "dopri5"]
NONFINITE, UNDERFLOW, MAX_STEPS = (fs.solvers.FAULT_KINDS.index(k) for k in ("nonfinite", "underflow", "max_steps"))


# -- schedules from the DESIGN table (default parameters of each process) --------------
def _ve(t, smin=0.01, smax=50.0):
    return 1.0, smin * (smax / smin) ** t


def _vp(t, bmin=0.1, bmax=20.0):
    alpha = math.exp(-t * t * (bmax - bmin) / 4.0 - t * bmin / 2.0)
    return alpha, math.sqrt(1.0 - alpha**2) / alpha


def _edm(t):
    return 1.0, t


SCHED = {"VE": _ve, "VP": _vp, "EDM": _edm}
PROCS = {"VE": fs.VE, "VP": fs.VP, "EDM": fs.EDM}


def exact_map(name, x0, t0, t1):
    """State at t1 of the PF-ODE trajectory through x0 at t0 (rows of x0 independent)."""
    (s0, g0), (s1, g1) = SCHED[name](float(t0)), SCHED[name](float(t1))
    x0 = x0.detach().cpu().numpy().astype(np.float64)
    z = (x0 / s0 - MEAN) @ Q
    z = z * np.sqrt((LAM + g1**2) / (LAM + g0**2))
    return torch.as_tensor(s1 * (MEAN + z @ Q.T))


def exact_map_per_sample(name, x0, t0, t1s):
    return torch.stack([exact_map(name, x0[i:i + 1], t0, float(t))[0] for i, t in enumerate(t1s)])


def setup(name, n=8, seed=0):
    proc = PROCS[name]()
    flow = fs.probability_flow(proc, fs.exact_field(proc, DATA))
    g = torch.Generator().manual_seed(seed)
    x0 = proc.prior_std * torch.randn(n, 3, generator=g, dtype=F64)
    return proc, flow, x0


def max_err(a, b):
    return float((a - b).abs().max())


def measured_order(err_n, err_2n):
    return math.log2(err_n / err_2n)


# -- a user's own ODEs -------------------------------------------------------------------
def _t_col(t, x):
    """t as a column broadcastable against x (float, or per-sample tensor of shape (n,))."""
    if isinstance(t, torch.Tensor):
        assert t.dtype == F64 and t.shape == (x.shape[0],), (t.dtype, t.shape)
        return t.to(x.dtype).unsqueeze(-1)
    assert isinstance(t, float)
    return t


class Gauss:
    """dx/dt = -2 t x on [0, 2]; x(t1) = x(t0) exp(-(t1^2 - t0^2)). Time-dependent, so a
    solver passing the wrong stage time fails."""

    t_min, t_max = 0.0, 2.0

    def drift(self, x, t):
        return -2.0 * _t_col(t, x) * x

    @staticmethod
    def exact(x0, t0, t1):
        return x0 * math.exp(-(t1**2 - t0**2))


class StiffDecay:
    """State (x, k): dx/dt = -k x, dk/dt = 0, so each row carries its own stiffness."""

    t_min, t_max = 0.0, 1.0

    def drift(self, x, t):
        return torch.stack([-x[:, 1] * x[:, 0], torch.zeros_like(x[:, 1])], dim=-1)


class Spy:
    """Wraps a flow: records every time asked for; NaN for rows whose time is outside
    [lo, hi] (so an evaluation outside the span poisons the solve)."""

    def __init__(self, flow, lo=None, hi=None):
        self.flow = flow
        self.t_min, self.t_max = flow.t_min, flow.t_max
        self.lo = flow.t_min if lo is None else lo
        self.hi = flow.t_max if hi is None else hi
        self.times = []

    def drift(self, x, t):
        tt = torch.as_tensor(t, dtype=F64).reshape(-1).expand(x.shape[0]).clone()
        self.times.append(tt)
        inside = (tt >= self.lo) & (tt <= self.hi)
        out = torch.full_like(x, NAN)
        if bool(inside.any()):
            tin = t[inside] if isinstance(t, torch.Tensor) else t
            out[inside] = self.flow.drift(x[inside], tin)
        return out

    def all_times(self):
        return torch.cat(self.times)


class Flagged:
    """A user's ODE on ``x[:, 0]`` whose last coordinate is a constant flag (drift 0): a sample
    with a negative flag sees a NaN field for t < threshold. The fault belongs to the sample,
    whichever rows a solver evaluates together (adaptive solvers evaluate subsets)."""

    def __init__(self, ode, threshold=-math.inf):
        self.ode, self.threshold = ode, threshold
        self.t_min, self.t_max = ode.t_min, ode.t_max

    def drift(self, x, t):
        d = torch.cat([self.ode.drift(x[:, :-1], t), torch.zeros_like(x[:, -1:])], dim=-1)
        tt = torch.as_tensor(t, dtype=F64).reshape(-1).expand(x.shape[0])
        bad = (x[:, -1] < 0) & (tt < self.threshold)
        return torch.where(bad[:, None], torch.full_like(d, NAN), d)


def flagged(values, flags):
    return torch.stack([torch.as_tensor(values, dtype=F64), torch.as_tensor(flags, dtype=F64)], dim=-1)


class Decay:
    """dx/dt = -x (any time span)."""

    t_min, t_max = 0.0, 1.0

    def drift(self, x, t):
        return -x


class NaNBelow:
    """Wraps a flow: NaN wherever t < threshold."""

    def __init__(self, flow, threshold):
        self.flow, self.threshold = flow, threshold
        self.t_min, self.t_max = flow.t_min, flow.t_max

    def drift(self, x, t):
        out = self.flow.drift(x, t)
        tt = torch.as_tensor(t, dtype=F64).reshape(-1).expand(x.shape[0])
        return torch.where((tt < self.threshold).unsqueeze(-1), torch.full_like(out, NAN), out)


# =========================================================================================
# Convergence order of the fixed-step solvers
# =========================================================================================

def expected_order(proc_name, solver):
    if proc_name == "EDM" and solver == "midpoint":
        return 3  # principal error term vanishes for this problem, see module docstring
    return FIXED[solver]


@pytest.mark.parametrize("solver", list(FIXED))
@pytest.mark.parametrize("proc_name", ["VE", "VP", "EDM"])
def test_fixed_step_order_on_exact_gaussian_flow(proc_name, solver):
    proc, flow, x0 = setup(proc_name)
    errs = []
    for n in (64, 128):
        ts = fs.make_grid(proc, "log_sigma", n)
        sol = fs.solve(flow, x0, ts, solver)
        assert sol.success
        errs.append(max_err(sol.x, exact_map(proc_name, x0, ts[0], ts[-1])))
    order = measured_order(*errs)
    assert abs(order - expected_order(proc_name, solver)) <= 0.3, (errs, order)


def test_midpoint_superconvergence_is_a_property_of_the_problem():
    """The order-3 exception above is the problem's, not the solver's: on the same EDM flow
    with non-Gaussian (mixture) data the midpoint rule is 2nd order. Reference: rk4, 8x finer."""
    proc = fs.EDM(sigma_min=0.5, sigma_max=10.0)
    data = fs.toy.GaussianMixture([[1.0, 0.0], [-1.0, 0.5]], [0.4, 0.7])
    flow = fs.probability_flow(proc, fs.exact_field(proc, data))
    x0 = proc.prior_std * torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    ref = fs.solve(flow, x0, fs.make_grid(proc, "log_sigma", 256), "rk4").x
    errs = [max_err(fs.solve(flow, x0, fs.make_grid(proc, "log_sigma", n), "midpoint").x, ref) for n in (32, 64)]
    assert abs(measured_order(*errs) - 2) <= 0.3, errs


# PFGM++: no closed form for Gaussian data, so the reference is dopri5 at rtol = atol = 1e-9
# (a different code path from the fixed-step loop; its error, ~1e-9, is < 0.1 % of the
# smallest error measured). D = 1 (Cauchy kernel), where the PF-ODE is furthest from the
# Gaussian one: for large D the midpoint rule inherits EDM's near-cancellation of its
# principal error and its order is only visible at very fine grids. The exact PFGM++ field
# costs ~6 ms per call (scale-mixture quadrature), so this is sized to ~700 calls.
PFGM_CASES = {"euler": (8, 16), "heun": (16, 32), "ralston": (8, 16), "rk4": (8, 16), "midpoint": (32, 64)}


@pytest.fixture(scope="module")
def pfgm_problem():
    proc = fs.PFGMPP(D=1.0, sigma_min=0.2, sigma_max=20.0)
    flow = fs.probability_flow(proc, fs.exact_field(proc, fs.toy.Gaussian(torch.tensor([0.5]), torch.tensor([0.3]))))
    x0 = proc.prior_sample(2, 1, generator=torch.Generator().manual_seed(3), dtype=F64)
    ref = fs.solve(flow, x0, (proc.t_max, proc.t_min), "dopri5", rtol=1e-9, atol=1e-9)
    assert ref.success
    return proc, flow, x0, ref.x


@pytest.mark.parametrize("solver", list(PFGM_CASES))
def test_fixed_step_order_on_pfgmpp(pfgm_problem, solver):
    proc, flow, x0, ref = pfgm_problem
    errs = [max_err(fs.solve(flow, x0, fs.make_grid(proc, "log_sigma", n), solver).x, ref)
            for n in PFGM_CASES[solver]]
    assert min(errs) > 1e-6, errs  # far above the reference's own error
    assert abs(measured_order(*errs) - FIXED[solver]) <= 0.3, errs


# =========================================================================================
# A user's own ODE
# =========================================================================================

@pytest.mark.parametrize("direction", ["backward", "forward"])
@pytest.mark.parametrize("solver", list(FIXED))
def test_user_ode_fixed_step(solver, direction):
    t0, t1 = (2.0, 0.25) if direction == "backward" else (0.25, 2.0)
    x0 = torch.tensor([[1.0], [-0.5], [1e-2]], dtype=F64) * (1.0 if t0 > t1 else 50.0)
    exact = Gauss.exact(x0, t0, t1)
    errs = []
    for n in (40, 80):
        sol = fs.solve(Gauss(), x0, torch.linspace(t0, t1, n + 1, dtype=F64), solver)
        assert sol.success and torch.equal(sol.t, torch.full((3,), t1, dtype=F64))
        errs.append(max_err(sol.x, exact) / float(exact.abs().max()))
    assert abs(measured_order(*errs) - FIXED[solver]) <= 0.3, errs


@pytest.mark.parametrize("direction", ["backward", "forward"])
@pytest.mark.parametrize("solver", ADAPTIVE)
def test_user_ode_adaptive(solver, direction):
    t0, t1 = (2.0, 0.0) if direction == "backward" else (0.0, 2.0)
    x0 = torch.tensor([[1.0], [-0.5], [3.0]], dtype=F64)
    sol = fs.solve(Gauss(), x0, (t0, t1), solver, rtol=1e-8, atol=1e-10)
    assert sol.success, sol
    assert torch.equal(sol.t, torch.full((3,), t1, dtype=F64))
    exact = Gauss.exact(x0, t0, t1)
    assert torch.all((sol.x - exact).abs() <= 10 * (1e-10 + 1e-8 * exact.abs())), (sol.x, exact)


# =========================================================================================
# Adaptive solvers
# =========================================================================================

@pytest.mark.parametrize("solver", ADAPTIVE)
@pytest.mark.parametrize("proc_name", ["VE", "VP", "EDM"])
def test_adaptive_error_within_small_multiple_of_tolerance(proc_name, solver):
    proc, flow, x0 = setup(proc_name, n=16)
    exact = exact_map(proc_name, x0, proc.t_max, proc.t_min)
    nfes = []
    for tol in (1e-3, 1e-5, 1e-7):
        sol = fs.solve(flow, x0, (proc.t_max, proc.t_min), solver, rtol=tol, atol=tol)
        assert sol.success, sol
        assert torch.equal(sol.t, torch.full((16,), proc.t_min, dtype=F64))
        ratio = (sol.x - exact).abs() / (tol + tol * exact.abs())
        assert float(ratio.max()) <= 10.0, (tol, float(ratio.max()))
        assert torch.equal(sol.n_steps, sol.n_accepted + sol.n_rejected)
        nfes.append(float(sol.nfe.double().mean()))
    assert nfes[0] < nfes[1] < nfes[2], nfes


@pytest.mark.parametrize("solver, new_per_step", [("bosh3", 3), ("dopri5", 6)])
def test_adaptive_nfe_is_counted_per_sample(solver, new_per_step):
    """Per-sample nfe of an FSAL pair (bosh3: 4 stages, dopri5: 7; the last stage of an
    accepted step is the next first one): one call at t0, one probe for Hairer's starting
    step, then stages - 1 new calls per attempted step, accepted or rejected."""
    x0 = torch.tensor([[1.0, 0.1], [1.0, 10.0], [1.0, 200.0]], dtype=F64)
    sol = fs.solve(StiffDecay(), x0, (0.0, 1.0), solver, rtol=1e-6, atol=1e-9)
    assert sol.success and int(sol.n_rejected.sum()) > 0  # rejections happen and are counted
    assert torch.equal(sol.nfe, 2 + new_per_step * sol.n_steps), (sol.nfe, sol.n_steps)


@pytest.mark.parametrize("direction", ["backward", "forward"])
@pytest.mark.parametrize("solver", ADAPTIVE)
@pytest.mark.parametrize("proc_name", ["VP", "EDM"])
def test_adaptive_never_evaluates_outside_the_span(proc_name, solver, direction):
    proc, flow, x0 = setup(proc_name)
    spy = Spy(flow)
    t0, t1 = (proc.t_max, proc.t_min) if direction == "backward" else (proc.t_min, proc.t_max)
    sol = fs.solve(spy, x0, (t0, t1), solver, rtol=1e-5, atol=1e-5)
    times = spy.all_times()
    assert bool(((times >= proc.t_min) & (times <= proc.t_max)).all()), (float(times.min()), float(times.max()))
    assert sol.success, sol
    exact = exact_map(proc_name, x0, t0, t1)
    assert float(((sol.x - exact).abs() / (1e-5 + 1e-5 * exact.abs())).max()) <= 10.0


@pytest.mark.parametrize("solver", ADAPTIVE)
def test_adaptive_never_evaluates_outside_a_sub_span(solver):
    proc, flow, x0 = setup("VP")
    t0, t1 = 0.6, 0.05
    spy = Spy(flow, lo=t1, hi=t0)
    sol = fs.solve(spy, x0, (t0, t1), solver, rtol=1e-6, atol=1e-6)
    times = spy.all_times()
    assert bool(((times >= t1) & (times <= t0)).all()), (float(times.min()), float(times.max()))
    assert sol.success
    exact = exact_map("VP", x0, t0, t1)
    assert float(((sol.x - exact).abs() / (1e-6 + 1e-6 * exact.abs())).max()) <= 10.0


class Slow:
    """dx/dt = -eps x on [0, 1]: |x|/|drift| = 1/eps, so Hairer's first guess 0.01 |x|/|f|
    (and its probe point t0 + h0) lands far outside the span unless capped."""

    t_min, t_max = 0.0, 1.0
    eps = 1e-7

    def drift(self, x, t):
        return -self.eps * x


@pytest.mark.parametrize("direction", ["backward", "forward"])
@pytest.mark.parametrize("solver", ADAPTIVE)
def test_adaptive_first_step_probe_stays_inside_the_span(solver, direction):
    t0, t1 = (0.8, 0.3) if direction == "backward" else (0.3, 0.8)
    spy = Spy(Slow(), lo=0.3, hi=0.8)
    x0 = torch.tensor([[1.0], [-2.0]], dtype=F64)
    sol = fs.solve(spy, x0, (t0, t1), solver, rtol=1e-6, atol=1e-9)
    times = spy.all_times()
    assert bool(((times >= 0.3) & (times <= 0.8)).all()), (float(times.min()), float(times.max()))
    assert sol.success, sol
    torch.testing.assert_close(sol.x, x0 * math.exp(-Slow.eps * (t1 - t0)), rtol=1e-9, atol=0)


@pytest.mark.parametrize("solver", ADAPTIVE)
@pytest.mark.parametrize("proc_name", ["VP", "EDM"])
def test_adaptive_save_at_exact_times(proc_name, solver):
    proc, flow, x0 = setup(proc_name)
    t0, t1 = proc.t_max, proc.t_min
    want = [t1, 0.5 * (t0 + t1), t0, 0.1 * t0 + 0.9 * t1, 0.37 * t0]  # unsorted, ends included
    sol = fs.solve(flow, x0, (t0, t1), solver, rtol=1e-7, atol=1e-7, save_at=want)
    assert sol.success
    order = sorted(want, reverse=True)
    assert sol.ts.tolist() == order  # exactly those times, in the direction of integration
    assert sol.xs.shape == (len(want), *x0.shape)
    for j, t in enumerate(order):
        exact = exact_map(proc_name, x0, t0, t)
        assert float(((sol.xs[j] - exact).abs() / (1e-7 + 1e-7 * exact.abs())).max()) <= 10.0, t
    assert torch.equal(sol.xs[-1], sol.x)


def test_adaptive_save_at_does_not_change_the_endpoint_much():
    proc, flow, x0 = setup("VE")
    a = fs.solve(flow, x0, (1.0, 0.0), "dopri5", rtol=1e-6, atol=1e-6)
    b = fs.solve(flow, x0, (1.0, 0.0), "dopri5", rtol=1e-6, atol=1e-6, save_at=[0.3, 0.7])
    exact = exact_map("VE", x0, 1.0, 0.0)
    for sol in (a, b):
        assert float(((sol.x - exact).abs() / (1e-6 + 1e-6 * exact.abs())).max()) <= 10.0


def test_adaptive_save_at_outside_span_refused():
    proc, flow, x0 = setup("EDM")
    with pytest.raises(ValueError, match="save_at"):
        fs.solve(flow, x0, (proc.t_max, 1.0), "dopri5", save_at=[0.5])


# =========================================================================================
# Adaptive RK: per-sample faults
# =========================================================================================

@pytest.mark.parametrize("solver", ADAPTIVE)
def test_adaptive_max_steps_returns_partial_solution(solver):
    proc, flow, x0 = setup("VP")
    t0, t1 = proc.t_max, proc.t_min
    sol = fs.solve(flow, x0, (t0, t1), solver, rtol=1e-6, atol=1e-6, max_steps=3)
    assert sol.status == "max_steps" and not sol.success
    assert "max_steps" in sol.message
    assert bool(sol.failed.all()) and bool((sol.fault == MAX_STEPS).all())
    assert bool(torch.isfinite(sol.x).all())
    assert bool(((sol.t < t0) & (sol.t > t1)).all()), sol.t
    assert torch.all(sol.n_steps == 3)
    # the partial state is the trajectory's state at the reported time, to tolerance
    exact = exact_map_per_sample("VP", x0, t0, sol.t.tolist())
    assert float(((sol.x - exact).abs() / (1e-6 + 1e-6 * exact.abs())).max()) <= 10.0


@pytest.mark.parametrize("solver", ALL_ADAPTIVE)
def test_adaptive_max_steps_counts_per_sample(solver):
    """max_steps is a budget of attempts per sample: the easy row finishes within it, exactly as
    alone, while the stiff row stops there, marked max_steps."""
    k = torch.tensor([0.1, 1000.0], dtype=F64)
    x0 = torch.stack([torch.ones(2, dtype=F64), k], dim=-1)
    full = fs.solve(StiffDecay(), x0, (0.0, 1.0), solver, rtol=1e-6, atol=1e-9)
    cap = int(full.n_steps[0])  # enough for the easy row only
    assert cap < int(full.n_steps[1])
    sol = fs.solve(StiffDecay(), x0, (0.0, 1.0), solver, rtol=1e-6, atol=1e-9, max_steps=cap)
    assert sol.status == "max_steps" and "sample 1" in sol.message
    assert sol.failed.tolist() == [False, True] and sol.fault.tolist() == [0, MAX_STEPS]
    assert sol.n_steps.tolist() == [cap, cap]
    assert float(sol.t[0]) == 1.0 and 0.0 < float(sol.t[1]) < 1.0
    assert torch.equal(sol.x[0], full.x[0]) and int(sol.nfe[0]) == int(full.nfe[0])


@pytest.mark.parametrize("value", [0, -1, 2.5, "5", None, True, math.nan])
def test_adaptive_max_steps_is_validated(value):
    """(Before: 0, -1, nan and True stopped every sample at once with status 'max_steps', 2.5
    acted as 3, '5' and None raised TypeError from the loop.)"""
    with pytest.raises(ValueError, match="max_steps"):
        fs.solve(Decay(), torch.ones(2, 1, dtype=F64), (1.0, 0.0), "dopri5", max_steps=value)


@pytest.mark.parametrize("solver", ALL_ADAPTIVE)
def test_adaptive_nan_at_the_first_evaluation_fails_that_sample_alone(solver):
    x0 = flagged([1.0, 2.0, 0.5, -1.0], [1.0, -1.0, 1.0, 1.0])
    ode = Flagged(Decay(), threshold=math.inf)  # NaN at every time for a flagged sample
    sol = fs.solve(ode, x0, (0.0, 1.0), solver, rtol=1e-7, atol=1e-9)
    assert sol.status == "nonfinite" and "sample 1" in sol.message and "step 0" in sol.message, sol.message
    assert sol.failed.tolist() == [False, True, False, False]
    assert sol.fault.tolist() == [0, NONFINITE, 0, 0]
    assert torch.equal(sol.x[1], x0[1]) and float(sol.t[1]) == 0.0 and int(sol.n_steps[1]) == 0
    # the others ran to the end, each exactly as alone
    rest = [0, 2, 3]
    alone = fs.solve(ode, x0[rest], (0.0, 1.0), solver, rtol=1e-7, atol=1e-9)
    assert alone.success and bool((sol.t[rest] == 1.0).all())
    for name in ("x", "nfe", "n_steps"):
        assert torch.equal(getattr(sol, name)[rest], getattr(alone, name)), name
    torch.testing.assert_close(sol.x[rest, 0], x0[rest, 0] * math.exp(-1.0), rtol=1e-6, atol=0)


@pytest.mark.parametrize("solver", ALL_ADAPTIVE)
def test_underflow_stops_only_the_failing_sample(solver):
    """Sample 0 sees NaN for t < 0.5 (from t = 1 to 0): its steps are rejected until they
    underflow; it stops just above 0.5 and the message says the underflow followed non-finite
    values. The others reach t1 = 0 on the exact x(0) = e x(1)."""
    x0 = flagged([1.0, 1.0, 1.0], [-1.0, 1.0, 1.0])
    sol = fs.solve(Flagged(Decay(), threshold=0.5), x0, (1.0, 0.0), solver)
    assert sol.status == "underflow" and "sample 0" in sol.message and "non-finite" in sol.message, sol.message
    assert sol.failed.tolist() == [True, False, False] and sol.fault.tolist() == [UNDERFLOW, 0, 0]
    assert 0.5 <= float(sol.t[0]) < 0.51 and bool(torch.isfinite(sol.x).all())
    torch.testing.assert_close(sol.x[0, 0], torch.tensor(math.exp(1.0 - float(sol.t[0])), dtype=F64), rtol=1e-4,
                               atol=0)
    assert torch.equal(sol.t[1:], torch.zeros(2, dtype=F64))
    torch.testing.assert_close(sol.x[1:, 0], torch.full((2,), math.e, dtype=F64), rtol=1e-4, atol=0)


@pytest.mark.parametrize("solver, kw", [("heun", dict(steps=4)), ("dopri5", {})])
def test_message_when_every_sample_fails(solver, kw):
    x0 = flagged([1.0, 2.0], [-1.0, -1.0])
    sol = fs.solve(Flagged(Decay(), threshold=math.inf), x0, (1.0, 0.0), solver, **kw)
    assert bool(sol.failed.all()) and sol.message.startswith("all 2 sample(s) failed")
    assert "the others" not in sol.message, sol.message


@pytest.mark.parametrize("solver", ADAPTIVE)
def test_adaptive_nan_field_everywhere_reports_time_and_step(solver):
    """NaN at the first evaluation: every sample fails at once, at t0 and step 0, untouched."""
    proc, flow, x0 = setup("EDM")
    bad = NaNBelow(flow, threshold=float("inf"))
    sol = fs.solve(bad, x0, (proc.t_max, proc.t_min), solver)
    assert sol.status == "nonfinite" and bool(sol.failed.all()) and bool((sol.fault == NONFINITE).all())
    assert "t=" in sol.message and "step 0" in sol.message, sol.message
    assert torch.equal(sol.x, x0) and bool((sol.t == proc.t_max).all()) and bool((sol.n_steps == 0).all())


@pytest.mark.parametrize("solver", ADAPTIVE)
def test_adaptive_nan_field_mid_run(solver):
    """NaN for t < 1 on EDM (t from 80 to 0.002): the controller shrinks the step until
    underflow; the solution stays at the last accepted, finite state, at t >= 1."""
    proc, flow, x0 = setup("EDM")
    bad = NaNBelow(flow, threshold=1.0)
    sol = fs.solve(bad, x0, (proc.t_max, proc.t_min), solver, rtol=1e-5, atol=1e-5)
    assert sol.status == "underflow" and bool((sol.fault == UNDERFLOW).all()), sol
    assert "t=" in sol.message and "step" in sol.message and "non-finite" in sol.message, sol.message
    assert bool(torch.isfinite(sol.x).all())
    assert bool((sol.t >= 1.0).all()) and bool((sol.t < proc.t_max).all()), sol.t
    exact = exact_map_per_sample("EDM", x0, proc.t_max, sol.t.tolist())
    assert float(((sol.x - exact).abs() / (1e-5 + 1e-5 * exact.abs())).max()) <= 10.0


@pytest.mark.parametrize("solver", ALL_ADAPTIVE)
def test_atol_zero_with_zero_coordinates(solver):
    """atol = 0 is allowed: a coordinate that is zero (and stays zero) has a zero error scale and
    a zero error (0/0 counts as 0), also in the first-step rule; an all-zero sample too."""
    x0 = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, -3.0]], dtype=F64)
    sol = fs.solve(Decay(), x0, (1.0, 0.0), solver, rtol=1e-8, atol=0.0)
    assert sol.success, sol
    assert torch.equal(sol.x[:, 1][:2], torch.zeros(2, dtype=F64)) and torch.equal(sol.x[1], x0[1])
    exact = x0 * math.e
    assert bool(((sol.x - exact).abs() <= 10 * 1e-8 * exact.abs()).all()), sol.x - exact


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-300), (torch.float64, 1e-17), (torch.float32, 1e-7)])
def test_unresolvable_rtol_refused_before_any_evaluation(dtype, rtol):
    calls = []

    class Counting(Decay):
        def drift(self, x, t):
            calls.append(t)
            return -x

    with pytest.raises(ValueError, match=rf"rtol={rtol!r}.*{dtype}"):
        fs.solve(Counting(), torch.ones(2, 1, dtype=dtype), (1.0, 0.0), "dopri5", rtol=rtol, atol=0.0)
    assert calls == []
    # at the floor (4 eps) it runs; rtol = 0 with atol > 0 is a pure absolute tolerance
    floor = 4 * torch.finfo(dtype).eps
    assert fs.solve(Counting(), torch.ones(2, 1, dtype=dtype), (1.0, 0.0), "dopri5", rtol=floor, atol=0.0,
                    max_steps=3).nfe.gt(0).all()
    assert fs.solve(Counting(), torch.ones(2, 1, dtype=dtype), (1.0, 0.0), "dopri5", rtol=0.0, atol=1e-4).success


# =========================================================================================
# Fixed-step bookkeeping and faults
# =========================================================================================

@pytest.mark.parametrize("solver", list(FIXED))
def test_fixed_step_counts(solver):
    proc, flow, x0 = setup("VP", n=5)
    steps = 7
    sol = fs.solve(flow, x0, fs.make_grid(proc, "karras", steps), solver)
    assert sol.success and sol.status == "success" and sol.message == ""
    for name, want in (("nfe", steps * STAGES[solver]), ("n_steps", steps), ("n_accepted", steps),
                       ("n_rejected", 0)):
        v = getattr(sol, name)
        assert v.dtype == torch.int64 and v.shape == (5,), name
        assert torch.all(v == want), (name, v)
    assert torch.equal(sol.t, torch.full((5,), proc.t_min, dtype=F64))


def _counting(flow):
    class Counting:
        t_min, t_max = flow.t_min, flow.t_max
        calls = 0

        def drift(self, x, t):
            Counting.calls += 1
            return flow.drift(x, t)

    return Counting()


@pytest.mark.parametrize("solver", list(FIXED) + ADAPTIVE)
def test_reported_nfe_matches_actual_calls(solver):
    """The per-sample nfe equals the number of times the field was actually called (every
    call here covers every active sample; for adaptive solvers sum over calls is checked)."""
    proc, flow, x0 = setup("EDM", n=1)
    f = _counting(flow)
    ts = fs.make_grid(proc, "karras", 6) if solver in FIXED else (proc.t_max, proc.t_min)
    sol = fs.solve(f, x0, ts, solver)
    assert int(sol.nfe[0]) == type(f).calls


@pytest.mark.parametrize("flags", [(-1.0, -1.0), (1.0, -1.0, 1.0)], ids=["every-sample", "one-sample"])
@pytest.mark.parametrize("solver", list(FIXED))
def test_fixed_step_nonfinite_field_freezes_the_sample(solver, flags):
    """A sample whose field goes NaN (t < 0.9 on the grid 2, 1.75, ..., 0) is frozen at its last
    finite state -- the state the same solve had at that step -- and marked failed at that step
    (``n_steps``, ``t``, message); the other samples finish exactly as when solved alone."""
    ts = torch.linspace(2.0, 0.0, 9, dtype=F64)  # h = -0.25
    threshold = 0.9
    # first step one of whose stage times t_i + c h falls below the threshold
    k = next(i for i in range(8) if any(float(ts[i]) - 0.25 * c < threshold for c in NODES[solver]))
    flag = torch.tensor(flags, dtype=F64)
    bad = flag < 0
    x0 = flagged(torch.linspace(1.0, 2.0, len(flags)), flag)
    sol = fs.solve(Flagged(Gauss(), threshold), x0, ts, solver, save_at=True)
    clean = fs.solve(Flagged(Gauss()), x0, ts, solver, save_at=True)
    assert sol.status == "nonfinite" and not sol.success and clean.success
    assert f"step {k}" in sol.message and f"t={float(ts[k])!r}" in sol.message, sol.message
    assert torch.equal(sol.failed, bad) and torch.equal(sol.fault, torch.where(bad, NONFINITE, 0))
    assert torch.equal(sol.n_steps, torch.where(bad, k, 8)) and torch.equal(sol.t, torch.where(bad, ts[k], 0.0))
    assert torch.equal(sol.x[bad], clean.xs[k][bad])  # the last finite state ...
    assert torch.equal(sol.xs[k, bad], sol.x[bad])  # ... saved at the last time it reached,
    assert bool(sol.xs[k + 1:, bad].isnan().all())  # ... and NaN at the times it never reached
    if not bool(bad.all()):
        alone = fs.solve(Flagged(Gauss(), threshold), x0[~bad], ts, solver)
        assert alone.success and torch.equal(sol.x[~bad], alone.x) and torch.equal(sol.nfe[~bad], alone.nfe)
        assert torch.equal(sol.xs[:, ~bad], clean.xs[:, ~bad])


@pytest.mark.parametrize("solver", ["heun", "rk4"])
def test_fixed_step_save_at(solver):
    proc, flow, x0 = setup("EDM")
    ts = fs.make_grid(proc, "karras", 40)
    every = fs.solve(flow, x0, ts, solver, save_at=True)
    assert torch.equal(every.ts, ts) and every.xs.shape == (41, *x0.shape)
    assert torch.equal(every.xs[0], x0) and torch.equal(every.xs[-1], every.x)
    some = fs.solve(flow, x0, ts, solver, save_at=[float(ts[10]), float(ts[25])])
    assert torch.equal(some.xs, every.xs[[10, 25]])
    for j in (10, 25, 40):
        exact = exact_map("EDM", x0, ts[0], ts[j])
        assert max_err(every.xs[j], exact) < 0.05 * float(exact.abs().max())
    with pytest.raises(ValueError, match="save_at"):
        fs.solve(flow, x0, ts, solver, save_at=[0.5 * float(ts[10] + ts[11])])


def test_solve_does_not_modify_input():
    proc, flow, x0 = setup("VE")
    keep = x0.clone()
    fs.solve(flow, x0, fs.make_grid(proc, "uniform", 4), "rk4")
    fs.solve(flow, x0, (1.0, 0.0), "dopri5", max_steps=2)
    assert torch.equal(x0, keep)


# =========================================================================================
# Registry and user tableaus
# =========================================================================================

KNOWN = {"euler": (1, 1, False), "midpoint": (2, 2, False), "heun": (2, 2, False), "ralston": (2, 2, False),
         "rk4": (4, 4, False), "bosh3": (3, 3, True), "dopri5": (5, 6, True)}


def test_available_solvers_lists_runge_kutta_info():
    info = fs.available_solvers()
    assert set(KNOWN) <= set(info)
    for name, (order, nfe, adaptive) in KNOWN.items():
        d = info[name]
        assert {"kind", "order", "nfe_per_step", "adaptive", "process_aware"} <= set(d)
        assert d["kind"] == "ode" and d["order"] == order and d["nfe_per_step"] == nfe
        assert d["adaptive"] is adaptive and d["process_aware"] is False
    for name, d in info.items():
        assert d["kind"] in ("ode", "sde") and d["nfe_per_step"] >= 1 and d["order"] > 0, name


KUTTA3 = dict(c=(0, 0.5, 1), a=((), (0.5,), (-1, 2)), b=(1 / 6, 2 / 3, 1 / 6))


@pytest.fixture
def kutta3():
    name = "test_kutta3"
    tab = fs.ButcherTableau(name, 3, **KUTTA3)

    def kutta(term, x, ts, *, save=None):
        return run_fixed_grid(term, x, ts, lambda i, x, t0, t1: rk_step(tab, term, x, t0, t1), save)

    info = fs.register_solver(name, kutta, kind="ode", order=3, nfe_per_step=3,
                              description="Kutta's third-order method")
    yield name, info
    registry._REGISTRY.pop(name, None)


def test_registered_tableau_works_through_solve_and_is_third_order(kutta3):
    name, _ = kutta3
    info = fs.available_solvers()[name]
    assert info["order"] == 3 and info["nfe_per_step"] == 3 and info["adaptive"] is False
    proc, flow, x0 = setup("VP")
    errs = []
    for n in (64, 128):
        ts = fs.make_grid(proc, "log_sigma", n)
        sol = fs.solve(flow, x0, ts, name)
        assert torch.all(sol.nfe == 3 * n)
        errs.append(max_err(sol.x, exact_map("VP", x0, ts[0], ts[-1])))
    assert abs(measured_order(*errs) - 3) <= 0.3, errs
    # also a user ODE, forwards
    x = torch.tensor([[1.0]], dtype=F64)
    e = [max_err(fs.solve(Gauss(), x, torch.linspace(0.0, 1.5, n + 1, dtype=F64), name).x,
                 Gauss.exact(x, 0.0, 1.5)) for n in (40, 80)]
    assert abs(measured_order(*e) - 3) <= 0.3, e


def test_registered_solver_samples(kutta3):
    name, _ = kutta3
    proc = fs.VP()
    sol = fs.sample(proc, fs.exact_field(proc, DATA), 4, name, nfe=10)
    assert sol.success and torch.all(sol.nfe == 9)  # 3 steps of 3 stages fit in 10


def test_duplicate_solver_name_refused(kutta3):
    name, info = kutta3
    with pytest.raises(ValueError, match="already registered"):
        fs.register_solver(name, info.fn, kind="ode", order=3, nfe_per_step=3)
    with pytest.raises(ValueError, match="already registered"):
        fs.register_solver("rk4", info.fn, kind="ode", order=3, nfe_per_step=3)
    assert fs.available_solvers()["rk4"]["order"] == 4  # untouched


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="pde", order=1, nfe_per_step=1), "kind"),
    (dict(kind="ode", order=1, nfe_per_step=0), "nfe_per_step"),
    (dict(kind="ode", order=1, nfe_per_step=1.5), "nfe_per_step"),
])
def test_register_solver_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fs.register_solver("test_never_registered", lambda *a, **k: None, **kwargs)
    assert "test_never_registered" not in fs.available_solvers()


def test_bad_tableaus_refused():
    with pytest.raises(ValueError, match="sum to 1"):
        fs.ButcherTableau("bad_b", 3, c=(0, 0.5, 1), a=((), (0.5,), (-1, 2)), b=(1 / 6, 2 / 3, 1 / 3))
    with pytest.raises(ValueError, match="row"):
        fs.ButcherTableau("bad_c", 3, c=(0, 0.5, 1), a=((), (0.4,), (-1, 2)), b=(1 / 6, 2 / 3, 1 / 6))
    with pytest.raises(ValueError, match="lower-triangular"):
        fs.ButcherTableau("bad_a", 3, c=(0, 0.5, 1), a=((), (0.5,), (-1, 1, 1)), b=(1 / 6, 2 / 3, 1 / 6))
    fs.ButcherTableau("good", 3, **KUTTA3)  # the nearest valid one is accepted


@pytest.mark.parametrize("name", ["dopri5", "tsit5"])
def test_fifth_order_pairs_as_fixed_step_tableaus(name):
    """The 5th-order weights of each pair, run on a fixed grid, converge at order ~5 on a
    mixture's PF-ODE (reference: dopri5 at 1e-13)."""
    tab = {"dopri5": DOPRI5, "tsit5": TSIT5}[name]
    proc = fs.VP()
    flow = fs.probability_flow(proc, fs.exact_field(proc, fs.toy.random_mixture(2, 3, seed=1)))
    # start points of a fixed generator, not of fs.NoiseSource: the observed order at these step
    # counts depends on where the samples start (4.5 to 6.6 over a few draws at 16-64 steps), so
    # they are pinned, and the steps are 32-128, nearer the asymptote (5.1-5.4 for both here)
    x0 = proc.prior_std * torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = fs.solve(flow, x0, (1.0, 0.2), "dopri5", rtol=1e-13, atol=1e-13).x
    errs = []
    for n in (32, 64, 128):
        term = Term.for_state(flow, x0, name)
        sol = run_fixed_grid(term, x0.clone(), torch.linspace(1.0, 0.2, n + 1, dtype=F64),
                             lambda i, x, t0, t1: rk_step(tab, term, x, t0, t1))
        assert torch.all(sol.nfe == 7 * n)
        errs.append(float((sol.x - ref).abs().max()))
    orders = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert all(4.7 < o < 6.5 for o in orders), orders


def test_tsit5_adaptive_meets_tolerance():
    proc = fs.EDM()
    data = fs.toy.Gaussian([1.0, -2.0], [[1.0, 0.5], [0.5, 0.75]])
    flow = fs.probability_flow(proc, fs.exact_field(proc, data))
    x0 = proc.prior_std * fs.NoiseSource(0, 8, 2, dtype=torch.float64).randn()
    ref = fs.solve(flow, x0, (proc.t_max, proc.t_min), "dopri5", rtol=1e-12, atol=1e-12).x
    loose = fs.solve(flow, x0, (proc.t_max, proc.t_min), "tsit5", rtol=1e-5, atol=1e-5)
    tight = fs.solve(flow, x0, (proc.t_max, proc.t_min), "tsit5", rtol=1e-8, atol=1e-8)
    assert loose.success and tight.success
    assert float((tight.x - ref).abs().max()) < 10 * 1e-8 * max(1.0, float(ref.abs().max()))
    assert int(tight.nfe.min()) > int(loose.nfe.max())


class _ZeroDrift:
    t_min, t_max = 0.0, 1.0

    def drift(self, x, t):
        return torch.zeros_like(x)


def test_save_at_edge_cases_never_return_stale_memory():
    ode = _ZeroDrift()
    x0 = torch.ones(2, 1, dtype=torch.float64)
    # a save time within rounding of the end is the end
    sol = fs.solve(ode, x0, (1.0, 0.0), "dopri5", save_at=[0.5, 1e-17])
    assert sol.success and torch.equal(sol.xs, torch.ones(2, 2, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="distinct"):
        fs.solve(ode, x0, (1.0, 0.0), "dopri5", save_at=[0.5, 0.5])
    # a step clipped very short by a save time is not an underflow
    assert fs.solve(ode, x0, (1.0, 0.0), "dopri5", save_at=[0.5, 0.5 - 1e-15]).status == "success"
    assert fs.solve(ode, x0, (1.0, 0.0), "dopri5", first_step=1 - 1e-14).status == "success"
    # unreached save times (max_steps) are NaN, not uninitialised memory
    proc = fs.EDM()
    flow = fs.probability_flow(proc, fs.exact_field(proc, fs.toy.bimodal_1d()))
    part = fs.solve(flow, 80 * torch.ones(3, 1, dtype=torch.float64), (80.0, 0.002), "dopri5",
                    save_at=[1.0, 0.002], max_steps=3)
    assert part.status == "max_steps" and torch.isnan(part.xs).all()


def test_fixed_step_stages_stay_inside_the_span():
    proc = fs.EDM()
    field = fs.exact_field(proc, fs.toy.bimodal_1d())
    seen = []

    class Spy:
        t_min, t_max = proc.t_min, proc.t_max

        def drift(self, x, t):
            seen.append(float(t))
            return field.velocity(x, t)

    for solver in ["heun", "rk4", "ralston", "midpoint"]:
        fs.solve(Spy(), torch.ones(2, 1, dtype=torch.float64) * 3, fs.make_grid(proc, "karras", 7), solver)
    assert min(seen) >= proc.t_min and max(seen) <= proc.t_max


# =========================================================================================
# Every registered ODE solver at the entry: options, docstrings, spans, refusals
# =========================================================================================

def _ode_solvers(adaptive=None):
    """The ODE solvers flowsolve itself registers (not ones other tests register for a while)."""
    return [name for name, d in sorted(fs.available_solvers().items())
            if d["kind"] == "ode" and registry.get_solver(name).fn.__module__.startswith("flowsolve.")
            and (adaptive is None or d["adaptive"] is adaptive)]


ODE_SOLVERS, FIXED_ODE = _ode_solvers(), _ode_solvers(adaptive=False)
CONTROLLER_DEFAULTS = dict(rtol=1e-5, atol=1e-5, norm="rms", pcoeff=0.4, icoeff=0.3, dcoeff=0.0, safety=0.9,
                           factor_min=0.2, factor_max=10.0, first_step=None, dt_min=None, dt_max=None,
                           shared_step=False, error_scale="sum")
OPTIONS = {**{name: {} for name in ["euler", "midpoint", "heun", "ralston", "rk4",
                                    "dpm_solver_1", "dpm_solver_2", "dpm_solver_3", "dpm_2"]},
           "dpmpp_2m": {"lower_order_final": True},
           "unipc": {"lower_order_final": True, "order": 2, "variant": "bh2", "corrector": True},
           "deis": {"order": 3, "variant": "tAB"},
           "dpmpp_3m": {"lower_order_final": True, "variant": "exact"},
           "ipndm": {"max_order": 4}, "ipndm_v": {"max_order": 4, "variant": "exact"}, "lms": {"order": 4},
           **{name: {"max_steps": 10_000, **CONTROLLER_DEFAULTS} for name in ["bosh3", "tsit5", "dopri5"]},
           "dpm_adaptive": {"max_steps": 10_000, "orders": (2, 3), "prediction": "data", "check_end": True,
                            **dict(CONTROLLER_DEFAULTS, rtol=3e-3, atol=1e-2, pcoeff=0.0, icoeff=1.0, safety=0.7)}}


def _edm_problem(n=3):
    proc = fs.EDM()
    flow = fs.probability_flow(proc, fs.exact_field(proc, fs.toy.Gaussian(torch.tensor([0.5, -1.0], dtype=F64),
                                                                          torch.tensor([0.3, 0.8], dtype=F64))))
    x0 = proc.prior_std * torch.randn(n, 2, generator=torch.Generator().manual_seed(7), dtype=F64)
    return proc, flow, x0


def test_every_ode_solver_is_known_here():
    assert ODE_SOLVERS == sorted(OPTIONS), "a new ODE solver: add it to OPTIONS with its options"


@pytest.mark.parametrize("name", ODE_SOLVERS)
def test_available_solvers_lists_options_with_defaults(name):
    """The listed options and defaults are the solver's, and they are what it does when the
    option is left out: passing every listed default gives the bit-identical result."""
    listed = fs.available_solvers()[name]["options"]
    assert listed == OPTIONS[name]
    proc, flow, x0 = _edm_problem()
    adaptive = fs.available_solvers()[name]["adaptive"]
    ts = (proc.t_max, 1.0) if adaptive else fs.make_grid(proc, "karras", 5)
    a = fs.solve(flow, x0, ts, name)
    b = fs.solve(flow, x0, ts, name, **listed)
    assert a.success and torch.equal(a.x, b.x) and torch.equal(a.nfe, b.nfe)


@pytest.mark.parametrize("name", ODE_SOLVERS)
def test_every_ode_solver_has_a_docstring_naming_its_options(name):
    fn = getattr(fs.solvers, name)
    assert fn is registry.get_solver(name).fn
    doc = fn.__doc__ or ""
    assert len(doc.strip()) > 40, doc
    assert doc.strip().splitlines()[0] in pydoc.render_doc(fn)  # help() shows it
    own = registry.get_solver(name).options  # the solver's own options (controller fields apart)
    if not own:
        assert "No options" in doc, doc
    for option in own:
        assert option in doc, (option, doc)
    if fs.available_solvers()[name]["adaptive"]:
        assert "PIDController" in doc and "rtol" in doc and "atol" in doc and "controller=" in doc, doc


@pytest.mark.parametrize("name", ODE_SOLVERS)
def test_unknown_option_names_option_solver_category_and_choices(name):
    proc, flow, x0 = _edm_problem()
    info = fs.available_solvers()[name]
    category = "adaptive ODE" if info["adaptive"] else "fixed-step ODE"
    kw = {} if info["adaptive"] else {"steps": 4}
    with pytest.raises(ValueError) as err:
        fs.solve(flow, x0, (proc.t_max, 1.0), name, bogus_option=1, **kw)
    msg = str(err.value)
    assert all(s in msg for s in ("'bogus_option'", repr(name), category)), msg
    for option in info["options"]:
        assert option in msg, (option, msg)
    if not info["options"]:
        assert "no options" in msg, msg


def test_unknown_option_examples_from_the_issue():
    proc, flow, x0 = _edm_problem()
    with pytest.raises(ValueError, match=r"'rtol'.*'heun'.*fixed-step ODE"):
        fs.solve(flow, x0, (proc.t_max, 1.0), "heun", steps=4, rtol=1e-3)
    with pytest.raises(ValueError, match=r"'rtoll'.*'dopri5'.*adaptive ODE.*did you mean 'rtol'\?"):
        fs.solve(flow, x0, (proc.t_max, 1.0), "dopri5", rtoll=1e-3)
    with pytest.raises(ValueError, match=r"did you mean 'lower_order_final'\?"):
        fs.solve(flow, x0, (proc.t_max, 1.0), "dpmpp_2m", steps=4, lower_order_finall=False)
    with pytest.raises(ValueError, match=r"did you mean 'variant'\?"):
        fs.solve(flow, x0, (proc.t_max, 1.0), "dpmpp_3m", steps=4, varient="published")


@pytest.mark.parametrize("name", FIXED_ODE)
def test_fixed_step_solver_refuses_a_bare_span_and_takes_steps_or_dt(name):
    proc, flow, x0 = _edm_problem()
    calls = []

    def watch(i, t, x, d):
        calls.append(i)

    span = (proc.t_max, 1.0)
    with pytest.raises(ValueError, match=r"ONE step.*steps=N"):
        fs.solve(flow, x0, span, name, callback=watch)
    assert calls == []
    grid = torch.linspace(proc.t_max, 1.0, 6, dtype=F64)
    on_grid = fs.solve(flow, x0, grid, name)
    for kw in (dict(steps=5), dict(dt=17.0), dict(dt=(proc.t_max - 1.0) / 5)):  # dt: the fewest steps of <= dt
        sol = fs.solve(flow, x0, span, name, save_at=True, **kw)
        assert torch.equal(sol.ts, grid), kw
        assert torch.equal(sol.x, on_grid.x) and torch.equal(sol.nfe, on_grid.nfe), kw
    with pytest.raises(ValueError, match="full grid"):
        fs.solve(flow, x0, grid, name, steps=5)
    with pytest.raises(ValueError, match="steps= or dt="):
        fs.solve(flow, x0, span, name, steps=5, dt=1.0)


@pytest.mark.parametrize("name", ODE_SOLVERS)
def test_ode_solver_refuses_a_reverse_sde_and_randomness(name):
    proc, _, x0 = _edm_problem()
    field = fs.exact_field(proc, fs.toy.Gaussian(torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([0.3, 0.8],
                                                                                                    dtype=F64)))
    adaptive = fs.available_solvers()[name]["adaptive"]
    ts = (proc.t_max, 1.0) if adaptive else fs.make_grid(proc, "karras", 4)
    with pytest.raises(ValueError, match=rf"'{name}'.*ODE.*ReverseSDE.*pass fs\.probability_flow\(process, field\)"):
        fs.solve(fs.reverse_sde(proc, field), x0, ts, name)
    flow = fs.probability_flow(proc, field)
    for kw in (dict(seed=0), dict(generator=torch.Generator()), dict(noise=fs.NoiseSource(0, 3, 2))):
        with pytest.raises(ValueError, match=rf"{next(iter(kw))} given.*draws no noise"):
            fs.solve(flow, x0, ts, name, **kw)
