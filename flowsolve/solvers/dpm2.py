"""k-diffusion's ``sample_dpm_2``: a midpoint step in sigma whose midpoint is the geometric mean.

On the Karras ODE ``dx̂/dsigma = d(x̂, sigma) = (x̂ - D(x̂; sigma))/sigma`` of ``x̂ = x/s``
(every canonical process, PFGM++ included), k-diffusion's ``sample_dpm_2`` ("a sampler inspired
by DPM-Solver-2 and Algorithm 2 from Karras et al. (2022)", crowsonkb/k-diffusion
``k_diffusion/sampling.py``; ``s_churn = 0``, its ODE setting) takes, 2 NFE per step,

    sigma_mid = sqrt(sigma_i sigma_{i+1})                                  (midpoint in log sigma)
    x̂_mid = x̂_i + (sigma_mid - sigma_i) d(x̂_i, sigma_i)
    x̂_{i+1} = x̂_i + (sigma_{i+1} - sigma_i) d(x̂_mid, sigma_mid).

This is the explicit midpoint rule in sigma with its stage at ``c = 1/(1 + sqrt(r))``,
``r = sigma_{i+1}/sigma_i``, instead of 1/2; ``c - 1/2 = O(sigma_{i+1} - sigma_i)``, so the
local error stays ``O(h^3)`` and the method is second order. (DPM-Solver-2 takes the same
midpoint in lambda but integrates the linear part exactly: ``dpm_solver_2``.)

k-diffusion's sigmas end with 0, where it takes an Euler step ``x̂ + (0 - sigma) d = D(x̂; sigma)``.
flowsolve's grids end at ``sigma_min``: every step here is a DPM-2 step, and
``fs.sample(..., denoise_final=True)`` adds that same final ``D(x; sigma_min)`` (1 more NFE),
which reproduces k-diffusion's loop on ``sigmas + [0]`` exactly.
"""

from __future__ import annotations

import torch

from .fixed import SigmaGrid, run_fixed_grid
from .registry import register_solver


def dpm_2(term, x, ts, *, save=None):
    """k-diffusion's ``sample_dpm_2`` (ODE form, ``s_churn = 0``): midpoint in sigma with the stage at
    the geometric mean ``sigma_mid = sqrt(sigma_i sigma_{i+1})``, 2 NFE per step, on
    ``d = (x̂ - D(x̂; sigma))/sigma``, ``x̂ = x/s``:

        x̂_mid = x̂_i + (sigma_mid - sigma_i) d(x̂_i, sigma_i),   x̂_{i+1} = x̂_i + (sigma_{i+1} - sigma_i) d(x̂_mid, sigma_mid).

    Order 2. Every step (the last included) is a DPM-2 step to the grid's ``sigma_min``; k-diffusion's
    final Euler step to sigma = 0 is ``denoise_final=True``. No options."""
    grid = SigmaGrid(term, ts)
    p = term.process
    sigma = torch.tensor(grid.sigma, dtype=torch.float64)
    sigma_mid = (sigma[:-1] * sigma[1:]).sqrt()
    # the stage times, once per grid (a closed form or the process's vectorised bisection)
    t_mid = p._t_of_sigma(sigma_mid).clamp(p.t_min, p.t_max)
    s_mid = p._scale(t_mid).tolist()
    t_mid, sigma_mid = t_mid.tolist(), sigma_mid.tolist()

    def step(i, x, t0, t1):
        sig0, sig1, sig_m = grid.sigma[i], grid.sigma[i + 1], sigma_mid[i]
        x_hat = x / grid.s[i]
        d = (x_hat - term.denoiser(x, t0)) / sig0
        x_mid = x_hat + (sig_m - sig0) * d
        d_mid = (x_mid - term.denoiser(s_mid[i] * x_mid, t_mid[i])) / sig_m
        return grid.s[i + 1] * (x_hat + (sig1 - sig0) * d_mid)

    return run_fixed_grid(term, x, ts, step, save)


SOLVERS = {"dpm_2": dpm_2}
register_solver("dpm_2", dpm_2, kind="ode", order=2, nfe_per_step=2, process_aware=True,
                description="k-diffusion's sample_dpm_2: midpoint in sigma with the stage at the geometric mean "
                            "sqrt(sigma_i sigma_{i+1})")
