"""The bench's error measures: end-point errors against a reference, distances between the
end points' empirical law and a sample of the data law, and the observed order of convergence.

Everything is computed in float64. A non-finite end point makes the metrics that see it
``inf`` (never NaN, never an exception): a diverged solve is infinitely wrong, and the
report prints it as such.

The distribution metrics use the libraries of the optional ``bench`` extra, imported lazily:
the sliced Wasserstein distance is POT's ``ot.sliced_wasserstein_distance``; the energy
distance is geomloss's ``SamplesLoss("energy")``. When the library is missing the metric
function returns ``None`` and :func:`unavailable` says why in one line.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import torch

from .records import DISTRIBUTION_METRICS

__all__ = ["endpoint_errors", "sliced_wasserstein", "energy_distance", "distribution_errors", "fit_order",
           "unavailable", "DISTRIBUTION_METRICS"]

_EXTRA = "pip install 'flowsolve[bench]'"
# metric -> (module it needs, one-line reason when that module is missing)
_NEEDS = {
    "sliced_wasserstein": ("ot", f"sliced Wasserstein needs POT ({_EXTRA})"),
    "energy_distance": ("geomloss", f"energy distance needs geomloss ({_EXTRA})"),
}


def _library(module: str):
    """The module, or None when it is not installed (or its import fails)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def unavailable(name: str) -> str | None:
    """Why the distribution metric ``name`` cannot be computed here (its library is missing),
    else None. An unknown name is a ValueError."""
    if name not in _NEEDS:
        raise ValueError(f"unknown distribution metric {name!r}; known: {', '.join(DISTRIBUTION_METRICS)}")
    module, reason = _NEEDS[name]
    return None if _library(module) is not None else reason


def _as_float64(a, what: str) -> torch.Tensor:
    t = torch.as_tensor(a).detach()
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{what} must be a real floating tensor, got dtype {t.dtype}")
    return t.to(device="cpu", dtype=torch.float64)


def _samples(a, what: str) -> torch.Tensor:
    """``a`` of shape (n, *event_shape) as a float64 (n, d) matrix."""
    t = _as_float64(a, what)
    if t.dim() == 0 or t.shape[0] == 0:
        raise ValueError(f"{what} must have shape (n, *event_shape) with n >= 1, got {tuple(t.shape)}")
    return t.reshape(t.shape[0], -1)


