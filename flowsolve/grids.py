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
* ``explicit``  -- the times you pass (``ts=``), checked to be inside the span and monotone.
"""

from __future__ import annotations

import math

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


_GRIDS = {  # name: (function, description, the options it takes)
    "uniform": (_uniform, "uniform in t", ()),
    "log_sigma": (_log_sigma, "uniform in log sigma (= uniform in logSNR and in lambda = -log sigma)", ()),
    "logsnr": (_log_sigma, "uniform in logSNR = -2 log sigma (same grid as log_sigma)", ()),
    "karras": (_karras, f"Karras et al. 2022 rho-schedule in sigma (rho=7, 0 < rho <= {MAX_RHO:g})", ("rho",)),
    "quadratic": (_quadratic, "quadratic in t, dense near the data", ()),
    "kl_optimal": (_kl_optimal, "Align Your Steps' KL-optimal closed form: tan of a ramp from atan(sigma_max) to "
                                "atan(sigma_min)", ()),
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
