"""Exponential integrators (DPM-Solver, DPM-Solver++, UniPC): convergence orders against the
exact PF-ODE map of Gaussian data, PFGM++ against a dopri5 reference, closed forms (DDIM),
DPM-Solver++(3M) ``variant="published"`` against the reference code's update written out here,
NFE accounting, lower-order final steps, refusals, saving and per-sample faults."""

from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch
from scipy.special import roots_genlaguerre

import flowsolve as fs
from flowsolve.solvers import exponential as ex

SOLVERS = ["dpm_solver_1", "dpm_solver_2", "dpm_solver_3", "dpmpp_2m", "dpmpp_3m", "unipc"]
ORDER = {"dpm_solver_1": 1, "dpm_solver_2": 2, "dpm_solver_3": 3, "dpmpp_2m": 2, "dpmpp_3m": 3, "unipc": 3}
NFE_PER_STEP = {"dpm_solver_1": 1, "dpm_solver_2": 2, "dpm_solver_3": 3, "dpmpp_2m": 1, "dpmpp_3m": 1, "unipc": 1}
STEPS = (32, 64, 128)  # N, 2N, 4N: two observed orders per solver

MEAN = torch.tensor([0.5, -1.0, 0.25], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.05]], dtype=torch.float64)
PROCESSES = {"VE": fs.VE, "VP": fs.VP, "EDM": fs.EDM}


def _gaussian_exact_map(process, x0, t0, t1, mean=MEAN, cov=COV):
    """Exact PF-ODE map of N(mean, cov) data: in x̂ = x/s each eigen-direction scales by
    sqrt((lam + sigma(t1)^2) / (lam + sigma(t0)^2))."""
    lam, q = torch.linalg.eigh(cov)
    s0, s1 = float(process.scale(t0)), float(process.scale(t1))
    g0, g1 = float(process.sigma(t0)), float(process.sigma(t1))
    z = (x0 / s0 - mean) @ q
    z = z * torch.sqrt((lam + g1**2) / (lam + g0**2))
    return s1 * (mean + z @ q.T)


