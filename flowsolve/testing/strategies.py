"""Hypothesis strategies for processes, toy data laws, times, grids, solver names and batches.

Every strategy is built from hypothesis floats and integers, so a failing example shrinks to
simple values (1.0, 0.5, dimension 1, one component, zeros), and every drawn process and
law prints as Python that rebuilds it: with ``import torch, flowsolve as fs,
flowsolve.testing.schedules`` and ``from flowsolve import *; from flowsolve.toy import *``
(processes and laws print their bare class names). Tensors print as torch prints them.

    from hypothesis import given
    import flowsolve.testing.strategies as fst

    @given(process=fst.processes(kinds=("VE", "VP")), law=fst.toy_laws(dims=(1, 4)))
    def test_something(process, law): ...
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import flowsolve as fs

from .._validation import check_int, check_real
from ..processes.kernels import D_MAX
from .schedules import Constant, Exponential, Linear, Power

PROCESS_KINDS = ("VE", "VP", "SubVP", "EDM", "PFGMPP", "Poisson", "Diffusion", "LinearSDE")
LAW_KINDS = ("gaussian", "mixture", "empirical")
GRID_KINDS = ("uniform", "log_sigma", "karras", "quadratic", "explicit")
SOLVER_CATEGORIES = ("fixed-step ODE", "adaptive ODE", "fixed-step stochastic", "adaptive stochastic")
_SIGMA_GRIDS = ("log_sigma", "logsnr", "karras")  # need a canonical process


# -- argument checks ------------------------------------------------------------------------
def _choices(name: str, value, allowed: tuple) -> tuple:
    try:
        values = (value,) if isinstance(value, str) else tuple(value)
    except TypeError:
        values = ()
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ValueError(f"{name} must be a non-empty selection of {list(allowed)}, got {value!r}")
    return tuple(dict.fromkeys(values))


def _int_range(name: str, value, minimum: int) -> tuple[int, int]:
    """An int ``k`` (meaning ``(k, k)``) or a pair ``(lo, hi)`` of ints with ``minimum <= lo <= hi``."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair (lo, hi) of ints, got {value!r}")
    lo, hi = (check_int(name, v, minimum) for v in pair)
    if lo > hi:
        raise ValueError(f"{name} must be (lo, hi) with lo <= hi, got {value!r}")
    return lo, hi


def _shape(name: str, value) -> tuple[int, ...]:
    shape = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(shape, (tuple, list, torch.Size)):
        raise ValueError(f"{name} must be an int or a tuple of ints >= 1, got {value!r}")
    return tuple(check_int(name, d, 1) for d in shape)


def _span(process) -> tuple[float, float]:
    if not (isinstance(getattr(process, "t_min", None), float) and isinstance(getattr(process, "t_max", None), float)):
        raise ValueError(f"process must be a flowsolve process (with t_min and t_max), got {process!r}")
    return process.t_min, process.t_max


# -- processes ------------------------------------------------------------------------------
def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def _diffusions() -> st.SearchStrategy[fs.Diffusion]:
    """``fs.Diffusion(scale=..., sigma=..., t_min, t_max)`` from the schedules of
    :mod:`flowsolve.testing.schedules`: sigma ``a exp(b t)``, ``a + b t`` (both with ``a > 0``,
    ``b >= 1``) or ``a t^p``; scale ``None`` (1), a constant or ``a exp(b t)``, all positive."""

    @st.composite
    def draw_diffusion(draw):
        sigma_kind = draw(st.sampled_from(["exponential", "linear", "power"]))
        t_min = draw(_floats(1e-3, 0.1) if sigma_kind == "power" else _floats(0.0, 0.1))
        t_max = draw(_floats(0.5, 2.0))
        sigma = draw({
            "exponential": st.builds(Exponential, a=_floats(1e-3, 1.0), b=_floats(1.0, 10.0)),
            "linear": st.builds(Linear, a=_floats(1e-3, 1.0), b=_floats(1.0, 80.0)),
            "power": st.builds(Power, a=_floats(0.5, 50.0), p=_floats(0.5, 3.0)),
        }[sigma_kind])
        scale = draw(st.one_of(st.none(), st.builds(Constant, value=_floats(0.5, 2.0)),
                               st.builds(Exponential, a=_floats(0.5, 2.0), b=_floats(-5.0, 1.0))))
        return fs.Diffusion(scale=scale, sigma=sigma, t_min=t_min, t_max=t_max)

    return draw_diffusion()