def _pair(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = _samples(x, "x"), _samples(y, "y")
    if xs.shape[1] != ys.shape[1]:
        raise ValueError(f"x and y must have the same event size: {tuple(torch.as_tensor(x).shape[1:])} "
                         f"vs {tuple(torch.as_tensor(y).shape[1:])}")
    if not bool(torch.isfinite(ys).all()):
        raise ValueError("the data sample y has non-finite values")
    return xs, ys


def endpoint_errors(x, ref) -> dict:
    """Errors of end points ``x`` against reference end points ``ref`` (both of shape
    ``(n, *event_shape)``, any float dtype), in float64:

    ``rmse`` = sqrt(mean over samples and coordinates of (x - ref)^2), ``max_error`` =
    max |x - ref|, ``rel_error`` = rmse / sqrt(mean ref^2) (None when ref is all zeros).
    Any non-finite value in ``x`` makes all three ``inf``. A non-finite ``ref`` is a
    ValueError (the reference is broken, not the method).
    """
    xs, rs = _as_float64(x, "x"), _as_float64(ref, "ref")
    if xs.shape != rs.shape:
        raise ValueError(f"x and ref must have the same shape, got {tuple(xs.shape)} and {tuple(rs.shape)}")
    if xs.numel() == 0:
        raise ValueError(f"x and ref are empty (shape {tuple(xs.shape)})")
    if not bool(torch.isfinite(rs).all()):
        raise ValueError("the reference end points have non-finite values")
    if not bool(torch.isfinite(xs).all()):
        return {"rmse": math.inf, "max_error": math.inf, "rel_error": math.inf}
    diff = xs - rs
    rmse = float(diff.square().mean().sqrt())
    scale = float(rs.square().mean().sqrt())
    rel = rmse / scale if scale > 0 else None
    return {"rmse": rmse, "max_error": float(diff.abs().max()), "rel_error": rel}


#: Directions of the sliced Wasserstein distance (the bench's default; part of a bench cell's key,
#: since a record's value depends on it).
SLICED_PROJECTIONS = 128


def sliced_wasserstein(x, y, n_projections: int = SLICED_PROJECTIONS, seed: int = 0) -> float | None:
    """SW_2 between the empirical laws of ``x`` (n, *event) and ``y`` (m, *event), event
    dimensions flattened: POT's ``ot.sliced_wasserstein_distance`` with p=2, uniform weights,
    ``n_projections`` random directions (default 128: every method of a sweep is measured on
    the same directions, and 256 costs 3x as much, 150 ms per cell at n = 256 against 2048) drawn from ``numpy.random.RandomState(seed)`` (so the
    value is deterministic given the seed and no global random state is touched). In one
    dimension it is W_2 exactly. ``inf`` when ``x`` has a non-finite row; None when POT is
    not installed (see :func:`unavailable`)."""
    if int(n_projections) < 1:
        raise ValueError(f"n_projections must be >= 1, got {n_projections}")
    xs, ys = _pair(x, y)
    ot = _library("ot")
    if ot is None:
        return None
    if not bool(torch.isfinite(xs).all()):
        return math.inf
    value = ot.sliced_wasserstein_distance(xs.numpy(), ys.numpy(), n_projections=int(n_projections), p=2,
                                           seed=np.random.RandomState(int(seed)))
    return float(value)


def _euclidean_kernel(a, b, blur=None, use_keops=False, ranges=None):
    """geomloss's energy kernel k(x, y) = -|x - y| without its clamp: geomloss's own
    ``distances`` takes sqrt(max(|x-y|^2, 1e-8)), which adds 1e-4 to every zero distance (the
    x-x and y-y diagonals) and biases the energy distance by an amount that does not scale
    with the data (20% at data scale 1e-4). Here the distances are torch's on the centred
    data, and exactly 0 on the diagonal of a sample against itself."""
    d = torch.cdist(a, b)
    if a.shape == b.shape and torch.equal(a, b):
        d.diagonal(dim1=-2, dim2=-1).zero_()
    return -d


def energy_distance(x, y) -> float | None:
    """The energy distance between the empirical laws of ``x`` (n, *event) and ``y``
    (m, *event), event dimensions flattened, in scipy's convention (``scipy.stats.energy_distance``
    in 1-D): sqrt(2 E|X-Y| - E|X-X'| - E|Y-Y'|), V-statistics (every pair, the diagonals
    included), Euclidean norm.

    Computed with geomloss's ``SamplesLoss("energy", backend="tensorized")``, whose value is
    *half the squared* energy distance (``0.5 <a-b, k*(a-b)>`` with k = -|x-y|), so the result
    is sqrt(2 * loss); the kernel is passed explicitly (see :func:`_euclidean_kernel`). Memory:
    three n-by-m float64 matrices. ``inf`` when ``x`` has a non-finite row; None when geomloss
    is not installed."""
    xs, ys = _pair(x, y)
    geomloss = _library("geomloss")
    if geomloss is None:
        return None
    if not bool(torch.isfinite(xs).all()):
        return math.inf
    centre = 0.5 * (xs.mean(0) + ys.mean(0))  # distances are shift-invariant; this avoids cancellation
    loss = geomloss.SamplesLoss("energy", kernel=_euclidean_kernel, backend="tensorized")
    with torch.no_grad():
        half_sq = float(loss(xs - centre, ys - centre))
    return math.sqrt(max(2.0 * half_sq, 0.0))


_DISTRIBUTION_FUNCTIONS = {"sliced_wasserstein": sliced_wasserstein, "energy_distance": energy_distance}


def distribution_errors(x, y, names=DISTRIBUTION_METRICS, seed: int = 0) -> tuple[dict, list[str]]:
    """The distribution metrics ``names`` between end points ``x`` and a data sample ``y``.

    Returns ``(values, notes)``: ``values`` maps each metric that could be computed to its
    value (``inf`` where ``x`` has non-finite rows); ``notes`` has one line for each metric
    whose library is missing (that metric is absent from ``values``). ``seed`` drives the
    sliced Wasserstein projections."""
    if isinstance(names, str):
        names = (names,)
    for name in names:
        unavailable(name)  # refuses unknown names before any work
    values, notes = {}, []
    for name in names:
        reason = unavailable(name)
        if reason is not None:
            notes.append(reason)
            continue
        fn = _DISTRIBUTION_FUNCTIONS[name]
        values[name] = fn(x, y, seed=seed) if name == "sliced_wasserstein" else fn(x, y)
    return values, notes


def fit_order(nfe, err, floor: float | None = 0.0) -> dict | None:
    """The observed order of convergence: minus the least-squares slope of log(err) on
    log(nfe) (``numpy.polyfit``, degree 1), over the points whose error is finite and above
    ``10 * floor`` (errors at the reference's accuracy floor say nothing about the method;
    ``floor`` None counts as 0) and whose NFE is finite and positive.

    Returns ``{"order", "nfe_lo", "nfe_hi", "points"}`` (the NFE range and the number of points
    used), or None when fewer than two distinct NFE remain."""
    nfe_a = np.asarray(nfe, dtype=np.float64).reshape(-1)
    err_a = np.asarray([np.nan if e is None else e for e in np.asarray(err, dtype=object).reshape(-1)],
                       dtype=np.float64)
    if nfe_a.shape != err_a.shape:
        raise ValueError(f"nfe and err must have the same length, got {nfe_a.size} and {err_a.size}")
    threshold = 10.0 * float(floor or 0.0)
    keep = np.isfinite(nfe_a) & (nfe_a > 0) & np.isfinite(err_a) & (err_a > threshold) & (err_a > 0)
    n_k, e_k = nfe_a[keep], err_a[keep]
    if np.unique(n_k).size < 2:
        return None
    slope = np.polyfit(np.log(n_k), np.log(e_k), 1)[0]
    return {"order": float(-slope), "nfe_lo": float(n_k.min()), "nfe_hi": float(n_k.max()), "points": int(n_k.size)}