@lru_cache(maxsize=None)
def _gaussian_problem(name):
    process = PROCESSES[name]()
    flow = fs.probability_flow(process, fs.exact_field(process, fs.toy.Gaussian(MEAN, COV)))
    x0 = process.prior_std * torch.randn(32, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return process, flow, x0, _gaussian_exact_map(process, x0, process.t_max, process.t_min)


def student_t_gaussian_denoiser(D, mean, cov, n_nodes=64):
    """``E[y | x̂]`` for Gaussian data under the PFGM++ (Student-t) kernel, by a fixed generalized
    Gauss-Laguerre rule over the scale-mixture variable (n = g / sqrt(u), u = 2 xi / D,
    xi ~ Gamma(D/2)). A fixed rule makes it an analytic function of (x, sigma) and costs a few
    tensor ops (``fs.exact_field`` is exact but ~100x dearer); checked against it below."""
    nodes, weights = roots_genlaguerre(n_nodes, 0.5 * D - 1.0)
    xi = torch.as_tensor(nodes, dtype=torch.float64)
    logw = torch.log(torch.as_tensor(weights, dtype=torch.float64))
    lam, q = torch.linalg.eigh(cov)

    def fn(x, t):
        z = (x.to(torch.float64) - mean) @ q
        v = t.to(torch.float64)[:, None] ** 2 * (0.5 * D) / xi  # kernel variance sigma^2 / u per node
        lv = lam + v[..., None]
        loglik = -0.5 * (torch.log(lv).sum(-1) + (z[:, None, :] ** 2 / lv).sum(-1))
        post = torch.softmax(logw + loglik, dim=-1)
        return (mean + ((post[..., None] * (lam / lv)).sum(1) * z) @ q.T).to(x.dtype)

    return fn


PF_D = 8.0
PF_MEAN = torch.tensor([0.5, -1.0], dtype=torch.float64)
PF_COV = torch.tensor([[1.0, 0.3], [0.3, 0.2]], dtype=torch.float64)


@lru_cache(maxsize=None)
def _pfgm_problem():
    process = fs.PFGMPP(D=PF_D)
    field = fs.Field.from_denoiser(process, student_t_gaussian_denoiser(PF_D, PF_MEAN, PF_COV))
    flow = fs.probability_flow(process, field)
    x0 = process.prior_sample(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = fs.solve(flow, x0, (process.t_max, process.t_min), "dopri5", rtol=1e-12, atol=1e-12)
    assert ref.success
    return process, flow, x0, ref.x


def _observed_orders(flow, process, x0, ref, solver, grid="log_sigma", steps=STEPS, **options):
    errs = [float((fs.solve(flow, x0, fs.make_grid(process, grid, n), solver, **options).x - ref).abs().max())
            for n in steps]
    return [math.log2(a / b) for a, b in zip(errs, errs[1:])], errs


# -- convergence orders -------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PROCESSES))
@pytest.mark.parametrize("solver", [s for s in SOLVERS if s != "dpmpp_3m"])
def test_order_gaussian_log_sigma_grid(name, solver):
    process, flow, x0, ref = _gaussian_problem(name)
    orders, errs = _observed_orders(flow, process, x0, ref, solver)
    assert all(abs(p - ORDER[solver]) <= 0.3 for p in orders), (orders, errs)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_order_dpmpp_3m(name):
    """On a grid uniform in lambda the O(h^3) term of the 3-step method's global error is,
    for Gaussian data, the integral of an exact derivative (D = c lam (lam + e^{-2 lambda})^{-1/2}
    per eigen-direction, and int D''' w = [w'' w - w'^2/2] vanishes at both ends), so it
    super-converges (~4) there; on the Karras grid (non-uniform in lambda) the order is 3.
    The reference codes' coefficient (``variant="published"``) is tested below."""
    process, flow, x0, ref = _gaussian_problem(name)
    orders, errs = _observed_orders(flow, process, x0, ref, "dpmpp_3m", grid="karras")
    assert all(abs(p - 3) <= 0.3 for p in orders), (orders, errs)
    orders, errs = _observed_orders(flow, process, x0, ref, "dpmpp_3m")
    assert all(p >= 3 - 0.3 for p in orders), (orders, errs)


def test_student_t_quadrature_field_matches_exact_field():
    process = fs.PFGMPP(D=PF_D)
    data = fs.toy.Gaussian(PF_MEAN, PF_COV)
    exact = fs.exact_field(process, data)
    approx = fs.Field.from_denoiser(process, student_t_gaussian_denoiser(PF_D, PF_MEAN, PF_COV))
    gen = torch.Generator().manual_seed(3)
    y = data.sample(32, generator=gen, dtype=torch.float64)
    for sigma in (0.01, 0.5, 20.0):
        x = process.perturb(y, sigma, generator=gen)
        assert torch.allclose(approx.denoiser(x, sigma), exact.denoiser(x, sigma), atol=1e-5, rtol=0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_order_pfgmpp(solver):
    """The same solvers on PFGM++ (D = 8, Student-t kernel, s = 1, sigma = t) unchanged."""
    process, flow, x0, ref = _pfgm_problem()
    grid = "karras" if solver == "dpmpp_3m" else "log_sigma"  # see test_order_dpmpp_3m
    # DPM-Solver-3 approaches order 3 from above here (3.30, 3.17, 3.09 from N = 32 on)
    steps = tuple(2 * n for n in STEPS) if solver == "dpm_solver_3" else STEPS
    orders, errs = _observed_orders(flow, process, x0, ref, solver, grid=grid, steps=steps)
    assert all(abs(p - ORDER[solver]) <= 0.3 for p in orders), (orders, errs)


def test_process_invariance_in_lambda():
    """In x̂ and lambda every canonical process is the same ODE: on matching lambda grids VP and
    an EDM with VP's sigma range give the same x̂ (up to rounding) for every solver."""
    vp = fs.VP()
    edm = fs.EDM(sigma_min=vp.sigma_min, sigma_max=vp.sigma_max)
    data = fs.toy.Gaussian(MEAN, COV)
    f_vp = fs.probability_flow(vp, fs.exact_field(vp, data))
    f_edm = fs.probability_flow(edm, fs.exact_field(edm, data))
    xhat = edm.prior_std * torch.randn(8, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ts_vp = fs.make_grid(vp, "log_sigma", 12)
    ts_edm = vp.sigma(ts_vp).clamp(edm.t_min, edm.t_max)  # EDM time = sigma
    ts_edm[0], ts_edm[-1] = edm.t_max, edm.t_min
    s_max, s_min = float(vp.scale(vp.t_max)), float(vp.scale(vp.t_min))
    for solver in SOLVERS:
        a = fs.solve(f_vp, s_max * xhat, ts_vp, solver).x / s_min
        b = fs.solve(f_edm, xhat, ts_edm, solver).x
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9), solver


# -- accuracy at equal cost, closed forms -------------------------------------------------

@pytest.mark.parametrize("name", ["VE", "EDM"])
def test_much_better_than_euler_heun_at_equal_nfe(name):
    process, flow, x0, ref = _gaussian_problem(name)
    nfe = 24

    def err(solver):
        steps = nfe // fs.available_solvers()[solver]["nfe_per_step"]
        return float((fs.solve(flow, x0, fs.make_grid(process, "log_sigma", steps), solver).x - ref).abs().max())

    baseline = min(err("euler"), err("heun"))
    for solver in ["dpm_solver_3", "dpmpp_2m", "dpmpp_3m", "unipc"]:
        assert err(solver) < 0.25 * baseline, (solver, err(solver), baseline)
    for solver in ["dpm_solver_1", "dpm_solver_2"]:
        assert err(solver) <= baseline * (1 + 1e-9), (solver, err(solver), baseline)


@pytest.mark.parametrize("make", [fs.VP, fs.VE, fs.SubVP, lambda: fs.PFGMPP(D=8)])
def test_dpm_solver_1_is_ddim(make):
    """One DDIM step (eta = 0), derived directly: predict x0 = D and eps = (x/s_s - D)/sigma_s,
    then re-noise deterministically: x_t = s_t (D + sigma_t eps)."""
    process = make()
    field = fs.Field.from_denoiser(process, lambda x, t: 0.3 * torch.tanh(x) + 0.1 * t[:, None].to(x.dtype) ** 0.5)
    flow = fs.probability_flow(process, field)
    x = process.prior_std * torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t_s, t_t = process.t_max, 0.5 * (process.t_min + process.t_max)
    s_s, s_t = float(process.scale(t_s)), float(process.scale(t_t))
    g_s, g_t = float(process.sigma(t_s)), float(process.sigma(t_t))
    d = field.denoiser(x, t_s)
    eps = (x / s_s - d) / g_s
    ddim = s_t * (d + g_t * eps)
    out = fs.solve(flow, x, (t_s, t_t), "dpm_solver_1", steps=1)
    assert torch.allclose(out.x, ddim, rtol=1e-12, atol=1e-12)


def test_dpm_solver_1_equals_euler_in_sigma_for_edm():
    """With s = 1 and t = sigma, DDIM is Euler's method on dx/dsigma = (x - D)/sigma (EDM Sec. 3)."""
    process, flow, x0, _ = _gaussian_problem("EDM")
    ts = fs.make_grid(process, "karras", 15)
    assert torch.allclose(fs.solve(flow, x0, ts, "dpm_solver_1").x, fs.solve(flow, x0, ts, "euler").x,
                          rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("solver", SOLVERS)
def test_exact_for_a_constant_denoiser(solver):
    """The linear part is integrated exactly: with D = c, x̂_t = c + (sigma_t/sigma_s)(x̂_s - c)."""
    process = fs.VP()
    c = torch.tensor([0.7, -0.2], dtype=torch.float64)
    flow = fs.probability_flow(process, fs.Field.from_denoiser(process, lambda x, t: c.expand_as(x).clone()))
    x0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ts = fs.make_grid(process, "karras", 7)
    want = float(process.scale(process.t_min)) * (
        c + process.sigma_min / process.sigma_max * (x0 / float(process.scale(process.t_max)) - c))
    assert torch.allclose(fs.solve(flow, x0, ts, solver).x, want, rtol=1e-12, atol=1e-12)


def test_phi_functions():
    for k in range(4):
        for z in (-3.0, -0.6, -0.4999, -1e-3, 0.0, 2e-7, 0.3, 0.5001, 2.0):
            direct = math.fsum(z**j / math.factorial(j + k) for j in range(80))
            assert math.isclose(ex.phi(k, z), direct, rel_tol=1e-14), (k, z)


# -- multistep bookkeeping: lower-order final steps, NFE -----------------------------------

def test_lower_order_final_for_few_steps():
    process, flow, x0, _ = _gaussian_problem("EDM")
    ts = fs.make_grid(process, "log_sigma", 4)
    for solver in ["dpmpp_2m", "dpmpp_3m", "unipc"]:
        full = fs.solve(flow, x0, ts, solver, save_at=True)
        assert full.extras["orders"][-1] == 1
        if solver != "unipc":  # (UniPC's last step reuses D at the predicted, not the corrected, point)
            # the final step is DPM-Solver-1 (DDIM) from the state at ts[-2]
            ddim = fs.solve(flow, full.xs[-2], ts[-2:], "dpm_solver_1", steps=1).x
            assert torch.allclose(full.x, ddim, rtol=1e-12, atol=1e-12), solver
        off = fs.solve(flow, x0, ts, solver, lower_order_final=False)
        assert float((off.x - full.x).abs().max()) > 1e-6, solver
    # 2M: steps before the last are exactly 2M without the final-step rule
    two = fs.solve(flow, x0, ts[:-1], "dpmpp_2m", lower_order_final=False)
    assert torch.allclose(fs.solve(flow, x0, ts, "dpmpp_2m", save_at=True).xs[-2], two.x, rtol=0, atol=0)
    assert fs.solve(flow, x0, fs.make_grid(process, "log_sigma", 5), "dpmpp_3m").extras["orders"] == [1, 2, 3, 2, 1]


@pytest.mark.parametrize("solver, options, below", [
    ("dpmpp_2m", {}, ex.LOWER_ORDER_FINAL_BELOW), ("unipc", {}, ex.LOWER_ORDER_FINAL_BELOW),
    ("dpmpp_3m", {"variant": "published"}, ex.LOWER_ORDER_FINAL_BELOW),  # dpm-solver's rule: < 10
    ("dpmpp_3m", {}, ex.LOWER_ORDER_FINAL_BELOW_3M),  # the exact 3M: < 15 (diffusers' rule)
])
def test_lower_order_final_threshold(solver, options, below):
    """The final lower orders apply below the threshold and not from it on."""
    assert (ex.LOWER_ORDER_FINAL_BELOW, ex.LOWER_ORDER_FINAL_BELOW_3M) == (10, 15)
    process, flow, x0, _ = _gaussian_problem("VP")
    for steps, differs in ((below - 1, True), (below, False)):
        ts = fs.make_grid(process, "log_sigma", steps)
        a = fs.solve(flow, x0, ts, solver, **options)
        b = fs.solve(flow, x0, ts, solver, lower_order_final=False, **options)
        assert (not torch.equal(a.x, b.x)) == differs, steps
        assert (a.extras["orders"][-1] == 1) == differs


def test_dpmpp_3m_error_no_longer_jumps_from_9_to_10_steps():
    """(Was a defect: with the reference codes' threshold 10, the exact 3M's error on a sharp
    mixture under EDM on the Karras grid went 0.96 -> 1.54 -> 1.00 at 9/10/11 NFE, while 2M gave
    0.40 at 10: the two long final steps in lambda were taken at order 3.) Now it decreases."""
    process = fs.EDM()
    data = fs.toy.random_mixture(2, 4)
    field = fs.exact_field(process, data)
    x0 = process.prior_sample(300, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = fs.sample(process, field, 300, "dopri5", x_init=x0, rtol=1e-9, atol=1e-9).x
    err = {k: float((fs.sample(process, field, 300, "dpmpp_3m", nfe=k, x_init=x0).x - ref).norm(dim=1).mean())
           for k in (9, 10, 11, 12)}
    assert err[10] < err[9] and err[11] < err[10] and err[12] < err[11], err
    old = float((fs.sample(process, field, 300, "dpmpp_3m", nfe=10, x_init=x0, lower_order_final=False).x
                 - ref).norm(dim=1).mean())
    assert old > 1.3 * err[9]  # the old rule at 10 steps (orders 3 to the end) is the jump


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 12])
def test_nfe_is_steps_times_nfe_per_step(solver, steps):
    process = fs.EDM()
    calls = []

    def denoiser(x, t):
        calls.append(x.shape[0])
        return 0.5 * x / (1.0 + t[:, None] ** 2)

    flow = fs.probability_flow(process, fs.Field.from_denoiser(process, denoiser))
    x0 = process.prior_std * torch.randn(7, 2, generator=torch.Generator().manual_seed(0))
    grid = fs.make_grid(process, "karras", steps)
    sol = fs.solve(flow, x0, grid, solver, **({"steps": 1} if steps == 1 else {}))  # one step: the span and steps=1
    assert fs.available_solvers()[solver]["nfe_per_step"] == NFE_PER_STEP[solver]
    assert sol.nfe.dtype == torch.int64 and sol.nfe.shape == (7,)
    assert bool((sol.nfe == steps * NFE_PER_STEP[solver]).all())
    assert len(calls) == steps * NFE_PER_STEP[solver]  # independent count of field calls
    assert bool((sol.n_steps == steps).all()) and sol.success


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("budget", [3, 10])
def test_sample_with_nfe_budget(solver, budget):
    process = fs.VP()
    calls = []
    data = fs.toy.Gaussian(MEAN, COV)
    exact = fs.exact_field(process, data)

    def denoiser(x, t):
        calls.append(1)
        return exact.denoiser(x, t)

    field = fs.Field.from_denoiser(process, denoiser)
    sol = fs.sample(process, field, 16, solver, nfe=budget, x_init=torch.randn(16, 3), grid="log_sigma")
    assert len(calls) <= budget and int(sol.nfe.max()) <= budget
    assert int(sol.nfe.max()) == (budget // NFE_PER_STEP[solver]) * NFE_PER_STEP[solver]
    assert sol.success and bool(torch.isfinite(sol.x).all())


def test_registry_entries():
    info = fs.available_solvers()
    for name in SOLVERS:
        assert info[name]["kind"] == "ode" and info[name]["process_aware"] and not info[name]["adaptive"]
        assert info[name]["order"] == ORDER[name] and info[name]["nfe_per_step"] == NFE_PER_STEP[name]


# -- refusals, saving, dtypes, faults ------------------------------------------------------

@pytest.mark.parametrize("solver", SOLVERS)
def test_refuses_a_general_sde_flow(solver):
    sde = fs.SDE(drift=lambda x, t: -x, diffusion=lambda t: 1.0)
    flow = fs.probability_flow(sde, score=lambda x, t: -x)
    x = torch.randn(4, 2)
    ts = torch.linspace(1.0, 0.1, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"'{solver}' is process-aware.*without a field"):
        fs.solve(flow, x, ts, solver)


@pytest.mark.parametrize("solver", SOLVERS)
def test_save_at(solver):
    process, flow, x0, _ = _gaussian_problem("VE")
    ts = fs.make_grid(process, "log_sigma", 6)
    sol = fs.solve(flow, x0, ts, solver, save_at=True)
    assert sol.xs.shape == (7, *x0.shape) and torch.equal(sol.ts, ts)
    assert torch.equal(sol.xs[0], x0) and torch.equal(sol.xs[-1], sol.x)
    part = fs.solve(flow, x0, ts, solver, save_at=[float(ts[0]), float(ts[3]), float(ts[-1])])
    assert part.xs.shape == (3, *x0.shape)
    assert torch.equal(part.xs[1], sol.xs[3]) and torch.equal(part.xs[2], sol.x)
    with pytest.raises(ValueError, match="not on the grid"):
        fs.solve(flow, x0, ts, solver, save_at=[0.123456])
    # the reversed direction (data -> prior) runs too
    back = fs.solve(flow, sol.x, ts.flip(0), solver)
    assert back.success and bool(torch.isfinite(back.x).all())


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", ["VP", "EDM", "PFGMPP"])
def test_float32_runs_finite(solver, name):
    if name == "PFGMPP":
        process = fs.PFGMPP(D=PF_D)
        field = fs.Field.from_denoiser(process, student_t_gaussian_denoiser(PF_D, PF_MEAN, PF_COV))
        dim = 2
    else:
        process = PROCESSES[name]()
        field = fs.exact_field(process, fs.toy.Gaussian(MEAN, COV))
        dim = 3
    x_init = process.prior_sample(64, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sol32 = fs.sample(process, field, 64, solver, steps=12, grid="log_sigma", x_init=x_init, dtype=torch.float32)
    sol64 = fs.sample(process, field, 64, solver, steps=12, grid="log_sigma", x_init=x_init, dtype=torch.float64)
    assert sol32.success and sol32.x.dtype == torch.float32 and sol32.x.shape == (64, dim)
    assert bool(torch.isfinite(sol32.x).all())
    assert torch.allclose(sol32.x.double(), sol64.x, rtol=1e-3, atol=1e-3)




# the step in which a solver first evaluates the field at or below the grid time ts[m]: the step
# starting there, or, for UniPC, the step before (its corrector evaluates D at the step's end)
EVALUATES_AT_STEP_END = {"unipc"}


def _flagged_flow(process, threshold):
    """D = x / (2 (1 + t^2)) coordinate-wise (so every solver keeps each coordinate's sign), NaN
    where t < threshold for the samples whose second coordinate is negative."""

    def denoiser(x, t):
        out = 0.5 * x / (1.0 + t[:, None] ** 2)
        bad = (x[:, 1] < 0) & (t.to(torch.float64) < threshold)
        return torch.where(bad[:, None], torch.full_like(out, float("nan")), out)

    return fs.probability_flow(process, fs.Field.from_denoiser(process, denoiser))


@pytest.mark.parametrize("flags", [(-1.0, -1.0), (1.0, -1.0, 1.0)], ids=["every-sample", "one-sample"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_nonfinite_field_freezes_the_sample(solver, flags):
    """A sample whose field goes NaN at the grid time ts[m] is frozen at its last finite state --
    the state the same solve had at that step -- and marked failed at that step (``n_steps``,
    ``t``, message); the other samples finish exactly as when solved alone."""
    process = fs.EDM()
    ts = fs.make_grid(process, "log_sigma", 10)
    m = 5
    threshold = float(ts[m]) + 1e-6 * float(ts[m - 1] - ts[m])  # above ts[m], below every inner node
    k = m - 1 if solver in EVALUATES_AT_STEP_END else m
    flag = torch.tensor(flags, dtype=torch.float64)
    bad = flag < 0
    x0 = process.prior_std * torch.stack([torch.linspace(0.2, 0.6, len(flags), dtype=torch.float64), 0.5 * flag], -1)
    sol = fs.solve(_flagged_flow(process, threshold), x0, ts, solver, save_at=True)
    clean = fs.solve(_flagged_flow(process, -math.inf), x0, ts, solver, save_at=True)
    assert sol.status == "nonfinite" and not sol.success and clean.success
    assert f"step {k}," in sol.message and f"t={float(ts[k])!r}" in sol.message, sol.message
    nonfinite = fs.solvers.FAULT_KINDS.index("nonfinite")
    assert torch.equal(sol.failed, bad) and torch.equal(sol.fault, torch.where(bad, nonfinite, 0))
    assert torch.equal(sol.n_steps, torch.where(bad, k, 10)) and torch.equal(sol.t, torch.where(bad, ts[k], ts[-1]))
    assert bool(torch.isfinite(sol.x).all())
    assert torch.equal(sol.x[bad], clean.xs[k][bad])  # the last finite state ...
    assert torch.equal(sol.xs[k, bad], sol.x[bad])  # ... saved at the last time it reached,
    assert bool(sol.xs[k + 1:, bad].isnan().all())  # ... and NaN at the times it never reached
    if not bool(bad.all()):
        alone = fs.solve(_flagged_flow(process, threshold), x0[~bad], ts, solver)
        assert alone.success and torch.equal(sol.x[~bad], alone.x) and torch.equal(sol.nfe[~bad], alone.nfe)
        assert torch.equal(sol.xs[:, ~bad], clean.xs[:, ~bad])


# -- DPM-Solver++(3M), variant="published" -------------------------------------------------

def published_dpmpp_3m(process, denoiser, x, ts, lower_order_final=True):
    """DPM-Solver++(3M) as LuChengTHU/dpm-solver computes it (``sample(method="multistep",
    order=3, algorithm_type="dpmsolver++")``), written out from the reference code in its own
    variables: alpha_t = s(t), sigma_t = s(t) sigma(t) (the marginal std), lambda_t = log alpha_t -
    log sigma_t; ``multistep_dpm_solver_first/second/third_update`` with data prediction and
    ``torch.expm1``; warm-up orders 1 and 2, then ``step_order = min(3, steps + 1 - step)`` when
    ``lower_order_final and steps < 10``. The third-order update is

        phi_1 = expm1(-h), phi_2 = phi_1 / h + 1, phi_3 = phi_2 / h - 0.5
        x_t = (sigma_t / sigma_prev) x - alpha_t phi_1 m0 + alpha_t phi_2 D1 - alpha_t phi_3 D2
    """
    ts = [float(t) for t in ts]
    steps = len(ts) - 1

    def coefs(t):
        t64 = torch.tensor(t, dtype=torch.float64)
        alpha = process.scale(t64).to(torch.float64)
        sigma = alpha * process.sigma(t64).to(torch.float64)
        return alpha, sigma, torch.log(alpha) - torch.log(sigma)

    def update(x, models, times, t, order):
        alpha_t, sigma_t, lambda_t = coefs(t)
        _, sigma_prev_0, lambda_prev_0 = coefs(times[-1])
        h = lambda_t - lambda_prev_0
        phi_1 = torch.expm1(-h)
        m0 = models[-1]
        if order == 1:
            return (sigma_t / sigma_prev_0) * x - alpha_t * phi_1 * m0
        lambda_prev_1 = coefs(times[-2])[2]
        r0 = (lambda_prev_0 - lambda_prev_1) / h
        D1_0 = (1.0 / r0) * (m0 - models[-2])
        if order == 2:
            return (sigma_t / sigma_prev_0) * x - alpha_t * phi_1 * m0 - 0.5 * (alpha_t * phi_1) * D1_0
        lambda_prev_2 = coefs(times[-3])[2]
        r1 = (lambda_prev_1 - lambda_prev_2) / h
        D1_1 = (1.0 / r1) * (models[-2] - models[-3])
        D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
        D2 = (1.0 / (r0 + r1)) * (D1_0 - D1_1)
        phi_2 = phi_1 / h + 1.0
        phi_3 = phi_2 / h - 0.5
        return (sigma_t / sigma_prev_0) * x - alpha_t * phi_1 * m0 + alpha_t * phi_2 * D1 - alpha_t * phi_3 * D2

    times, models = [ts[0]], [denoiser(x, ts[0])]
    for step in range(1, steps + 1):
        order = step if step < 3 else (min(3, steps + 1 - step) if lower_order_final and steps < 10 else 3)
        x = update(x, models, times, ts[step], order)
        if step < steps:
            times.append(ts[step])
            models.append(denoiser(x, ts[step]))
            del times[:-3], models[:-3]
    return x


@pytest.mark.parametrize("name, grid, steps, lower_order_final", [
    ("VP", "karras", 6, True), ("VP", "karras", 6, False), ("VP", "log_sigma", 12, True), ("EDM", "karras", 7, True)])
def test_dpmpp_3m_published_matches_the_reference_update(name, grid, steps, lower_order_final):
    process = PROCESSES[name]()
    field = fs.exact_field(process, fs.toy.Gaussian(MEAN, COV))
    flow = fs.probability_flow(process, field)
    x0 = process.prior_std * torch.randn(8, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    ts = fs.make_grid(process, grid, steps)
    want = published_dpmpp_3m(process, field.denoiser, x0, ts, lower_order_final)
    got = fs.solve(flow, x0, ts, "dpmpp_3m", variant="published", lower_order_final=lower_order_final)
    scale = max(1.0, float(want.abs().max()))
    assert float((got.x - want).abs().max()) <= 1e-12 * scale, float((got.x - want).abs().max())
    assert torch.all(got.nfe == steps)
    exact = fs.solve(flow, x0, ts, "dpmpp_3m", lower_order_final=lower_order_final)
    assert float((exact.x - want).abs().max()) > 1e-6 * scale  # the default is a different method


def test_dpmpp_3m_published_is_second_order():
    """On the log-sigma grid, Gaussian data under EDM: the published weight gives order ~2 (2.25,
    2.08 from N = 32), the exact one >= 3 (~4 here, see test_order_dpmpp_3m)."""
    process, flow, x0, ref = _gaussian_problem("EDM")
    published, errs_pub = _observed_orders(flow, process, x0, ref, "dpmpp_3m", variant="published")
    exact, errs = _observed_orders(flow, process, x0, ref, "dpmpp_3m")
    assert all(abs(p - 2) <= 0.3 for p in published), (published, errs_pub)
    assert all(p >= 2.7 for p in exact), (exact, errs)
    assert errs_pub[-1] > 20 * errs[-1]


def test_dpmpp_3m_variant_is_validated():
    process, flow, x0, _ = _gaussian_problem("EDM")
    ts = fs.make_grid(process, "karras", 4)
    for bad in ("Published", "k-diffusion", None, 1):
        with pytest.raises(ValueError, match="variant"):
            fs.solve(flow, x0, ts, "dpmpp_3m", variant=bad)
