"""``dpm_adaptive``: the embedded DPM-Solver pair in lambda with per-sample steps.

Each member of the pair is checked for its order on Gaussian data against the closed-form flow
map (fixed steps in lambda, chained), the error estimate for its order (one step), the noise-
prediction members against the fixed-step DPM-Solver-1/2/3 of exponential.py (bit-close at equal
h), ``phi_tensor`` against the scalar ``phi``; whole solves for per-sample independence, VP and
PFGM++ (against a tight dopri5), shared steps, save times, NFE per sample and refused options.
"""

from __future__ import annotations

import math

import pytest
import torch

import flowsolve as fs
from flowsolve.solvers import adaptive_exponential as ae
from flowsolve.solvers import exponential as ex
from flowsolve.solvers.term import Term
from flowsolve.testing.references import gaussian_flow_map

F64 = torch.float64
LAW = fs.toy.Gaussian(torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([[1.0, 0.3], [0.3, 0.2]], dtype=F64))


def _setup(process, n=8, seed=0):
    flow = fs.probability_flow(process, fs.exact_field(process, LAW))
    x0 = process.prior_std * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return flow, x0, Term.for_state(flow, x0, "dpm_adaptive")


def _chain(method, term, x, lam0, lam1, steps, member):
    """``steps`` equal steps in lambda with the high (``member="high"``) or embedded member."""
    lam_grid = torch.linspace(lam0, lam1, steps + 1, dtype=F64)
    rows = torch.arange(x.shape[0])
    carry = method.init(term, x, lam0)
    for a, b in zip(lam_grid[:-1].tolist(), lam_grid[1:].tolist()):
        lam = torch.full((x.shape[0],), a, dtype=F64)
        x_high, err, _, carry_new = method.attempt(term, x, lam, torch.full_like(lam, b), torch.full_like(lam, b - a),
                                                   carry, rows)
        x = x_high if member == "high" else x_high - err
        carry = method.commit(term, rows, torch.ones(x.shape[0], dtype=torch.bool), carry, carry_new, x, None)
    return x


@pytest.mark.parametrize("prediction", ["data", "noise"])
@pytest.mark.parametrize("orders", [(1, 2), (2, 3)])
def test_each_member_has_its_order(orders, prediction):
    """Global error of N, 2N steps in lambda on VP (t_max -> t_min) against the exact map:
    the high member converges at orders[1], the embedded one at orders[0]."""
    process = fs.VP()
    flow, x0, term = _setup(process)
    method = ae.ExponentialPair(process, orders, prediction, check_end=False)
    lam0, lam1 = (-math.log(float(process.sigma(t))) for t in (process.t_max, process.t_min))
    exact = gaussian_flow_map(process, LAW, x0, process.t_max, process.t_min)
    for member, order in (("high", orders[1]), ("low", orders[0])):
        errs = [float((_chain(method, term, x0, lam0, lam1, n, member) - exact).abs().max()) for n in (48, 96)]
        observed = math.log2(errs[0] / errs[1])
        assert abs(observed - order) < 0.35, (member, errs, observed)


@pytest.mark.parametrize("orders", [(1, 2), (2, 3)])
def test_error_estimate_has_the_embedded_local_order(orders):
    """One step from the same point: the estimate shrinks like h^(orders[0] + 1), for both the
    pair's difference and the end check."""
    process = fs.EDM()
    flow, x0, term = _setup(process, n=4)
    for check_end in (False, True):
        method = ae.ExponentialPair(process, orders, "data", check_end)
        lam = torch.full((4,), 0.0, dtype=F64)
        carry = method.init(term, x0 * 0.02, 0.0)
        norms = []
        for h in (0.04, 0.02):
            hh = torch.full_like(lam, h)
            _, err, _, _ = method.attempt(term, x0 * 0.02, lam, lam + hh, hh, carry, torch.arange(4))
            norms.append(float(err.abs().max()))
        observed = math.log2(norms[0] / norms[1])
        assert abs(observed - (orders[0] + 1)) < 0.25, (check_end, norms, observed)


@pytest.mark.parametrize("process", [fs.VP(), fs.EDM()], ids=["VP", "EDM"])
def test_noise_members_equal_fixed_step_dpm_solver(process):
    """Noise prediction, one step of equal h: (1, 2) is DPM-Solver-1 inside DPM-Solver-2, and the
    high member of (2, 3) is DPM-Solver-3, as exponential.dpm_solver_step computes them."""
    flow, x0, term = _setup(process)
    t_s, t_t = float(process.t_of_sigma(5.0)), float(process.t_of_sigma(1.5))
    lam_s, lam_t = -math.log(5.0), -math.log(1.5)
    lam = torch.full((x0.shape[0],), lam_s, dtype=F64)
    nxt, h = torch.full_like(lam, lam_t), torch.full_like(lam, lam_t - lam_s)
    rows = torch.arange(x0.shape[0])
    # the pair starts at the time its lambda gives back: the fixed-step solver from the same time
    t_s = float(ae._lambda_variable(process).time_of(lam[:1]))
    t_t = float(ae._lambda_variable(process).time_of(nxt[:1]))
    for orders, (low, high) in (((1, 2), (1, 2)), ((2, 3), (None, 3))):
        method = ae.ExponentialPair(process, orders, "noise", check_end=False)
        x_high, err, _, _ = method.attempt(term, x0, lam, nxt, h, {}, rows)
        ref_high = ex.dpm_solver_step(high, term, x0, t_s, t_t)
        torch.testing.assert_close(x_high, ref_high, rtol=1e-13, atol=1e-13)
        if low is not None:
            torch.testing.assert_close(x_high - err, ex.dpm_solver_step(low, term, x0, t_s, t_t), rtol=1e-13,
                                       atol=1e-13)