def _linear_sdes() -> st.SearchStrategy[fs.LinearSDE]:
    """``fs.LinearSDE(f=..., g=..., t_min, t_max)``: f a constant or ``a + b t`` (any sign),
    g a positive constant or ``a exp(b t)`` with ``a > 0``; t0 = 0."""
    f = st.one_of(st.builds(Constant, value=_floats(-4.0, 4.0)),
                  st.builds(Linear, a=_floats(-4.0, 4.0), b=_floats(-10.0, 4.0)))
    g = st.one_of(st.builds(Constant, value=_floats(0.1, 5.0)),
                  st.builds(Exponential, a=_floats(0.1, 5.0), b=_floats(-2.0, 3.0)))
    return st.builds(fs.LinearSDE, f=f, g=g, t_min=_floats(1e-3, 0.1), t_max=_floats(0.5, 1.0))


def processes(kinds: Iterable[str] = PROCESS_KINDS, D: tuple[float, float] = (1.0, 1e8)) -> st.SearchStrategy:
    """Canonical processes of the given ``kinds`` (any of ``PROCESS_KINDS``):

    * ``VE(sigma_min in [1e-3, 0.1], sigma_max in [5, 100])``;
    * ``VP`` / ``SubVP(beta_min in [0.05, 0.5], beta_max in [5, 25])``, default time span;
    * ``EDM``, ``PFGMPP`` and ``Poisson`` with ``sigma_min in [1e-3, 0.01]``, ``sigma_max in
      [10, 100]``; PFGMPP's ``D`` is ``10**e`` (a float, log-uniform) within the range ``D = (lo,
      hi)``, ``0 < lo <= hi <= 1e15``, so it shrinks to ``lo`` or a round power of ten;
    * ``Diffusion(scale=..., sigma=..., t_min, t_max)`` and ``LinearSDE(f=..., g=..., t_min, t_max)``
      composed from :mod:`flowsolve.testing.schedules` (sigma positive and increasing, scale
      positive; LinearSDE's g positive, f of any sign).

    Shrinks towards the first kind in ``kinds``.
    """
    kinds = _choices("kinds", kinds, PROCESS_KINDS)
    if not isinstance(D, (tuple, list)) or len(D) != 2:
        raise ValueError(f"D must be a pair (lo, hi) with 0 < lo <= hi <= 1e15, got {D!r}")
    d_lo = check_real("D[0]", D[0], 0.0, D_MAX, strict_min=True)
    d_hi = check_real("D[1]", D[1], 0.0, D_MAX, strict_min=True)
    if d_lo > d_hi:
        raise ValueError(f"D must be a pair (lo, hi) with lo <= hi, got {D!r}")

    sigma_min, sigma_max = _floats(1e-3, 0.01), _floats(10.0, 100.0)
    d_values = _floats(math.log10(d_lo), math.log10(d_hi)).map(lambda e: min(max(10.0**e, d_lo), d_hi))
    by_kind = {
        "VE": st.builds(fs.VE, sigma_min=_floats(1e-3, 0.1), sigma_max=_floats(5.0, 100.0)),
        "VP": st.builds(fs.VP, beta_min=_floats(0.05, 0.5), beta_max=_floats(5.0, 25.0)),
        "SubVP": st.builds(fs.SubVP, beta_min=_floats(0.05, 0.5), beta_max=_floats(5.0, 25.0)),
        "EDM": st.builds(fs.EDM, sigma_min=sigma_min, sigma_max=sigma_max),
        "PFGMPP": st.builds(fs.PFGMPP, D=d_values, sigma_min=sigma_min, sigma_max=sigma_max),
        "Poisson": st.builds(fs.Poisson, sigma_min=sigma_min, sigma_max=sigma_max),
        "Diffusion": _diffusions(),
        "LinearSDE": _linear_sdes(),
    }
    return st.sampled_from(kinds).flatmap(by_kind.__getitem__)


