"""The bench's references: where each start point truly ends, and how well we know it.

A reference carries a problem's start points ``x_init`` (drawn at ``t_max``) to ``t_min`` along
the exact probability-flow ODE of the problem's exact field. Three ways, by what the problem
allows (:func:`exact_map_kind`; ``[reference] method = "auto"`` picks the first that applies):

* **closed-form Gaussian flow map** (single Gaussian law, Gaussian kernel):
  ``x_to = s_to (mu + Q diag(sqrt((lam + sigma_to^2)/(lam + sigma_from^2))) Q^T (x/s_from - mu))``
  (:func:`flowsolve.testing.references.gaussian_flow_map`);
* **exact 1-D quantile map** (any 1-D law, either kernel): the flow is the monotone
  rearrangement ``x_to = F_tmin^-1(F_tmax(x))`` (Villani 2003, Thm 2.18;
  :func:`flowsolve.testing.references.flow_map_1d`);
* **adaptive**: flowsolve's embedded Runge-Kutta pair (dopri5 or tsit5) in float64 at tight
  tolerances (default ``rtol = atol = 1e-10``), one step size per sample.

Error estimates (``Reference.error_estimate``, max abs error over all samples and coordinates):

* exact maps: the map is run back (``t_min -> t_max``) and the round-trip residual
  ``r = |x_back - x_init|`` is carried forward by the map's slope (error of the forward map
  ``~ r * |dx_to/dx_from|``: per eigen-direction for the Gaussian map, ``p_tmax(x)/p_tmin(x_to)``
  for the 1-D map), floored by a floating-point bound of the forward map alone (Gaussian: the
  ``gamma_{N+4} |.|`` bound of a length-N matrix product, Higham 2002, *Accuracy and Stability
  of Numerical Algorithms*, Sec. 3.5; 1-D: the Marginal1D log-cdf's relative accuracy 1e-15,
  ``dx = 2e-15 q |log q| / p_tmin(x_to)`` with q the tail probability, plus 2 ulp of x_to);
* adaptive: the same solve at 100x looser tolerances, ``max |x_tight - x_loose|``. This is an
  estimate of the *looser* solve's error (the tight solve is far more accurate), so for a
  convergent method it over-estimates the tight reference's own error: a conservative figure.

Adaptive references are cached on disk (exact ones cost milliseconds and are not):
``<cache_dir>/<fingerprint>-seed<seed>.pt``, ``cache_dir`` from the argument, else the
environment variable ``FLOWSOLVE_CACHE``, else ``~/.cache/flowsolve/references``. A file is
written whole to a temporary name and renamed (``os.replace``), so a concurrent reader never
sees half a file; a file that does not load, or whose fingerprint, seed, version, shape or input
digest (the bits of the start points and of the law's parameters) does not match, is recomputed
and replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["REFERENCE_VERSION", "Reference", "exact_map_kind", "exact_reference", "gaussian_reference",
           "quantile_reference", "adaptive_reference", "chunk_size", "compute_reference", "default_cache_dir",
           "cache_path", "inputs_digest", "load_cached", "save_cached"]

#: Version of the way references are computed; part of every problem's fingerprint, so bumping
#: it invalidates every cached reference.
REFERENCE_VERSION = 1
#: The loose solve of an adaptive reference uses tolerances this many times the tight ones.
LOOSE_FACTOR = 100.0
#: Relative accuracy of Marginal1D's log-cdf and log-sf (its docstring: "~1e-15 relative").
LOG_CDF_RTOL = 1e-15
ADAPTIVE_SOLVERS = ("dopri5", "tsit5")
#: Numbers (float64) of field temporaries per chunk of an adaptive reference solve. The exact
#: field of a full-covariance mixture materialises K N^2 numbers per sample (its eigenbasis
#: rotation is a broadcast product, so that results do not depend on the batch); chunks of at
#: most ~8 MiB stay in cache: 8x faster at N = 64, K = 4, n = 256 on 2 cores.
CHUNK_NUMBERS = 1 << 20

GAUSSIAN_MAP = "closed-form Gaussian flow map"
QUANTILE_MAP = "exact 1-D quantile map F_tmin^-1(F_tmax(x))"


@dataclass
class Reference:
    """Where the start points end.

    ``x``: float64 tensor ``(n, *event_shape)``; ``method``: how it was computed, for people;
    ``error_estimate``: estimated max abs error of ``x`` (module docstring); ``nfe_mean``: field
    evaluations per sample of the tight solve (None for an exact map); ``seconds``: time it took
    to compute (when loaded from the cache: the time of the original computation); ``cached``:
    loaded from the disk cache."""

    x: torch.Tensor
    method: str
    error_estimate: float
    nfe_mean: float | None
    seconds: float
    cached: bool = False


def exact_map_kind(process, law) -> str | None:
    """``"gaussian"`` (single Gaussian law under a Gaussian-kernel process), ``"quantile_1d"``
    (any 1-D law, any kernel), or None (no exact map: the reference must be adaptive)."""
    from ..toy.distributions import Empirical, GaussianMixture

    gaussian_kernel = getattr(process.kernel, "name", None) == "gaussian"
    if gaussian_kernel and isinstance(law, GaussianMixture) and law.n_components == 1:
        return "gaussian"
    if isinstance(law, (GaussianMixture, Empirical)) and law.dim == 1:
        return "quantile_1d"
    return None


def default_cache_dir() -> pathlib.Path:
    """``$FLOWSOLVE_CACHE`` if set, else ``~/.cache/flowsolve/references``."""
    env = os.environ.get("FLOWSOLVE_CACHE")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "flowsolve" / "references"


def cache_path(cache_dir, fingerprint: str, seed: int) -> pathlib.Path:
    """``<cache_dir>/<fingerprint>-seed<seed>.pt``."""
    return pathlib.Path(cache_dir) / f"{fingerprint}-seed{seed}.pt"


# -- exact maps ---------------------------------------------------------------------------------
def gaussian_reference(process, law, x_init: torch.Tensor) -> Reference:
    """The closed-form Gaussian flow map from ``t_max`` to ``t_min``, with its round-trip error
    estimate (module docstring)."""
    from ..testing.references import gaussian_flow_map

    start = time.perf_counter()
    t_from, t_to = process.t_max, process.t_min
    x = gaussian_flow_map(process, law, x_init, t_from, t_to)
    back = gaussian_flow_map(process, law, x, t_to, t_from)
    # the forward map's slope per eigen-direction: (s_to / s_from) sqrt((lam + sig_to^2) / (lam + sig_from^2))
    s_from, sig_from = float(process.scale(t_from)), float(process.sigma(t_from))
    s_to, sig_to = float(process.scale(t_to)), float(process.sigma(t_to))
    lam = law.eigvals[0]
    slope = float(((s_to / s_from) * torch.sqrt((lam + sig_to**2) / (lam + sig_from**2))).max())
    round_trip = float((back - x_init).abs().max()) * slope if x_init.numel() else 0.0
    eps = torch.finfo(torch.float64).eps
    magnitude = float(x.abs().max()) + s_to * float(law.means.abs().max()) if x.numel() else 0.0
    rounding = (law.dim + 4) * eps * magnitude
    return Reference(x=x, method=GAUSSIAN_MAP, error_estimate=max(round_trip, rounding, eps),
                     nfe_mean=None, seconds=time.perf_counter() - start)


def quantile_reference(process, law, x_init: torch.Tensor) -> Reference:
    """The exact 1-D quantile map from ``t_max`` to ``t_min``, with its round-trip error
    estimate floored by the log-cdf accuracy bound (module docstring)."""
    from ..testing.references import flow_map_1d, marginal_1d

    start = time.perf_counter()
    t_from, t_to = process.t_max, process.t_min
    x0 = x_init.detach().cpu().to(torch.float64).reshape(-1).numpy()
    x1 = flow_map_1d(process, law, x0, t_from, t_to)
    if x0.size == 0:
        return Reference(x=x_init.clone(), method=QUANTILE_MAP, error_estimate=0.0, nfe_mean=None,
                         seconds=time.perf_counter() - start)
    back = flow_map_1d(process, law, x1, t_to, t_from)
    src, dst = marginal_1d(process, law, t_from), marginal_1d(process, law, t_to)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        log_slope = src.logpdf(x0) - dst.logpdf(x1)
        round_trip = np.abs(back - x0) * np.exp(log_slope)
        # tail probability q = min(F, 1 - F) at the start, in logs (it may be ~1e-300 far out)
        log_q = np.minimum(src.logcdf(x0), src.logsf(x0))
        rounding = 2 * LOG_CDF_RTOL * np.exp(log_q - dst.logpdf(x1)) * np.abs(log_q) + 2 * np.spacing(np.abs(x1))
    per_point = np.fmax(np.nan_to_num(round_trip, nan=np.inf), rounding)
    x = torch.as_tensor(x1, dtype=torch.float64).reshape(x_init.shape)
    return Reference(x=x, method=QUANTILE_MAP, error_estimate=float(per_point.max()), nfe_mean=None,
                     seconds=time.perf_counter() - start)


def exact_reference(process, law, x_init: torch.Tensor) -> Reference:
    """The exact map that applies (:func:`exact_map_kind`); ValueError if none does."""
    kind = exact_map_kind(process, law)
    if kind == "gaussian":
        return gaussian_reference(process, law, x_init)
    if kind == "quantile_1d":
        return quantile_reference(process, law, x_init)
    raise ValueError(f"no exact flow map for {law!r} under {process!r}: only a single Gaussian under a "
                     "Gaussian-kernel process, or a 1-D law, has one; use an adaptive reference")


# -- adaptive solves ----------------------------------------------------------------------------
def chunk_size(law, n: int) -> int:
    """Samples per chunk of an adaptive reference solve of ``law``'s exact field: all ``n``,
    except for a full-covariance mixture, whose field's temporaries (K N^2 numbers per sample)
    are kept within ``CHUNK_NUMBERS`` (at least 16 samples a chunk)."""
    from ..toy.distributions import GaussianMixture

    if isinstance(law, GaussianMixture) and law.eigvecs is not None:
        return max(16, min(n, CHUNK_NUMBERS // (law.n_components * law.dim**2)))
    return max(n, 1)


def adaptive_reference(process, field, x_init: torch.Tensor, solver: str = "dopri5", rtol: float = 1e-10,
                       atol: float = 1e-10, chunk: int | None = None) -> Reference:
    """``x_init`` carried from ``t_max`` to ``t_min`` by flowsolve's adaptive ``solver`` in
    float64 at ``rtol``/``atol``; error estimate from a second solve at ``LOOSE_FACTOR``-times
    looser tolerances. A solve in which any sample failed raises RuntimeError with the
    solution's message.

    ``chunk`` samples are solved at a time (default: all). Every sample has its own step sizes
    and the exact fields do not depend on the batch, so chunks change the speed only: the
    result is bit-identical."""
    import flowsolve as fs

    if solver not in ADAPTIVE_SOLVERS:
        raise ValueError(f"solver must be one of {list(ADAPTIVE_SOLVERS)}, got {solver!r}")
    x0 = x_init.detach().to(torch.float64)
    n = x0.shape[0]
    chunk = max(n, 1) if chunk is None else int(chunk)
    start = time.perf_counter()
    ends, nfe = [], []
    for factor in (1.0, LOOSE_FACTOR):
        parts, counts = [], []
        for rows in x0.split(chunk) if n else [x0]:
            sol = fs.sample(process, field, rows.shape[0], solver, x_init=rows, dtype=torch.float64,
                            rtol=rtol * factor, atol=atol * factor)
            if bool(sol.failed.any()):
                raise RuntimeError(f"the reference solve ({solver}, rtol={rtol * factor:g}, atol={atol * factor:g}) "
                                   f"failed for {int(sol.failed.sum())} of {rows.shape[0]} samples: {sol.message}")
            parts.append(sol.x)
            counts.append(sol.nfe)
        ends.append(torch.cat(parts))
        nfe.append(torch.cat(counts))
    (tight, loose), seconds = ends, time.perf_counter() - start
    eps = torch.finfo(torch.float64).eps
    difference = float((tight - loose).abs().max()) if n else 0.0
    floor = eps * float(tight.abs().max()) if n else 0.0  # the estimate is never below rounding
    return Reference(x=tight, method=f"{solver}, rtol={rtol:g}, atol={atol:g}, float64",
                     error_estimate=max(difference, floor), nfe_mean=float(nfe[0].double().mean()) if n else 0.0,
                     seconds=seconds)


# -- the disk cache -----------------------------------------------------------------------------
def inputs_digest(x_init: torch.Tensor, law) -> str:
    """sha256 of the exact numbers a reference is computed from: the start points and the data
    law's parameters (float64 bytes). The fingerprint hashes the problem *as written*; a law drawn
    from a random generator (random_mixture, empirical points drawn from a law) or start points
    from another torch version could differ in their bits, and a cached reference must not be
    reused for other numbers than its own."""
    digest = hashlib.sha256()
    tensors = [x_init] + [getattr(law, name) for name in ("means", "covs", "weights", "points") if hasattr(law, name)]
    for tensor in tensors:
        array = tensor.detach().cpu().to(torch.float64).contiguous().numpy()
        digest.update(str(array.shape).encode())
        digest.update(array.astype("<f8", copy=False).tobytes())
    return digest.hexdigest()


def load_cached(path: pathlib.Path, fingerprint: str, seed: int, shape: tuple, inputs: str | None = None
                ) -> Reference | None:
    """The reference stored at ``path`` if it is there, loads, and matches ``fingerprint``,
    ``seed``, ``REFERENCE_VERSION``, ``shape`` and (when given) the :func:`inputs_digest`; else None."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 -- missing, truncated or foreign file: recompute it
        return None
    if not isinstance(stored, dict):
        return None
    x = stored.get("x")
    matches = (stored.get("fingerprint") == fingerprint and stored.get("seed") == seed
               and stored.get("version") == REFERENCE_VERSION and (inputs is None or stored.get("inputs") == inputs)
               and isinstance(x, torch.Tensor) and tuple(x.shape) == tuple(shape) and x.dtype == torch.float64
               and bool(torch.isfinite(x).all()))
    if not matches:
        return None
    try:
        return Reference(x=x, method=str(stored["method"]), error_estimate=float(stored["error_estimate"]),
                         nfe_mean=None if stored.get("nfe_mean") is None else float(stored["nfe_mean"]),
                         seconds=float(stored["seconds"]), cached=True)
    except (KeyError, TypeError, ValueError):
        return None


