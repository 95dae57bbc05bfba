"""Time grids for fixed-step solvers, from the prior end ``t_max`` to the data end ``t_min``.

Every grid is defined in the quantity its paper uses and mapped to the process's time by
``process.t_of_sigma``, so each works for every canonical process:

* ``uniform``   -- uniform in t (Song et al. 2021).
* ``log_sigma`` -- uniform in ``log sigma``. In the canonical form the signal-to-noise
  ratio is ``s^2 / (s sigma)^2 = sigma^-2``, so this is also uniform in logSNR, i.e. in
  DPM-Solver's ``lambda = -log sigma`` (Lu et al. 2022); ``logsnr`` is the same grid.
* ``karras``    -- ``sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``,
  rho = 7 by default (Karras et al. 2022, eq. 5).
* ``quadratic`` -- quadratic in t, dense near the data: ``t_i = t_min + (t_max - t_min) (1 - i/(N-1))^2``
  (the "quad" spacing of DDIM, Song et al. 2021a).
* ``kl_optimal`` -- ``sigma_i = tan((1 - i/N) atan(sigma_max) + (i/N) atan(sigma_min))``, the
  closed-form KL-optimal schedule of Align Your Steps (Sabour et al. 2024, derived for
  unit-variance Gaussian data); ComfyUI's and A1111's ``kl_optimal_scheduler``.
* ``dmn``       -- DMN (Xue et al. 2024, "Accelerating Diffusion Sampling with Optimized Time Steps",
  CVPR, eq. 14 and Sec. 4.2; scxue/DM-NonUniform ``step_optim.py``): the lambda = -log sigma step
  locations minimising the data-free error bound of a third-order data-prediction multistep
  exponential integrator (:func:`dmn_objective`), from the uniform-lambda grid, by scipy's
  trust-constr under the ordering constraints, with the published defaults.
* ``explicit``  -- the times you pass (``ts=``), checked to be inside the span and monotone.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch

from ._validation import check_int, check_real, check_time_range, unknown_choice
from .processes.base import Process, require_canonical

#: Most steps a grid may have (10 million: far beyond any sampler, and a bound so that
#: ``nfe=1e30`` is a clear error rather than an OverflowError or an exhausted memory).
MAX_STEPS = 10**7
#: Largest Karras rho. As rho -> inf the Karras grid tends to the log_sigma grid; beyond 1e6
#: the float64 formula loses more than 1e-10 of relative precision (1e-6 at rho = 1e10, and
#: repeated times at 1e16), so use grid="log_sigma" for that limit.
MAX_RHO = 1e6


def _sigma_grid_to_t(process, sigma: torch.Tensor) -> torch.Tensor:
    t = process.t_of_sigma(sigma)
    t[0], t[-1] = process.t_max, process.t_min  # exact endpoints, not round-tripped ones
    return t


def _uniform(process, n_points):
    return torch.linspace(process.t_max, process.t_min, n_points, dtype=torch.float64)


def _log_sigma(process, n_points):
    require_canonical(process, "the log_sigma grid")
    log_sig = torch.linspace(math.log(process.sigma_max), math.log(process.sigma_min), n_points, dtype=torch.float64)
    return _sigma_grid_to_t(process, torch.exp(log_sig))


def _karras(process, n_points, rho: float = 7.0):
    require_canonical(process, "the karras grid")
    rho = check_real("rho", rho, 0.0, MAX_RHO, strict_min=True)
    ramp = torch.linspace(0.0, 1.0, n_points, dtype=torch.float64)
    lo, hi = process.sigma_min ** (1.0 / rho), process.sigma_max ** (1.0 / rho)
    return _sigma_grid_to_t(process, (hi + ramp * (lo - hi)) ** rho)


def _kl_optimal(process, n_points):
    require_canonical(process, "the kl_optimal grid")
    ramp = torch.linspace(0.0, 1.0, n_points, dtype=torch.float64)
    hi, lo = math.atan(process.sigma_max), math.atan(process.sigma_min)
    return _sigma_grid_to_t(process, torch.tan((1.0 - ramp) * hi + ramp * lo))


def _quadratic(process, n_points):
    ramp = torch.linspace(1.0, 0.0, n_points, dtype=torch.float64)
    t = process.t_min + (process.t_max - process.t_min) * ramp**2
    t[0] = process.t_max  # t_min + (t_max - t_min) can round away from t_max
    return t


# -- DMN ----------------------------------------------------------------------------------------
#: The published code's ``truncNum``: the first steps' bound terms are combined in quadrature
#: (``sqrt`` of the sum of squares) instead of accumulated with signs (its comment suggests 0 for
#: NFE > 7, but the code as published uses 3 for every NFE, and so do we).
DMN_TRUNCATION = 3


def _phi(h: float, k: int) -> float:
    """``H_k(h)`` of step_optim.py: ``H_0 = e^h - 1``, ``H_k = e^h h^k - k H_{k-1}``, evaluated as
    published (numpy's ``exp``, ``exp(h) - 1`` rather than ``expm1``, ``h * h``): the bound is not
    smooth, and trust-constr reaches the published grid only if the values agree to the last bit."""
    if k == 0:
        return np.exp(h) - 1
    if k == 1:
        return np.exp(h) * h - _phi(h, 0)
    return np.exp(h) * h * h - 2 * _phi(h, 1)


def dmn_objective(lambdas) -> float:
    """DMN's error bound (Xue et al. 2024, eq. 14) of the grid ``lambdas`` (half-logSNR
    ``lambda = -log sigma``, increasing, both ends included) for the data-prediction multistep
    exponential integrator of order ``min(step + 1, 3)`` (the second and the last-but-one step
    of order 2, the first and the last of order 1).

    With ``h_n = lambda_{n+1} - lambda_n`` and the data-prediction error weights
    ``w_n = sigma_vp(lambda_n)^2 / alpha(lambda_n)`` (``alpha = 1/sqrt(1 + e^{-2 lambda})``,
    ``sigma_vp = 1/sqrt(1 + e^{2 lambda})``), each step contributes its Lagrange-integrated
    coefficients ``J`` (``e^{lambda} H_k(h)`` combinations) times ``w`` of the points it uses:
    the first and last steps ``|e^{lambda_{n+1}} - e^{lambda_n}| w_n``; steps before
    ``DMN_TRUNCATION`` the root-sum-square of their terms; later steps' terms are accumulated per
    grid point and enter as ``sum |c_n|``."""
    lam = np.asarray(lambdas, dtype=np.float64)
    n_steps = lam.size - 1
    h = np.diff(lam)
    e = np.exp(lam)
    alpha = 1.0 / np.sqrt(1.0 + np.exp(-2.0 * lam))
    sigma = 1.0 / np.sqrt(1.0 + np.exp(2.0 * lam))
    weight = sigma**2 / alpha
    total, accumulated = 0.0, np.zeros(n_steps)
    for step in range(n_steps):
        if step in (0, n_steps - 1):
            total += abs((e[step + 1] - e[step]) * weight[step])
            continue
        if step in (1, n_steps - 2):
            n, hn, hx = step - 1, h[step - 1], h[step]
            terms = [-e[n + 1] * _phi(hx, 1) / hn, e[n + 1] * (_phi(hx, 1) + hn * _phi(hx, 0)) / hn]
        else:
            n = step - 2
            h0, h1, h2 = h[n], h[n + 1], h[n + 2]
            p2, p1, p0 = _phi(h2, 2), _phi(h2, 1), _phi(h2, 0)
            terms = [e[n + 2] * (p2 + h1 * p1) / (h0 * (h0 + h1)),
                     -e[n + 2] * (p2 + (h0 + h1) * p1) / (h0 * h1),
                     e[n + 2] * (p2 + (2 * h1 + h0) * p1 + h1 * (h0 + h1) * p0) / (h1 * (h0 + h1))]
        weighted = [weight[n + i] * term for i, term in enumerate(terms)]
        if step >= DMN_TRUNCATION:
            for i, value in enumerate(weighted):
                accumulated[n + i] += value
        else:
            total += math.sqrt(sum(value**2 for value in weighted))
    return total + float(np.abs(accumulated).sum())


@functools.lru_cache(maxsize=64)
def _dmn_lambdas(lambda_max_noise: float, lambda_min_noise: float, n_steps: int) -> tuple:
    """DMN's optimised lambdas from ``lambda_max_noise`` (at sigma_max) to ``lambda_min_noise``."""
    from scipy.optimize import LinearConstraint, minimize

    # The published start is torch.linspace in torch's default float32, handed to scipy as a float32
    # array: scipy then sizes its finite-difference steps by float32's epsilon (sqrt(eps) ~ 3e-4, not
    # 1.5e-8). Kept, because the bound is not smooth (|.| terms), trust-constr's result depends on
    # these steps, and with them it finds the lower bound (11.89 against 12.91 at 10 steps on DDPM's
    # linear VP); the grid then matches the published one.
    initial = torch.linspace(lambda_max_noise, lambda_min_noise, n_steps + 1, dtype=torch.float32).numpy()
    if n_steps < 2:
        return tuple(initial)
    # x_0 >= lambda_T, x_i - x_{i-1} >= 0, -x_last >= -lambda_eps (as step_optim.py writes them)
    constraint_matrix = np.zeros((n_steps, n_steps - 1))
    for i in range(n_steps - 1):
        constraint_matrix[i, i], constraint_matrix[i + 1, i] = 1.0, -1.0
    lower = np.zeros(n_steps)
    lower[0], lower[-1] = lambda_max_noise, -lambda_min_noise
    constraint = LinearConstraint(constraint_matrix, lower, np.full(n_steps, np.inf))

    def objective(inner):
        return dmn_objective(np.concatenate(([lambda_max_noise], inner, [lambda_min_noise])))

    with warnings.catch_warnings():  # "delta_grad == 0.0": the bound is piecewise smooth, as published
        warnings.simplefilter("ignore", UserWarning)
        result = minimize(objective, initial[1:-1], method="trust-constr", constraints=[constraint])
    inner = np.sort(np.clip(result.x.astype(np.float64), lambda_max_noise, lambda_min_noise))
    return (lambda_max_noise, *map(float, inner), lambda_min_noise)


