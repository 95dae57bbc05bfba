"""Exact references for property checks and benchmarks: 1-D marginals, exact 1-D flow maps,
Gaussian closed forms, KL divergences and the optimal-transport Lipschitz bound.

Everything is float64 numpy/scipy built only from a process's schedules (``scale``, ``sigma``,
``kernel``, time span) and a toy law's parameters. Nothing here calls flowsolve's exact fields
or solvers, so these references can check them.

Notation (DESIGN.md sec. 1): ``x_t = s(t) (y + sigma(t) n)``. For a unit vector ``u``,
``u.x_t = s (u.y + sigma u.n)`` with ``u.n ~ N(0, 1)`` under the Gaussian kernel and
``u.n ~ t_D`` under the PFGM++ kernel. A unit-scale multivariate t projects to a univariate t
(Kotz & Nadarajah 2004, *Multivariate t Distributions*, Sec. 1.10).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy import linalg, optimize, special

from .._validation import check_bool, check_real, check_time_range
from ..processes import StudentTKernel, require_canonical
from ..toy.distributions import Empirical, GaussianMixture

__all__ = ["Marginal1D", "marginal_1d", "flow_map_1d", "gaussian_flow_map", "gaussian_marginal", "gaussian_kl",
           "prior_kl", "ot_lipschitz_1d"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_INT64_MIN = np.int64(-(2**63))
#: Mixing mass of log V left out beyond each end of the quadrature window (a rigorous bound).
_WINDOW_TOL = 1e-18
#: Entries of one (points x mixture nodes) block: this bounds memory for long inputs.
_BLOCK = 1 << 21
#: Points of the grid that ot_lipschitz_1d searches before it refines the best one.
_LIP_GRID = 20001


# -- numerics --------------------------------------------------------------------------------
def _expm1mx(L):
    """``e^L - 1 - L``, with no cancellation near 0 (Taylor series for |L| < 0.5)."""
    L = np.asarray(L, dtype=np.float64)
    small = np.abs(L) < 0.5
    Ls = np.where(small, L, 0.0)
    term = 0.5 * Ls * Ls
    total = term.copy()
    for k in range(3, 23):  # the next term is < 0.5^23 / 23! relative: below float64 resolution
        term = term * Ls / k
        total = total + term
    with np.errstate(over="ignore"):
        return np.where(small, total, np.expm1(np.where(small, 0.0, L)) - L)


def _logsumexp(a, axis=-1):
    """``log sum exp`` along ``axis`` (rows of -inf give -inf). Faster than scipy's on big blocks."""
    top = np.max(a, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(a - top), axis=axis)) + np.squeeze(top, axis)


def _float_key(x):
    """Monotone map of float64 values to int64 (adjacent floats: adjacent keys; -0.0 == 0.0)."""
    i = np.ascontiguousarray(x, dtype=np.float64).view(np.int64)
    return np.where(i >= 0, i, _INT64_MIN - np.minimum(i, 0))


def _key_float(k):
    return np.where(k >= 0, k, _INT64_MIN - np.minimum(k, 0)).astype(np.int64).view(np.float64)


@functools.lru_cache(maxsize=128)
def _mixing_window(a: float) -> tuple[float, float, float]:
    """Window ``[L0, L1]`` and step ``h`` of the trapezoid rule in ``L = log V``, with V ~ Gamma(a, rate a).

    log density of L: ``c(a) - a (e^L - 1 - L)``, with ``c(a) = a log a - a - gammaln(a)``. It is
    concave, so it lies below its tangent, and the mass beyond an end ``L`` is at most
    ``density(L) / |slope(L)|``, with ``slope = a (1 - e^L)``. Each end is where this bound equals
    ``_WINDOW_TOL``. For small ``a`` the left tail decays only like ``exp(a L)``, so the window
    is long (about ``[-165, 5]`` at D = 0.5). For large ``a``, V ~ 1 +- sqrt(1/a) and the
    window is about ``+-9/sqrt(a)``.

    The integrands are analytic in a strip around the real line, so the trapezoid rule converges
    geometrically (Trefethen & Weideman 2014, SIAM Rev. 56(3), Thm 5.1). The error is about
    ``exp(-2 pi^2 / (a h^2))`` for large a and ``exp(-3 pi / h)`` for small a. With
    ``h = min(0.2, 0.5/sqrt(a))`` both are < 1e-17.
    """
    c = a * math.log(a) - a - special.gammaln(a)
    log_tol = math.log(_WINDOW_TOL)

    def excess(L):  # log(tail bound) - log(tol): > 0 near L = 0, < 0 far out
        return c - a * float(_expm1mx(L)) - math.log(a * abs(math.expm1(L))) - log_tol

    lo, hi = -1.0, 1.0
    while excess(lo) > 0:
        lo *= 2.0
    while excess(hi) > 0:
        hi *= 2.0
    L0 = optimize.brentq(excess, lo, -1e-300, xtol=1e-12, rtol=1e-12)
    L1 = optimize.brentq(excess, 1e-300, hi, xtol=1e-12, rtol=1e-12)
    return L0, L1, min(0.2, 0.5 / math.sqrt(a))


