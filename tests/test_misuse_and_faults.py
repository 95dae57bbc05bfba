"""No silent misuse, and faults reported per sample (issue 6, sections 2-5).

Each misuse found by trying the package as a new user gets a clear ValueError, raised before
any field evaluation, that says what was passed and what to pass; each numerical fault stops
only the samples it hits, and says where (step and time).
"""

from __future__ import annotations

import math
import pydoc

import pytest
import torch

import flowsolve as fs
from flowsolve.solvers import NoiseSource
from flowsolve.solvers.api import SOLVER_STREAM

F64 = torch.float64
DATA = fs.toy.Gaussian([0.5, -1.0], [0.3, 0.8])
SOLVERS = fs.available_solvers()
ALL = sorted(SOLVERS)
STOCHASTIC = sorted(n for n, d in SOLVERS.items() if d["kind"] == "sde")


def budget(name, steps=4):
    if SOLVERS[name]["adaptive"]:
        return dict(rtol=1e-2, atol=1e-2) if SOLVERS[name]["kind"] == "sde" else dict(rtol=1e-3, atol=1e-3)
    if name == "annealed_langevin":
        return dict(steps=steps, n_steps_each=2)
    return dict(steps=steps)


def flow_for(name, process, field):
    return fs.reverse_sde(process, field) if SOLVERS[name]["kind"] == "sde" else fs.probability_flow(process, field)


class Counting:
    """A denoiser that counts its calls (to check that refusals come before any work)."""

    def __init__(self, process):
        self.exact, self.calls = fs.exact_field(process, DATA), 0

    def __call__(self, x, t):
        self.calls += 1
        return self.exact.denoiser(x, t)


# =========================================================================================
# processes and flows are values
# =========================================================================================

def test_flows_of_equal_processes_accept_each_others_fields():
    flow = fs.probability_flow(fs.EDM(), fs.exact_field(fs.EDM(), DATA))
    assert flow == fs.probability_flow(fs.EDM(), flow.field) and hash(flow) == hash(fs.probability_flow(fs.EDM(),
                                                                                                         flow.field))
    sol = fs.solve(flow, torch.zeros(2, 2), (80.0, 0.002), "heun", steps=3)
    assert sol.success
    for make in (fs.probability_flow, fs.reverse_sde):
        with pytest.raises(ValueError, match=r"made for EDM\(sigma_min=0.002, sigma_max=80.0\).*EDM\(sigma_min=0.01"):
            make(fs.EDM(sigma_min=0.01), flow.field)


class CosineVP(fs.Diffusion):
    """A user's process: VP's schedules written out, without any closed-form inverse."""

    def __init__(self):
        super().__init__(t_min=1e-3, t_max=1.0)

    def _scale(self, t):
        return torch.exp(-(19.9 / 4) * t**2 - 0.05 * t)

    def _sigma(self, t):
        return torch.sqrt(torch.expm1((19.9 / 2) * t**2 + 0.1 * t))


