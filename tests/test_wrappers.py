"""Field wrappers (Field.from_*) and flows (fs.probability_flow / fs.reverse_sde).

Each wrapper is given one quantity of an exact field and must reproduce every other
quantity of that exact field. The exact field's ``score`` is the gradient of the noised
log density computed from the mixture posterior (not a conversion of the denoiser), so the
score comparisons check Tweedie's identity. The probability-flow velocity is further
checked against an independent derivation: for Gaussian data ``N(m, Q diag(lam) Q^T)`` the
exact PF-ODE trajectories are ``x(t) = s(t) (m + Q diag(sqrt(lam + sigma(t)^2)) k)`` (each
eigen-coordinate of ``x/s - m`` scales like the marginal std), differentiated in t by
autograd of schedules written here from the DESIGN table, not taken from flowsolve.

Tolerances: float64. A conversion such as ``score = (s D - x) / (s sigma)^2`` cancels
terms of size ``|x|/s + |D|``, so a value is compared within ``RTOL_TERMS`` times the size of
the terms it is computed from (``scale_of``), i.e. to ~1e4 ulps of the cancelling terms.
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

RTOL_TERMS = 1e-11
F64 = torch.float64

COV_A = [[1.0, 0.3], [0.3, 0.5]]
COV_B = [[0.2, 0.0], [0.0, 0.8]]
MIXTURE = toy.GaussianMixture([[1.0, -1.0], [-2.0, 0.5]], [COV_A, COV_B], [0.4, 0.6])
POINTS = toy.Empirical([[0.5, 0.0], [-1.0, 1.0], [2.0, 2.0]], [0.2, 0.5, 0.3])


def diffusions():
    return [fs.VE(), fs.VP(), fs.SubVP(), fs.EDM()]


def make_process(name):
    return {
        "VE": lambda: fs.VE(),
        "VP": lambda: fs.VP(),
        "SubVP": lambda: fs.SubVP(),
        "EDM": lambda: fs.EDM(),
        "PFGMPP": lambda: fs.PFGMPP(D=8.0, sigma_max=10.0),
        "Poisson": lambda: fs.Poisson(sigma_max=10.0),
    }[name]()


GAUSSIAN_KINDS = ["denoiser", "eps", "score", "velocity"]
POISSON_KINDS = ["denoiser", "eps", "velocity", "poisson_field"]


def batch(process, n=64, seed=0):
    """x spread over several data scales and t covering the span, dense near t_min
    (log-spaced) and t_max."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = process.t_min, process.t_max
    u = torch.linspace(0.0, 1.0, n, dtype=F64)
    if lo > 0:
        t = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    else:
        t = lo + (hi - lo) * u
    t[0], t[-1] = lo, hi
    s = process.scale(t).unsqueeze(-1)
    sig = process.sigma(t).unsqueeze(-1)
    x = s * (torch.randn(n, 2, generator=g, dtype=F64) * 2.0 + sig * torch.randn(n, 2, generator=g, dtype=F64))
    return x, t


def scale_of(process, kind, x, t, den):
    """Size of the terms a quantity is computed from (for cancellation-aware tolerances)."""
    s = process.scale(t).unsqueeze(-1)
    sig = process.sigma(t).unsqueeze(-1)
    terms = (x.abs() / s + den.abs()).amax(-1, keepdim=True)
    if kind == "denoiser":
        return terms
    if kind == "eps":
        return terms / sig
    if kind == "score":
        return terms / (s * sig**2)
    if kind == "poisson_field":
        return terms / (sig * math.sqrt(process.kernel.D))
    if kind == "velocity":
        a = (process.scale_derivative(t) / process.scale(t)).abs().unsqueeze(-1)
        b = (process.sigma_derivative(t) / process.sigma(t)).abs().unsqueeze(-1)
        return a * x.abs().amax(-1, keepdim=True) + b * s * terms
    raise AssertionError(kind)


def assert_close_terms(process, kind, got, want, x, t, den):
    tol = RTOL_TERMS * scale_of(process, kind, x, t, den)
    err = (got - want).abs()
    assert got.shape == want.shape and got.dtype == want.dtype
    assert bool((err <= tol).all()), f"{kind}: max err/tol {float((err / tol).max()):.3g}"


