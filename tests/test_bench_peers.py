"""Peer adapters of the bench (flowsolve.bench.peers): NFE counted exactly and within budget,
the same grid and the same results as flowsolve's own solvers where the algorithm is the same,
convergence orders on Gaussian data, the peer's own failures reported per sample, torchsde's
law and determinism, unavailable libraries and unsupported processes."""

import importlib
import math
import sys

import pytest
import torch

import flowsolve as fs
import flowsolve.testing as ft
from flowsolve.bench import methods as bench_methods
from flowsolve.bench import peers
from flowsolve.bench.methods import Task
from flowsolve.bench.peers import PEERS
from flowsolve.testing.references import gaussian_flow_map

LAW2 = fs.toy.Gaussian([1.0, -2.0], [[1.0, 0.5], [0.5, 0.75]])
OPTIONAL = {"torchode", "diffusers"}


def _need(name):
    lib = name.split(".")[0]
    if lib in OPTIONAL:
        pytest.importorskip(lib)


def _x0(process, n, dim=2, seed=0):
    return process.prior_sample(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _flowsolve(process, field, x0, solver, steps, **options):
    grid = fs.make_grid(process, "karras", steps)
    return fs.solve(fs.probability_flow(process, field), x0, grid, solver, **options).x


def _run(name, process, field, x0, budget, seed=0):
    m = PEERS[name]
    return m.run(Task(process, field, x0, m.budget_kind, budget, seed=seed))


def _counted_field(process, law, dim):
    """The exact field behind a denoiser that counts its calls (each evaluates every row)."""
    exact = fs.exact_field(process, law)
    calls = []

    def denoiser(x, t):
        calls.append(x.shape[0])
        return exact.denoiser(x, t)

    return fs.Field.from_denoiser(process, denoiser, event_shape=(dim,)), calls


# -- the table ------------------------------------------------------------------------------
def test_every_peer_is_a_described_method_found_by_name():
    assert {"torchdiffeq.euler", "torchdiffeq.rk4", "torchdiffeq.dopri5", "torchsde.euler", "torchsde.srk",
            "torchsde.reversible_heun", "torchode.dopri5", "torchode.tsit5", "diffusers.euler", "diffusers.heun",
            "diffusers.dpmsolver++2m", "diffusers.unipc"} <= set(PEERS)
    for name, m in PEERS.items():
        assert isinstance(m, bench_methods.Method) and m.name == name and m.is_peer
        assert name.split(".")[0] == m.library and m.kind in ("ode", "sde")
        assert m.order and m.order > 0 and m.description
        assert bench_methods.method(name) is m
        if not m.adaptive:
            assert m.min_budget() >= 1
        if m.unavailable() is None:
            assert m.version()[0].isdigit()


# -- NFE ------------------------------------------------------------------------------------
FIXED = [name for name, m in PEERS.items() if not m.adaptive]
ADAPTIVE = [name for name, m in PEERS.items() if m.adaptive]


@pytest.mark.parametrize("name", FIXED)
def test_fixed_step_nfe_is_the_count_of_field_calls_and_fits_the_budget(name):
    _need(name)
    process, n, budget = fs.VP(), 3, 13
    field, calls = _counted_field(process, LAW2, 2)
    x0 = _x0(process, n)
    m = PEERS[name]
    run = m.run(Task(process, field, x0, "nfe", budget))
    assert run.x.dtype == torch.float64 and run.x.shape == x0.shape and run.x.device == x0.device
    for v in (run.nfe, run.n_steps, run.n_rejected):
        assert v.dtype == torch.long and v.shape == (n,)
    assert set(calls) == {n}  # every call evaluates all rows
    assert run.nfe.tolist() == [len(calls)] * n
    steps = m.steps_for(budget)
    assert run.n_steps.tolist() == [steps] * n and steps >= 1
    assert len(calls) == m.nfe_overhead + steps * m.nfe_per_step <= budget
    assert budget - len(calls) < m.nfe_per_step  # the most steps that fit
    assert not run.failed.any() and run.message == ""


@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_nfe_is_the_count_of_field_calls(name):
    _need(name)
    process, n = fs.EDM(), 3
    field, calls = _counted_field(process, LAW2, 2)
    run = _run(name, process, field, _x0(process, n), 1e-3)
    assert not run.failed.any(), run.message
    assert run.nfe.tolist() == [len(calls)] * n and set(calls) == {n}
    assert bool((run.n_steps >= 1).all()) and bool((run.n_rejected >= 0).all())
    assert bool((run.nfe >= run.n_steps).all())
    assert run.extras["notes"]


def test_a_budget_below_one_step_or_of_the_wrong_kind_is_refused():
    process = fs.EDM()
    field, x0 = fs.exact_field(process, LAW2), _x0(process, 2)
    with pytest.raises(ValueError, match="below one step of torchdiffeq.rk4"):
        PEERS["torchdiffeq.rk4"].run(Task(process, field, x0, "nfe", 3))
    with pytest.raises(ValueError, match="below one step of torchsde.srk"):
        PEERS["torchsde.srk"].run(Task(process, field, x0, "nfe", 3))
    with pytest.raises(ValueError, match="fixed-step"):
        PEERS["torchdiffeq.euler"].run(Task(process, field, x0, "rtol", 1e-3))
    with pytest.raises(ValueError, match="adaptive"):
        PEERS["torchdiffeq.dopri5"].run(Task(process, field, x0, "nfe", 30))


# -- same grid, same algorithm --------------------------------------------------------------
@pytest.mark.parametrize("process", [fs.VP(), fs.EDM(), fs.VE(), fs.PFGMPP(D=4.0)], ids=repr)
def test_torchdiffeq_fixed_steps_are_flowsolves_on_the_same_grid(process):
    """torchdiffeq steps exactly on the Karras grid: its euler and midpoint are flowsolve's to
    rounding (found bitwise equal)."""
    field = fs.exact_field(process, LAW2)
    x0 = _x0(process, 8)
    for steps in (5, 12):
        eul = _run("torchdiffeq.euler", process, field, x0, steps).x
        mid = _run("torchdiffeq.midpoint", process, field, x0, 2 * steps).x
        torch.testing.assert_close(eul, _flowsolve(process, field, x0, "euler", steps), rtol=0, atol=1e-13)
        torch.testing.assert_close(mid, _flowsolve(process, field, x0, "midpoint", steps), rtol=0, atol=1e-13)


def test_diffusers_schedulers_are_flowsolves_algorithms_on_the_same_grid():
    """Float64 schedulers agree with flowsolve to rounding: EDM-DPM-Solver++(2M) with dpmpp_2m on
    every process (the same method in (x/s, sigma)); Heun with heun where sigma = t and s = 1
    (EDM, PFGM++); UniPC-bh2 with unipc below 10 steps (above, diffusers always ends with a
    first-order step, flowsolve only below 10). DPM-Solver++(2M)'s and Euler's step() rounds the
    state to float32: they agree to ~1e-7 relative."""
    pytest.importorskip("diffusers")
    for process in (fs.VP(), fs.PFGMPP(D=4.0)):
        field, x0 = fs.exact_field(process, LAW2), _x0(process, 8)
        scale = float(x0.abs().max())
        ref = _flowsolve(process, field, x0, "dpmpp_2m", 20)
        torch.testing.assert_close(_run("diffusers.edm_dpmsolver++2m", process, field, x0, 20).x, ref,
                                   rtol=0, atol=1e-12 * scale)
        torch.testing.assert_close(_run("diffusers.dpmsolver++2m", process, field, x0, 20).x, ref,
                                   rtol=0, atol=1e-6 * float(ref.abs().max()))
        torch.testing.assert_close(_run("diffusers.unipc", process, field, x0, 6).x,
                                   _flowsolve(process, field, x0, "unipc", 6), rtol=0, atol=1e-12 * scale)
    process = fs.EDM()
    field, x0 = fs.exact_field(process, LAW2), _x0(process, 8)
    scale = float(x0.abs().max())
    torch.testing.assert_close(_run("diffusers.heun", process, field, x0, 24).x,
                               _flowsolve(process, field, x0, "heun", 12), rtol=0, atol=1e-12 * scale)
    ref = _flowsolve(process, field, x0, "euler", 12)
    torch.testing.assert_close(_run("diffusers.euler", process, field, x0, 12).x, ref,
                               rtol=0, atol=1e-6 * float(ref.abs().max()))


# -- orders ---------------------------------------------------------------------------------
ORDERS = [  # name, process, budgets (x1, x2, x4), order
    ("torchdiffeq.euler", fs.VP(), 50, 1.0),
    ("torchdiffeq.midpoint", fs.VP(), 50, 2.0),
    ("torchdiffeq.rk4", fs.VP(), 80, 4.0),
    ("diffusers.heun", fs.VP(), 50, 2.0),
    ("diffusers.dpmsolver++2m", fs.EDM(), 25, 2.0),
    ("diffusers.unipc", fs.EDM(), 25, 3.0),
]


@pytest.mark.parametrize("name, process, budget, order", ORDERS, ids=[o[0] for o in ORDERS])
def test_errors_shrink_at_the_methods_order_on_gaussian_data(name, process, budget, order):
    _need(name)
    field, x0 = fs.exact_field(process, LAW2), _x0(process, 6)
    ref = gaussian_flow_map(process, LAW2, x0, process.t_max, process.t_min)
    errs = [float((_run(name, process, field, x0, b).x - ref).abs().max()) for b in (budget, 2 * budget, 4 * budget)]
    slopes = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(order - 0.3 < s < order + 0.5 for s in slopes), (errs, slopes)


@pytest.mark.parametrize("name", ["torchdiffeq.dopri5", "torchdiffeq.dopri8", "torchode.dopri5", "torchode.tsit5"])
def test_adaptive_errors_shrink_with_the_tolerance(name):
    _need(name)
    process = fs.VP()
    field, x0 = fs.exact_field(process, LAW2), _x0(process, 6)
    ref = gaussian_flow_map(process, LAW2, x0, process.t_max, process.t_min)
    runs = [_run(name, process, field, x0, rtol) for rtol in (1e-3, 1e-6)]
    errs = [float((r.x - ref).abs().max()) for r in runs]
    assert errs[1] < errs[0] / 30 and errs[1] < 1e-4, errs
    assert int(runs[1].nfe.max()) > int(runs[0].nfe.max())


# -- a peer's own failure -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["torchdiffeq.dopri5", "torchdiffeq.bosh3", "torchdiffeq.adaptive_heun",
                                  "torchdiffeq.dopri8"])
