"""The public hypothesis strategies of flowsolve.testing: what they draw, that it rebuilds from
its repr, that narrowing arguments are honoured and checked, and that failures shrink to simple
examples."""

import math

import pytest
import torch
from hypothesis import find, given, settings
from hypothesis import strategies as st

import flowsolve as fs
import flowsolve.testing.schedules as schedules
import flowsolve.testing.strategies as fst

# what a user has after `import torch, flowsolve as fs; from flowsolve import *; from flowsolve.toy import *`
NAMESPACE = {"fs": fs, "torch": torch, **{n: getattr(fs, n) for n in fs.__all__},
             **{n: getattr(fs.toy, n) for n in fs.toy.__all__}}
F64 = torch.float64
LAW_PARAMETERS = ("means", "covs", "eigvals", "weights", "points", "event_shape")
FIND = settings(database=None, max_examples=200)


def rebuilt(obj):
    return eval(repr(obj), dict(NAMESPACE))


def simple(x: float) -> bool:
    """A value a person reads at a glance: a multiple of 1/256 of modest size."""
    return abs(x) <= 100 and (x * 256).is_integer()


# -- processes -------------------------------------------------------------------------------
@given(fst.processes())
def test_drawn_processes_are_valid_and_rebuild_from_their_repr(process):
    t = torch.linspace(process.t_min, process.t_max, 65, dtype=F64)
    sigma, scale = process.sigma(t), process.scale(t)
    assert torch.isfinite(sigma).all() and (sigma[1:] > sigma[:-1]).all() and sigma[0] > 0
    assert torch.isfinite(scale).all() and (scale > 0).all()
    copy = rebuilt(process)
    assert copy == process and hash(copy) == hash(process) and repr(copy) == repr(process)


@given(fst.processes(kinds=("PFGMPP",), D=(2.0, 1e3)))
def test_processes_narrow_to_kinds_and_D(process):
    assert type(process) is fs.PFGMPP and 2.0 <= process.D <= 1e3 and isinstance(process.D, float)


@given(fst.processes(kinds=("Diffusion", "LinearSDE")))
def test_composed_processes_use_value_schedules(process):
    callables = process._user.values() if type(process) is fs.Diffusion else (process._fn_f, process._fn_g)
    assert all(fn is None or isinstance(fn, schedules.Schedule) for fn in callables)


def test_schedules_are_values_with_pasteable_reprs():
    a, b = schedules.Exponential(a=0.5, b=2.0), schedules.Exponential(0.5, 2)
    assert a == b and hash(a) == hash(b) and a != schedules.Exponential(0.5, 3.0) and a != schedules.Linear(0.5, 2.0)
    assert repr(a) == "fs.testing.schedules.Exponential(a=0.5, b=2.0)" and rebuilt(a) == a
    t = torch.tensor([0.0, 1.0], dtype=F64)
    assert torch.allclose(a(t), 0.5 * torch.exp(2.0 * t)) and a(t).dtype == F64
    for fn in (schedules.Constant(2.0), schedules.Linear(1.0, -3.0), schedules.Power(2.0, 1.5), a):
        assert fn(t[1:]).shape == (1,) and fn(t[1:]).dtype == F64
    p = fs.Diffusion(scale=schedules.Constant(2.0), sigma=a, t_min=0.0, t_max=1.0)
    assert p == fs.Diffusion(scale=schedules.Constant(2.0), sigma=schedules.Exponential(0.5, 2.0))
    assert torch.allclose(p.sigma_derivative(0.5), 2.0 * a(torch.tensor(0.5, dtype=F64)))  # autograd through it