def test_phi_tensor_matches_scalar_phi():
    z = torch.tensor([-40.0, -3.0, -0.5, -0.4999, -0.1, -1e-6, 0.0, 1e-12, 0.3, 0.5, 4.0], dtype=F64)
    values = ae.phi_tensor(3, z)
    for k in (1, 2, 3):
        ref = torch.tensor([ex.phi(k, v) for v in z.tolist()], dtype=F64)
        torch.testing.assert_close(values[k - 1], ref, rtol=4e-16, atol=0)


def test_per_sample_independence_and_accuracy():
    """A sample's steps and result do not depend on its batch companions; at the default
    tolerances the Gaussian flow map is met to about the tolerance."""
    process = fs.EDM()
    flow, x0, _ = _setup(process, n=6)
    span = (process.t_max, process.t_min)
    sol = fs.solve(flow, x0, span, "dpm_adaptive")
    assert sol.success and sol.extras["step_variable"] == "lambda = -log sigma"
    assert torch.equal(sol.t, torch.full_like(sol.t, process.t_min))
    for i in (0, 3):
        alone = fs.solve(flow, x0[i:i + 1], span, "dpm_adaptive")
        assert torch.equal(alone.x[0], sol.x[i]) and int(alone.nfe[0]) == int(sol.nfe[i])
    exact = gaussian_flow_map(process, LAW, x0, *span)
    assert float((sol.x - exact).abs().max()) < 3e-2
    assert len(set(sol.n_steps.tolist())) > 1  # the samples did take their own steps


def test_nfe_counted_per_sample_and_shared_step():
    process = fs.EDM()
    flow, x0, _ = _setup(process, n=6)
    span = (process.t_max, process.t_min)
    for check_end, orders in ((True, (2, 3)), (False, (2, 3)), (False, (1, 2))):
        sol = fs.solve(flow, x0, span, "dpm_adaptive", check_end=check_end, orders=orders, rtol=1e-3, atol=1e-3)
        # every attempt evaluates orders[1] times; the end check adds the first point's evaluation
        assert torch.equal(sol.nfe, orders[1] * sol.n_steps + int(check_end)), (sol.nfe, sol.n_steps)
    shared = fs.solve(flow, x0, span, "dpm_adaptive", shared_step=True, rtol=1e-3, atol=1e-3)
    assert len(set(shared.n_steps.tolist())) == 1 and len(set(shared.nfe.tolist())) == 1


def test_vp_and_pfgmpp_against_a_tight_reference():
    for process in (fs.VP(), fs.PFGMPP(D=8)):
        field = fs.exact_field(process, fs.toy.Empirical(torch.tensor([[1.0, 0.0], [-0.5, 1.0], [0.0, -1.5]],
                                                                       dtype=F64)))
        flow = fs.probability_flow(process, field)
        x0 = process.prior_sample(4, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
        span = (process.t_max, process.t_min)
        ref = fs.solve(flow, x0, span, "dopri5", rtol=1e-9, atol=1e-9).x
        errs = [float((fs.solve(flow, x0, span, "dpm_adaptive", rtol=tol, atol=tol).x - ref).abs().max())
                for tol in (1e-3, 1e-5)]
        assert errs[0] < 2e-2 and errs[1] < 1e-3 and errs[1] < errs[0] / 5, (process, errs)


def test_save_at_lands_on_times_in_lambda_stepping():
    process = fs.VP()
    flow, x0, _ = _setup(process, n=4)
    times = [0.5, 0.1]
    sol = fs.solve(flow, x0, (process.t_max, process.t_min), "dpm_adaptive", save_at=times)
    assert sol.success and torch.isfinite(sol.xs).all()
    for k, t in enumerate(times):
        exact = gaussian_flow_map(process, LAW, x0, process.t_max, t)
        assert float((sol.xs[k] - exact).abs().max()) < 5e-2


@pytest.mark.parametrize("option, value", [("orders", (1, 3)), ("orders", 3), ("orders", (3, 4)),
                                           ("prediction", "eps"), ("check_end", "yes"), ("max_steps", 0)])
def test_bad_options_are_refused(option, value):
    process = fs.EDM()
    flow, x0, _ = _setup(process, n=2)
    calls = []
    counting = fs.probability_flow(process, fs.Field.from_denoiser(
        process, lambda x, s: calls.append(1) or x * 0, event_shape=(2,)))
    with pytest.raises(ValueError, match=option):
        fs.solve(counting, x0, (process.t_max, process.t_min), "dpm_adaptive", **{option: value})
    assert not calls  # refused before any work