def _dmn(process, n_points):
    require_canonical(process, "the dmn grid")
    lambdas = _dmn_lambdas(-math.log(process.sigma_max), -math.log(process.sigma_min), n_points - 1)
    return _sigma_grid_to_t(process, torch.exp(-torch.tensor(lambdas, dtype=torch.float64)))


_GRIDS = {  # name: (function, description, the options it takes)
    "uniform": (_uniform, "uniform in t", ()),
    "log_sigma": (_log_sigma, "uniform in log sigma (= uniform in logSNR and in lambda = -log sigma)", ()),
    "logsnr": (_log_sigma, "uniform in logSNR = -2 log sigma (same grid as log_sigma)", ()),
    "karras": (_karras, f"Karras et al. 2022 rho-schedule in sigma (rho=7, 0 < rho <= {MAX_RHO:g})", ("rho",)),
    "quadratic": (_quadratic, "quadratic in t, dense near the data", ()),
    "kl_optimal": (_kl_optimal, "Align Your Steps' KL-optimal closed form: tan of a ramp from atan(sigma_max) to "
                                "atan(sigma_min)", ()),
    "dmn": (_dmn, "DMN (Xue et al. 2024): lambda steps minimising the data-free error bound of a 3rd-order "
                  "multistep exponential integrator", ()),
    "explicit": (None, "the times given by ts=", ("ts",)),
}


