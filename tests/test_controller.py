"""Step-size control: ``fs.PIDController`` on its own (validation, error ratio, step factor,
resolvable tolerances) and inside ``run_adaptive`` / ``fs.solve`` (options vs ``controller=``,
shared and per-sample steps, ``dt_max``, ``dt_min``, ``first_step``).

The references are written here: the step factor from the formula in plain Python floats, the
step sequence of the adaptive loop from a scripted method whose error estimates are given, so
the controller's arithmetic and the loop's bookkeeping (which errors count as the last two
accepted ones) are checked independently of any ODE.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import flowsolve as fs
from flowsolve.solvers import run_adaptive
from flowsolve.solvers.term import Term

F64 = torch.float64
P = fs.PIDController


class Decay:
    """State (x, k): dx/dt = -k x, dk/dt = 0, so each row carries its own stiffness; records the
    times of every drift call (a float, or one time per row)."""

    t_min, t_max = 0.0, 1.0

    def __init__(self):
        self.times = []

    def drift(self, x, t):
        self.times.append(torch.as_tensor(t, dtype=F64).reshape(-1).expand(x.shape[0]).clone())
        return torch.stack([-x[:, 1] * x[:, 0], torch.zeros_like(x[:, 1])], dim=-1)


def decay_state(*k):
    k = torch.tensor(k, dtype=F64)
    return torch.stack([torch.ones_like(k), k], dim=-1)


# =========================================================================================
# Validation
# =========================================================================================

NOT_NUMBERS = ["1e-3", None, True, 1 + 0j, [1e-3], torch.tensor([1e-3, 1e-3])]
BAD = (
    [("rtol", v) for v in (-1e-3, math.nan, math.inf, *NOT_NUMBERS)]
    + [("atol", v) for v in (-1e-3, math.nan, math.inf, *NOT_NUMBERS)]
    + [("norm", v) for v in ("l2", "RMS", None, 2)]
    + [(c, v) for c in ("pcoeff", "icoeff", "dcoeff") for v in (-0.1, math.nan, math.inf, "0.3", False)]
    + [("safety", v) for v in (0.0, -0.5, 1.0 + 1e-12, math.nan, "0.9")]
    + [("factor_min", v) for v in (-0.1, 1.0, 2.0, math.nan, "0.2")]
    + [("factor_max", v) for v in (1.0, 0.5, math.nan, -math.inf, "10")]
    + [(c, v) for c in ("first_step", "dt_min", "dt_max") for v in (0.0, -0.1, math.nan, math.inf, "0.1", True)]
    + [("shared_step", v) for v in (1, 0, "yes", None)]
    + [("error_scale", v) for v in ("mean", None, "SUM")]
)


@pytest.mark.parametrize("name, value", BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_each_field_is_validated(name, value):
    with pytest.raises(ValueError, match=name):
        P(**{name: value})


GOOD = [("rtol", 0.0), ("rtol", 1e300), ("atol", 0.0), ("pcoeff", 0.0), ("icoeff", 0.0), ("dcoeff", 0.2),
        ("safety", 1.0), ("safety", 1e-9), ("factor_min", 0.0), ("factor_min", 0.999), ("factor_max", 1.0001),
        ("factor_max", math.inf), ("first_step", 1e-300), ("dt_min", 1e-300), ("dt_max", 1e300),
        ("shared_step", np.bool_(True)), ("error_scale", "max"), ("norm", "max"), ("rtol", np.float32(1e-3)),
        ("rtol", torch.tensor(1e-3, dtype=F64))]


@pytest.mark.parametrize("name, value", GOOD, ids=[f"{n}={v!r}" for n, v in GOOD])
def test_boundary_values_are_accepted(name, value):
    c = P(**{name: value})
    got = getattr(c, name)
    if name in ("norm", "error_scale"):
        assert got == value
    elif name == "shared_step":
        assert got is True
    else:
        assert type(got) is float and got == float(value)  # stored as a Python float


def test_rtol_and_atol_both_zero_refused():
    with pytest.raises(ValueError, match="rtol.*atol"):
        P(rtol=0, atol=0)
    assert P(rtol=0, atol=1e-6).rtol == 0 and P(rtol=1e-6, atol=0).atol == 0


def test_pid_coefficients_must_not_all_vanish():
    with pytest.raises(ValueError, match="pcoeff"):
        P(pcoeff=0, icoeff=0, dcoeff=0)
    assert P(pcoeff=0, icoeff=0, dcoeff=0.1).dcoeff == 0.1


def test_dt_min_above_dt_max_refused():
    with pytest.raises(ValueError, match="dt_min.*dt_max"):
        P(dt_min=0.2, dt_max=0.1)
    c = P(dt_min=0.1, dt_max=0.1)
    assert c.dt_min == c.dt_max == 0.1


def test_unhashable_norm_refused_with_value_error():
    with pytest.raises(ValueError, match="norm"):
        P(norm=["rms"])


def test_options_given_to_solve_are_validated_by_name():
    """The controller's fields given as solver options go through the same checks (old names
    min_factor / max_factor / pi_beta are gone and are unknown options)."""
    x = decay_state(1.0, 2.0)
    for kw, name in [(dict(safety=1.5), "safety"), (dict(safety=-1.0), "safety"), (dict(factor_min=2.0), "factor_min"),
                     (dict(factor_max=0.5), "factor_max"), (dict(pcoeff=math.nan), "pcoeff"),
                     (dict(first_step=0.0), "first_step"), (dict(first_step=-0.1), "first_step"),
                     (dict(first_step=math.nan), "first_step"), (dict(first_step=math.inf), "first_step"),
                     (dict(min_factor=0.2), "unknown option 'min_factor'"),
                     (dict(max_factor=5.0), "unknown option 'max_factor'"),
                     (dict(pi_beta=(0.7, 0.4)), "unknown option 'pi_beta'")]:
        with pytest.raises(ValueError, match=name):
            fs.solve(Decay(), x, (0.0, 1.0), "dopri5", **kw)


# =========================================================================================
# The error of an attempt
# =========================================================================================

def test_error_ratio_rms_with_the_sum_scale():
    c = P(rtol=1e-2, atol=1e-3)
    a = torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.0, 3.0]], dtype=F64)
    b = torch.tensor([[1.5, 1.0, 0.0], [-4.0, 0.1, 2.0]], dtype=F64)
    err = torch.tensor([[1e-3, -2e-3, 5e-4], [0.0, 1e-2, -1e-3]], dtype=F64)
    want = [math.sqrt(sum((e / (1e-3 + 1e-2 * max(abs(p), abs(q)))) ** 2 for e, p, q in zip(*rows)) / 3)
            for rows in zip(err.tolist(), a.tolist(), b.tolist())]
    got = c.error_ratio(err, a, b)
    assert got.dtype == F64 and got.shape == (2,)
    assert got.tolist() == pytest.approx(want, rel=1e-14)


def test_error_ratio_max_scale_and_max_norm():
    """``error_scale="max"``: scale = max(atol, rtol |x|); ``norm="max"``: the largest ratio."""
    a = torch.tensor([[10.0, 0.0, -0.05]], dtype=F64)
    err = torch.tensor([[0.05, 1e-3, -2e-3]], dtype=F64)
    scales = [max(1e-2, 1e-2 * 10.0), 1e-2, max(1e-2, 1e-2 * 0.05)]  # 0.1, 0.01, 0.01
    ratios = [abs(e) / s for e, s in zip(err[0].tolist(), scales)]  # 0.5, 0.1, 0.2
    rms = P(rtol=1e-2, atol=1e-2, error_scale="max").error_ratio(err, a, a)
    mx = P(rtol=1e-2, atol=1e-2, error_scale="max", norm="max").error_ratio(err, a, a)
    assert float(rms[0]) == pytest.approx(math.sqrt(sum(r * r for r in ratios) / 3), rel=1e-14)
    assert float(mx[0]) == pytest.approx(max(ratios), rel=1e-14)
    # the same numbers under the "sum" scale differ: the scale is atol + rtol |x|
    summed = P(rtol=1e-2, atol=1e-2, norm="max").error_ratio(err, a, a)
    assert float(summed[0]) == pytest.approx(max(abs(e) / (1e-2 + 1e-2 * abs(v)) for e, v in
                                                 zip(err[0].tolist(), a[0].tolist())), rel=1e-14)


def test_error_ratio_callable_norm_gets_the_per_sample_ratios():
    seen = []

    def l1(v):
        seen.append(v.clone())
        return v.reshape(v.shape[0], -1).abs().sum(-1)

    x = torch.ones(2, 2, 3, dtype=F64)  # image-like event shape: the norm reduces all but dim 0
    err = torch.arange(12, dtype=F64).reshape(2, 2, 3) * 1e-3
    got = P(rtol=0.0, atol=1e-3, norm=l1).error_ratio(err, x, x)
    assert seen[0].shape == (2, 2, 3) and torch.allclose(seen[0], err / 1e-3, rtol=1e-15, atol=0)
    assert got.tolist() == pytest.approx([sum(range(6)), sum(range(6, 12))], rel=1e-14)


def test_error_ratio_atol_zero_with_zero_coordinates():
    """A zero scale (atol = 0 and |x| = 0): zero error gives 0 (0/0 -> 0), any other error inf."""
    c = P(rtol=1e-3, atol=0.0)
    zero = torch.zeros(3, 2, dtype=F64)
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]], dtype=F64)
    err = torch.tensor([[0.0, 0.0], [1e-300, 0.0], [1e-4, 0.0]], dtype=F64)
    got = c.error_ratio(err, x, zero)
    assert got[0] == 0.0 and got[1] == math.inf
    assert float(got[2]) == pytest.approx(math.sqrt(0.1 ** 2 / 2), rel=1e-14)
    assert c.with_options(norm="max").error_ratio(err, x, zero).tolist() == [0.0, math.inf, pytest.approx(0.1)]


# =========================================================================================
# The step factor
# =========================================================================================

def reference_factor(c: P, e, e1, e2, accepted: bool, q: float) -> float:
    """The factor as the docs write it, in Python floats: accepted
    ``safety e_n^-(p+i+d)/q e_{n-1}^((p+2d)/q) e_{n-2}^(-d/q)`` clipped to [factor_min, factor_max];
    rejected ``safety e_n^(-1/q)`` clipped to [factor_min, 1]. A zero error is floored at 1e-10."""
    e, e1, e2 = (max(v, 1e-10) for v in (e, e1, e2))
    p, i, d = c.pcoeff, c.icoeff, c.dcoeff
    if accepted:
        f = c.safety * e ** (-(p + i + d) / q) * e1 ** ((p + 2 * d) / q) * e2 ** (-d / q)
        return min(max(f, c.factor_min), c.factor_max)
    f = c.safety * (0.0 if math.isinf(e) else e ** (-1 / q))
    return min(max(f, c.factor_min), 1.0)


@pytest.mark.parametrize("coeffs", [dict(), dict(pcoeff=0.0, icoeff=1.0), dict(pcoeff=0.3, icoeff=0.2, dcoeff=0.1),
                                    dict(safety=0.8, factor_min=0.1, factor_max=4.0)])
@pytest.mark.parametrize("q", [3.0, 5.0])
def test_factor_matches_the_formula(coeffs, q):
    c = P(**coeffs)
    g = np.random.default_rng(0)
    e = np.concatenate([10 ** g.uniform(-4, 1.5, 40), [0.0, 1.0, 1e-12, math.inf]])
    e1, e2 = 10 ** g.uniform(-3, 0, e.size), 10 ** g.uniform(-3, 0, e.size)
    acc = np.isfinite(e) & (e <= 1.0)
    got = c.factor(*(torch.tensor(v, dtype=F64) for v in (e, e1, e2)), torch.tensor(acc), q)
    want = [reference_factor(c, *vals, q) for vals in zip(e.tolist(), e1.tolist(), e2.tolist(), acc.tolist())]
    assert got.tolist() == pytest.approx(want, rel=1e-12)
    # the clipping is visible: zero error grows by factor_max, an infinite one shrinks by factor_min
    assert got[-4] == c.factor_max and got[-1] == c.factor_min


def test_default_pi_coefficients_are_the_old_pi_beta():
    """pcoeff=0.4, icoeff=0.3 is Gustafsson's e_n^(-0.7/q) e_{n-1}^(0.4/q) (the old pi_beta=(0.7, 0.4))."""
    c = P()
    assert (c.pcoeff, c.icoeff, c.dcoeff) == (0.4, 0.3, 0.0)
    e, e1 = torch.tensor([0.3], dtype=F64), torch.tensor([0.6], dtype=F64)
    got = float(c.factor(e, e1, torch.ones(1, dtype=F64), torch.tensor([True]), 5.0))
    assert got == pytest.approx(0.9 * 0.3 ** (-0.7 / 5) * 0.6 ** (0.4 / 5), rel=1e-14)