# -- toy laws --------------------------------------------------------------------------------
@given(fst.toy_laws(dims=(1, 4), event_shapes=True))
def test_drawn_laws_sample_and_rebuild_exactly_from_their_repr(law):
    x = law.sample(5, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert x.shape == (5, *law.event_shape) and torch.isfinite(x).all()
    assert law.weights.min() > 0 and (law.means if hasattr(law, "means") else law.points).abs().max() <= 4
    copy = rebuilt(law)
    assert type(copy) is type(law) and repr(copy) == repr(law)
    for name in LAW_PARAMETERS:
        if hasattr(law, name):
            mine, theirs = getattr(law, name), getattr(copy, name)
            assert torch.equal(mine, theirs) if isinstance(mine, torch.Tensor) else mine == theirs, name


@given(fst.toy_laws(kinds=("mixture",), sharp=True, dims=3, components=(2, 3)))
def test_toy_laws_narrow_to_sharp_mixtures(law):
    assert type(law) is fs.toy.GaussianMixture and law.dim == 3 and law.n_components in (2, 3)
    assert 0.01 <= law.eigvals.sqrt().min() and law.eigvals.sqrt().max() <= 0.1


@given(fst.toy_laws(kinds=("gaussian",), dims=(2, 3)))
def test_drawn_gaussians_have_bounded_spectra(law):
    eig = torch.linalg.eigvalsh(law.covariance())
    assert type(law) is fs.toy.Gaussian and eig.min() >= 1e-2 * (1 - 1e-9) and eig.max() <= 4 * (1 + 1e-9)


def test_law_reprs_are_exact_when_small_and_summaries_when_large():
    mix = fs.toy.GaussianMixture([[1.0, -2.0]], 0.5)
    assert repr(mix) == "GaussianMixture(means=[[1.0, -2.0]], covs_or_stds=[[0.5, 0.5]], weights=[1.0])"
    full = fs.toy.GaussianMixture([[0.0, 1.0]], [[[1.0, 0.1], [0.1, 2.0]]], event_shape=(1, 2))
    assert repr(full) == ("GaussianMixture(means=[[0.0, 1.0]], covs_or_stds=[[[1.0, 0.1], [0.1, 2.0]]], "
                          "weights=[1.0], event_shape=(1, 2))")
    assert repr(fs.toy.Gaussian([0.0, 1.0], [[2.0, 0.5], [0.5, 1.0]])) == \
        "Gaussian(mean=[0.0, 1.0], cov=[[2.0, 0.5], [0.5, 1.0]])"
    assert repr(fs.toy.Gaussian([0.0], 0.25)) == "Gaussian(mean=[0.0], cov=[0.25])"
    assert repr(fs.toy.Empirical([[1.0], [3.0]], [0.25, 0.75])) == \
        "Empirical(points=[[1.0], [3.0]], weights=[0.25, 0.75])"
    third = fs.toy.Empirical([[0.1], [0.2], [0.3]])
    assert torch.equal(rebuilt(third).weights, third.weights) and torch.equal(rebuilt(third).points, third.points)
    assert repr(fs.toy.Gaussian(torch.zeros(8), torch.eye(8))) == "Gaussian(dim=8)"  # 8 + 64 numbers
    assert repr(fs.toy.random_mixture(12, 3, event_shape=(3, 4))) == \
        "GaussianMixture(n_components=3, dim=12, event_shape=(3, 4))"
    assert repr(fs.toy.Empirical(torch.zeros(40, 2))) == "Empirical(n_points=40, dim=2)"


# -- times, grids, solvers, batches ----------------------------------------------------------
@given(st.data(), fst.processes())
def test_times_lie_in_the_span_or_the_narrower_range(data, process):
    t = data.draw(fst.times(process))
    assert isinstance(t, float) and process.t_min <= t <= process.t_max
    lo = process.t_min + 0.25 * (process.t_max - process.t_min)
    assert lo <= data.draw(fst.times(process, lo=lo)) <= process.t_max


@given(st.data(), fst.processes(kinds=("VE", "VP", "EDM", "PFGMPP", "Diffusion")))
def test_grids_decrease_strictly_from_t_max_to_t_min(data, process):
    grid = data.draw(fst.grids(process, steps=(2, 16)))
    assert grid.dtype == F64 and grid.ndim == 1 and 3 <= len(grid) <= 17
    assert grid[0] == process.t_max and grid[-1] == process.t_min and (grid[1:] < grid[:-1]).all()
    sigma = process.sigma(grid)
    assert (sigma[1:] < sigma[:-1]).all()


@given(st.data())
def test_explicit_grids_have_the_drawn_step_count(data):
    grid = data.draw(fst.grids(fs.VP(), kinds="explicit", steps=5))
    assert len(grid) == 6 and grid[0] == 1.0 and grid[-1] == 1e-3 and (grid[1:] < grid[:-1]).all()


@pytest.mark.parametrize("filters", [{}, {"kind": "ode"}, {"kind": "sde", "adaptive": False},
                                     {"category": "adaptive ODE"}, {"kind": "ode", "exclude": ("euler", "heun")}])
def test_solver_names_are_registered_and_match_the_filter(filters):
    registry = fs.available_solvers()

    @given(fst.solvers(**filters))
    def check(name):
        info = registry[name]
        assert filters.get("kind", info["kind"]) == info["kind"]
        assert filters.get("adaptive", info["adaptive"]) == info["adaptive"]
        assert filters.get("category", info["category"]) == info["category"]
        assert name not in filters.get("exclude", ())

    check()


@given(fst.batches((2, 3), n=(1, 4)), fst.batches(5, n=3, scale=0.5, dtype=torch.float32))
def test_batches_have_the_shape_dtype_and_bounds(x, y):
    assert x.shape[1:] == (2, 3) and 1 <= x.shape[0] <= 4 and x.dtype == F64 and x.abs().max() <= 4
    assert y.shape == (3, 5) and y.dtype == torch.float32 and torch.isfinite(y).all() and y.abs().max() <= 2


# -- argument checks -------------------------------------------------------------------------
@pytest.mark.parametrize("make, name", [
    (lambda: fst.processes(kinds=("VE", "DDPM")), "kinds"),
    (lambda: fst.processes(D=(0.0, 10.0)), "D"),
    (lambda: fst.processes(D=(10.0, 1.0)), "D"),
    (lambda: fst.toy_laws(dims=(0, 3)), "dims"),
    (lambda: fst.toy_laws(kinds=()), "kinds"),
    (lambda: fst.toy_laws(sharp="yes"), "sharp"),
    (lambda: fst.times(fs.EDM(), lo=100.0), "lo"),
    (lambda: fst.times("EDM"), "process"),
    (lambda: fst.grids(fs.VE(), kinds=("cosine",)), "kinds"),
    (lambda: fst.grids(fs.VE(), steps=(8, 2)), "steps"),
    (lambda: fst.grids(fs.SDE(lambda x, t: -x, lambda t: 1.0)), "kinds"),
    (lambda: fst.solvers(kind="pde"), "kind"),
    (lambda: fst.solvers(category="adaptive"), "category"),
    (lambda: fst.solvers(exclude=("eulr",)), "exclude"),
    (lambda: fst.solvers(kind="ode", category="adaptive stochastic"), "category"),
    (lambda: fst.batches((2, 0)), "shape"),
    (lambda: fst.batches(3, n=0), "n"),
    (lambda: fst.batches(3, scale=-1.0), "scale"),
    (lambda: fst.batches(3, dtype=torch.int64), "dtype"),
])
def test_bad_arguments_are_refused_by_name(make, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        make()


# -- shrinking -------------------------------------------------------------------------------
def test_failures_shrink_to_simple_processes():
    # (a threshold between round values: sigma_max is computed, and may be 10.000000000000002 for 10.0)
    process = find(fst.processes(), lambda p: p.sigma_max > 20.5, settings=FIND)
    assert type(process) is fs.VE and simple(process.sigma_min) and simple(process.sigma_max)  # VE(0.0625, 21.0)
    pfgm = find(fst.processes(kinds=("PFGMPP",)), lambda p: p.D > 50, settings=FIND)
    assert math.log10(pfgm.D).is_integer() and simple(pfgm.sigma_min) and simple(pfgm.sigma_max)  # D=100.0
    composed = find(fst.processes(kinds=("Diffusion",)), lambda p: p.sigma_max > 50, settings=FIND)
    sigma = composed._user["sigma"]  # e.g. Exponential(a=1.0, b=4.0) on [0.0, 1.0]
    assert composed._user["scale"] is None and simple(composed.t_min) and simple(composed.t_max)
    assert all(simple(value) for value in vars(sigma).values())


def test_failures_shrink_to_simple_mixtures():
    law = find(fst.toy_laws(kinds=("mixture",), dims=(1, 4)), lambda m: m.n_components == 2, settings=FIND)
    assert law.dim == 1 and law.means.abs().max() == 0 and law.weights.tolist() == [0.5, 0.5]
    assert all(simple(s) for s in law.eigvals.sqrt().reshape(-1).tolist())  # e.g. covs_or_stds=[[1.0], [1.0]]
