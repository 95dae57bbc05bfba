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
  steps (15 for ``dpmpp_3m``), the last steps drop to lower orders (``lower_order_final``).
  3M integrates the quadratic interpolant of ``D`` exactly: its second-difference term has
  twice the coefficient of the reference codes (LuChengTHU/dpm-solver, diffusers, k-diffusion),
  whose version (``variant="published"``) is only second order (see docs/solvers_exponential.md).
* ``unipc`` -- UniPC (Zhao et al. 2023) with ``B(h) = e^h - 1`` (``bh2``, or ``h`` with
  ``variant="bh1"``), data prediction, predictor UniP-2 (``order`` 1-3) and corrector UniC
  (``corrector=False`` for UniP alone), 1 NFE per step: the evaluation at the predicted point
  serves the corrector and the next predictor; no corrector after the last step.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._validation import check_bool, check_int
from .fixed import SigmaGrid, run_fixed_grid
from .registry import register_solver

# Multistep solvers use lower orders at the end only for fewer steps than this (as in the
# reference DPM-Solver code, ``lower_order_final and steps < 10``).
LOWER_ORDER_FINAL_BELOW = 10
# dpmpp_3m with the exact D2 weight does so below 15 steps (diffusers' rule). On a Karras grid the
# last two steps of a 10-14 step run are 1.3-2.1 long in lambda; there D - x/s decays like
# sigma^2 = e^{-2 lambda}, and the 3-point extrapolation of D over such a step amplifies the error
# the state carries in (sum of |weights| 4.9-6.2, against 1.8-2.0 for 2M): with the threshold 10
# the error jumped up from 9 to 10 steps (docs/solvers_exponential.md, "Lower-order final steps").
LOWER_ORDER_FINAL_BELOW_3M = 15

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


# Terms of phi_tensor's series kept on |z| < _PHI_SERIES_BELOW: the first one dropped is below 1e-17
# of the sum there for k <= 3 (0.5^13 3! / 16! = 3.5e-17).
_PHI_TENSOR_SERIES_TERMS = 13


def phi_tensor(k_max: int, z: torch.Tensor) -> list[torch.Tensor]:
    """``[phi_1(z), ..., phi_{k_max}(z)]`` elementwise for a float64 tensor ``z``, the tensor form of
    :func:`phi` (same split at ``|z| = 0.5``): the recursion
    ``phi_{k+1} = (phi_k - 1/k!)/z`` from ``phi_1 = expm1(z)/z`` for large ``|z|``, and for small
    ``|z|`` (where that recursion cancels) the series of ``phi_{k_max}`` by Horner, then the exact
    ``phi_k = 1/k! + z phi_{k+1}`` downwards. Only elementwise operations: a value never depends
    on the tensor's other entries."""
    small = z.abs() < _PHI_SERIES_BELOW
    zs = torch.where(small, z, 0.0)
    # series of phi_K: sum_j z^j / (j + K)!, by Horner: acc <- 1/(j+K)! + z acc
    acc = torch.full_like(zs, 1.0 / math.factorial(_PHI_TENSOR_SERIES_TERMS - 1 + k_max))
    for j in range(_PHI_TENSOR_SERIES_TERMS - 2, -1, -1):
        acc = torch.addcmul(_constant(1.0 / math.factorial(j + k_max), zs), zs, acc)
    series = [acc]
    for k in range(k_max - 1, 0, -1):
        series.insert(0, torch.addcmul(_constant(1.0 / math.factorial(k), zs), zs, series[0]))
    zl = torch.where(small, 1.0, z)
    large = [torch.expm1(zl) / zl]
    for k in range(1, k_max):
        large.append((large[-1] - 1.0 / math.factorial(k)) / zl)
    return [torch.where(small, s, v) for s, v in zip(series, large)]


_CONSTANTS: dict = {}