def test_torchdiffeq_first_step_heuristic_outside_the_span_fails_every_sample(name):
    """VP with centred data: the drift at t_max is small against the state, so torchdiffeq's
    first-step probe t0 + h0 (h0 = 0.01 ||y0|| / ||f0||) lands far below t = 0; the field refuses
    it. Not clamped: every sample fails where it started, with the two evaluations spent."""
    process = fs.VP()
    law = fs.toy.Gaussian([0.0], [[0.5]])
    field, x0 = fs.exact_field(process, law), _x0(process, 4, dim=1)
    run = _run(name, process, field, x0, 1e-3)
    assert run.failed.tolist() == [True] * 4
    assert torch.equal(run.x, x0) and run.nfe.tolist() == [2] * 4 and run.n_steps.tolist() == [0] * 4
    assert run.message.startswith(f"{name} evaluated the field at t=-")
    assert run.message.endswith("outside [0.001, 1.0]")


def test_a_peer_exception_or_a_non_finite_sample_is_reported():
    process = fs.EDM()
    exact = fs.exact_field(process, LAW2)
    calls = []

    def broken(x, t):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("model exploded\nsecond line")
        return exact.denoiser(x, t)

    x0 = _x0(process, 3)
    run = _run("torchdiffeq.euler", process, fs.Field.from_denoiser(process, broken, event_shape=(2,)), x0, 10)
    assert run.failed.all() and run.nfe.tolist() == [3] * 3 and torch.equal(run.x, x0)
    assert run.message == "torchdiffeq.euler stopped: RuntimeError: model exploded"

    def nan_row0(x, t):
        d = exact.denoiser(x, t).clone()
        d[0] = float("nan")
        return d

    run = _run("torchdiffeq.rk4", process, fs.Field.from_denoiser(process, nan_row0, event_shape=(2,)), x0, 12)
    assert run.failed.tolist() == [True, False, False] and run.message == "1 sample(s) ended non-finite"