class Scripted:
    """A method for ``run_adaptive`` whose error estimates are given in advance, per sample, one
    per attempt; it records the step size of every attempt. With ``rtol=0, atol=1`` the error
    ratio is the scripted number."""

    error_order = 3.0

    def __init__(self, errors, h0):
        self.errors = torch.tensor(errors, dtype=F64)  # (n, attempts)
        self.h0 = h0
        self.count = torch.zeros(len(errors), dtype=torch.long)
        self.steps = [[] for _ in errors]

    def init(self, term, x, t0):
        return {}

    def first_step(self, term, x, t0, t1, carry, controller):
        return torch.full((x.shape[0],), self.h0, dtype=F64)

    def attempt(self, term, x, t, t_next, h, carry, rows):
        for r, hr in zip(rows.tolist(), h.tolist()):
            self.steps[r].append(abs(hr))
        e = self.errors[rows, self.count[rows]]
        self.count[rows] += 1
        return x.clone(), e[:, None] * torch.ones_like(x), (x, x), {}

    def commit(self, term, rows, accepted, carry, carry_new, x_new, t_next):
        return {}


def reference_steps(c: P, errors, h0, q):
    """The step sizes the controller asks for, simulated from the docs: the last two *accepted*
    errors feed the PI(D) terms (1 before there are any); ``shared_step`` takes the batch's
    largest error, so one sequence serves every sample."""
    errors = [[math.inf if math.isnan(e) else e for e in row] for row in errors]
    if c.shared_step:
        errors = [[max(col) for col in zip(*errors)]]
    out = []
    for row in errors:
        h, e1, e2, hs = h0, 1.0, 1.0, []
        for e in row:
            hs.append(h)
            ok = e <= 1.0
            h = h * reference_factor(c, e, e1, e2, ok, q)
            if c.dt_max is not None:
                h = min(h, c.dt_max)
            if ok:
                e1, e2 = max(e, 1e-10), e1
        out.append(hs)
    return out