def _constant(value: float, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a 0-dim tensor of ``like``'s dtype and device, made once (a Horner step is then
    one ``addcmul``, with no ``full_like`` beside it)."""
    key = (value, like.dtype, like.device)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return _CONSTANTS[key]


class LambdaGrid(SigmaGrid):
    """A grid ``ts`` seen in ``(t, s, sigma, lambda = -log sigma)``, float64 Python floats."""

    def __init__(self, term, ts: torch.Tensor):
        super().__init__(term, ts)
        self.lam = [-math.log(v) for v in self.sigma]

    def linear_terms(self, i: int):
        """``s_{i+1}``, ``sigma^dpm_{i+1} / sigma^dpm_i`` and ``h = lambda_{i+1} - lambda_i`` of step i."""
        ratio = (self.s[i + 1] * self.sigma[i + 1]) / (self.s[i] * self.sigma[i])
        return self.s[i + 1], ratio, self.lam[i + 1] - self.lam[i]


def multistep_order(i: int, n_steps: int, order: int, lower_order_final: bool,
                    below: int = LOWER_ORDER_FINAL_BELOW) -> int:
    """Order of step i (0-based) of an ``order``-step method: warm-up ``min(order, i+1)``; with
    ``lower_order_final`` and fewer than ``below`` steps also ``<= n_steps - i`` (last step order 1)."""
    k = min(order, i + 1)
    if lower_order_final and n_steps < below:
        k = min(k, n_steps - i)
    return k


# -- single-step DPM-Solver (noise prediction) ---------------------------------------------

_DPM_NODES = {1: (), 2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}


def dpm_solver_step(order: int, term, x: torch.Tensor, t_s: float, t_t: float) -> torch.Tensor:
    """One DPM-Solver-``order`` step from ``s = t_s`` to ``t = t_t`` (Lu et al. 2022, eqs. 3.7-3.9 and
    Alg. 2), ``h = lambda_t - lambda_s``, ``alpha = s``, ``sigma^dpm = s sigma``, ``eps_s = eps(x, s)``:

        order 1:  x_t = (alpha_t/alpha_s) x - sigma_t (e^h - 1) eps_s
        order 2:  u = (alpha_1/alpha_s) x - sigma_1 (e^{r1 h} - 1) eps_s at lambda_s + r1 h;
                  x_t = (alpha_t/alpha_s) x - sigma_t (e^h - 1) eps_s - sigma_t (e^h - 1)/(2 r1) (eps(u) - eps_s)
        order 3:  u1 as above at r1 = 1/3; u2 at r2 = 2/3 with the phi_2 correction through eps(u1);
                  x_t = ... - (sigma_t h phi_2(h)) / r2 (eps(u2) - eps_s)
    """
    alpha_s, sig_s = term.schedule(t_s)
    alpha_t, sig_t = term.schedule(t_t)
    h = math.log(sig_s / sig_t)
    sd_t = alpha_t * sig_t
    eps_s = term.eps(x, t_s)
    x_t = (alpha_t / alpha_s) * x - (sd_t * h * phi(1, h)) * eps_s  # sigma_t (e^h - 1) = sigma_t h phi_1(h)
    if order == 1:
        return x_t

    def inner(r):  # time, alpha and sigma^dpm at lambda_s + r h
        sig_r = sig_s * math.exp(-r * h)
        t_r = term.t_of_sigma(sig_r)
        alpha_r = term.schedule(t_r)[0]
        return t_r, alpha_r, alpha_r * sig_r

    r1 = _DPM_NODES[order][0]
    t1, alpha_1, sd_1 = inner(r1)
    u1 = (alpha_1 / alpha_s) * x - (sd_1 * r1 * h * phi(1, r1 * h)) * eps_s
    eps_1 = term.eps(u1, t1)
    if order == 2:
        return x_t - (0.5 / r1) * (sd_t * h * phi(1, h)) * (eps_1 - eps_s)
    r2 = _DPM_NODES[3][1]
    t2, alpha_2, sd_2 = inner(r2)
    u2 = ((alpha_2 / alpha_s) * x - (sd_2 * r2 * h * phi(1, r2 * h)) * eps_s
          - (r2 / r1) * (sd_2 * r2 * h * phi(2, r2 * h)) * (eps_1 - eps_s))
    eps_2 = term.eps(u2, t2)
    return x_t - (1.0 / r2) * (sd_t * h * phi(2, h)) * (eps_2 - eps_s)


def _dpm_solver(order: int):
    def solver(term, x, ts, *, save=None):
        return run_fixed_grid(term, x, ts, lambda i, x, t0, t1: dpm_solver_step(order, term, x, t0, t1), save,
                              extras={"orders": [order] * (len(ts) - 1)})

    name = f"dpm_solver_{order}"
    solver.__name__ = solver.__qualname__ = name
    solver.__doc__ = (f"Single-step DPM-Solver-{order}, noise prediction (Lu et al. 2022), {order} NFE per step"
                      f"{' (= DDIM)' if order == 1 else ''}. No options.\n\n" + dpm_solver_step.__doc__)
    return solver


dpm_solver_1, dpm_solver_2, dpm_solver_3 = (_dpm_solver(k) for k in (1, 2, 3))


# -- multistep DPM-Solver++ (data prediction) ----------------------------------------------

def dpmpp_multistep(order: int, term, x, ts, save, lower_order_final: bool, variant: str = "exact"):
    """Multistep DPM-Solver++(``order``M), data prediction (Lu et al. 2022b, Alg. 2 and App. B),
    one evaluation per step at its start. With ``D_0, D_{-1}, D_{-2}`` the last denoised values
    at ``lambda_0, lambda_{-1}, lambda_{-2}``, ``h = lambda_{i+1} - lambda_i`` and
    ``r_j = (lambda_{-j} - lambda_{-j-1}) / h``:

        x_{i+1} = (sigma^dpm_{i+1}/sigma^dpm_i) x_i - alpha_{i+1} (e^{-h} - 1) D_0                   (1)
                  - alpha_{i+1} (e^{-h} - 1) D1_0 / 2                                                (2M)
                  + alpha_{i+1} h phi_2(-h) D1 - c alpha_{i+1} (-h phi_3(-h)) D2                     (3M)

    with ``D1_0 = (D_0 - D_{-1})/r_0``, ``D1_1 = (D_{-1} - D_{-2})/r_1``,
    ``D1 = D1_0 + r_0/(r_0+r_1) (D1_0 - D1_1)``, ``D2 = (D1_0 - D1_1)/(r_0+r_1)``; ``c = 2`` integrates
    the quadratic interpolant exactly (``variant="exact"``), ``c = 1`` is the reference codes'
    (``variant="published"``: LuChengTHU/dpm-solver, diffusers, k-diffusion), second order only.
    """
    grid = LambdaGrid(term, ts)
    below = LOWER_ORDER_FINAL_BELOW_3M if order == 3 and variant == "exact" else LOWER_ORDER_FINAL_BELOW
    orders = [multistep_order(i, grid.n_steps, order, lower_order_final, below) for i in range(grid.n_steps)]
    d2_weight = 2.0 if variant == "exact" else 1.0
    lam, denoised = [], []  # history, most recent last

    def step(i, x, t0, t1):
        lam.append(grid.lam[i])
        denoised.append(term.denoiser(x, t0))
        del lam[:-order], denoised[:-order]
        k = orders[i]
        alpha_t, sd_ratio, h = grid.linear_terms(i)
        e1 = -h * phi(1, -h)  # e^{-h} - 1
        d0 = denoised[-1]
        x_next = sd_ratio * x - (alpha_t * e1) * d0
        if k >= 2:
            r0 = (lam[-1] - lam[-2]) / h
            d1_0 = (d0 - denoised[-2]) / r0
            if k == 2:
                return x_next - (0.5 * alpha_t * e1) * d1_0
            r1 = (lam[-2] - lam[-3]) / h
            d1_1 = (denoised[-2] - denoised[-3]) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x_next = x_next + (alpha_t * h * phi(2, -h)) * d1 - (d2_weight * alpha_t * -h * phi(3, -h)) * d2
        return x_next

    return run_fixed_grid(term, x, ts, step, save, extras={"orders": orders})


def dpmpp_2m(term, x, ts, *, save=None, lower_order_final: bool = True):
    """DPM-Solver++(2M), data prediction (Lu et al. 2022b), 1 NFE per step:
    ``x_{i+1} = (sigma^dpm_{i+1}/sigma^dpm_i) x_i - alpha_{i+1} (e^{-h} - 1) (D_0 + (D_0 - D_{-1})/(2 r))``,
    ``r = h_{i-1}/h``; the first step is DPM-Solver++(1).

    Options: ``lower_order_final`` (default True): below 10 steps the last step is first order, as in
    the reference code."""
    return dpmpp_multistep(2, term, x, ts, save, check_bool("lower_order_final", lower_order_final))


def dpmpp_3m(term, x, ts, *, save=None, lower_order_final: bool = True, variant: str = "exact"):
    """DPM-Solver++(3M), data prediction, 1 NFE per step, warm-up with (1) and (2M).

    Options: ``variant="exact"`` (default) gives the second-difference term ``2 (-h phi_3(-h)) D2``,
    which integrates the quadratic interpolant of ``D`` exactly (order 3), and drops to lower
    orders on the last two steps below 15 steps (diffusers' rule: on few-step Karras grids the
    last steps are long in lambda, where extrapolating D amplifies the error); ``variant="published"``
    reproduces LuChengTHU/dpm-solver exactly (and diffusers where its rules agree), whose weight
    is half of it (order 2), with dpm-solver's lower-order final steps below 10 steps.
    ``lower_order_final`` (default True) switches the final lower orders on or off.
    """
    if variant not in ("exact", "published"):
        raise ValueError(f"variant must be 'exact' or 'published', got {variant!r}")
    return dpmpp_multistep(3, term, x, ts, save, check_bool("lower_order_final", lower_order_final), variant)


# -- UniPC (data prediction) ---------------------------------------------------------------

UNIPC_VARIANTS = ("bh2", "bh1")
UNIPC_MAX_ORDER = 3


def unipc_coefficients(k: int, hh: float, rks: list[float], variant: str = "bh2"):
    """UniPC weights for a step of order ``k``: predictor ``rho_p`` (k-1 entries), corrector ``rho_c``
    (k entries) and ``B(h)``: ``e^hh - 1`` (``bh2``) or ``hh`` (``bh1``). ``rks`` are the
    ``(lambda_{-j} - lambda_0)/h`` of the k-1 earlier points. The order conditions are
    ``sum_j rho_j r_j^(i-1) = i! hh phi_{i+1}(hh) / B(h)``, i = 1..k, with ``r = 1`` for the
    new point (Zhao et al. 2023, Alg. 2 / Thm. 3.1, eq. 9); as in the reference code
    (wl-zhao/UniPC ``multistep_uni_pc_bh_update``, diffusers) the order-2 predictor and the
    order-1 corrector use the simplified weight 1/2 whatever ``B(h)``."""
    b_h = hh * phi(1, hh) if variant == "bh2" else hh
    b = np.array([math.factorial(i) * hh * phi(i + 1, hh) / b_h for i in range(1, k + 1)])
    nodes = np.array(list(rks) + [1.0])
    R = np.stack([nodes ** (i - 1) for i in range(1, k + 1)])
    if k == 1:
        rho_p, rho_c = np.zeros(0), np.array([0.5])
    else:
        rho_p = np.array([0.5]) if k == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
        rho_c = np.linalg.solve(R, b)
    return rho_p, rho_c, b_h


def unipc(term, x, ts, *, save=None, lower_order_final: bool = True, order: int = 2, variant: str = "bh2",
          corrector: bool = True):
    """UniPC (Zhao et al. 2023): UniP-``order`` predictor + UniC corrector, data prediction, 1 NFE per
    step. Step i, with ``hh = -h``, ``B(h)`` = ``e^hh - 1`` (bh2) or ``hh`` (bh1) and
    ``D1_j = (D_{-j} - D_0)/r_j``:

        x_lin  = (sigma^dpm_{i+1}/sigma^dpm_i) x_i - alpha_{i+1} (e^hh - 1) D_0
        x_pred = x_lin - alpha_{i+1} B(h) sum_j rho_p_j D1_j                      (UniP, Alg. 2)
        D_new  = D(x_pred, t_{i+1})                                               (the step's evaluation)
        x_{i+1} = x_lin - alpha_{i+1} B(h) (sum_j rho_c_j D1_j + rho_c_k (D_new - D_0))   (UniC, Alg. 1)

    ``D_new`` is the next step's ``D_0``; no corrector after the last step. UniP-k is order k,
    UniP-k + UniC order k + 1 (Thm. 3.1). Options: ``order`` (predictor order, default 2, in
    1..3; the first steps warm up with the history they have), ``variant`` (``"bh2"`` default,
    or ``"bh1"``), ``corrector`` (default True; False is UniP alone), ``lower_order_final``
    (default True: below 10 steps the last steps drop to order ``steps - i``; ``"always"``: at
    every step count, the reference codes' rule (wl-zhao/UniPC, diffusers), which keeps the
    final steps low-order however many steps there are; False: never; see
    docs/solvers_exponential.md)."""
    always = lower_order_final == "always"
    if not always:
        try:
            lower_order_final = check_bool("lower_order_final", lower_order_final)
        except ValueError:
            raise ValueError(f"lower_order_final must be True, False or 'always', got {lower_order_final!r}") from None
    order = check_int("order", order, 1, UNIPC_MAX_ORDER)
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"variant must be one of {list(UNIPC_VARIANTS)}, got {variant!r}")
    corrector = check_bool("corrector", corrector)
    grid = LambdaGrid(term, ts)
    below = grid.n_steps + 1 if always else LOWER_ORDER_FINAL_BELOW
    orders = [multistep_order(i, grid.n_steps, order, bool(lower_order_final), below) for i in range(grid.n_steps)]
    lam, denoised = [], []
    current = {}  # D at the current point, from the previous step's evaluation at its end

    def step(i, x, t0, t1):
        if i == 0:
            current["D"] = term.denoiser(x, t0)
        lam.append(grid.lam[i])
        denoised.append(current["D"])
        del lam[:-order], denoised[:-order]
        k = orders[i]
        alpha_t, sd_ratio, h = grid.linear_terms(i)
        hh = -h  # data prediction
        d0 = denoised[-1]
        rks = [(lam[-1 - j] - lam[-1]) / h for j in range(1, k)]
        d1s = [(denoised[-1 - j] - d0) / r for j, r in zip(range(1, k), rks)]
        rho_p, rho_c, b_h = unipc_coefficients(k, hh, rks, variant)
        x_lin = sd_ratio * x - (alpha_t * hh * phi(1, hh)) * d0
        x_pred = x_lin
        for rho, d in zip(rho_p, d1s):
            x_pred = x_pred - (alpha_t * b_h * float(rho)) * d
        if i + 1 == grid.n_steps:
            return x_pred
        current["D"] = term.denoiser(x_pred, t1)
        if not corrector:
            return x_pred
        corr = float(rho_c[-1]) * (current["D"] - d0)
        for rho, d in zip(rho_c[:-1], d1s):
            corr = corr + float(rho) * d
        return x_lin - (alpha_t * b_h) * corr

    return run_fixed_grid(term, x, ts, step, save, extras={"orders": orders})


SOLVERS = {"dpm_solver_1": dpm_solver_1, "dpm_solver_2": dpm_solver_2, "dpm_solver_3": dpm_solver_3,
           "dpmpp_2m": dpmpp_2m, "dpmpp_3m": dpmpp_3m, "unipc": unipc}
for _k in (1, 2, 3):
    register_solver(f"dpm_solver_{_k}", SOLVERS[f"dpm_solver_{_k}"], kind="ode", order=_k, nfe_per_step=_k,
                    process_aware=True,
                    single_step=lambda term, x, t0, t1, _k=_k: dpm_solver_step(_k, term, x, t0, t1),
                    description={1: "DPM-Solver-1 = DDIM, exact in the linear part (Lu et al. 2022; Song et al. 2021a)",
                                 2: "single-step DPM-Solver-2, noise prediction, r1=1/2 (Lu et al. 2022)",
                                 3: "single-step DPM-Solver-3, noise prediction, r1=1/3, r2=2/3 (Lu et al. 2022)"}[_k])
register_solver("dpmpp_2m", dpmpp_2m, kind="ode", order=2, nfe_per_step=1, process_aware=True,
                description="multistep DPM-Solver++(2M), data prediction (Lu et al. 2022b)")
register_solver("dpmpp_3m", dpmpp_3m, kind="ode", order=3, nfe_per_step=1, process_aware=True,
                description="multistep DPM-Solver++(3M), data prediction (Lu et al. 2022b); variant='published' for "
                            "the reference codes' second-order weight")
register_solver("unipc", unipc, kind="ode", order=3, nfe_per_step=1, process_aware=True,
                description="UniPC-bh2: UniP-2 predictor + UniC corrector, data prediction (Zhao et al. 2023); "
                            "order 1-3, variant='bh1', corrector=False (UniP alone)")