def test_torchode_first_step_stays_in_the_span_on_the_same_problem():
    pytest.importorskip("torchode")
    process = fs.VP()
    law = fs.toy.Gaussian([0.0], [[0.5]])
    field, x0 = fs.exact_field(process, law), _x0(process, 4, dim=1)
    run = _run("torchode.dopri5", process, field, x0, 1e-5)
    assert not run.failed.any(), run.message
    torch.testing.assert_close(run.x, gaussian_flow_map(process, law, x0, process.t_max, process.t_min),
                               rtol=0, atol=1e-3)


# -- torchsde -------------------------------------------------------------------------------
def test_torchsde_steps_on_flowsolves_karras_grid():
    """torchsde.euler evaluates the drift at the Karras grid times (after sdeint's shape check at
    t_max), and one step is x + drift t'(0) + g sqrt|t'(0)| W(0, 1) in the time change u."""
    process, n = fs.VP(), 3
    exact = fs.exact_field(process, LAW2)
    seen = []

    def denoiser(x, t):
        seen.append(float(t[0]))
        return exact.denoiser(x, t)

    field = fs.Field.from_denoiser(process, denoiser, event_shape=(2,))
    x0 = _x0(process, n)
    _run("torchsde.euler", process, field, x0, 9)
    assert seen == [process.t_max] + fs.make_grid(process, "karras", 8)[:-1].tolist()
    # one step, against t(u) and t'(u) built here from the Karras formula
    import torchsde
    run = _run("torchsde.euler", process, field, x0, 2, seed=7)
    rho, lo, hi = 7.0, process.sigma_min ** (1 / 7.0), process.sigma_max ** (1 / 7.0)

    def t_of_u(u):
        return float(process.t_of_sigma((hi + u * (lo - hi)) ** rho))

    eps = 1e-6
    dt_du = (t_of_u(eps) - process.t_max) / eps
    flow = fs.reverse_sde(process, exact)
    w = torchsde.BrownianInterval(t0=0.0, t1=1.0, size=(n, 2), dtype=torch.float64, entropy=7,
                                  levy_area_approximation="none")(0.0, 1.0)
    expected = x0 + flow.drift(x0, process.t_max) * dt_du + float(flow.diffusion(process.t_max)) * math.sqrt(
        abs(dt_du)) * w
    torch.testing.assert_close(run.x, expected, rtol=1e-5, atol=1e-8)