def available_grids() -> dict[str, str]:
    """Grid names accepted by ``grid=`` and what each is."""
    return {name: desc for name, (_, desc, _) in _GRIDS.items()}


def _check_options(grid: str, options: dict) -> None:
    """Refuse options the grid does not use, saying which grid takes each."""
    takes = _GRIDS[grid][2]
    for key in options:
        if key in takes:
            continue
        users = [name for name, (_, _, opts) in _GRIDS.items() if key in opts]
        if users:
            where = " or ".join(f"grid={u!r}" for u in users)
            raise ValueError(f"{key}= is not used by grid={grid!r}; only {where} takes it")
        accepted = f"its options are {list(takes)}" if takes else "it takes no options"
        raise ValueError(f"unknown option {key}= for grid={grid!r}: {accepted}")


def check_times(ts, t_min: float | None = None, t_max: float | None = None, name: str = "ts") -> torch.Tensor:
    """``ts`` as a 1-D, strictly monotone float64 CPU tensor of at least 2 finite times; with a span,
    inside ``[t_min, t_max]`` (up to a slack sized by the given times' dtype) and clamped onto it,
    so that nothing is ever evaluated outside the span."""
    try:  # a tensor or array keeps its dtype for the range check's rounding slack; a list is float64
        t = (ts.detach() if isinstance(ts, torch.Tensor) else
             torch.as_tensor(ts) if isinstance(ts, np.ndarray) else torch.as_tensor(ts, dtype=torch.float64))
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a 1-D sequence of real times, got {ts!r}") from None
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one time per grid point), got shape {tuple(t.shape)}")
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold real times, got dtype {t.dtype}")
    if t.numel() < 2:
        raise ValueError(f"{name} must hold at least 2 times, got {t.numel()}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite")
    if t_min is not None and t_max is not None:
        check_time_range(name, t, t_min, t_max)
    t = t.to(device="cpu", dtype=torch.float64)
    if t_min is not None and t_max is not None:
        t = t.clamp(t_min, t_max)  # within the slack: onto the span
    d = t[1:] - t[:-1]
    if not (bool((d < 0).all()) or bool((d > 0).all())):
        i = int(torch.nonzero(d == 0)[0]) if bool((d == 0).any()) else None
        repeated = f" ({name}[{i}] = {name}[{i + 1}] = {float(t[i])!r})" if i is not None else ""
        raise ValueError(f"{name} must be strictly monotone{repeated}")
    return t


