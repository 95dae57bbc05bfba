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
* ``explicit``  -- the times you pass (``ts=``), checked to be inside the span and monotone.
"""

from __future__ import annotations

import math

import torch

from ._validation import check_int, check_time_range
from .processes.sde import require_canonical


def _sigma_grid_to_t(process, sigma: torch.Tensor) -> torch.Tensor:
    t = process.t_of_sigma(sigma)
    t[0], t[-1] = process.t_max, process.t_min  # exact endpoints, not round-tripped ones
    return t


def _uniform(process, n_points, **_):
    return torch.linspace(process.t_max, process.t_min, n_points, dtype=torch.float64)


def _log_sigma(process, n_points, **_):
    require_canonical(process, "the log_sigma grid")
    log_sig = torch.linspace(math.log(process.sigma_max), math.log(process.sigma_min), n_points, dtype=torch.float64)
    return _sigma_grid_to_t(process, torch.exp(log_sig))


def _karras(process, n_points, rho: float = 7.0, **_):
    require_canonical(process, "the karras grid")
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be a finite number > 0, got {rho!r}")
    ramp = torch.linspace(0.0, 1.0, n_points, dtype=torch.float64)
    lo, hi = process.sigma_min ** (1.0 / rho), process.sigma_max ** (1.0 / rho)
    return _sigma_grid_to_t(process, (hi + ramp * (lo - hi)) ** rho)


def _quadratic(process, n_points, **_):
    ramp = torch.linspace(1.0, 0.0, n_points, dtype=torch.float64)
    return process.t_min + (process.t_max - process.t_min) * ramp**2


_GRIDS = {
    "uniform": (_uniform, "uniform in t"),
    "log_sigma": (_log_sigma, "uniform in log sigma (= uniform in logSNR and in lambda = -log sigma)"),
    "logsnr": (_log_sigma, "uniform in logSNR = -2 log sigma (same grid as log_sigma)"),
    "karras": (_karras, "Karras et al. 2022 rho-schedule in sigma (rho=7)"),
    "quadratic": (_quadratic, "quadratic in t, dense near the data"),
    "explicit": (None, "the times given by ts="),
}


def available_grids() -> dict[str, str]:
    """Grid names accepted by ``grid=`` and what each is."""
    return {name: desc for name, (_, desc) in _GRIDS.items()}


def make_grid(process, grid: str = "karras", steps: int | None = None, ts=None, **options) -> torch.Tensor:
    """``steps + 1`` float64 times from ``t_max`` down to ``t_min`` (or the explicit ``ts``).

    Options: ``rho`` for the karras grid.
    """
    if grid not in _GRIDS:
        raise ValueError(f"grid must be one of {sorted(_GRIDS)}, got {grid!r}")
    if grid == "explicit":
        if ts is None:
            raise ValueError("grid='explicit' needs ts= (a 1-D sequence of times)")
        t = torch.as_tensor(ts, dtype=torch.float64).detach().cpu().reshape(-1)
        if t.numel() < 2:
            raise ValueError(f"ts must hold at least 2 times, got {t.numel()}")
        check_time_range("ts", t, process.t_min, process.t_max)
        d = t[1:] - t[:-1]
        if not (bool((d < 0).all()) or bool((d > 0).all())):
            raise ValueError("ts must be strictly monotone")
        return t
    if steps is None:
        raise ValueError(f"grid {grid!r} needs steps (an integer >= 1)")
    fn, _ = _GRIDS[grid]
    return fn(process, check_int("steps", steps, 1) + 1, **options)