def test_torchsde_is_deterministic_given_the_seed():
    process = fs.EDM()
    field, x0 = fs.exact_field(process, LAW2), _x0(process, 5)
    for name in ("torchsde.euler", "torchsde.srk", "torchsde.reversible_heun"):
        a, b = (_run(name, process, field, x0, 30, seed=3) for _ in range(2))
        c = _run(name, process, field, x0, 30, seed=4)
        assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    # Milstein for additive noise is Euler-Maruyama (g does not depend on x): the same numbers
    assert torch.equal(_run("torchsde.milstein", process, field, x0, 30, seed=3).x,
                       _run("torchsde.euler", process, field, x0, 30, seed=3).x)


@pytest.mark.parametrize("name", ["torchsde.euler", "torchsde.srk", "torchsde.reversible_heun"])
def test_torchsde_samples_the_data_law(name):
    """From VP's prior to t_min: mean and variance of the 1-D marginal within Monte-Carlo error
    (n = 2000, 200 NFE: z-score of the mean < 4, variance within 4 standard errors)."""
    process, n = fs.VP(), 2000
    law = fs.toy.Gaussian([0.5], [[0.09]])
    field, x0 = fs.exact_field(process, law), _x0(process, n, dim=1, seed=3)
    x = _run(name, process, field, x0, 200, seed=5).x
    mean, cov = ft.marginal_moments(process, law, process.t_min)
    z = float((x.mean(0) - mean).abs().max() / torch.sqrt(torch.diagonal(cov) / n).max())
    assert z < 4.0
    assert float((x.var(0) / torch.diagonal(cov) - 1).abs().max()) < 4.0 * math.sqrt(2.0 / n)


def test_sde_peers_refuse_a_poisson_flow():
    process = fs.PFGMPP(D=4.0)
    field, x0 = fs.exact_field(process, LAW2), _x0(process, 2)
    for name in ("torchsde.euler", "torchsde.srk"):
        reason = PEERS[name].unsupported(process)
        assert reason and "reverse SDE" in reason and "no forward SDE" in reason
        with pytest.raises(ValueError, match="cannot run: .*reverse SDE"):
            PEERS[name].run(Task(process, field, x0, "nfe", 20))
    assert PEERS["torchdiffeq.rk4"].unsupported(process) is None


# -- libraries that are not there -----------------------------------------------------------
@pytest.mark.parametrize("library, hint", [("torchode", "pip install 'flowsolve[peers]'"),
                                           ("diffusers", "pip install 'flowsolve[peers]'"),
                                           ("torchdiffeq", "a core dependency of flowsolve: pip install torchdiffeq"),
                                           ("torchsde", "a core dependency of flowsolve: pip install torchsde")])
def test_a_missing_library_makes_its_methods_unavailable(monkeypatch, library, hint):
    monkeypatch.setitem(sys.modules, library, None)  # import raises ImportError
    names = [name for name in PEERS if name.startswith(library + ".")]
    assert names
    for name in names:
        assert PEERS[name].unavailable() == f"{library} is not installed ({hint})"
    process = fs.EDM()
    m = PEERS[names[0]]
    with pytest.raises(ValueError, match=f"cannot run: {library} is not installed"):
        m.run(Task(process, fs.exact_field(process, LAW2), _x0(process, 2), m.budget_kind, 1e-3 if m.adaptive else 20))


def test_the_module_imports_without_the_optional_libraries(monkeypatch):
    for library in OPTIONAL:
        monkeypatch.setitem(sys.modules, library, None)
    try:
        module = importlib.reload(peers)
        assert "torchode.dopri5" in module.PEERS and module.PEERS["torchode.dopri5"].unavailable()
    finally:
        monkeypatch.undo()
        importlib.reload(peers)