def _explicit(process, ts) -> torch.Tensor:
    if ts is None:
        raise ValueError("grid='explicit' needs ts= (a 1-D sequence of times)")
    return check_times(ts, process.t_min, process.t_max)


def _check_not_collapsed(process, t: torch.Tensor, what: str) -> None:
    """Times, and the sigmas they map to, must be strictly monotone in float64."""
    d = t[1:] - t[:-1]
    sign = 1.0 if bool(d[0] > 0) else -1.0
    values, label = t, "t"
    bad = torch.nonzero(~(sign * d > 0))
    if not len(bad) and isinstance(process, Process):
        values, label = process._sigma(t), "sigma"
        bad = torch.nonzero(~(sign * (values[1:] - values[:-1]) > 0))
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"{what} collapses in float64: {label}[{i}] = {float(values[i])!r} and {label}[{i + 1}] = "
            f"{float(values[i + 1])!r} are not distinct (t in [{process.t_min!r}, {process.t_max!r}], sigma in "
            f"[{process.sigma_min!r}, {process.sigma_max!r}]): use fewer steps or a wider span"
            if isinstance(process, Process) else
            f"{what} collapses in float64: {label}[{i}] = {float(values[i])!r} repeats: use fewer steps"
        )


def make_grid(process, grid: str = "karras", steps: int | None = None, ts=None, **options) -> torch.Tensor:
    """``steps + 1`` float64 times from ``t_max`` down to ``t_min`` (or the explicit ``ts``).

    ``steps`` is an integer in ``[1, MAX_STEPS]``. Options: ``rho`` for the karras grid
    (``0 < rho <= MAX_RHO``); ``ts`` (a 1-D sequence of times) for the explicit grid and
    only for it. An option a grid does not use is refused, and so is a grid that collapses
    in float64 (two equal times, or two times with equal sigma), naming the grid, the step
    count and the first repeated value.
    """
    if not isinstance(grid, str) or grid not in _GRIDS:
        raise unknown_choice("grid", grid, list(_GRIDS))
    if grid == "explicit":
        _check_options(grid, options)
        if steps is not None:
            raise ValueError("steps is not used by grid='explicit': the grid is ts= (steps = len(ts) - 1)")
        t = _explicit(process, ts)
        _check_not_collapsed(process, t, "the explicit grid ts")
        return t
    if ts is not None:
        raise ValueError(f"ts= is not used by grid={grid!r}; only grid='explicit' takes it")
    _check_options(grid, options)
    if steps is None:
        raise ValueError(f"grid {grid!r} needs steps (an integer in [1, {MAX_STEPS}])")
    steps = check_int("steps", steps, 1, MAX_STEPS)
    t = _GRIDS[grid][0](process, steps + 1, **options)
    _check_not_collapsed(process, t, f"the {grid} grid with steps={steps}")
    return t