SCRIPTS = [[0.5, 2.0, 0.3, math.inf, 0.9, 0.05, 1.5, 0.0, 0.7, 0.2, math.nan, 1.0],
           [0.01, 0.02, 0.8, 1.2, 3.0, 0.4, 0.6, 0.1, 0.99, 1.01, 0.3, 0.5]]


@pytest.mark.parametrize("options", [dict(), dict(pcoeff=0.3, icoeff=0.2, dcoeff=0.1), dict(dt_max=3.0),
                                     dict(shared_step=True), dict(safety=0.7, factor_min=0.5, factor_max=2.0)])
def test_adaptive_loop_follows_the_controller(options):
    """run_adaptive's step sequence, per sample, is the documented controller fed with the
    errors of this and the last two accepted attempts (rejections do not enter the history)."""
    c = P(rtol=0.0, atol=1.0, dt_min=1e-9, **options)
    scripts = SCRIPTS
    if c.shared_step:  # a non-finite sample leaves the shared step (tested on its own below)
        scripts = [[5.0 if not math.isfinite(e) else e for e in row] for row in SCRIPTS]
    method = Scripted(scripts, h0=0.5)
    x = torch.ones(2, 3, dtype=F64)
    term = Term.for_state(object(), x, "scripted")
    sol = run_adaptive(term, x.clone(), 0.0, 1e6, method, c, None, max_steps=len(SCRIPTS[0]))
    assert sol.status == "max_steps" and torch.equal(sol.n_steps, torch.full((2,), len(SCRIPTS[0])))
    want = reference_steps(c, scripts, 0.5, Scripted.error_order)
    if c.shared_step:
        assert method.steps[0] == method.steps[1]
        want = want * 2
    for got, ref in zip(method.steps, want):
        assert got == pytest.approx(ref, rel=1e-12)
    accepted = [sum(1 for e in row if e <= 1.0) for row in SCRIPTS]
    if not c.shared_step:
        assert sol.n_accepted.tolist() == accepted and sol.n_rejected.tolist() == [12 - a for a in accepted]