def save_cached(path: pathlib.Path, fingerprint: str, seed: int, reference: Reference,
                inputs: str | None = None) -> None:
    """Write ``reference`` to ``path`` atomically (a temporary file in the same folder, then
    ``os.replace``), with the :func:`inputs_digest` ``inputs`` it was computed from."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"fingerprint": fingerprint, "seed": seed, "version": REFERENCE_VERSION, "inputs": inputs,
               "x": reference.x.detach().cpu().contiguous(), "method": reference.method,
               "error_estimate": reference.error_estimate, "nfe_mean": reference.nfe_mean,
               "seconds": reference.seconds}
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def compute_reference(problem, seed: int = 0, cache_dir=None) -> Reference:
    """The reference of ``problem`` (a :class:`~flowsolve.bench.problems.Problem`) for its start
    points ``problem.x_init(seed)``: an exact map, or an adaptive solve read from / written to
    the cache."""
    x0 = problem.x_init(seed)
    if problem.reference_method == "exact":
        return exact_reference(problem.process, problem.data, x0)
    spec = problem.spec["reference"]
    path = cache_path(default_cache_dir() if cache_dir is None else cache_dir, problem.fingerprint, seed)
    inputs = inputs_digest(x0, problem.data)
    cached = load_cached(path, problem.fingerprint, seed, tuple(x0.shape), inputs)
    if cached is not None:
        return cached
    reference = adaptive_reference(problem.process, problem.field, x0, spec["solver"], spec["rtol"], spec["atol"],
                                   chunk=chunk_size(problem.data, x0.shape[0]))
    save_cached(path, problem.fingerprint, seed, reference, inputs)
    return reference