@pytest.mark.parametrize("solver", ["heun", "dpmpp_2m", "dpm_solver_2", "ancestral", "edm_stochastic", "dopri5"])
def test_user_subclass_samples_like_the_named_process(solver):
    """A subclass of Diffusion works with every kind of solver, process-aware ones included
    (its t_of_sigma is the generic bisection, its derivatives autograd): it gives what fs.VP()
    gives, to the accuracy of those generic inverses."""
    mine, named = CosineVP(), fs.VP()
    kw = dict(dtype=F64, seed=1, **budget(solver))
    if SOLVERS[solver]["kind"] == "ode":
        kw.pop("seed")
        kw["x_init"] = named.prior_sample(6, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    a = fs.sample(mine, fs.exact_field(mine, DATA), 6, solver, **kw)
    b = fs.sample(named, fs.exact_field(named, DATA), 6, solver, **kw)
    assert a.success and torch.allclose(a.x, b.x, rtol=1e-8, atol=1e-8), float((a.x - b.x).abs().max())


# =========================================================================================
# no silent misuse
# =========================================================================================

@pytest.mark.parametrize("solver", [n for n in STOCHASTIC if not SOLVERS[n]["adaptive"]])
def test_fixed_step_stochastic_solver_refuses_a_bare_span(solver):
    process = fs.EDM()
    flow = fs.reverse_sde(process, fs.exact_field(process, DATA))
    with pytest.raises(ValueError, match=r"ONE step.*steps=N"):
        fs.solve(flow, torch.zeros(3, 2), (80.0, 0.002), solver)
    assert fs.solve(flow, torch.zeros(3, 2), (80.0, 0.002), solver, steps=2,
                    **({"n_steps_each": 1} if solver == "annealed_langevin" else {})).n_steps.tolist() == [2] * 3


@pytest.mark.parametrize("solver", STOCHASTIC)
def test_stochastic_solver_given_a_probability_flow_says_what_to_pass(solver):
    process = fs.EDM()
    counting = Counting(process)
    flow = fs.probability_flow(process, counting)
    with pytest.raises(ValueError, match=r"ProbabilityFlowODE of EDM\(.*no noise term: pass fs\.reverse_sde\(process, "
                                         r"field\) instead"):
        fs.solve(flow, torch.zeros(3, 2), fs.make_grid(process, "karras", 3), solver)
    poisson = fs.PFGMPP(D=16)
    flow = fs.probability_flow(poisson, fs.exact_field(poisson, DATA))
    with pytest.raises(ValueError, match="PFGMPP has no forward SDE"):
        fs.solve(flow, torch.zeros(3, 2), fs.make_grid(poisson, "karras", 3), solver)
    assert counting.calls == 0


@pytest.mark.parametrize("solver, bad, close", [("pc", "snrr", "snr"), ("edm_stochastic", "s_churn", "S_churn"),
                                                ("adaptive_sde", "rtoll", "rtol"), ("dpmpp_2m_sde", "etta", "eta")])
def test_unknown_option_of_a_stochastic_solver(solver, bad, close):
    process = fs.VP()
    counting = Counting(process)
    category = SOLVERS[solver]["category"]
    with pytest.raises(ValueError, match=rf"unknown option '{bad}' for solver '{solver}' \({category}\): it takes .*"
                                         rf"did you mean '{close}'\?"):
        fs.sample(process, counting, 2, solver, shape=(2,), **budget(solver), **{bad: 1.0})
    assert counting.calls == 0


def test_unknown_solver_names_the_closest():
    process = fs.EDM()
    with pytest.raises(ValueError, match=r"solver must be one of \[.*\], got 'dpmpp2m'; did you mean 'dpmpp_2m'\?"):
        fs.sample(process, fs.exact_field(process, DATA), 2, "dpmpp2m", steps=3)


def test_stochastic_solvers_list_their_options_and_document_them():
    assert SOLVERS["pc"]["options"]["corrector"] == "ald" and SOLVERS["pc"]["options"]["snr"] == 0.16
    assert SOLVERS["adaptive_sde"]["options"]["rejection"] == "bridge"
    assert SOLVERS["adaptive_sde"]["options"]["rtol"] == 1e-2 and SOLVERS["adaptive_sde"]["options"]["error_scale"] == "max"
    assert SOLVERS["edm_stochastic"]["options"] == {"S_churn": 40.0, "S_tmin": 0.0, "S_tmax": math.inf, "S_noise": 1.0}
    for name in STOCHASTIC:
        text = pydoc.render_doc(getattr(fs.solvers, name), renderer=pydoc.plaintext)
        assert name in text
        for option in SOLVERS[name]["options"]:
            if option not in fs.PIDController.option_names():
                assert option in text, (name, option)


@pytest.mark.parametrize("solver", ["dopri5", "adaptive_sde"])
def test_adaptive_sample_refuses_grid_arguments_it_would_ignore(solver):
    process = fs.EDM()
    field = fs.exact_field(process, DATA)
    for kw in (dict(grid="karras"), dict(grid="explicit", ts=[80.0, 1.0, 0.002]), dict(rho=3.0), dict(steps=5)):
        with pytest.raises(ValueError, match="adaptive.*would be ignored"):
            fs.sample(process, field, 2, solver, **kw)


def test_randomness_arguments_refused_where_nothing_is_drawn():
    process = fs.EDM()
    field = fs.exact_field(process, DATA)
    x0 = torch.zeros(2, 2)
    for kw in (dict(seed=3), dict(offset=2), dict(generator=torch.Generator())):
        with pytest.raises(ValueError, match="nothing is drawn"):
            fs.sample(process, field, 2, "heun", steps=2, x_init=x0, **kw)
        fs.sample(process, field, 2, "heun", steps=2, **kw)  # the prior is drawn: meaningful
        fs.sample(process, field, 2, "euler_maruyama", steps=2, x_init=x0, **kw)  # the solver's noise
    flow = fs.probability_flow(process, field)
    for kw in (dict(seed=3), dict(generator=torch.Generator()), dict(noise=NoiseSource(0, 2, 2))):
        with pytest.raises(ValueError, match="draws no noise"):
            fs.solve(flow, x0, (80.0, 0.002), "heun", steps=2, **kw)


@pytest.mark.parametrize("kw, match", [
    (dict(solver="edm_stochastic", S_tmin=math.nan), "S_tmin"),
    (dict(solver="edm_stochastic", S_tmin=5.0, S_tmax=1.0), "S_tmin must be <= S_tmax"),
    (dict(solver="edm_stochastic", S_churn="40"), "S_churn"),
    (dict(solver="dpmpp_2m", lower_order_final="no"), "lower_order_final"),
    (dict(solver="unipc", lower_order_final=1), "lower_order_final"),
    (dict(solver="dpmpp_3m", variant="paper"), "variant"),
    (dict(solver="ancestral", eta="0.5"), "eta"),
    (dict(solver="pc", n_corrector_steps=True), "n_corrector_steps"),
    (dict(solver="heun", denoise_final="yes"), "denoise_final"),
    (dict(solver="heun", differentiable=1), "differentiable"),
    (dict(solver="heun", extra_args=[1, 2]), "extra_args"),
    (dict(solver="adaptive_sde", extrapolate="yes", steps=None), "extrapolate"),
])
def test_invalid_option_values_refused_before_any_evaluation(kw, match):
    process = fs.VP()
    counting = Counting(process)
    kw = dict(kw)
    solver = kw.pop("solver")
    args = {k: v for k, v in {**budget(solver), **kw}.items() if v is not None}
    with pytest.raises(ValueError, match=match):
        fs.sample(process, counting, 3, solver, shape=(2,), **args)
    assert counting.calls == 0


def test_solve_refuses_two_dimensional_times_and_the_meta_device():
    process = fs.EDM()
    flow = fs.probability_flow(process, fs.exact_field(process, DATA))
    with pytest.raises(ValueError, match=r"^ts must be 1-D \(one time per grid point\), got shape \(2, 2\)"):
        fs.solve(flow, torch.zeros(2, 2), [[80.0, 10.0], [1.0, 0.002]], "heun")
    with pytest.raises(ValueError, match="meta"):
        fs.solve(flow, torch.zeros(2, 2, device="meta"), fs.make_grid(process, "karras", 3), "heun")


# =========================================================================================
# faults, per sample
# =========================================================================================

def poisoned(process, t_bad=math.inf, raise_below=None):
    """A field that returns NaN for the samples flagged by the per-sample argument ``poison``
    once t < t_bad, or raises below ``raise_below``."""
    exact = fs.exact_field(process, DATA)

    def den(x, t, poison=None):
        if raise_below is not None and bool((t < raise_below).any()):
            raise RuntimeError("boom: the network ran out of memory")
        out = exact.denoiser(x, t)
        if poison is not None:
            bad = (poison & (t < t_bad)).reshape(-1, 1)
            out = torch.where(bad, torch.full_like(out, math.nan), out)
        return out

    return fs.Field.from_denoiser(process, den, event_shape=(2,))


@pytest.mark.parametrize("solver", [n for n in ALL if not SOLVERS[n]["adaptive"]])
def test_fixed_step_fault_freezes_one_sample_and_the_others_finish(solver):
    """Sample 0's field turns NaN part-way: it stops at its last finite state, marked failed, and
    samples 1..4 are bit-identical to a solve of them alone (same noise streams)."""
    process = fs.VP()
    grid = fs.make_grid(process, "karras", 6)
    field = poisoned(process, t_bad=float(grid[3]))
    poison = torch.tensor([True, False, False, False, False])
    x0 = NoiseSource(4, 5, 2, dtype=F64).randn() * process.prior_std
    opts = {k: v for k, v in budget(solver).items() if k != "steps"}
    flow = flow_for(solver, process, field)
    sol = fs.solve(flow, x0, grid, solver, seed=2 if solver in STOCHASTIC else None, extra_args={"poison": poison},
                   **opts)
    assert sol.failed.tolist() == [True, False, False, False, False] and sol.status == "nonfinite"
    assert "1 of 5 sample(s) failed" in sol.message and "first sample 0" in sol.message
    assert torch.isfinite(sol.x).all() and int(sol.n_steps[0]) < 6 and float(sol.t[0]) == float(grid[sol.n_steps[0]])
    noise = dict(noise=NoiseSource(2, 4, 2, dtype=F64, offset=1, stream=SOLVER_STREAM)) if solver in STOCHASTIC else {}
    alone = fs.solve(flow, x0[1:], grid, solver, extra_args={"poison": poison[1:]}, **noise, **opts)
    assert alone.success and torch.equal(alone.x, sol.x[1:])


@pytest.mark.parametrize("solver", ["heun", "dpmpp_3m", "dopri5", "edm_stochastic", "adaptive_sde"])
def test_denoise_final_is_fault_checked_per_sample(solver):
    """(Was a bug: a non-finite final denoising returned NaN samples with status "success".) The
    field turns NaN for sample 1 in its very last call, the final denoising."""
    process = fs.VP()
    exact = fs.exact_field(process, DATA)
    calls = {"n": 0, "nan_at": None}

    def den(x, t):
        calls["n"] += 1
        out = exact.denoiser(x, t)
        if calls["n"] == calls["nan_at"]:
            out[1] = math.nan
        return out

    field = fs.Field.from_denoiser(process, den, event_shape=(2,))
    kw = dict(seed=0, dtype=F64, **budget(solver))
    plain = fs.sample(process, field, 3, solver, **kw)
    calls.update(n=0, nan_at=calls["n"] + 1)
    sol = fs.sample(process, field, 3, solver, denoise_final=True, **kw)
    assert calls["n"] == calls["nan_at"]  # the NaN came in the final denoising
    assert sol.failed.tolist() == [False, True, False] and sol.status == "nonfinite"
    assert "final denoising" in sol.message, sol.message
    assert torch.equal(sol.x[1], plain.x[1])  # the failed sample keeps its last finite state
    assert torch.equal(sol.x[[0, 2]], exact.denoiser(plain.x[[0, 2]], process.t_min))
    assert torch.equal(sol.nfe, plain.nfe + 1)


@pytest.mark.parametrize("solver", ALL)
def test_field_exception_carries_step_time_solver_and_the_partial_solution(solver):
    process = fs.EDM()
    grid = fs.make_grid(process, "karras", 6)
    field = poisoned(process, raise_below=float(grid[3]) * 1.0001)
    x0 = NoiseSource(1, 4, 2, dtype=F64).randn() * 80.0
    flow = flow_for(solver, process, field)
    ts = (80.0, process.t_min) if SOLVERS[solver]["adaptive"] else grid
    opts = {k: v for k, v in budget(solver).items() if k != "steps"}
    with pytest.raises(fs.FieldError, match=rf"RuntimeError raised by the field in step \d+ at .*\(solver '{solver}'\)"
                                            r".*boom") as info:
        fs.solve(flow, x0, ts, solver, seed=0 if solver in STOCHASTIC else None, **opts)
    err = info.value
    assert isinstance(err.original, RuntimeError) and err.__cause__ is err.original and err.solver == solver
    partial = err.solution
    assert isinstance(partial, fs.Solution) and partial.x.shape == x0.shape and torch.isfinite(partial.x).all()
    if not SOLVERS[solver]["adaptive"]:
        assert err.step in (2, 3)  # the step that evaluates below grid[3] (a stage of step 2, or step 3)
        assert torch.all(partial.n_steps == err.step) and torch.all(partial.t == grid[err.step])


@pytest.mark.parametrize("solver", ALL)
def test_a_field_of_another_dtype_is_cast_to_the_state_dtype(solver):
    """(Was a bug: fixed-step outputs were silently promoted, adaptive solvers crashed.)"""
    process = fs.VP()
    exact = fs.exact_field(process, DATA)
    # the same numbers, returned as float32 (the state's dtype) or as float64
    in64 = lambda x, t: exact.denoiser(x.double(), t.double()).float()  # noqa: E731
    as32 = fs.Field.from_denoiser(process, in64, event_shape=(2,))
    as64 = fs.Field.from_denoiser(process, lambda x, t: in64(x, t).double(), event_shape=(2,))
    ref = fs.sample(process, as32, 4, solver, dtype=torch.float32, seed=0, **budget(solver))
    sol = fs.sample(process, as64, 4, solver, dtype=torch.float32, seed=0, **budget(solver))
    assert sol.x.dtype == torch.float32 and torch.equal(sol.x, ref.x)
    ints = fs.Field.from_denoiser(process, lambda x, t: x.round().long(), event_shape=(2,))
    with pytest.raises(fs.FieldError, match="floating"):
        fs.sample(process, ints, 4, solver, dtype=torch.float32, seed=0, **budget(solver))


def test_float16_prior_overflow_fails_only_those_samples():
    """PFGM (D = 1): the Cauchy prior at sigma_max = 80 exceeds float16's range (65504) for a few
    draws. They are scaled in float64 and cast once, so exactly the draws that do not fit are
    non-finite, and only they fail."""
    process = fs.Poisson()
    points = fs.toy.ring().sample(16, generator=torch.Generator().manual_seed(0), dtype=F64)
    field = fs.exact_field(process, fs.toy.Empirical(points))  # the closed-form PFGM field
    sol = fs.sample(process, field, 2000, "euler", steps=4, dtype=torch.float16, seed=0)
    wide = fs.sample(process, field, 2000, "euler", steps=0 + 1, dtype=F64, seed=0, save_at=True).xs[0]
    too_big = (wide.abs() > torch.finfo(torch.float16).max).any(-1)
    assert 0 < int(too_big.sum()) < 20 and torch.equal(sol.failed, too_big)
    assert "does not fit torch.float16" in sol.message
    assert torch.isfinite(sol.x[~sol.failed]).all()


# =========================================================================================
# found by review: each was a wrong answer, a crash or a misleading message
# =========================================================================================

def _gauss(process):
    return fs.exact_field(process, fs.toy.Gaussian([0.0], [1.0]))


def test_explicit_sample_grid_misuse_is_refused():
    process = fs.EDM()
    field = _gauss(process)
    with pytest.raises(ValueError, match="ONE step"):  # (was: one step, std 40 instead of 1, "success")
        fs.sample(process, field, 4, "heun", grid="explicit", ts=[process.t_max, process.t_min])
    late = torch.linspace(10.0, process.t_min, 9).tolist()
    with pytest.raises(ValueError, match="must start at t_max"):  # (was: a prior of std 80 started at t = 10)
        fs.sample(process, field, 4, "heun", grid="explicit", ts=late)
    x0 = 10.0 * torch.randn(4, 1, generator=torch.Generator().manual_seed(0))
    assert fs.sample(process, field, 4, "heun", grid="explicit", ts=late, x_init=x0).success  # with x_init: fine


def test_denoise_final_denoises_at_the_end_of_the_grid():
    """(Was: always at t_min, so a grid ending at t = 5 returned D(x; 0.002) = x.)"""
    process = fs.EDM()
    field = _gauss(process)
    ts = torch.linspace(80.0, 5.0, 9, dtype=F64).tolist()
    plain = fs.sample(process, field, 6, "heun", grid="explicit", ts=ts, dtype=F64, seed=0)
    final = fs.sample(process, field, 6, "heun", grid="explicit", ts=ts, dtype=F64, seed=0, denoise_final=True)
    assert torch.allclose(final.x, field.denoiser(plain.x, 5.0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("solver", STOCHASTIC)
def test_a_reverse_sde_integrated_forward_is_refused(solver):
    """(Was: ancestral, edm_stochastic, euler_maruyama and adaptive_sde returned nonsense with
    status "success" from an increasing span with steps=/dt=.)"""
    process = fs.VP()
    flow = fs.reverse_sde(process, _gauss(process))
    x = torch.zeros(3, 1)
    ways = [dict(ts=(process.t_min, process.t_max))] if SOLVERS[solver]["adaptive"] else [
        dict(ts=(process.t_min, process.t_max), steps=5), dict(ts=(process.t_min, process.t_max), dt=0.25),
        dict(ts=torch.linspace(process.t_min, process.t_max, 5))]
    extra = {"n_steps_each": 1} if solver == "annealed_langevin" else {}
    for way in ways:
        with pytest.raises(ValueError, match="must decrease"):
            fs.solve(flow, x, **way, **extra, solver=solver)


@pytest.mark.parametrize("solver", ["euler_maruyama", "ancestral", "adaptive_sde"])
def test_a_users_noise_source_follows_the_state_dtype(solver):
    """(Was: a float32 NoiseSource promoted a float16 solve, and crashed adaptive_sde.)"""
    process = fs.VP()
    flow = fs.reverse_sde(process, _gauss(process))
    x = torch.randn(5, 1, generator=torch.Generator().manual_seed(0)).half()
    ts = (1.0, process.t_min) if SOLVERS[solver]["adaptive"] else fs.make_grid(process, "karras", 4)
    opts = dict(rtol=0.05, atol=0.05) if SOLVERS[solver]["adaptive"] else {}
    sol = fs.solve(flow, x, ts, solver, noise=NoiseSource(0, 5, 1), **opts)
    assert sol.x.dtype == torch.float16 and sol.success

    class WrongShape:
        def randn(self):
            return torch.zeros(5, 2)

    with pytest.raises(ValueError, match=r"noise.randn\(\) must draw the state's shape \(5, 1\)"):
        fs.solve(flow, x.float(), ts, solver, noise=WrongShape(), **opts)


@pytest.mark.parametrize("solver", ["euler_maruyama", "adaptive_sde"])
def test_reverse_sde_drift_does_not_overflow_float16(solver):
    """(Was: with VE(sigma_max=378), score_sde's CIFAR setting, g^2 = 3e6 overflowed float16 and
    every sample failed.) The drift is computed in float32 and cast: float16 follows float32."""
    process = fs.VE(sigma_max=378.0)
    field = _gauss(process)
    kw = dict(rtol=0.05, atol=0.05) if SOLVERS[solver]["adaptive"] else dict(steps=200)
    half = fs.sample(process, field, 64, solver, dtype=torch.float16, seed=0, **kw)
    single = fs.sample(process, field, 64, solver, dtype=torch.float32, seed=0, **kw)
    assert half.success and half.x.dtype == torch.float16 and torch.isfinite(half.x).all(), half.message
    if solver == "euler_maruyama":  # the same steps and draws: float16 follows float32 to its resolution
        assert torch.allclose(half.x.float(), single.x, rtol=0.02, atol=0.02)
    else:  # step sizes differ with the rounding, so compare laws: N(0, 1 + sigma_min^2), 64 samples
        assert 0.7 < float(half.x.float().std()) < 1.4


def test_field_error_in_the_first_step_probe_and_the_partial_solution():
    """(Was: an exception in dopri5's first-step probe carried no step and no solution; partial
    solutions said "success"; the call that raised was counted.)"""
    process = fs.EDM()
    exact = _gauss(process)
    calls = {"n": 0}

    def den(x, t):
        calls["n"] += 1
        if calls["n"] == 2:  # the first-step probe
            raise RuntimeError("probe failed")
        return exact.denoiser(x, t)

    field = fs.Field.from_denoiser(process, den, event_shape=(1,))
    with pytest.raises(fs.FieldError, match="probe failed") as info:
        fs.sample(process, field, 3, "dopri5")
    err = info.value
    assert err.step == 0 and err.solution is not None
    assert err.solution.status == "interrupted" and bool(err.solution.failed.all())
    assert err.solution.nfe.tolist() == [1, 1, 1]  # the call that raised is not counted
    calls["n"] = -10**9  # never raises again
    calls_fixed = {"n": 0}

    def den_fixed(x, t):
        calls_fixed["n"] += 1
        if calls_fixed["n"] == 5:
            raise RuntimeError("boom")
        return exact.denoiser(x, t)

    with pytest.raises(fs.FieldError) as info:
        fs.sample(process, fs.Field.from_denoiser(process, den_fixed, event_shape=(1,)), 3, "heun", steps=6)
    part = info.value.solution
    assert part.status == "interrupted" and not part.success and "interrupted" in part.message
    assert part.fault.tolist() == [fs.solvers.FAULT_KINDS.index("interrupted")] * 3
    assert part.nfe.tolist() == [4, 4, 4] and part.n_steps.tolist() == [2, 2, 2]


def test_adaptive_callback_gets_its_own_copy_of_the_times():
    """(Was: the loop's own t tensor, overwritten in place by later iterations.)"""
    process = fs.EDM()
    seen = []
    fs.sample(process, _gauss(process), 3, "dopri5", rtol=1e-3, atol=1e-3,
              callback=lambda i, t, x, d: seen.append(t))
    assert len({id(t) for t in seen}) == len(seen) and float(seen[0].max()) > float(seen[-1].max())


def test_more_argument_checks():
    process = fs.VP()
    field = _gauss(process)
    for kw in (dict(snr=-1.0, n_corrector_steps=0), dict(snr="x", corrector=None)):
        with pytest.raises(ValueError, match="snr"):
            fs.sample(process, field, 2, "pc", steps=3, **kw)
    flow = fs.probability_flow(process, field)
    grid = fs.make_grid(process, "karras", 4)
    for bad in ("yes", torch.tensor(True), 1, 0.5, [[0.5]]):
        with pytest.raises(ValueError, match="save_at"):
            fs.solve(flow, torch.zeros(2, 1), grid, "heun", save_at=bad)
    with pytest.raises(ValueError, match="one value per sample"):
        fs.solve(flow, torch.zeros(2, 1), (1.0, process.t_min), "dopri5", norm=lambda v: v.abs().max())
    with pytest.raises(ValueError, match="noise= is for fs.solve"):
        fs.sample(process, field, 2, "ancestral", steps=3, noise=NoiseSource(0, 2, 1))
    sol = fs.sample(process, field, 2, "dopri5", rtol=1e-30, atol=1e-30)
    assert sol.status == "underflow" and "tolerances no step can meet" in sol.message
