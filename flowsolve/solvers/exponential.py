"""Exponential integrators in ``lambda = -log sigma``: DPM-Solver, DPM-Solver++ and UniPC.

In the canonical form ``x_t = s(t) (y + sigma(t) n)`` the quantities of DPM-Solver
(Lu et al. 2022) are

    alpha_t = s(t),   sigma^dpm_t = s(t) sigma(t),   lambda_t = log(alpha_t / sigma^dpm_t) = -log sigma(t),

and the probability-flow ODE has the semi-linear form (``x̂ = x / s``, ``D`` the denoiser)

    dx̂/dsigma = (x̂ - D(x̂; sigma)) / sigma,

whose linear part is solved exactly; only ``D`` (or ``eps = (x̂ - D)/sigma``) is approximated
by a polynomial in ``lambda``. Nothing here uses the Gaussian kernel: the PFGM++ ODE in
``sigma`` (``dx/dsigma = (x - D)/sigma``, s = 1) has the same form, so every solver applies
to PFGM++ unchanged.

Solvers (all fixed-step on a grid ``ts``; ``h = lambda_{i+1} - lambda_i``; ``phi_k`` are the
exponential-integrator functions ``phi_k(z) = sum_j z^j / (j + k)!``, evaluated by series
for small ``|z|``):

* ``dpm_solver_1/2/3`` -- single-step DPM-Solver in *noise-prediction* form (Lu et al. 2022,
  Algs. 1-2 / eqs. 3.7-3.9, the ``dpmsolver`` variant), 1/2/3 NFE per step, with
  intermediate points at ``lambda_i + r h`` (r1 = 1/2; r1 = 1/3, r2 = 2/3).
* ``dpmpp_2m``/``dpmpp_3m`` -- multistep DPM-Solver++ in *data-prediction* form (Lu et al.
  2022b), 1 NFE per step; the first steps warm up with lower orders and, for fewer than 10
  steps, the last steps drop to lower orders (the reference code's ``lower_order_final``).
  3M integrates the quadratic interpolant of ``D`` exactly: its second-difference term has
  twice the coefficient of the reference codes (LuChengTHU/dpm-solver, diffusers, k-diffusion),
  whose version is only second order (see docs/solvers_exponential.md).
* ``unipc`` -- UniPC (Zhao et al. 2023) with ``B(h) = e^h - 1`` (``bh2``), data
  prediction, predictor UniP-2 and corrector UniC, 1 NFE per step: the evaluation at the
  predicted point serves the corrector and the next predictor; no corrector after the last step.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .base import Solution, register_solver, run_fixed_grid

# Multistep solvers use lower orders at the end only for fewer steps than this (as in the
# reference DPM-Solver code, ``lower_order_final and steps < 10``).
LOWER_ORDER_FINAL_BELOW = 10

_PHI_SERIES_BELOW = 0.5
_PHI_SERIES_TERMS = 30


def phi(k: int, z: float) -> float:
    """``phi_k(z) = sum_{j>=0} z^j / (j+k)!`` (``phi_0 = e^z``, ``phi_{k+1}(z) = (phi_k(z) - 1/k!)/z``).

    Series for ``|z| < 0.5`` (the recursion cancels catastrophically there), recursion otherwise.
    """
    z = float(z)
    if abs(z) < _PHI_SERIES_BELOW:
        term, total = 1.0 / math.factorial(k), 0.0
        for j in range(_PHI_SERIES_TERMS):
            total += term
            term *= z / (j + k + 1)
        return total
    val = math.exp(z)
    for j in range(k):
        val = (val - 1.0 / math.factorial(j)) / z
    return val


# -- shared plumbing ----------------------------------------------------------------------

class _Run:
    """State of one fixed-step run: the grid in (s, sigma, lambda), NFE counts, saving,
    finiteness checks and the final :class:`Solution` (laid out as ``rk_fixed``'s)."""

    def __init__(self, solver: str, flow, x: torch.Tensor, ts, save_at):
        field = getattr(flow, "field", None)
        process = getattr(flow, "process", None)
        if field is None or process is None:
            raise ValueError(
                f"solver {solver!r} is an exponential integrator: it needs a flow made by fs.probability_flow "
                "from a canonical process (VE, VP, SubVP, EDM, PFGMPP, Poisson, Diffusion, LinearSDE) and a "
                "field; this flow has no field (a general SDE or plain ODE has no scale/sigma to work with)")
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point():
            raise ValueError("x must be a floating-point tensor of shape (n, dim)")
        ts = torch.as_tensor(ts, dtype=torch.float64).detach().cpu().reshape(-1)
        if ts.numel() < 2:
            raise ValueError(f"ts must hold at least 2 times, got {ts.numel()}")
        self.solver, self.field, self.process, self.ts = solver, field, process, ts
        self.t = ts.tolist()
        self.s = process.scale(ts).tolist()
        self.sigma = process.sigma(ts).tolist()
        self.lam = [-math.log(v) for v in self.sigma]
        self.n_steps = len(self.t) - 1
        self.nfe = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        self.x, self.save_at, self.orders = x, save_at, None

    # field evaluations, counted per sample
    def denoise(self, x, t: float) -> torch.Tensor:
        self.nfe += 1
        return self.field.denoiser(x, t)

    def eps(self, x, t: float) -> torch.Tensor:
        self.nfe += 1
        return self.field.eps(x, t)

    def inner_point(self, i: int, r: float):
        """Time, scale and sigma at ``lambda_i + r h`` inside step i (``sigma = sigma_i^(1-r) sigma_{i+1}^r``)."""
        h = self.lam[i + 1] - self.lam[i]
        sig = self.sigma[i] * math.exp(-r * h)
        t = float(self.process.t_of_sigma(torch.tensor(sig, dtype=torch.float64)))
        return t, float(self.process.scale(t)), sig

    def linear_terms(self, i: int):
        """``s_{i+1}``, ``sigma^dpm_{i+1} / sigma^dpm_i`` and ``h = lambda_{i+1} - lambda_i`` of step i."""
        ratio = (self.s[i + 1] * self.sigma[i + 1]) / (self.s[i] * self.sigma[i])
        return self.s[i + 1], ratio, self.lam[i + 1] - self.lam[i]

    def run(self, step) -> Solution:
        """The shared fixed-grid loop (finiteness checks, saving, the Solution) over ``step``."""
        return run_fixed_grid(self.x, self.ts, self.save_at, self.nfe, lambda i, x, t0, t1: step(i, x),
                              extras={"orders": self.orders})


def _multistep_order(i: int, n_steps: int, order: int, lower_order_final: bool) -> int:
    """Order of step i (0-based) of an ``order``-step method: warm-up ``min(order, i+1)``; with
    ``lower_order_final`` and fewer than 10 steps also ``<= n_steps - i`` (last step order 1)."""
    k = min(order, i + 1)
    if lower_order_final and n_steps < LOWER_ORDER_FINAL_BELOW:
        k = min(k, n_steps - i)
    return k


# -- single-step DPM-Solver (noise prediction) ---------------------------------------------

def _dpm_solver(order: int, flow, x, ts, save_at):
    run = _Run(f"dpm_solver_{order}", flow, x, ts, save_at)
    r1, r2 = (0.5, None) if order == 2 else (1.0 / 3.0, 2.0 / 3.0)
    run.orders = [order] * run.n_steps

    def step(i, x):
        t_s = run.t[i]
        s_s, s_t = run.s[i], run.s[i + 1]
        sd_t = s_t * run.sigma[i + 1]  # sigma^dpm_t
        h = run.lam[i + 1] - run.lam[i]
        e_s = run.eps(x, t_s)
        base = (s_t / s_s) * x
        c1 = sd_t * h * phi(1, h)  # sigma^dpm_t (e^h - 1)
        if order == 1:
            x_new = base - c1 * e_s
        else:
            t1, s1, sig1 = run.inner_point(i, r1)
            x1 = (s1 / s_s) * x - (s1 * sig1 * r1 * h * phi(1, r1 * h)) * e_s
            e_1 = run.eps(x1, t1)
            if order == 2:
                x_new = base - c1 * e_s - (0.5 / r1) * c1 * (e_1 - e_s)
            else:
                t2, s2, sig2 = run.inner_point(i, r2)
                sd2 = s2 * sig2
                x2 = ((s2 / s_s) * x - (sd2 * r2 * h * phi(1, r2 * h)) * e_s
                      - (r2 / r1) * (sd2 * r2 * h * phi(2, r2 * h)) * (e_1 - e_s))
                e_2 = run.eps(x2, t2)
                x_new = base - c1 * e_s - (1.0 / r2) * (sd_t * h * phi(2, h)) * (e_2 - e_s)
        return x_new

    return run.run(step)


def dpm_solver_1(flow, x, ts, *, save_at=None):
    """DPM-Solver-1 (= DDIM): ``x_t = (alpha_t/alpha_s) x_s - sigma^dpm_t (e^h - 1) eps(x_s, s)``."""
    return _dpm_solver(1, flow, x, ts, save_at)


def dpm_solver_2(flow, x, ts, *, save_at=None):
    """Single-step DPM-Solver-2 (noise prediction, r1 = 1/2), 2 NFE per step."""
    return _dpm_solver(2, flow, x, ts, save_at)


def dpm_solver_3(flow, x, ts, *, save_at=None):
    """Single-step DPM-Solver-3 (noise prediction, r1 = 1/3, r2 = 2/3), 3 NFE per step."""
    return _dpm_solver(3, flow, x, ts, save_at)


# -- multistep DPM-Solver++ (data prediction) ----------------------------------------------

def _dpmpp_multistep(order: int, flow, x, ts, save_at, lower_order_final: bool):
    run = _Run(f"dpmpp_{order}m", flow, x, ts, save_at)
    run.orders = [_multistep_order(i, run.n_steps, order, lower_order_final) for i in range(run.n_steps)]
    hist_lam, hist_m = [], []  # most recent last

    def step(i, x):
        # one evaluation per step, at its start (none at the final time)
        hist_lam.append(run.lam[i])
        hist_m.append(run.denoise(x, run.t[i]))
        del hist_lam[:-order], hist_m[:-order]
        k = run.orders[i]
        s_t, sd_ratio, h = run.linear_terms(i)
        p1 = -h * phi(1, -h)  # e^{-h} - 1
        m0 = hist_m[-1]
        x_new = sd_ratio * x - (s_t * p1) * m0
        if k >= 2:
            r0 = (hist_lam[-1] - hist_lam[-2]) / h
            d1_0 = (m0 - hist_m[-2]) / r0
            if k == 2:
                x_new = x_new - (0.5 * s_t * p1) * d1_0
            else:
                r1 = (hist_lam[-2] - hist_lam[-3]) / h
                d1_1 = (hist_m[-2] - hist_m[-3]) / r1
                d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                p2 = h * phi(2, -h)  # (e^{-h} - 1)/h + 1
                p3 = -h * phi(3, -h)  # p2/h - 1/2
                # d2 = h^2 f[l0, l1, l2] = h^2 D''/2, so the quadratic term carries 2 p3 (the
                # reference codes use p3, which leaves an O(h^3) local error: order 2)
                x_new = x_new + (s_t * p2) * d1 - (2.0 * s_t * p3) * d2
        return x_new

    return run.run(step)


def dpmpp_2m(flow, x, ts, *, save_at=None, lower_order_final: bool = True):
    """DPM-Solver++(2M): ``x_t = (sigma^dpm_t/sigma^dpm_s) x - alpha_t (e^{-h}-1) (D_0 + D1/2)``,
    ``D1 = (D_0 - D_{-1}) / r``, ``r = h_{-1}/h``; first step DPM-Solver++(1)."""
    return _dpmpp_multistep(2, flow, x, ts, save_at, lower_order_final)


def dpmpp_3m(flow, x, ts, *, save_at=None, lower_order_final: bool = True):
    """DPM-Solver++(3M), data prediction, warm-up with (1), (2M); the ``D2`` term carries
    ``2 (h phi_3(-h))`` (exact for a quadratic ``D(lambda)``), not the reference codes' half of it."""
    return _dpmpp_multistep(3, flow, x, ts, save_at, lower_order_final)


# -- UniPC (bh2, data prediction) ----------------------------------------------------------

def _unipc_coefficients(k: int, hh: float, rks: list[float]):
    """UniPC-``bh2`` weights for a step of order ``k``: predictor ``rho_p`` (k-1 entries),
    corrector ``rho_c`` (k entries) and ``B(h) = e^hh - 1``. ``rks`` are the
    ``(lambda_{-j} - lambda_0)/h`` of the k-1 earlier points. The order conditions are
    ``sum_j rho_j r_j^(i-1) = i! hh phi_{i+1}(hh) / B(h)``, i = 1..k, with ``r = 1`` for the
    new point (Zhao et al. 2023, Alg. 2 / Thm. 3.1); as in the reference code the order-2
    predictor and the order-1 corrector use the simplified weight 1/2."""
    b_h = hh * phi(1, hh)
    b = np.array([math.factorial(i) * hh * phi(i + 1, hh) / b_h for i in range(1, k + 1)])
    nodes = np.array(list(rks) + [1.0])
    R = np.stack([nodes ** (i - 1) for i in range(1, k + 1)])
    if k == 1:
        rho_p, rho_c = np.zeros(0), np.array([0.5])
    else:
        rho_p = np.array([0.5]) if k == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
        rho_c = np.linalg.solve(R, b)
    return rho_p, rho_c, b_h


def _unipc(flow, x, ts, save_at, lower_order_final: bool, order: int = 2):
    run = _Run("unipc", flow, x, ts, save_at)
    run.orders = [_multistep_order(i, run.n_steps, order, lower_order_final) for i in range(run.n_steps)]
    hist_lam, hist_m = [], []
    m = [run.denoise(run.x, run.t[0])]  # the evaluation at the current point (boxed for the closure)

    def step(i, x):
        hist_lam.append(run.lam[i])
        hist_m.append(m[0])
        del hist_lam[:-order], hist_m[:-order]
        k = run.orders[i]
        s_t, sd_ratio, h = run.linear_terms(i)
        hh = -h  # data prediction
        m0 = hist_m[-1]
        rks = [(hist_lam[-1 - j] - hist_lam[-1]) / h for j in range(1, k)]
        d1s = [(hist_m[-1 - j] - m0) / r for j, r in zip(range(1, k), rks)]
        rho_p, rho_c, b_h = _unipc_coefficients(k, hh, rks)
        x_lin = sd_ratio * x - (s_t * hh * phi(1, hh)) * m0  # e^hh - 1 = hh phi_1(hh)
        x_new = x_lin
        for rho, d in zip(rho_p, d1s):
            x_new = x_new - (s_t * b_h * float(rho)) * d
        last = i + 1 == run.n_steps
        if not last:  # corrector UniC, with the evaluation the next step reuses
            m[0] = run.denoise(x_new, run.t[i + 1])
            corr = (float(rho_c[-1]) * (m[0] - m0))
            for rho, d in zip(rho_c[:-1], d1s):
                corr = corr + float(rho) * d
            x_new = x_lin - (s_t * b_h) * corr
        return x_new

    return run.run(step)


def unipc(flow, x, ts, *, save_at=None, lower_order_final: bool = True):
    """UniPC-bh2 (UniP-2 predictor + UniC corrector), data prediction, 1 NFE per step."""
    return _unipc(flow, x, ts, save_at, lower_order_final, order=2)


register_solver("dpm_solver_1", dpm_solver_1, kind="ode", order=1, nfe_per_step=1, process_aware=True,
                description="DPM-Solver-1 = DDIM, exact in the linear part (Lu et al. 2022; Song et al. 2021a)")
register_solver("dpm_solver_2", dpm_solver_2, kind="ode", order=2, nfe_per_step=2, process_aware=True,
                description="single-step DPM-Solver-2, noise prediction, r1=1/2 (Lu et al. 2022)")
register_solver("dpm_solver_3", dpm_solver_3, kind="ode", order=3, nfe_per_step=3, process_aware=True,
                description="single-step DPM-Solver-3, noise prediction, r1=1/3, r2=2/3 (Lu et al. 2022)")
register_solver("dpmpp_2m", dpmpp_2m, kind="ode", order=2, nfe_per_step=1, process_aware=True,
                description="multistep DPM-Solver++(2M), data prediction (Lu et al. 2022b)")
register_solver("dpmpp_3m", dpmpp_3m, kind="ode", order=3, nfe_per_step=1, process_aware=True,
                description="multistep DPM-Solver++(3M), data prediction (Lu et al. 2022b)")
register_solver("unipc", unipc, kind="ode", order=3, nfe_per_step=1, process_aware=True,
                description="UniPC-bh2: UniP-2 predictor + UniC corrector, data prediction (Zhao et al. 2023)")