# =========================================================================================
# Resolvable tolerances, with_options
# =========================================================================================

def test_check_resolvable_floor_is_four_eps_of_the_dtype():
    """A pure relative tolerance (atol = 0) below 4 eps of the state's dtype can never be met and is
    refused; with atol > 0 the absolute part can still be met, so a tiny rtol is allowed."""
    for dtype in (torch.float64, torch.float32, torch.float16):
        floor = 4 * torch.finfo(dtype).eps
        P(rtol=floor, atol=0.0).check_resolvable(dtype)
        P(rtol=0.0, atol=1e-6).check_resolvable(dtype)  # rtol 0: an absolute tolerance only
        below = float(np.nextafter(floor, 0.0))
        with pytest.raises(ValueError, match=rf"rtol.*{dtype}"):
            P(rtol=below, atol=0.0).check_resolvable(dtype)
        P(rtol=below, atol=1e-6).check_resolvable(dtype)
    with pytest.raises(ValueError, match="torch.float64"):
        P(rtol=1e-300, atol=0.0).check_resolvable(torch.float64)
    with pytest.raises(ValueError, match="torch.float32"):
        P(rtol=1e-7, atol=0.0).check_resolvable(torch.float32)
    P(rtol=1e-7, atol=0.0).check_resolvable(torch.float64)


