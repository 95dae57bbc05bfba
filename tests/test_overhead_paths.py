"""The cheap fixed-step path (issue 9, targets 3, 5, 6): schedules computed once per time, the
Python-float conversion giving the tensor path's bits, counts kept as a number until read, the
fault records of the fixed grid, in-place stage combinations, the prior drawn in blocks, and
``compile=True`` (its refusals and its fallback here; the compiled solve itself is slow)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import flowsolve as fs
from flowsolve.fields import scalar_coefficients, schedule_at
from flowsolve.solvers import api
from flowsolve.solvers.noise import NoiseSource
from flowsolve.solvers.rk import _combine
from flowsolve.solvers.term import Term


class CountingEDM(fs.EDM):
    """EDM whose sigma counts its evaluations."""

    calls = 0

    def _sigma(self, t):
        CountingEDM.calls += 1
        return t.clone()


def test_schedule_at_computes_each_time_once_and_matches_the_tensor_schedule():
    process = fs.VP()
    for name, hook in (("s", process._scale), ("sigma", process._sigma), ("dsigma", process._sigma_derivative),
                       ("f", process._f), ("g", process._g), ("t_of_sigma", process._t_of_sigma)):
        value = schedule_at(process, name, 0.3)
        assert isinstance(value, float)
        assert value == float(hook(torch.tensor(0.3, dtype=torch.float64)))
    counting = CountingEDM()
    before = CountingEDM.calls
    for _ in range(5):
        assert schedule_at(counting, "sigma", 1.25) == 1.25
    assert CountingEDM.calls == before + 1
    assert counting == CountingEDM() and hash(counting) == hash(CountingEDM())  # the memo takes no part in its value


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("process", [fs.VP(), fs.EDM(), fs.PFGMPP(D=128)], ids=["VP", "EDM", "PFGMPP"])
def test_float_time_gives_the_bits_of_the_per_sample_times(process, dtype):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 2, 3, generator=gen).to(dtype)
    t = 0.5 * (process.t_min + process.t_max)
    kinds = ["denoiser", "eps", "velocity"] + (["poisson_field"] if process.kernel.name == "student_t" else ["score"])
    for source in ("denoiser", "eps", "velocity"):
        field = getattr(fs.Field, f"from_{source}")(process, lambda z, tt: 0.7 * z + tt[:, None, None].to(z.dtype))
        for kind in kinds:
            one = field.evaluate(kind, x, t, {})
            rows = field.evaluate(kind, x, torch.full((5,), t, dtype=torch.float64), {})
            assert one.dtype == dtype and torch.equal(one, rows), (source, kind)


def test_scalar_coefficients_are_the_cast_schedules():
    process = fs.VP()
    c = scalar_coefficients(process, 0.4, torch.float32, rates=True)
    t = torch.tensor([0.4], dtype=torch.float64)
    assert c.s == float(process._scale(t).float()) and c.sig == float(process._sigma(t).float())
    assert c.b == float((process._sigma_derivative(t) / process._sigma(t)).float())
    assert scalar_coefficients(process, 0.4, torch.float32, rates=True) is c  # memoised


def test_counts_are_kept_as_a_number_until_read_and_shared_with_views():
    process = fs.EDM()
    flow = fs.probability_flow(process, fs.Field.from_denoiser(process, lambda z, tt: 0.5 * z))
    x = torch.ones(4, 2)
    term = Term.for_state(flow, x, "test")
    term.velocity(x, 1.0)
    term.view(fs.probability_flow(process, flow.field)).denoiser(x, 2.0)
    assert term._counts.whole_batch == 2 and term._counts.per_sample.sum() == 0
    rows = torch.tensor([1, 3])
    term.velocity(x[rows], torch.full((2,), 1.0, dtype=torch.float64), rows)
    assert term.nfe.tolist() == [2, 3, 2, 3]
    assert term._counts.whole_batch == 0


def test_a_sample_that_turns_nonfinite_is_frozen_and_counted_to_its_step():
    process = fs.EDM()
    grid = fs.make_grid(process, "karras", 6)
    bad_time = float(grid[3])

    def den(z, tt):
        out = 0.9 * z
        out[1] = torch.where(tt[1] == bad_time, float("nan"), out[1])
        return out

    states = []
    sol = fs.sample(process, fs.Field.from_denoiser(process, den), 3, "euler", grid="explicit", ts=grid, shape=(2,),
                    callback=lambda i, t, x, d: states.append(x.clone()))
    assert sol.failed.tolist() == [False, True, False] and sol.status == "nonfinite"
    assert sol.n_steps.tolist() == [6, 3, 6] and sol.n_accepted.tolist() == [6, 3, 6]
    assert sol.n_rejected.tolist() == [0, 0, 0] and sol.nfe.tolist() == [6, 6, 6]
    assert torch.equal(sol.x[1], states[3][1])  # its state when the failing step began
    assert float(sol.t[1]) == bad_time and "step 3" in sol.message


def test_combine_accumulates_without_touching_the_stages():
    gen = torch.Generator().manual_seed(0)
    x, k1, k2, k3 = (torch.randn(3, 4, generator=gen, dtype=torch.float64) for _ in range(4))
    ks = [k1, k2, k3]
    saved = [k.clone() for k in ks]
    h = -0.37
    out = _combine(x, h, (0.25, 0.0, 1.0), ks)
    assert torch.equal(out, x + h * (0.25 * k1 + k3))  # the plain expression's bits
    assert all(torch.equal(k, s) for k, s in zip(ks, saved))
    assert torch.equal(_combine(x, h, (1.0,), [k1]), x + h * k1) and _combine(x, h, (0.0,), [k1]) is x
    hs = torch.full((3, 1), h, dtype=torch.float64)
    assert torch.equal(_combine(x, hs, (0.5, 0.5), [k1, k2]), x + hs * (0.5 * k1 + 0.5 * k2))
    consumed = [k1, k2]
    _combine(x, h, (0.5, 0.5), consumed, consume=True)
    assert consumed == [None, None]
    leaf = k1.clone().requires_grad_(True)  # the in-place accumulation keeps gradients right
    _combine(x, h, (0.5, 0.5), [leaf, 2 * leaf]).sum().backward()
    assert torch.allclose(leaf.grad, torch.full_like(leaf, 1.5 * h))


@pytest.mark.parametrize("process", [fs.EDM(), fs.PFGMPP(D=16)], ids=["gaussian", "student_t"])
def test_prior_drawn_in_blocks_is_the_one_draw(process, monkeypatch):
    n, event, seed, offset = 13, (2, 3), 5, 7
    whole = NoiseSource(seed, n, event, device=None, offset=offset, stream=api.PRIOR_STREAM)
    expected = (process.prior_std * whole.kernel_noise(process.kernel)).to(torch.float32)
    monkeypatch.setattr(api, "PRIOR_BLOCK_ELEMENTS", 24)  # blocks of 4 samples, the last one of 1
    got = api.draw_prior(process, n, event, torch.float32, None, seed, offset, None)
    assert got.dtype == torch.float32 and torch.equal(got, expected)


def test_compile_is_refused_for_adaptive_solvers_and_flows_without_a_field():
    process = fs.EDM()
    field = fs.Field.from_denoiser(process, lambda z, tt: z)
    with pytest.raises(ValueError, match="compile=True is for fixed-step solvers"):
        fs.sample(process, field, 2, "dopri5", shape=(2,), compile=True)

    class Plain:
        t_min, t_max = 0.0, 1.0

        def drift(self, x, t):
            return -x

    with pytest.raises(ValueError, match="compile=True compiles the field's network"):
        fs.solve(Plain(), torch.ones(2, 1), [0.0, 1.0], "euler", steps=2, compile=True)
    with pytest.raises(ValueError, match="compile"):
        fs.sample(process, field, 2, "euler", shape=(2,), steps=2, compile="yes")


def test_compile_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken_compile(fn, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("no compiler here")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    process = fs.EDM()
    field = fs.Field.from_denoiser(process, lambda z, tt: z / (1 + tt[:, None] ** 2), event_shape=(2,))
    eager = fs.sample(process, field, 4, "heun", steps=3)
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        compiled = fs.sample(process, field, 4, "heun", steps=3, compile=True)
    assert torch.equal(compiled.x, eager.x) and torch.equal(compiled.nfe, eager.nfe)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: the fallback stays
        fs.sample(process, field, 4, "heun", steps=3, compile=True)


@pytest.mark.slow
def test_compiled_sample_equals_eager():
    process = fs.EDM()
    field = fs.Field.from_denoiser(process, lambda z, tt: z / (1 + tt[:, None] ** 2), event_shape=(2,))
    for solver in ("heun", "dpmpp_2m"):
        eager = fs.sample(process, field, 8, solver, steps=4)
        compiled = fs.sample(process, field, 8, solver, steps=4, compile=True)
        assert torch.allclose(compiled.x, eager.x, rtol=1e-6, atol=1e-6) and torch.equal(compiled.nfe, eager.nfe)
    assert math.isfinite(float(compiled.x.abs().max()))
