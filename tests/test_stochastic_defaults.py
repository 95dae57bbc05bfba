"""Stochastic samplers whose defaults give the right law (issue 6, section 4), and the Brownian
path with memory that makes the adaptive SDE solver's rejections unbiased.

The problem is the issue's: VP, 3-D Gaussian data N((1, -2, 0.5), diag(0.09, 1, 0.0025)), whose
small third variance is where per-sample step rules went wrong. Each sampler runs with its
defaults at the budget its paper uses (score_sde: N = 1000 steps for the first-order samplers;
EDM: 100 steps of Alg. 2; 200 steps of DPM-Solver++(2M) SDE; NCSN: 100 Langevin steps at each of
20 levels; the adaptive solver at its default tolerance). The target is the exact marginal at
t_min (what a sampler ending there should reach). Bounds: every mean coordinate within 4
standard errors (false alarm 6e-5 per coordinate) and every variance within 10 %.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

import flowsolve as fs
from flowsolve.solvers import BrownianMemory, NoiseSource

F64 = torch.float64
MEAN = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
VAR = torch.tensor([0.09, 1.0, 0.0025], dtype=F64)
DATA = fs.toy.Gaussian(MEAN, VAR)
N = 4000
BUDGET = {"euler_maruyama": dict(steps=1000), "reverse_diffusion": dict(steps=1000), "ancestral": dict(steps=1000),
          "pc": dict(steps=1000), "edm_stochastic": dict(steps=100), "dpmpp_2m_sde": dict(steps=200),
          "annealed_langevin": dict(steps=20), "adaptive_sde": dict()}


def target(process):
    s, sigma = float(process.scale(process.t_min)), float(process.sigma(process.t_min))
    return s * MEAN, s * s * (VAR + sigma * sigma)


def test_every_stochastic_solver_is_covered():
    stochastic = {n for n, d in fs.available_solvers().items() if d["kind"] == "sde"}
    assert stochastic == set(BUDGET)


@pytest.mark.parametrize("solver", sorted(BUDGET))
def test_defaults_reach_the_law(solver):
    process = fs.VP()
    sol = fs.sample(process, fs.exact_field(process, DATA), N, solver, seed=1, dtype=F64, **BUDGET[solver])
    assert sol.success, sol.message
    mean, var = target(process)
    z = (sol.x.mean(0) - mean) / (var / N).sqrt()
    ratio = sol.x.var(0) / var
    assert float(z.abs().max()) < 4.0, (z, ratio)
    assert float((ratio - 1).abs().max()) < 0.10, (z, ratio)


def test_published_snr_rules_stay_reachable_and_are_biased_here():
    """score_sde's signal-to-noise Langevin steps, kept as named options to reproduce the paper.
    The per-sample rule inflates the small variance far beyond 10 % on this 3-D problem (x2.4
    measured at 200 steps on 20000 samples), where the default ("ald") does not; the batch rule is
    unbiased only for large batches and its law depends on the batch (sample 0 differs between a
    batch of 8 and one of 400)."""
    process = fs.VP()
    field = fs.exact_field(process, DATA)
    mean, var = target(process)
    x = fs.sample(process, field, N, "pc", steps=200, corrector="langevin", seed=1, dtype=F64).x
    assert float((x.var(0) / var).max()) > 1.3
    small = fs.sample(process, field, 8, "pc", steps=20, corrector="langevin_batch", seed=1, dtype=F64).x
    large = fs.sample(process, field, 400, "pc", steps=20, corrector="langevin_batch", seed=1, dtype=F64).x
    assert not torch.allclose(small[0], large[0])


# =========================================================================================
# the Brownian path with memory
# =========================================================================================

# (t_next, accepted?) attempts from t = 0, the same for every sample: a rejection, a step inside
# the kept point, a rejection beyond it, a bridge step, a step onto the kept point, a step beyond
SCRIPT = [(0.5, False), (0.2, True), (0.8, False), (0.3, True), (0.5, True), (1.0, True)]


def run_script(n, seed=0, offset=0, direction=1.0):
    """Increments drawn along SCRIPT; returns the accepted steps' increments and the rejected
    attempts' increments (shape (attempts, n, 2))."""
    path = BrownianMemory(n, (2,), direction, F64, None, capacity=1)  # capacity 1: it must grow
    noise = NoiseSource(seed, n, 2, dtype=F64, offset=offset)
    t = torch.zeros(n, dtype=F64)
    rows = torch.arange(n)
    accepted, rejected = [], []
    for t_next, ok in SCRIPT:
        nxt = torch.full((n,), direction * t_next, dtype=F64)
        dw = path.increment(rows, t, nxt, noise.randn())
        path.commit(torch.full((n,), ok))
        (accepted if ok else rejected).append(dw)
        if ok:
            t = nxt
    return torch.stack(accepted), torch.stack(rejected)


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_brownian_memory_is_a_consistent_brownian_path(direction):
    acc, rej = run_script(20000, direction=direction)
    # consistency: the first, rejected attempt fixed W(0.5); the accepted steps reach it exactly
    assert torch.allclose(acc[0] + acc[1] + acc[2], rej[0], rtol=0, atol=1e-12)
    # and W(0.8) fixed by the second rejection lies on the path: W(0.8) - W(0.2) = acc[1] + acc[2] + (part of acc[3])
    # the accepted increments are independent N(0, length): KS per step, correlations ~ 0
    lengths = [0.2, 0.1, 0.2, 0.5]
    for inc, length in zip(acc, lengths):
        assert stats.kstest((inc / math.sqrt(length)).reshape(-1).numpy(), "norm").pvalue > 1e-4
    flat = acc[..., 0]
    corr = torch.corrcoef(flat)
    off = corr - torch.diag(torch.diagonal(corr))
    assert float(off.abs().max()) < 5 / math.sqrt(20000)
    # the second rejected attempt (0.2 -> 0.8): its increment is W(0.8) - W(0.2), N(0, 0.6)
    assert stats.kstest((rej[1] / math.sqrt(0.6)).reshape(-1).numpy(), "norm").pvalue > 1e-4
    # and it agrees with the accepted path: cov(W(0.8) - W(0.2), W(1) - W(0.2)) = 0.6
    later = acc[1] + acc[2] + acc[3]
    cov = float(((rej[1] - rej[1].mean()) * (later - later.mean())).mean())
    assert abs(cov - 0.6) < 5 * math.sqrt(0.6 * 0.8 / 20000) * 2


def test_brownian_memory_is_per_sample():
    """Sample i's path depends on its own stream only (batch size, offset)."""
    full, _ = run_script(300, seed=4)
    head, _ = run_script(7, seed=4)
    tail, _ = run_script(100, seed=4, offset=200)
    assert torch.equal(head, full[:, :7]) and torch.equal(tail, full[:, 200:])