# -- toy laws -------------------------------------------------------------------------------
def _weights(raw: list[float]) -> list[float]:
    """``raw / sum(raw)``: it sums to 1 within rounding, so the law keeps exactly these weights
    (it renormalises only weights off by more than 1e-12) and its repr rebuilds it exactly."""
    total = math.fsum(raw)
    return [r / total for r in raw]


def _rotated(variances: list[float], angles: list[float]) -> list[list[float]]:
    """``R diag(variances) R^T``, R the product of Givens rotations by ``angles`` (one per pair of
    axes), symmetrised exactly."""
    n = len(variances)
    rot = torch.eye(n, dtype=torch.float64)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    for (i, j), angle in zip(pairs, angles):
        c, s = math.cos(angle), math.sin(angle)
        rot[:, [i, j]] = rot[:, [i, j]] @ torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    cov = rot @ torch.diag(torch.tensor(variances, dtype=torch.float64)) @ rot.T
    return (0.5 * (cov + cov.T)).tolist()


def _vectors(count: int, dim: int, element: st.SearchStrategy[float]) -> st.SearchStrategy[list[list[float]]]:
    return st.lists(st.lists(element, min_size=dim, max_size=dim), min_size=count, max_size=count)


def _event_shapes(dim: int) -> st.SearchStrategy[tuple[int, ...]]:
    """``(dim,)`` (first, so it is what shrinking goes to) or another shape of ``dim`` elements."""
    split = [(a, dim // a) for a in range(2, dim) if dim % a == 0]
    return st.sampled_from([(dim,), (1, dim), *split, (1, dim, 1)])


def toy_laws(dims: int | tuple[int, int] = (1, 16), kinds: Iterable[str] = LAW_KINDS, sharp: bool | None = None,
             components: int | tuple[int, int] = (1, 5), points: int | tuple[int, int] = (1, 8),
             event_shapes: bool = False) -> st.SearchStrategy:
    """Toy data laws of ``fs.toy`` in ``dims`` (an int or a range ``(lo, hi)``) dimensions, of the
    given ``kinds`` (any of ``LAW_KINDS``), every coordinate of a mean or point in ``[-4, 4]``:

    * ``"gaussian"``: ``Gaussian(mean, cov)``, cov with eigenvalues in ``[1e-2, 4]``: a vector of
      variances, or ``R diag(eigenvalues) R^T`` with R a product of Givens rotations by drawn
      angles (shrinking to R = I);
    * ``"mixture"``: ``GaussianMixture(means, stds, weights)`` with ``components`` (default 1 to 5)
      components, each isotropic or with per-coordinate stds, sharp (std in ``[0.01, 0.1]``) or
      broad (std in ``[0.3, 2]``); ``sharp=True`` / ``False`` makes every mode sharp / broad,
      ``None`` draws each;
    * ``"empirical"``: ``Empirical(points, weights)`` with ``points`` (default 1 to 8) points.

    Weights are drawn positive (each at least 1/20 of the largest). With ``event_shapes=True``
    the event shape is drawn too (``(N,)`` or another shape of N elements). Laws with at most
    64 parameters print exactly (see the laws' ``__repr__``).
    """
    kinds = _choices("kinds", kinds, LAW_KINDS)
    dims = _int_range("dims", dims, 1)
    components = _int_range("components", components, 1)
    points = _int_range("points", points, 1)
    if sharp not in (None, True, False):
        raise ValueError(f"sharp must be None, True or False, got {sharp!r}")
    if not isinstance(event_shapes, bool):
        raise ValueError(f"event_shapes must be a bool, got {event_shapes!r}")
    coordinate = _floats(-4.0, 4.0)
    raw_weight = _floats(0.05, 1.0)

    @st.composite
    def draw_law(draw):
        # the structure first, the values after: shrinking the dimension or the number of
        # components then leaves the remaining choices meaning the same thing
        kind = draw(st.sampled_from(kinds))
        dim = draw(st.integers(*dims))
        event_shape = draw(_event_shapes(dim)) if event_shapes else None
        if kind == "gaussian":
            full = draw(st.booleans())
            mean = draw(_vectors(1, dim, coordinate))[0]
            variances = draw(_vectors(1, dim, _floats(1e-2, 4.0)))[0]
            if full:  # R diag(variances) R^T
                angles = draw(_vectors(1, dim * (dim - 1) // 2, _floats(-math.pi, math.pi)))[0]
                return fs.toy.Gaussian(mean, _rotated(variances, angles), event_shape=event_shape)
            return fs.toy.Gaussian(mean, variances, event_shape=event_shape)
        if kind == "mixture":
            k = draw(st.integers(*components))
            per_coordinate = draw(st.booleans())
            sharp_modes = draw(st.lists(st.booleans(), min_size=k, max_size=k)) if sharp is None else [sharp] * k
            means = draw(_vectors(k, dim, coordinate))
            stds = []
            for is_sharp in sharp_modes:
                band = _floats(0.01, 0.1) if is_sharp else _floats(0.3, 2.0)
                stds.append(draw(_vectors(1, dim, band))[0] if per_coordinate else [draw(band)] * dim)
            weights = _weights(draw(_vectors(1, k, raw_weight))[0])
            return fs.toy.GaussianMixture(means, stds, weights, event_shape=event_shape)
        m = draw(st.integers(*points))
        support = draw(_vectors(m, dim, coordinate))
        return fs.toy.Empirical(support, _weights(draw(_vectors(1, m, raw_weight))[0]), event_shape=event_shape)

    return draw_law()


# -- times, grids, solvers, batches ----------------------------------------------------------
def times(process, lo: float | None = None, hi: float | None = None) -> st.SearchStrategy[float]:
    """Python floats in the process's span ``[t_min, t_max]``, or in ``[lo, hi]`` inside it."""
    t_min, t_max = _span(process)
    lo = t_min if lo is None else check_real("lo", lo, t_min, t_max)
    hi = t_max if hi is None else check_real("hi", hi, t_min, t_max)
    if lo > hi:
        raise ValueError(f"lo must be <= hi, got lo={lo!r}, hi={hi!r}")
    return _floats(lo, hi)


def grids(process, kinds: Iterable[str] = GRID_KINDS, steps: int | tuple[int, int] = (2, 64)) -> st.SearchStrategy:
    """1-D float64 tensors of ``steps + 1`` times, strictly decreasing from ``t_max`` to ``t_min``
    (both exact), for ``process``: a named grid of ``kinds`` made by
    ``fs.make_grid(process, kind, steps)``, or ``"explicit"``: random times whose gaps are drawn
    within a factor of 10 of each other (shrinking to the uniform grid). ``steps`` is an int or a
    range ``(lo, hi)``, lo >= 1. The sigma grids (log_sigma, logsnr, karras) need a canonical
    process. A grid that collapses in float64 (rare: a named grid with many steps on a narrow
    span) is rejected.
    """
    t_min, t_max = _span(process)
    kinds = _choices("kinds", kinds, GRID_KINDS + ("logsnr",))
    steps = _int_range("steps", steps, 1)
    if not isinstance(process, fs.Process) and any(k in _SIGMA_GRIDS for k in kinds):
        raise ValueError(f"kinds {[k for k in kinds if k in _SIGMA_GRIDS]} need a canonical process (with sigma(t)); "
                         f"{type(process).__name__} has none: use kinds=('uniform', 'quadratic', 'explicit')")

    @st.composite
    def draw_grid(draw):
        kind = draw(st.sampled_from(kinds))
        n = draw(st.integers(*steps))
        try:
            if kind != "explicit":
                return fs.make_grid(process, kind, steps=n)
            gaps = torch.tensor(draw(st.lists(_floats(1.0, 10.0), min_size=n, max_size=n)), dtype=torch.float64)
            ts = t_max - (t_max - t_min) * torch.cat([gaps.new_zeros(1), gaps.cumsum(0) / gaps.sum()])
            ts[0], ts[-1] = t_max, t_min
            return fs.make_grid(process, "explicit", ts=ts)
        except ValueError as err:
            if "collapses" not in str(err):
                raise
            assume(False)

    return draw_grid()


def solvers(kind: str | None = None, adaptive: bool | None = None, category: str | None = None,
            exclude: Iterable[str] = ()) -> st.SearchStrategy[str]:
    """Names of registered solvers (``fs.available_solvers()``, read when the strategy is made)
    with the given ``kind`` ("ode" or "sde"), ``adaptive`` flag and ``category`` (one of
    ``SOLVER_CATEGORIES``), except those in ``exclude``. Ordered from the simplest (by order, NFE
    per step, adaptive, process-aware, kind, name: euler first), so a failure shrinks to the
    simplest solver that shows it."""
    if kind not in (None, "ode", "sde"):
        raise ValueError(f"kind must be None, 'ode' or 'sde', got {kind!r}")
    if adaptive not in (None, True, False):
        raise ValueError(f"adaptive must be None, True or False, got {adaptive!r}")
    if category is not None and category not in SOLVER_CATEGORIES:
        raise ValueError(f"category must be None or one of {list(SOLVER_CATEGORIES)}, got {category!r}")
    registry = fs.available_solvers()
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    unknown = [name for name in exclude if name not in registry]
    if unknown:
        raise ValueError(f"exclude names unregistered solvers {unknown}; registered: {sorted(registry)}")
    names = [name for name, info in registry.items()
             if (kind is None or info["kind"] == kind) and (adaptive is None or info["adaptive"] == adaptive)
             and (category is None or info["category"] == category) and name not in exclude]
    if not names:
        raise ValueError(f"no registered solver has kind={kind!r}, adaptive={adaptive!r}, category={category!r} "
                         f"outside exclude={list(exclude)}")

    def simplicity(name):
        info = registry[name]
        return info["order"], info["nfe_per_step"], info["adaptive"], info["process_aware"], info["kind"], name

    names.sort(key=simplicity)
    return st.sampled_from(names)


def batches(shape: int | tuple[int, ...], n: int | tuple[int, int] = (1, 16), scale: float = 1.0,
            dtype: torch.dtype = torch.float64) -> st.SearchStrategy[torch.Tensor]:
    """Tensors of shape ``(n, *shape)`` (``shape`` an int or a tuple; ``n`` an int or a range
    ``(lo, hi)``, lo >= 1) and ``dtype``, with entries drawn as hypothesis floats in
    ``[-4 scale, 4 scale]`` (shrinking to zeros). Large shapes are cheap: beyond a few hundred
    entries most share one drawn fill value, as in ``hypothesis.extra.numpy.arrays``."""
    shape = _shape("shape", shape)
    n = _int_range("n", n, 1)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
    bound = 4.0 * check_real("scale", scale, 0.0, strict_min=True)
    if bound > torch.finfo(dtype).max:
        raise ValueError(f"scale={scale!r} is too large for {dtype}: 4 * scale must be <= {torch.finfo(dtype).max}")
    elements = _floats(-bound, bound)
    return st.integers(*n).flatmap(
        lambda rows: hnp.arrays(np.float64, (rows, *shape), elements=elements)
        .map(lambda a: torch.from_numpy(a).to(dtype)))


__all__ = ["processes", "toy_laws", "times", "grids", "solvers", "batches", "PROCESS_KINDS", "LAW_KINDS",
           "GRID_KINDS", "SOLVER_CATEGORIES"]