def test_with_options_returns_a_validated_copy():
    c = P(rtol=1e-4, safety=0.8)
    d = c.with_options(rtol=1e-6, shared_step=True)
    assert (d.rtol, d.shared_step, d.safety, d.atol) == (1e-6, True, 0.8, c.atol)
    assert (c.rtol, c.shared_step) == (1e-4, False)  # the original is untouched (frozen)
    assert c.with_options() == c and d != c
    with pytest.raises(ValueError, match="safety"):
        c.with_options(safety=2.0)
    with pytest.raises(ValueError, match="dt_min"):
        c.with_options(dt_min=1.0, dt_max=0.5)
    with pytest.raises((TypeError, ValueError), match="rtoll"):
        c.with_options(rtoll=1e-3)
    with pytest.raises(Exception):
        c.rtol = 1.0  # frozen


# =========================================================================================
# Through fs.solve
# =========================================================================================

def test_controller_fields_as_options_equal_controller_argument():
    x = decay_state(0.5, 5.0)
    fields = dict(rtol=1e-6, atol=1e-8, pcoeff=0.3, icoeff=0.25, dcoeff=0.05, safety=0.8, factor_min=0.3,
                  factor_max=4.0, error_scale="max", norm="max")
    for solver in ("bosh3", "dopri5"):
        a = fs.solve(Decay(), x, (0.0, 1.0), solver, **fields)
        b = fs.solve(Decay(), x, (0.0, 1.0), solver, controller=P(**fields))
        default = fs.solve(Decay(), x, (0.0, 1.0), solver)
        assert a.success and b.success
        for name in ("x", "nfe", "n_steps", "n_accepted", "t"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (solver, name)
        assert not torch.equal(a.nfe, default.nfe)  # the fields were used


def test_controller_and_its_fields_together_refused():
    x = decay_state(1.0)
    with pytest.raises(ValueError, match="not both"):
        fs.solve(Decay(), x, (0.0, 1.0), "dopri5", controller=P(), rtol=1e-3)
    with pytest.raises(ValueError, match="PIDController"):
        fs.solve(Decay(), x, (0.0, 1.0), "dopri5", controller=dict(rtol=1e-3))
    with pytest.raises(ValueError, match="adaptive.*'heun'.*fixed-step ODE"):
        fs.solve(Decay(), x, (0.0, 1.0), "heun", steps=4, controller=P())
    # max_steps is the solver's option, not the controller's: it goes with controller=
    sol = fs.solve(Decay(), decay_state(1000.0), (0.0, 1.0), "dopri5", controller=P(), max_steps=2)
    assert sol.status == "max_steps" and int(sol.n_steps[0]) == 2


def test_shared_step_gives_one_step_sequence_for_the_batch():
    ode = Decay()
    x = decay_state(0.1, 1.0, 10.0, 100.0)
    sol = fs.solve(ode, x, (0.0, 1.0), "dopri5", rtol=1e-6, atol=1e-9, shared_step=True)
    assert sol.success and torch.all(sol.n_steps == sol.n_steps[0]) and torch.all(sol.nfe == sol.nfe[0])
    assert len(ode.times) == int(sol.nfe[0])  # every call evaluates the whole batch ...
    # ... at one time, once the first step is chosen (the first call and Hairer's probe are per sample)
    assert not torch.all(ode.times[1] == ode.times[1][0])
    assert all(torch.all(t == t[0]) for t in ode.times[2:])


def test_shared_step_nonfinite_sample_fails_alone():
    """With one step size for the batch, a sample whose field goes NaN mid-run (t < 0.5) should
    fail alone as with per-sample steps; today all three underflow at t = 0.5."""

    class HalfNaN(Decay):
        def drift(self, x, t):
            d = super().drift(x, t)
            tt = torch.as_tensor(t, dtype=F64).reshape(-1).expand(x.shape[0])
            return torch.where(((x[:, 1] > 5) & (tt < 0.5))[:, None], torch.full_like(d, math.nan), d)

    sol = fs.solve(HalfNaN(), decay_state(10.0, 1.0, 2.0), (1.0, 0.0), "dopri5", shared_step=True)
    assert sol.failed.tolist() == [True, False, False], sol
    assert torch.equal(sol.t[1:], torch.zeros(2, dtype=F64))


def test_per_sample_steps_vs_shared():
    """Moved from test_rk.py: stiffer rows need more steps with their own step size; shared, all
    rows take the stiffest row's steps; both meet the tolerance on the exact x(1) = e^{-k}."""
    for solver in ("bosh3", "dopri5"):
        x0 = decay_state(0.1, 1.0, 10.0, 100.0)
        k = x0[:, 1]
        exact = torch.exp(-k)
        own = fs.solve(Decay(), x0, (0.0, 1.0), solver, rtol=1e-6, atol=1e-9)
        shared = fs.solve(Decay(), x0, (0.0, 1.0), solver, rtol=1e-6, atol=1e-9, shared_step=True)
        for sol in (own, shared):
            assert sol.success
            assert torch.all((sol.x[:, 0] - exact).abs() <= 10 * (1e-9 + 1e-6 * exact)), sol.x
            assert torch.equal(sol.x[:, 1], k)
        assert torch.all(own.n_steps[1:] > own.n_steps[:-1]), own.n_steps
        assert int(shared.n_steps[0]) >= int(own.n_steps.max())
        assert float(shared.nfe.double().sum()) > float(own.nfe.double().sum())


@pytest.mark.parametrize("solver", ["bosh3", "tsit5", "dopri5"])
def test_per_sample_controller_is_independent_of_the_batch(solver):
    """One step size per sample: each sample alone and inside the batch gets bit-identical x,
    nfe and steps (here on an exact Gaussian PF-ODE under VP, not only on a diagonal ODE)."""
    proc = fs.VP()
    data = fs.toy.Gaussian(torch.tensor([1.0, -0.5, 0.3], dtype=F64),
                           torch.tensor([[1.0, 0.3, 0.1], [0.3, 0.5, 0.0], [0.1, 0.0, 0.2]], dtype=F64))
    flow = fs.probability_flow(proc, fs.exact_field(proc, data))
    x0 = proc.prior_std * torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    batch = fs.solve(flow, x0, (proc.t_max, proc.t_min), solver, rtol=1e-6, atol=1e-6)
    assert batch.success and len(set(batch.n_steps.tolist())) > 1  # the samples do take different steps
    for i in (0, 3):
        alone = fs.solve(flow, x0[i:i + 1], (proc.t_max, proc.t_min), solver, rtol=1e-6, atol=1e-6)
        assert torch.equal(alone.x[0], batch.x[i])
        for name in ("nfe", "n_steps", "n_accepted"):
            assert int(getattr(alone, name)[0]) == int(getattr(batch, name)[i]), name


def test_dt_max_caps_every_step():
    span, dt_max = 1.0, 0.05
    for solver in ("bosh3", "dopri5"):
        times = []
        sol = fs.solve(Decay(), decay_state(0.1, 3.0), (0.0, span), solver, dt_max=dt_max,
                       callback=lambda i, t, x, d: times.append(t.clone()))
        free = fs.solve(Decay(), decay_state(0.1, 3.0), (0.0, span), solver)
        assert sol.success
        assert torch.all(sol.n_accepted >= math.ceil(span / dt_max)), sol.n_accepted
        assert int(free.n_accepted[0]) < math.ceil(span / dt_max)  # the slow sample steps further uncapped
        steps = torch.diff(torch.stack([torch.zeros(2, dtype=F64)] + times), dim=0)
        assert float(steps.max()) <= dt_max * (1 + 1e-12)
        exact = torch.exp(-sol.x[:, 1])
        assert torch.all((sol.x[:, 0] - exact).abs() <= 10 * (1e-5 + 1e-5 * exact))


def test_dt_min_makes_a_sample_underflow():
    """dt_min above what the stiff sample needs: it stops with an underflow, the easy one finishes."""
    x = decay_state(1.0, 1000.0)
    sol = fs.solve(Decay(), x, (0.0, 1.0), "dopri5", rtol=1e-6, atol=1e-9, dt_min=1e-2)
    assert sol.failed.tolist() == [False, True]
    assert sol.fault.tolist() == [0, fs.solvers.FAULT_KINDS.index("underflow")]
    assert sol.status == "underflow" and "sample 1" in sol.message
    assert float(sol.t[0]) == 1.0 and float(sol.t[1]) < 1.0
    alone = fs.solve(Decay(), x[:1], (0.0, 1.0), "dopri5", rtol=1e-6, atol=1e-9, dt_min=1e-2)
    assert torch.equal(alone.x[0], sol.x[0])
    assert fs.solve(Decay(), x, (0.0, 1.0), "dopri5", rtol=1e-6, atol=1e-9).success  # without dt_min: no underflow


@pytest.mark.parametrize("solver, c2, probe", [("bosh3", 0.5, 1), ("dopri5", 0.2, 1), ("tsit5", 0.161, 1)])
def test_first_step_is_used(solver, c2, probe):
    """The first attempt steps first_step: its second stage is at t0 + c2 first_step, and Hairer's
    probe evaluation is skipped (one call fewer than the default rule)."""
    t0, h0 = 0.25, 1e-3
    ode = Decay()
    sol = fs.solve(ode, decay_state(2.0), (t0, 1.0), solver, first_step=h0)
    assert sol.success
    assert float(ode.times[0][0]) == t0 and float(ode.times[1][0]) == pytest.approx(t0 + c2 * h0, rel=1e-14)
    default = Decay()
    ref = fs.solve(default, decay_state(2.0), (t0, 1.0), solver)
    assert float(default.times[1][0]) != pytest.approx(t0 + c2 * h0, rel=1e-6)
    stages = fs.available_solvers()[solver]["nfe_per_step"]
    assert int(sol.nfe[0]) == 1 + stages * int(sol.n_steps[0])
    assert int(ref.nfe[0]) == 1 + probe + stages * int(ref.n_steps[0])


# =========================================================================================
# A method stepping in its own variable
# =========================================================================================

class _LogTimeEuler:
    """Euler on dx/dt = -x stepping in u = log t (a StepVariable), with the embedded estimate
    of Heun: the loop's steps are in u, the solution's times are times."""

    error_order = 2
    variable = fs.solvers.adaptive.StepVariable("log t", of_time=torch.log, time_of=torch.exp)

    def __init__(self):
        self.u_seen = []

    def init(self, term, x, u0):
        return {}

    def first_step(self, term, x, u0, u1, carry, controller):
        return torch.full((x.shape[0],), 0.1, dtype=F64)

    def attempt(self, term, x, u, u_next, h, carry, rows):
        self.u_seen.append((u.clone(), h.clone()))
        t, t_next = torch.exp(u), torch.exp(u_next)
        dt = (t_next - t).unsqueeze(-1)
        k1 = -x
        x_euler = x + dt * k1
        x_heun = x + dt * 0.5 * (k1 - x_euler)
        return x_heun, x_heun - x_euler, (x, x_heun), {}

    def commit(self, term, rows, accepted, carry, carry_new, x_new, u_next):
        return {}


def test_run_adaptive_steps_in_the_methods_variable():
    method = _LogTimeEuler()
    flow = Decay()
    x0 = torch.ones(3, 1, dtype=F64)
    term = Term.for_state(flow, x0, "log-time")
    save = fs.solvers.SaveAt([0.5], 0.1, 1.0)
    sol = run_adaptive(term, x0, 0.1, 1.0, method, P(rtol=1e-4, atol=1e-4), save=save)
    assert sol.success and torch.equal(sol.t, torch.full((3,), 1.0, dtype=F64))  # the end exactly, as a time
    assert sol.extras["step_variable"] == "log t"
    u0, h0 = method.u_seen[0]
    assert torch.allclose(u0, torch.full_like(u0, math.log(0.1))) and torch.equal(h0, torch.full_like(h0, 0.1))
    torch.testing.assert_close(sol.x, x0 * math.exp(-0.9), rtol=2e-3, atol=0)
    torch.testing.assert_close(sol.xs[0], x0 * math.exp(-0.4), rtol=2e-3, atol=0)  # landed on t = 0.5