# ---------------------------------------------------------------------------- wrappers
CASES = ([(p, k, "mixture") for p in ["VE", "VP", "SubVP", "EDM"] for k in GAUSSIAN_KINDS]
         + [(p, k, d) for p in ["PFGMPP", "Poisson"] for k in POISSON_KINDS for d in ["mixture", "points"]]
         + [(p, k, "points") for p in ["VE", "VP"] for k in GAUSSIAN_KINDS])


@pytest.mark.parametrize("pname,kind,dname", CASES, ids=[f"{p}-{k}-{d}" for p, k, d in CASES])
def test_wrapper_reproduces_exact_field(pname, kind, dname):
    process = make_process(pname)
    data = MIXTURE if dname == "mixture" else POINTS
    exact = fs.exact_field(process, data)
    wrapped = getattr(Field, f"from_{kind}")(process, getattr(exact, kind))
    assert isinstance(wrapped, Field) and wrapped.process is process
    x, t = batch(process)
    den = exact.denoiser(x, t)
    others = GAUSSIAN_KINDS if not exact.is_poisson else POISSON_KINDS
    for q in others:
        got = getattr(wrapped, q)(x, t)
        want = getattr(exact, q)(x, t)
        assert_close_terms(process, q, got, want, x, t, den)
    # a scalar time broadcast to the batch gives the same values
    tm = float(t[len(t) // 2])
    for q in others:
        torch.testing.assert_close(getattr(wrapped, q)(x, tm), getattr(wrapped, q)(x, torch.full((len(x),), tm, dtype=F64)),
                                   rtol=1e-14, atol=0)


@pytest.mark.parametrize("pname", ["VE", "VP", "SubVP", "EDM"])
def test_exact_score_is_gradient_of_exact_log_prob(pname):
    """Anchor for the score comparisons above: the exact field's score is the autograd
    gradient of its log density (an independent route to grad log p_t)."""
    process = make_process(pname)
    exact = fs.exact_field(process, MIXTURE)
    x, t = batch(process, n=16)
    t = t.clamp_min(process.t_min + 0.05 * (process.t_max - process.t_min))  # avoid sigma ~ 1e-4 conditioning
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(exact.log_prob(xr, t).sum(), xr)
    torch.testing.assert_close(exact.score(x, t), grad, rtol=1e-9, atol=1e-9)


@given(pname=st.sampled_from(["VE", "VP", "SubVP", "EDM"]), kind=st.sampled_from(GAUSSIAN_KINDS),
       u=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_wrapper_round_trip_random_times(pname, kind, u, seed):
    process = make_process(pname)
    exact = fs.exact_field(process, MIXTURE)
    wrapped = getattr(Field, f"from_{kind}")(process, getattr(exact, kind))
    t = process.t_min + u * (process.t_max - process.t_min)
    x, _ = batch(process, n=8, seed=seed)
    den = exact.denoiser(x, t)
    tt = torch.full((8,), t, dtype=F64)
    for q in GAUSSIAN_KINDS:
        assert_close_terms(process, q, getattr(wrapped, q)(x, t), getattr(exact, q)(x, t), x, tt, den)


@pytest.mark.parametrize("pname", ["VE", "VP", "SubVP", "EDM", "PFGMPP"])
def test_native_quantity_returned_untouched(pname):
    """Asking a wrapper for the quantity it wraps returns fn's output exactly (even a
    nonsensical one), and fn receives t as a tensor of shape (n,) (dim 0 is the batch, the
    rest one sample's event) in x's dtype."""
    process = make_process(pname)
    kinds = POISSON_KINDS if pname == "PFGMPP" else GAUSSIAN_KINDS
    x = torch.randn(5, 3, 2, dtype=torch.float32, generator=torch.Generator().manual_seed(1))
    t = 0.5 * (process.t_min + process.t_max)
    for kind in kinds:
        seen = {}

        def fn(xx, tt):
            seen["t"] = tt
            return xx * 0.37 + 1.5 + tt[:, None, None]

        wrapped = getattr(Field, f"from_{kind}")(process, fn)
        out = getattr(wrapped, kind)(x, t)
        assert torch.equal(out, x * 0.37 + 1.5 + t)
        assert out.dtype == torch.float32
        assert seen["t"].shape == (5,) and seen["t"].dtype == torch.float32
        assert torch.equal(seen["t"], torch.full((5,), t, dtype=torch.float32))
        # per-sample times arrive unchanged (a float64 tensor is cast to x's dtype)
        tv = torch.linspace(process.t_min, process.t_max, 5, dtype=torch.float32)
        getattr(wrapped, kind)(x, tv)
        assert torch.equal(seen["t"], tv)
        getattr(wrapped, kind)(x, tv.double())
        assert torch.equal(seen["t"], tv) and seen["t"].dtype == torch.float32
        # a time per (sample, row) is not a time per sample
        with pytest.raises(ValueError, match=r"\bt\b"):
            getattr(wrapped, kind)(x, tv[:, None].expand(5, 3))


@pytest.mark.parametrize("pname", ["PFGMPP", "Poisson"])
def test_score_refused_for_pfgmpp(pname):
    process = make_process(pname)
    with pytest.raises(ValueError, match="score"):
        Field.from_score(process, lambda x, t: -x)
    x = torch.randn(4, 2, dtype=F64)
    for kind in POISSON_KINDS:
        wrapped = getattr(Field, f"from_{kind}")(process, lambda x, t: x.clone())
        with pytest.raises(ValueError, match="score"):
            wrapped.score(x, 1.0)
    with pytest.raises(ValueError):
        fs.probability_flow(process, score=lambda x, t: -x)


@pytest.mark.parametrize("process", diffusions() + [fs.Diffusion(sigma=lambda t: 0.1 + t)],
                         ids=["VE", "VP", "SubVP", "EDM", "Diffusion"])
def test_poisson_field_refused_for_gaussian_kernel(process):
    with pytest.raises(ValueError, match="PFGM"):
        Field.from_poisson_field(process, lambda x, t: x)
    wrapped = Field.from_denoiser(process, lambda x, t: x.clone())
    with pytest.raises(ValueError, match="poisson_field|PFGM"):
        wrapped.poisson_field(torch.zeros(3, 2), 0.5 * (process.t_min + process.t_max))


BAD_OUTPUTS = {
    "last_dim": lambda x, t: x[..., :1],
    "reduced": lambda x, t: x.sum(-1),
    "extra_dim": lambda x, t: x.unsqueeze(0),
    "numpy": lambda x, t: x.numpy(),
    "float": lambda x, t: 1.0,
}


@pytest.mark.parametrize("bad", list(BAD_OUTPUTS), ids=list(BAD_OUTPUTS))
@pytest.mark.parametrize("pname", ["VE", "VP", "PFGMPP"])
def test_wrong_shape_output_raises(bad, pname):
    process = make_process(pname)
    kinds = POISSON_KINDS if pname == "PFGMPP" else GAUSSIAN_KINDS
    x = torch.randn(4, 2, dtype=F64)
    t = 0.5 * (process.t_min + process.t_max)
    for kind in kinds:
        wrapped = getattr(Field, f"from_{kind}")(process, BAD_OUTPUTS[bad])
        for q in kinds:
            with pytest.raises(ValueError, match=kind):
                getattr(wrapped, q)(x, t)


def test_wrapper_refuses_non_callable_and_non_canonical():
    with pytest.raises(ValueError, match="fn"):
        Field.from_denoiser(fs.VE(), "not a function")
    sde = fs.SDE(drift=lambda x, t: -x, diffusion=lambda t: 1.0)
    with pytest.raises(ValueError, match="canonical"):
        Field.from_denoiser(sde, lambda x, t: x)


# ------------------------------------------------------- independent velocity derivation
def time_derivative(traj, t):
    """x(t) and dx/dt for a batch of trajectories x_i(t_i) (each row depends on its own t_i)."""
    tt = t.clone().requires_grad_(True)
    x = traj(tt)
    cols = [torch.autograd.grad(x[:, j].sum(), tt, retain_graph=True)[0] for j in range(x.shape[1])]
    return x.detach(), torch.stack(cols, dim=-1)


def ref_schedule(name, process, t):
    """(s(t), sigma(t)) from the DESIGN table, written here (torch, differentiable)."""
    if name == "VE":
        smin, smax = process.sigma_min, process.sigma_max
        return torch.ones_like(t), smin * (smax / smin) ** t
    if name in ("VP", "SubVP"):
        bmin, bmax = 0.1, 20.0
        alpha = torch.exp(-t**2 * (bmax - bmin) / 4 - t * bmin / 2)
        sigma = torch.sqrt(1 - alpha**2) / alpha if name == "VP" else (1 - alpha**2) / alpha
        return alpha, sigma
    if name in ("EDM", "PFGMPP"):
        return torch.ones_like(t), t
    if name == "custom":
        return 1.0 / (1.0 + t), 0.1 + t**2 + t
    raise AssertionError(name)


def make_named(name):
    if name == "custom":
        return fs.Diffusion(scale=lambda t: 1.0 / (1.0 + t), sigma=lambda t: 0.1 + t**2 + t, t_min=0.0, t_max=2.0)
    return make_process(name)


@pytest.mark.parametrize("name", ["VE", "VP", "SubVP", "EDM", "custom"])
def test_velocity_matches_time_derivative_of_exact_trajectory(name):
    process = make_named(name)
    m = torch.tensor([0.7, -1.2], dtype=F64)
    theta = 0.6
    q = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=F64)
    lam = torch.tensor([2.0, 0.3], dtype=F64)
    data = toy.Gaussian(m, q @ torch.diag(lam) @ q.T)
    exact = fs.exact_field(process, data)
    n = 40
    k = torch.randn(n, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    lo, hi = process.t_min, process.t_max
    t = lo + (hi - lo) * torch.linspace(0.02, 0.98, n, dtype=F64)

    def traj(tt):
        s, sig = ref_schedule(name, process, tt)
        z = torch.sqrt(lam + sig.unsqueeze(-1) ** 2) * k
        return s.unsqueeze(-1) * (m + z @ q.T)

    x, dxdt = time_derivative(traj, t)
    v = exact.velocity(x, t)
    torch.testing.assert_close(v, dxdt, rtol=1e-9, atol=1e-9 * float(dxdt.abs().max()))
    # and a denoiser-only wrapper of the same law gives the same ODE
    wrapped = Field.from_denoiser(process, exact.denoiser)
    torch.testing.assert_close(wrapped.velocity(x, t), dxdt, rtol=1e-9, atol=1e-9 * float(dxdt.abs().max()))


@pytest.mark.parametrize("D", [1.0, 8.0, 1e4])
def test_pfgmpp_velocity_single_point_trajectory(D):
    """Single data point y0: D(x) = y0, so trajectories are straight lines x = y0 + k sigma
    and the velocity is k, whatever D."""
    process = fs.PFGMPP(D=D, sigma_min=0.01, sigma_max=20.0)
    y0 = torch.tensor([[1.0, -2.0, 0.5]], dtype=F64)
    exact = fs.exact_field(process, toy.Empirical(y0))
    k = torch.randn(10, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.01, 20.0, 10, dtype=F64)

    def traj(tt):
        return y0 + k * tt.unsqueeze(-1)

    x, dxdt = time_derivative(traj, t)
    torch.testing.assert_close(exact.velocity(x, t), dxdt, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(exact.poisson_field(x, t), k / math.sqrt(D), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------- flows
def ref_f_g(name, t):
    """Forward SDE coefficients f(t), g(t) from the DESIGN table (independent of flowsolve)."""
    t = torch.as_tensor(t, dtype=F64)
    if name == "VE":
        smin, smax = 0.01, 50.0
        sig = smin * (smax / smin) ** t
        return torch.zeros_like(t), sig * math.sqrt(2 * math.log(smax / smin))
    bmin, bmax = 0.1, 20.0
    beta = bmin + t * (bmax - bmin)
    if name == "VP":
        return -beta / 2, torch.sqrt(beta)
    if name == "SubVP":
        alpha = torch.exp(-t**2 * (bmax - bmin) / 4 - t * bmin / 2)
        return -beta / 2, torch.sqrt(beta * (1 - alpha**4))
    if name == "EDM":
        return torch.zeros_like(t), torch.sqrt(2 * t)
    raise AssertionError(name)


@pytest.mark.parametrize("pname", ["VE", "VP", "SubVP", "EDM"])
def test_probability_flow_and_reverse_sde_drifts(pname):
    process = make_process(pname)
    exact = fs.exact_field(process, MIXTURE)
    x, t = batch(process, n=48)
    f_ref, g_ref = ref_f_g(pname, t)
    # the process's forward SDE agrees with the DESIGN table
    torch.testing.assert_close(process.drift(x, t), f_ref.unsqueeze(-1) * x, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(process.diffusion(t), g_ref, rtol=1e-10, atol=0)

    score = exact.score(x, t)
    g2 = (g_ref**2).unsqueeze(-1)
    fx = f_ref.unsqueeze(-1) * x
    size = (fx.abs() + g2 * score.abs() + g2 * scale_of(process, "score", x, t, exact.denoiser(x, t)))
    ode = fs.probability_flow(process, exact)
    assert ode.field is exact and ode.canonical
    assert (ode.t_min, ode.t_max) == (process.t_min, process.t_max)
    err = (ode.drift(x, t) - (fx - 0.5 * g2 * score)).abs()
    assert bool((err <= 1e-9 * size).all()), float((err / size).max())
    # the same using the process's own f and g
    g_own = process.diffusion(t).unsqueeze(-1)
    err = (ode.drift(x, t) - (process.drift(x, t) - 0.5 * g_own**2 * score)).abs()
    assert bool((err <= 1e-9 * size).all())

    sde = fs.reverse_sde(process, exact)
    err = (sde.drift(x, t) - (fx - g2 * score)).abs()
    assert bool((err <= 1e-9 * size).all()), float((err / size).max())
    torch.testing.assert_close(sde.diffusion(t), g_ref, rtol=1e-10, atol=0)
    # scalar t
    tm = float(t[20])
    torch.testing.assert_close(sde.drift(x, tm), process.drift(x, tm) - process.diffusion(tm) ** 2 * exact.score(x, tm),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pname", ["VE", "VP", "EDM"])
def test_flows_from_score_callable(pname):
    process = make_process(pname)
    exact = fs.exact_field(process, MIXTURE)
    x, t = batch(process, n=16)
    ode = fs.probability_flow(process, score=exact.score)
    torch.testing.assert_close(ode.drift(x, t), exact.velocity(x, t), rtol=1e-8,
                               atol=1e-10 * float(exact.velocity(x, t).abs().max()))
    sde = fs.reverse_sde(process, score=exact.score)
    g = process.diffusion(t).unsqueeze(-1)
    torch.testing.assert_close(sde.drift(x, t), process.drift(x, t) - g**2 * exact.score(x, t), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="either field or score"):
        fs.probability_flow(process, exact, score=exact.score)


@pytest.mark.parametrize("pname", ["PFGMPP", "Poisson"])
def test_reverse_sde_refuses_pfgmpp_and_probability_flow_accepts(pname):
    process = make_process(pname)
    exact = fs.exact_field(process, POINTS)
    with pytest.raises(ValueError, match="reverse_sde"):
        fs.reverse_sde(process, exact)
    with pytest.raises(ValueError, match="reverse_sde"):
        fs.reverse_sde(process, exact.denoiser)
    ode = fs.probability_flow(process, exact)
    x, t = batch(process, n=8)
    # dx/dsigma = (x - D)/sigma with t = sigma (computed here, not via velocity)
    torch.testing.assert_close(ode.drift(x, t), (x - exact.denoiser(x, t)) / t.unsqueeze(-1), rtol=1e-12, atol=1e-12)


def test_general_sde_with_score():
    sde = fs.SDE(drift=lambda x, t: -x**3 + 0.5 * x, diffusion=lambda t: 1.0 + torch.as_tensor(t, dtype=F64), t_min=0.0, t_max=2.0)
    score = lambda x, t: -2.0 * x  # noqa: E731
    x = torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    ode = fs.probability_flow(sde, score=score)
    assert ode.field is None and not ode.canonical
    g = 1.3
    torch.testing.assert_close(ode.drift(x, 0.3), -x**3 + 0.5 * x - 0.5 * g**2 * (-2.0 * x), rtol=1e-13, atol=1e-13)
    t = torch.linspace(0.0, 2.0, 6, dtype=F64)
    gt = (1.0 + t).unsqueeze(-1)
    torch.testing.assert_close(ode.drift(x, t), -x**3 + 0.5 * x + gt**2 * x, rtol=1e-13, atol=1e-13)
    rev = fs.reverse_sde(sde, score=score)
    assert rev.field is None and not rev.canonical
    torch.testing.assert_close(rev.drift(x, t), -x**3 + 0.5 * x + 2.0 * gt**2 * x, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(torch.as_tensor(rev.diffusion(0.3), dtype=F64), torch.tensor(1.3, dtype=F64))


def test_general_sde_refuses_field():
    sde = fs.SDE(drift=lambda x, t: -x, diffusion=lambda t: 1.0)
    ex = fs.exact_field(fs.VE(), MIXTURE)
    for make in (fs.probability_flow, fs.reverse_sde):
        with pytest.raises(ValueError, match="score"):
            make(sde, ex)
        with pytest.raises(ValueError, match="score"):
            make(sde, lambda x, t: x)
        with pytest.raises(ValueError, match="score"):
            make(sde)
        with pytest.raises(ValueError, match="score"):
            make(sde, ex, score=lambda x, t: -x)


@pytest.mark.parametrize("pname", ["VE", "VP", "SubVP", "EDM", "PFGMPP"])
def test_plain_callable_field_is_wrapped_as_denoiser(pname):
    process = make_process(pname)
    exact = fs.exact_field(process, MIXTURE if pname != "PFGMPP" else POINTS)
    calls = []

    def denoiser(x, t):
        calls.append(t.shape)
        return exact.denoiser(x, t)

    ode = fs.probability_flow(process, denoiser)
    assert isinstance(ode.field, Field) and ode.field.process is process
    x, t = batch(process, n=12)
    torch.testing.assert_close(ode.drift(x, t), exact.velocity(x, t), rtol=1e-13, atol=1e-13)
    assert calls and calls[-1] == (12,)
    torch.testing.assert_close(ode.field.denoiser(x, t), exact.denoiser(x, t), rtol=0, atol=0)
    if pname != "PFGMPP":
        sde = fs.reverse_sde(process, denoiser)
        g = process.diffusion(t).unsqueeze(-1)
        size = g**2 * scale_of(process, "score", x, t, exact.denoiser(x, t))
        err = (sde.drift(x, t) - (process.drift(x, t) - g**2 * exact.score(x, t))).abs()
        assert bool((err <= 1e-10 * size).all())


@pytest.mark.parametrize("make", [fs.probability_flow, fs.reverse_sde], ids=["ode", "sde"])
def test_field_for_an_unequal_process_refused(make):
    """Processes are values: a field made for an equal process (another object with the same
    parameters) is accepted; one made for an unequal process is refused, naming both."""
    field = fs.exact_field(fs.VE(), MIXTURE)
    make(field.process, field)
    make(fs.VE(), field)  # equal parameters, another object
    with pytest.raises(ValueError, match=r"VE\(.*sigma_max.*40"):
        make(fs.VE(sigma_max=40.0), field)
    with pytest.raises(ValueError, match=r"process.*VP|VP.*process"):
        make(fs.VP(), Field.from_denoiser(fs.VE(), lambda x, t: x))
    with pytest.raises(ValueError, match="field"):
        make(fs.VE(), 3.0)