def _mixing_nodes(a: float, extend_left: float):
    """Nodes ``L_j`` (spacing h, anchored at the right end) and normalised log weights of ``E f(V)``."""
    L0, L1, h = _mixing_window(a)
    L = L1 - h * np.arange(int(math.ceil((L1 - L0 + extend_left) / h)) + 1)
    logw = -a * _expm1mx(L)  # the constant c(a) + log h drops out when we normalise
    return L, logw - _logsumexp(logw)


# -- the 1-D marginal ------------------------------------------------------------------------
class Marginal1D:
    """A 1-D law ``sum_k w_k N(loc_k, var_k + noise_sd^2 / V)``: V = 1 for ``D = inf``
    (Gaussian kernel), ``V ~ Gamma(D/2, rate D/2)`` otherwise (PFGM++ kernel: then
    ``G / sqrt(V)`` with ``G ~ N(0, 1)`` is a Student-t with D degrees of freedom).

    Built by :func:`marginal_1d`. Its methods take float arrays of any shape and return float64
    arrays of that shape, exact to ~1e-15 relative, far tails included:

    * normal components: ``log_ndtr`` and ``logsumexp`` over components.
    * Student-t components of point data (``var_k = 0``): closed form,
      ``P(T <= z) = stdtr(D, z)`` (Abramowitz & Stegun 26.7.1) and the t density. Where that
      would underflow (log-probability < -650; scipy.stats.t.logcdf gives -inf there), it
      falls back to the quadrature below.
    * Student-t components of Gaussian data: the trapezoid rule over ``log V`` (see
      ``_mixing_window``), a normal mixture with ``Q`` nodes (about 37 for large D, 435 for
      D = 1, 850 for D = 0.5). For points far out in a tail, the mixing mass that matters sits
      at small V: the log integrand ``a L - (a + b) e^L``, with ``b = dist^2 / (2 noise_sd^2)``,
      peaks at ``L = -log(1 + b/a)``. The window is extended left by that much, so its cost
      grows like ``log(dist)`` there.
    """

    def __init__(self, loc, var, weights, noise_sd: float, D: float = math.inf):
        loc, var, w = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (loc, var, weights))
        if not (loc.shape == var.shape == w.shape) or loc.size == 0:
            raise ValueError(f"loc, var and weights must be non-empty with equal lengths, got {loc.size}, {var.size}, "
                             f"{w.size}")
        if not (np.all(np.isfinite(loc)) and np.all(np.isfinite(var)) and np.all(var >= 0) and np.all(w >= 0)):
            raise ValueError("loc must be finite, var finite and >= 0, weights >= 0")
        self.noise_sd = check_real("noise_sd", noise_sd, minimum=0.0, strict_min=True)
        self.D = check_real("D", D, minimum=0.0, strict_min=True, allow_inf=True)
        keep = w > 0
        self.loc, self.var, self.weights = loc[keep], var[keep], w[keep] / w[keep].sum()
        self.sd = np.sqrt(self.var + self.noise_sd**2)  # per-component sd under the Gaussian kernel

    def __repr__(self):
        return f"Marginal1D(n_components={self.loc.size}, noise_sd={self.noise_sd!r}, D={self.D!r})"

    def _log_sum(self, x, kind: str):
        """``log sum_k w_k f_k(x)`` per point, for f = cdf, sf or pdf (``kind``)."""
        x = np.asarray(x, dtype=np.float64)
        flat = x.reshape(-1)
        points = np.isfinite(self.D) & (self.var == 0)
        parts = []
        if np.any(~points):
            parts.append(self._normal_mixture(flat, kind, ~points))
        if np.any(points):
            closed = self._student_t(flat, kind, points)
            deep = closed < -650.0  # near or past underflow of stdtr: use the quadrature
            if kind != "pdf" and np.any(deep):
                closed[deep] = self._normal_mixture(flat[deep], kind, points)
            parts.append(closed)
        return functools.reduce(np.logaddexp, parts).reshape(x.shape)

    def _student_t(self, x, kind: str, comps):
        """Closed form for point components: ``loc_k + noise_sd T``, ``T ~ t_D``."""
        D, a = self.D, 0.5 * self.D
        d = x[:, None] - self.loc[comps]
        with np.errstate(divide="ignore", over="ignore"):
            if kind == "pdf":  # log Gamma((D+1)/2) - log Gamma(D/2) - log(pi D)/2 - (D+1)/2 log(1 + z^2/D)
                # log Gamma(a + 1/2) - log Gamma(a): its asymptotic series (error < 1e-15 for a >= 30)
                # where the difference of two lgammas would cancel
                log_ratio = (0.5 * math.log(a) - 1 / (8 * a) + 1 / (192 * a**3) - 1 / (640 * a**5)
                             + 17 / (14336 * a**7)) if a >= 30 else special.gammaln(a + 0.5) - special.gammaln(a)
                log_z2 = 2.0 * (np.log(np.abs(d)) - math.log(self.noise_sd)) - math.log(D)
                terms = (log_ratio - 0.5 * math.log(math.pi * D) - 0.5 * (D + 1) * np.logaddexp(0.0, log_z2)
                         - math.log(self.noise_sd))
            else:
                z = d / self.noise_sd
                terms = np.log(special.stdtr(D, z if kind == "cdf" else -z))
        return _logsumexp(np.log(self.weights[comps]) + terms, axis=1)

    def _normal_mixture(self, x, kind: str, comps):
        """Normal components, and Student-t components by quadrature over V (Q nodes)."""
        loc, w = self.loc[comps], self.weights[comps]
        with np.errstate(divide="ignore"):
            log_var = np.log(self.var[comps])[:, None]
        if math.isinf(self.D):
            log_sd, logw = 0.5 * np.logaddexp(log_var, 2.0 * math.log(self.noise_sd)), np.log(w)[:, None]
        else:
            a = 0.5 * self.D
            finite = x[np.isfinite(x)]
            dist = 0.0 if finite.size == 0 else max(abs(finite.max() - loc.min()), abs(finite.min() - loc.max()))
            log_b = 2.0 * math.log(max(dist, 1e-300)) - math.log(2.0 * self.noise_sd**2)
            L, logw_v = _mixing_nodes(a, float(np.logaddexp(0.0, log_b - math.log(a))))
            # in logs: far out, V ~ 1/x^2 and sd^2 = var + noise^2 / V overflows
            log_sd = 0.5 * np.logaddexp(log_var, 2.0 * math.log(self.noise_sd) - L[None, :])
            logw = np.log(w)[:, None] + logw_v[None, :]
        out = np.empty(x.shape)
        step = max(1, _BLOCK // log_sd.size)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            for i in range(0, x.size, step):
                d = x[i:i + step, None] - loc
                # z = d / sd as sign(d) exp(log|d| - log sd): no overflow, and +-inf points give z = +-inf
                z = np.sign(d)[:, :, None] * np.exp(np.log(np.abs(d))[:, :, None] - log_sd)
                if kind == "pdf":
                    terms = -0.5 * z * z - log_sd - _LOG_SQRT_2PI
                else:
                    terms = special.log_ndtr(z if kind == "cdf" else -z)
                out[i:i + step] = _logsumexp((logw + terms).reshape(d.shape[0], -1), axis=1)
        return out

    def _log_tail(self, c, upper: bool):
        kind, other_kind = ("sf", "cdf") if upper else ("cdf", "sf")
        out = np.minimum(self._log_sum(c, kind), 0.0)
        # Near 0 the sum carries the weights' rounding (~1e-16 absolute). There,
        # log1p(-other tail) is exact to relative precision (the other tail is < 1/2).
        near_one = out > -math.log(2.0)
        if np.any(near_one):
            out[near_one] = np.log1p(-np.exp(self._log_sum(np.asarray(c, dtype=np.float64)[near_one], other_kind)))
        return out

    def logcdf(self, c):
        """``log P(X <= c) = logsumexp_k(log w_k + log F_k(c))``: exact far in the left tail.
        Where it is near 0 it is ``log1p(-sf)``."""
        return self._log_tail(c, upper=False)

    def logsf(self, c):
        """``log P(X > c) = logsumexp_k(log w_k + log S_k(c))``: exact far in the right tail.
        Where it is near 0 it is ``log1p(-cdf)``."""
        return self._log_tail(c, upper=True)

    def logpdf(self, c):
        """``log p(c) = logsumexp_k(log w_k + log p_k(c))``."""
        return self._log_sum(c, "pdf")

    def cdf(self, c):
        return np.exp(self.logcdf(c))

    def sf(self, c):
        return np.exp(self.logsf(c))

    def pdf(self, c):
        return np.exp(self.logpdf(c))

    def ppf(self, q):
        """Quantile ``F^{-1}(q)``, q in [0, 1]. For q > 1/2 it inverts ``logsf`` at ``log1p(-q)``."""
        q = np.asarray(q, dtype=np.float64)
        if not np.all((q >= 0) & (q <= 1)):
            raise ValueError("q must hold probabilities in [0, 1]")
        out = np.empty(q.shape)
        low = q <= 0.5
        with np.errstate(divide="ignore"):
            out[low] = self.ppf_log(np.log(q[low]), upper=False)
            out[~low] = self.ppf_log(np.log1p(-q[~low]), upper=True)
        return out

    def ppf_log(self, logq, upper: bool = False):
        """Solve ``logcdf(x) = logq`` (``upper=False``) or ``logsf(x) = logq`` (``upper=True``).

        Vectorised bisection on the float64 bit patterns: with the key ordering, at most 64
        halvings reach adjacent floats. It returns whichever of the two floats bracketing the
        root has the closer log-probability, so x is exact to 1 ulp plus the error of the logcdf
        (relative error ~1e-15). A bracket is found first by growing ``center +- width`` in steps
        of 16x, so the points evaluated stay within 16x the root's distance. Where the cdf is flat
        in float64 (between very sharp modes), the result is the low end of the flat stretch.
        ``logq = -inf`` gives the lower end of the support, ``0`` the upper end (+-inf).
        """
        upper = check_bool("upper", upper)
        logq = np.asarray(logq, dtype=np.float64)
        if np.any(np.isnan(logq)) or np.any(logq > 0):
            raise ValueError("logq must hold log-probabilities in [-inf, 0]")
        flat = logq.reshape(-1)
        sign = -1.0 if upper else 1.0  # the quantile grows with logq for the cdf, falls for the sf

        def at_or_above(x, target):  # x >= the root
            return self.logsf(x) <= target if upper else self.logcdf(x) >= target

        out = np.where(flat == -np.inf, -sign * np.inf, sign * np.inf)  # the ends of the support
        todo = np.nonzero(np.isfinite(flat) & (flat < 0))[0]
        if todo.size:
            target = flat[todo]
            center = float(np.sum(self.weights * self.loc))
            width0 = float(np.max(np.abs(self.loc - center) + 2.0 * self.sd))
            ends = []
            for side in (-1.0, 1.0):  # a point below, then a point above the root
                width = np.full(todo.size, width0)
                x = center + side * width
                bad = np.nonzero(at_or_above(x, target) == (side < 0))[0]
                while bad.size:
                    width[bad] *= 16.0
                    x[bad] = np.where(width[bad] < 1e300, center + side * width[bad], side * np.inf)
                    bad = bad[at_or_above(x[bad], target[bad]) == (side < 0)]
                ends.append(x)
            k_lo, k_hi = _float_key(ends[0]), _float_key(ends[1])
            while True:
                act = np.nonzero(k_hi > k_lo + 1)[0]
                if act.size == 0:
                    break
                k_mid = (k_lo[act] >> 1) + (k_hi[act] >> 1) + (k_lo[act] & k_hi[act] & 1)
                above = at_or_above(_key_float(k_mid), target[act])
                k_hi[act] = np.where(above, k_mid, k_hi[act])
                k_lo[act] = np.where(above, k_lo[act], k_mid)
            x_lo, x_hi = _key_float(k_lo), _key_float(k_hi)
            value = self.logsf if upper else self.logcdf
            with np.errstate(invalid="ignore"):
                pick_hi = np.abs(value(x_hi) - target) <= np.abs(value(x_lo) - target)
            out[todo] = np.where(pick_hi, x_hi, x_lo)
        return out.reshape(logq.shape)


# -- argument plumbing ---------------------------------------------------------------------------
def _schedules(process, t, name: str) -> tuple[float, float]:
    """(s(t), sigma(t)) as floats, after checking t is a real number in [t_min, t_max]."""
    t = check_real(name, t)
    check_time_range(name, t, process.t_min, process.t_max)
    t = min(max(t, process.t_min), process.t_max)  # the check allows float rounding at the ends
    return float(process.scale(t)), float(process.sigma(t))


def _kernel_D(process, what: str) -> float:
    """The kernel's degrees of freedom: D for PFGM++, inf for the Gaussian kernel."""
    require_canonical(process, what)
    kernel = getattr(process, "kernel", None)
    if isinstance(kernel, StudentTKernel):
        return float(kernel.D)
    if getattr(kernel, "name", None) == "gaussian":
        return math.inf
    raise ValueError(f"{what} needs a Gaussian or PFGM++ (Student-t) kernel, got {kernel!r}")


def _check_law(law, what: str, single_gaussian: bool = False) -> None:
    if single_gaussian:
        if not isinstance(law, GaussianMixture) or law.n_components != 1:
            raise ValueError(f"{what} needs Gaussian data (fs.toy.Gaussian or a 1-component GaussianMixture), "
                             f"got {law!r}")
    elif not isinstance(law, (GaussianMixture, Empirical)):
        raise ValueError(f"{what} needs a fs.toy.GaussianMixture, Gaussian or Empirical law, got {law!r}")


def _require_gaussian_kernel(process, what: str) -> None:
    if not math.isinf(_kernel_D(process, what)):
        raise ValueError(f"{what} holds for the Gaussian kernel only; {process!r} has the PFGM++ "
                         "(Student-t) kernel: use marginal_1d / flow_map_1d for it")


def _direction(law, direction) -> np.ndarray:
    if direction is None:
        if law.dim != 1:
            raise ValueError(f"direction is required for a law of dimension {law.dim}: give a vector of {law.dim} "
                             "numbers (it is normalised); only a 1-D law may leave it out")
        return np.ones(1)
    if isinstance(direction, torch.Tensor):
        direction = direction.detach().cpu()
    u = np.asarray(direction, dtype=np.float64).reshape(-1)
    if u.size != law.dim:
        raise ValueError(f"direction must have {law.dim} entries (the law's dimension), got {u.size}")
    norm = float(np.linalg.norm(u))
    if not np.all(np.isfinite(u)) or norm == 0.0:
        raise ValueError(f"direction must be a finite non-zero vector, got {u.tolist()}")
    return u / norm


# -- public references ---------------------------------------------------------------------------
def marginal_1d(process, law, t, direction=None) -> Marginal1D:
    """The law of the projection ``u . x_t`` of the process's marginal at time ``t``.

    Parameters
    ----------
    process : a canonical process (Gaussian or PFGM++ kernel).
    law : fs.toy.GaussianMixture / Gaussian (components ``N(m_k, S_k)``) or fs.toy.Empirical
        (points ``y_i``).
    t : float in ``[t_min, t_max]``.
    direction : vector of ``law.dim`` numbers, normalised here; it may be left out only when
        ``law.dim == 1``.

    Returns
    -------
    Marginal1D with ``loc_k = s u.m_k``, ``var_k = s^2 u^T S_k u`` (0 for points) and
    ``noise_sd = s sigma``. Gaussian kernel: ``u.x_t ~ sum_k w_k N(s u.m_k, s^2 (u^T S_k u + sigma^2))``.
    PFGM++ kernel (Xu et al. 2023, PFGM++, Sec. 3): ``u.x_t = s (Y + sigma T)``, ``Y ~ N(u.m_k, u^T S_k u)``,
    ``T ~ t_D``. Points give shifted, scaled Student-t's. Gaussian components are integrated
    over the scale-mixing variable V ~ Gamma(D/2, rate D/2), since ``T = G / sqrt(V)``.
    """
    _check_law(law, "marginal_1d")
    return _marginal(process, law, t, "t", _direction(law, direction), "marginal_1d")


def _marginal(process, law, t, name: str, u: np.ndarray, what: str) -> Marginal1D:
    """The Marginal1D of ``u . x_t`` (arguments already checked, except the process and ``t``)."""
    D = _kernel_D(process, what)
    s, sigma = _schedules(process, t, name)
    if isinstance(law, Empirical):
        loc, var = law.points.numpy() @ u, np.zeros(law.points.shape[0])
    else:
        loc, var = law.means.numpy() @ u, np.einsum("i,kij,j->k", u, law.covs.numpy(), u)
    return Marginal1D(s * loc, s * s * var, law.weights.numpy(), s * sigma, D)


def flow_map_1d(process, law, x, t_from, t_to) -> np.ndarray:
    """The exact probability-flow ODE map from time ``t_from`` to ``t_to`` for a 1-D law.

    In 1-D the probability flow is monotone and carries ``p_from`` to ``p_to``. So it is the
    monotone (optimal-transport) rearrangement ``T(x) = F_to^{-1}(F_from(x))`` (Villani 2003,
    *Topics in Optimal Transportation*, Thm 2.18). It is evaluated in log space: points where
    ``logcdf_from <= logsf_from`` (below the median) match ``logcdf``, the others match
    ``logsf``. So the map stays exact far in either tail and near very sharp modes. Between
    sharp modes the map is ill-conditioned (its slope ``p_from/p_to`` is huge), and so is every
    solver there.

    ``x``: array or tensor of shape ``(n,)`` or ``(n, 1)``. Returns a float64 numpy array of
    the same shape. Works for both kernels and either time order in ``[t_min, t_max]``.
    """
    _check_law(law, "flow_map_1d")
    if law.dim != 1:
        raise ValueError(f"flow_map_1d needs a 1-D law (law.dim == 1), got law.dim == {law.dim}; "
                         "use marginal_1d with a direction for projections")
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
    x = np.array(x, dtype=np.float64)
    if not (x.ndim == 1 or (x.ndim == 2 and x.shape[1] == 1)):
        raise ValueError(f"x must have shape (n,) or (n, 1), got {x.shape}")
    src = _marginal(process, law, t_from, "t_from", np.ones(1), "flow_map_1d")
    dst = _marginal(process, law, t_to, "t_to", np.ones(1), "flow_map_1d")
    flat = x.reshape(-1)
    log_lower, log_upper = src.logcdf(flat), src.logsf(flat)
    lower = log_lower <= log_upper
    out = np.empty_like(flat)
    out[lower] = dst.ppf_log(log_lower[lower], upper=False)
    out[~lower] = dst.ppf_log(log_upper[~lower], upper=True)
    return out.reshape(x.shape)


def gaussian_flow_map(process, law, x: torch.Tensor, t_from, t_to) -> torch.Tensor:
    """Closed-form probability-flow map for Gaussian data ``N(mu, S)``, ``S = Q diag(lam) Q^T``,
    under a Gaussian kernel.

    ``p_t = N(s mu, s^2 (S + sigma^2 I))``. The flow is the linear map that carries one such
    Gaussian to the other and commutes with S. Each eigen-coordinate of ``x/s - mu`` scales by
    ``sqrt((lam + sigma_to^2) / (lam + sigma_from^2))``:
    ``x_to = s_to (mu + Q diag(...) Q^T (x_from / s_from - mu))``
    (dx/dsigma = (x - D)/sigma with the linear denoiser D = mu + S (S + sigma^2)^-1 (x - mu)).

    ``x``: tensor of shape ``(n, *law.event_shape)``. Computed in float64, returned in x's dtype
    and on x's device.
    """
    _check_law(law, "gaussian_flow_map", single_gaussian=True)
    _require_gaussian_kernel(process, "gaussian_flow_map")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or tuple(x.shape[1:]) != tuple(law.event_shape):
        raise ValueError(f"x must be a floating tensor of shape (n, *{tuple(law.event_shape)}), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    s0, sig0 = _schedules(process, t_from, "t_from")
    s1, sig1 = _schedules(process, t_to, "t_to")
    lam, mu = law.eigvals[0], law.means[0]
    factor = torch.sqrt((lam + sig1**2) / (lam + sig0**2))
    y = x.detach().to("cpu", torch.float64).reshape(x.shape[0], -1) / s0 - mu
    if law.eigvecs is None:
        y = y * factor
    else:
        Q = law.eigvecs[0]
        y = ((y @ Q) * factor) @ Q.T
    return (s1 * (mu + y)).reshape(x.shape).to(dtype=x.dtype, device=x.device)


def gaussian_marginal(process, law, t) -> GaussianMixture:
    """The marginal p_t under a Gaussian-kernel process, as a GaussianMixture.

    Components ``N(s m_k, s^2 (S_k + sigma^2 I))`` with the law's weights and event shape. Points
    ``y_i`` give ``N(s y_i, s^2 sigma^2 I)`` (Song et al. 2021, SDE paper, eq. 29: the
    Gaussian perturbation kernel convolved with the data).
    """
    _check_law(law, "gaussian_marginal")
    _require_gaussian_kernel(process, "gaussian_marginal")
    s, sigma = _schedules(process, t, "t")
    if isinstance(law, Empirical):
        return GaussianMixture(s * law.points, torch.full((law.points.shape[0],), s * sigma, dtype=torch.float64),
                               law.weights, law.event_shape)
    if law.eigvecs is None:  # keep a diagonal law diagonal: pass per-coordinate stds
        return GaussianMixture(s * law.means, s * torch.sqrt(law.eigvals + sigma**2), law.weights, law.event_shape)
    eye = torch.eye(law.dim, dtype=torch.float64)
    return GaussianMixture(s * law.means, s * s * (law.covs + sigma**2 * eye), law.weights, law.event_shape)


def _as_array(name, value, ndim) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
    a = np.asarray(value, dtype=np.float64)
    if a.ndim != ndim or not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be a finite {'vector' if ndim == 1 else 'square matrix'}, got shape {a.shape}")
    return a


def gaussian_kl(mean0, cov0, mean1, cov1) -> float:
    """``KL(N(mean0, cov0) || N(mean1, cov1))`` in closed form.

    With Cholesky factors ``cov_i = L_i L_i^T``, the matrix ``M = L_1^{-1} L_0`` is lower
    triangular with diagonal ``L0_jj / L1_jj``. The usual
    ``1/2 [tr(cov1^-1 cov0) + maha - N + log det cov1 - log det cov0]`` (Pardo 2006, *Statistical
    Inference Based on Divergence Measures*, p. 45) becomes a sum of non-negative terms:
    ``KL = 1/2 [ |L_1^{-1}(mean1 - mean0)|^2 + sum_{j>k} M_jk^2 + sum_j (m_j - 1 - log m_j) ]``,
    with ``m_j = (L0_jj / L1_jj)^2``. No inverse is formed (two triangular solves), no term
    cancels, and equal arguments give exactly 0.
    """
    m0, m1 = _as_array("mean0", mean0, 1), _as_array("mean1", mean1, 1)
    c0, c1 = _as_array("cov0", cov0, 2), _as_array("cov1", cov1, 2)
    n = m0.size
    if m1.size != n or c0.shape != (n, n) or c1.shape != (n, n):
        raise ValueError(f"shapes must agree: mean0 {m0.shape}, cov0 {c0.shape}, mean1 {m1.shape}, cov1 {c1.shape}")
    factors = []
    for name, c in (("cov0", c0), ("cov1", c1)):
        try:
            factors.append(np.linalg.cholesky(0.5 * (c + c.T)))
        except np.linalg.LinAlgError:
            raise ValueError(f"{name} must be symmetric positive definite") from None
    l0, l1 = factors
    maha = linalg.solve_triangular(l1, m1 - m0, lower=True)
    off_diagonal = np.tril(linalg.solve_triangular(l1, l0, lower=True), -1)
    log_m = 2.0 * (np.log(np.diag(l0)) - np.log(np.diag(l1)))
    return float(0.5 * (maha @ maha + np.sum(off_diagonal**2) + np.sum(_expm1mx(log_m))))


def prior_kl(process, law) -> float:
    """``KL(p_{t_max} || prior)`` for Gaussian data ``N(mu, S)`` under a Gaussian-kernel process.

    ``p_{t_max} = N(s mu, s^2 (S + sigma^2 I))`` and the prior is ``N(0, prior_std^2 I)`` with
    ``prior_std = s sigma`` at t_max. The common factor s drops out:
    ``KL = 1/2 [ |mu|^2 / sigma^2 + sum_i (x_i - log(1 + x_i)) ]``, with ``x_i = lam_i / sigma^2``.

    Asymptotics (s fixed, sigma = sigma(t_max) -> inf):
    ``KL = |mu|^2 / (2 sigma^2) + tr(S^2) / (4 sigma^4) + O(sigma^-6)``. So KL = O(sigma_max^-2),
    or O(sigma_max^-4) when mu = 0. For VP, sigma(t_max)^2 = e^{2 L(t_max)} - 1 grows
    exponentially in beta_max.
    """
    _check_law(law, "prior_kl", single_gaussian=True)
    _require_gaussian_kernel(process, "prior_kl")
    _, sigma = _schedules(process, process.t_max, "t_max")
    ratio = law.eigvals[0].numpy() / sigma**2
    mu_sq = float(law.means[0].square().sum())
    return float(0.5 * (mu_sq / sigma**2 + np.sum(_expm1mx(np.log1p(ratio)))))


def ot_lipschitz_1d(marginal: Marginal1D, log: bool = False) -> tuple[float, float]:
    """``Lip(T_OT)`` for the Monge map ``T_OT = F^{-1} o Phi`` from N(0, 1) to the 1-D law.

    Salmona et al. 2022 (*Can push-forward generative models fit multimodal distributions?*,
    corollary of Thm 1, Gaussian isoperimetry): any Lipschitz g with ``g # N(0, I_p) = nu`` has
    ``Lip(g) >= Lip(T_OT)``. Here ``T_OT'(z) = phi(z) / p(T_OT(z))``, so
    ``Lip = sup_x phi(Phi^{-1}(F(x))) / p(x)``. It is evaluated in log space: logpdf, the smaller
    of logcdf/logsf, and ``ndtri_exp``.

    Returns ``(Lip, z)``, with z where the sup is attained, the one nearest 0 among ties.
    ``log=True`` returns ``(log Lip, z)``, which does not overflow when ``p`` between sharp modes
    is below 1e-308. The sup is searched on a dense grid spanning every component +-38 sds, then
    refined by bounded Brent. For a normal mixture, ``T_OT'(z)`` tends to the largest component
    sd as ``|z| -> inf``. If that limit is the sup and is not attained, it is returned with
    ``z = inf``. A Gaussian ``N(m, v)`` gives exactly ``sqrt(v)`` (every z attains it; z near 0
    is returned). Elsewhere the relative accuracy is ~1e-13. A heavy Student-t tail (PFGM++
    kernel, any finite D) makes ``T_OT'`` unbounded: ``(inf, inf)``.
    """
    if not isinstance(marginal, Marginal1D):
        raise ValueError(f"marginal must be a Marginal1D (from marginal_1d), got {type(marginal).__name__}")
    log = check_bool("log", log)
    if not math.isinf(marginal.D):
        return math.inf, math.inf

    def log_ratio(x):
        x = np.atleast_1d(np.asarray(x, dtype=np.float64))
        lc, ls = marginal.logcdf(x), marginal.logsf(x)
        z = np.where(lc <= ls, special.ndtri_exp(np.minimum(lc, 0.0)), -special.ndtri_exp(np.minimum(ls, 0.0)))
        return -0.5 * z * z - _LOG_SQRT_2PI - marginal.logpdf(x), z

    x = np.linspace(np.min(marginal.loc - 38 * marginal.sd), np.max(marginal.loc + 38 * marginal.sd), _LIP_GRID)
    values, zs = log_ratio(x)
    # among the grid maxima equal up to rounding (all of them for a Gaussian), the one nearest z = 0
    top = values >= np.max(values) - 1e-12 * max(1.0, abs(np.max(values)))
    i = int(np.argmin(np.where(top, np.abs(zs), np.inf)))
    best, z_best = float(values[i]), float(zs[i])
    if 0 < i < x.size - 1:
        res = optimize.minimize_scalar(lambda v: -log_ratio(v)[0][0], bounds=(x[i - 1], x[i + 1]), method="bounded",
                                       options={"xatol": 1e-13 * max(1.0, abs(x[i]))})
        if -res.fun > best:
            best, z_best = float(-res.fun), float(log_ratio(res.x)[1][0])
    tail = float(np.log(np.max(marginal.sd)))
    if tail > best + 1e-12 * max(1.0, abs(tail)):  # the sup is the limit |z| -> inf, not attained
        best, z_best = tail, math.inf
    elif tail > best - 1e-12 * max(1.0, abs(tail)):  # equal up to the rounding of log_ndtr far out
        best = tail
    return (best if log else math.exp(best) if best < 709.78 else math.inf), z_best
