"""Linear multistep (Adams-Bashforth) samplers in sigma: iPNDM, its variable-step form, LMS and DEIS.

In the canonical form ``x_t = s(t) (y + sigma(t) n)`` the probability-flow ODE of ``x̂ = x / s``
in ``sigma`` is, for every process (the PFGM++ kernel included),

    dx̂/dsigma = d(x̂, sigma) = (x̂ - D(x̂; sigma)) / sigma,

the "Karras ODE" of k-diffusion's samplers. The solvers here are explicit Adams-Bashforth methods
on it: one evaluation of ``D`` per step, at the step's start, and

    x̂_{i+1} = x̂_i + sum_{j=0}^{k-1} b_{i,j} d_{i-j},        d_m = d(x̂_m, sigma_m),

with ``k = min(order, i + 1)`` (the first steps warm up with the history they have). They
differ only in the weights ``b``:

* ``ipndm`` -- improved PNDM (Zhang & Chen 2023, the DEIS paper; the zju-pi/diff-sampler
  ``ipndm_sampler`` that ComfyUI ships as ``sample_ipndm``): the *fixed* equal-step AB weights
  times ``h_i = sigma_{i+1} - sigma_i``: ``1``; ``(3, -1)/2``; ``(23, -16, 5)/12``;
  ``(55, -59, 37, -9)/24``. Order 4 only where the steps in sigma are equal; on a grid whose
  steps vary (Karras, log-sigma, kl_optimal) the fixed weights are consistent to first order
  in the step ratio only, which caps the global order at 2 as N -> infinity (measured orders in
  docs/solvers.md).
* ``ipndm_v`` -- the variable-step iPNDM: Adams-Bashforth weights for unequal steps. By default
  (``variant="exact"``) the exact variable-step AB weights (the same as ``lms``'s); with
  ``variant="published"`` zju-pi/diff-sampler's ``ipndm_v_sampler`` (= ComfyUI's
  ``sample_ipndm_v``) reproduced exactly, whose order-3 and order-4 weights are not those of
  variable-step AB3/AB4: its order-4 weights do not even sum to 1 unless consecutive step
  ratios are equal, and at equal steps they are ``(57, -65, 43, -11)/24`` against AB4's
  ``(55, -59, 37, -9)/24``.
* ``lms`` -- k-diffusion's ``sample_lms``: the weights integrate the Lagrange basis through the
  last k sigmas over the step, ``b_{i,j} = int_{sigma_i}^{sigma_{i+1}} prod_{m != j}
  (tau - sigma_{i-m}) / (sigma_{i-j} - sigma_{i-m}) dtau``: the exact variable-step
  Adams-Bashforth method, order k on any smooth grid. k-diffusion integrates with
  ``scipy.integrate.quad(epsrel=1e-4)``; the integrand is a polynomial of degree k - 1, so here
  a k-point Gauss-Legendre rule integrates it exactly (the same numbers to rounding, with no
  tolerance to choose and no scipy call in the loop: ~10x faster than k-diffusion's quad).
* ``deis`` -- DEIS (Zhang & Chen 2023; qsh-zh/deis): ``d`` is the noise prediction ``eps`` and
  ``dx̂/dt = sigma'(t) eps``; ``b_{i,j} = int_{t_i}^{t_{i+1}} sigma'(tau) l_j(tau) dtau`` with the
  Lagrange basis in the process time t (``variant="tAB"``), in sigma (``"rhoAB"``: ``lms``'s
  weights) or in log sigma (``"logrho"``: diffusers' ``DEISMultistepScheduler``), computed once per
  grid by Gauss-Legendre quadrature (``deis_weights``).

The state is ``x = s x̂``: each step divides by ``s(t_i)`` and multiplies by ``s(t_{i+1})``, so
the solvers run on VE, VP, sub-VP, EDM, PFGM++ and custom canonical processes alike. The grid
ends at ``sigma_min`` (``t_min``). Given sigmas ending in 0, ComfyUI's ``sample_ipndm(_v)`` end with
``D(x; sigma_min)``, which is ``fs.sample(..., denoise_final=True)`` here; k-diffusion's
``sample_lms`` takes an Adams-Bashforth step to 0 instead.
"""

from __future__ import annotations

import numpy as np
import torch

from .._validation import check_int
from .fixed import SigmaGrid, run_fixed_grid
from .registry import register_solver

MAX_ORDER = 4

# Adams-Bashforth weights for equal steps (numerators, denominator), newest derivative first.
AB_WEIGHTS = {1: ((1,), 1), 2: ((3, -1), 2), 3: ((23, -16, 5), 12), 4: ((55, -59, 37, -9), 24)}


def ipndm_v_weights(sigma: list[float], i: int, k: int) -> list[float]:
    """Weights ``c_j`` (newest first; the step is ``x̂ + h_n sum_j c_j d_{i-j}``) of the variable-step
    iPNDM of order ``k`` at step ``i``, written as in zju-pi/diff-sampler ``ipndm_v_sampler``
    (diff-solvers-main/solvers.py; ComfyUI comfy/k_diffusion/sampling.py ``sample_ipndm_v``), with
    ``h_n = sigma_{i+1} - sigma_i`` and ``h_n_m = sigma_{i-m+1} - sigma_{i-m}``."""
    if k == 1:
        return [1.0]
    h_n = sigma[i + 1] - sigma[i]
    h_n_1 = sigma[i] - sigma[i - 1]
    if k == 2:
        return [(2 + h_n / h_n_1) / 2, -(h_n / h_n_1) / 2]
    h_n_2 = sigma[i - 1] - sigma[i - 2]
    temp1 = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
    if k == 3:
        return [(2 + h_n / h_n_1) / 2 + temp1,
                -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp1,
                temp1 * h_n_1 / h_n_2]
    h_n_3 = sigma[i - 2] - sigma[i - 3]
    temp2 = (((1 - h_n / (3 * (h_n + h_n_1))) / 2 + (1 - h_n / (2 * (h_n + h_n_1))) * h_n / (6 * (h_n + h_n_1 + h_n_2)))
             * (h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2)) / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3)))
    ratio = h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))
    return [(2 + h_n / h_n_1) / 2 + temp1 + temp2,
            -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp1 - (1 + h_n_1 / h_n_2 + ratio) * temp2,
            temp1 * h_n_1 / h_n_2 + (h_n_1 / h_n_2 + ratio * (1 + h_n_2 / h_n_3)) * temp2,
            -temp2 * ratio * h_n_1 / h_n_2]


# k-point Gauss-Legendre rules on [0, 1] (nodes, weights), k = 1..MAX_ORDER
_GAUSS_LEGENDRE = {k: tuple(zip(((np.polynomial.legendre.leggauss(k)[0] + 1) / 2).tolist(),
                                (np.polynomial.legendre.leggauss(k)[1] / 2).tolist())) for k in range(1, MAX_ORDER + 1)}


def lms_weights(sigma: list[float], i: int, k: int) -> list[float]:
    """``b_j = int_{sigma_i}^{sigma_{i+1}} L_j(tau) dtau`` (newest first), ``L_j`` the Lagrange basis
    polynomial through ``sigma_i, ..., sigma_{i-k+1}`` that is 1 at ``sigma_{i-j}``: a k-point
    Gauss-Legendre rule, exact for the degree k - 1 integrand (k-diffusion's
    ``linear_multistep_coeff`` integrates the same polynomial with ``scipy.integrate.quad``)."""
    a, h = sigma[i], sigma[i + 1] - sigma[i]
    out = []
    for j in range(k):
        total = 0.0
        for node, weight in _GAUSS_LEGENDRE[k]:
            tau, basis = a + node * h, 1.0
            for m in range(k):
                if m != j:
                    basis *= (tau - sigma[i - m]) / (sigma[i - j] - sigma[i - m])
            total += weight * basis
        out.append(h * total)
    return out


def multistep_sigma(term, x: torch.Tensor, ts: torch.Tensor, save, order: int, step_weights):
    """Run an Adams-Bashforth method on ``dx̂/dsigma = (x̂ - D)/sigma`` along ``ts``:
    ``x̂_{i+1} = x̂_i + sum_j b_j d_{i-j}`` with ``b = step_weights(sigma, i, k)``,
    ``k = min(order, i + 1)``, and ``x = s x̂`` on both ends of each step."""
    grid = SigmaGrid(term, ts)
    orders = [min(order, i + 1) for i in range(grid.n_steps)]
    ds = []  # d at the last `order` grid points, newest last

    def step(i, x, t0, t1):
        s0, s1, sig0 = grid.s[i], grid.s[i + 1], grid.sigma[i]
        x_hat = x / s0
        denoised = term.denoiser(x, t0)
        ds.append((x_hat - denoised) / sig0)
        del ds[:-order]
        x_hat = x_hat + step_weights(grid.sigma, i, orders[i], ds)
        return s1 * x_hat

    return run_fixed_grid(term, x, ts, step, save, extras={"orders": orders})


def _combine(coeffs, ds) -> torch.Tensor:
    """``sum_j coeffs[j] ds[-1-j]`` (newest derivative first)."""
    out = coeffs[0] * ds[-1]
    for j in range(1, len(coeffs)):
        out = out + coeffs[j] * ds[-1 - j]
    return out


def ipndm(term, x, ts, *, save=None, max_order: int = 4):
    """Improved PNDM (iPNDM; Zhang & Chen 2023, the DEIS paper; zju-pi/diff-sampler
    ``ipndm_sampler``, ComfyUI's ``sample_ipndm``): Adams-Bashforth in sigma on
    ``d = (x̂ - D(x̂; sigma))/sigma`` with the fixed equal-step weights, 1 NFE per step,

        x̂_{i+1} = x̂_i + (sigma_{i+1} - sigma_i) sum_j a^(k)_j d_{i-j},   k = min(max_order, i + 1),

    ``a^(1) = 1``, ``a^(2) = (3, -1)/2``, ``a^(3) = (23, -16, 5)/12``, ``a^(4) = (55, -59, 37, -9)/24``.
    Order ``max_order`` where the steps in sigma are equal; on grids whose steps vary (karras,
    log_sigma, kl_optimal) the fixed weights limit it to 2 asymptotically (see docs/solvers.md).

    Options: ``max_order`` (default 4, in 1..4)."""
    max_order = check_int("max_order", max_order, 1, MAX_ORDER)

    def weights(sigma, i, k, ds):
        num, den = AB_WEIGHTS[k]
        return (sigma[i + 1] - sigma[i]) * _combine(num, ds) / den

    return multistep_sigma(term, x, ts, save, max_order, weights)


def ipndm_v(term, x, ts, *, save=None, max_order: int = 4, variant: str = "exact"):
    """Variable-step iPNDM: Adams-Bashforth in sigma on ``d = (x̂ - D)/sigma`` with weights for
    unequal steps, 1 NFE per step, ``x̂_{i+1} = x̂_i + h_n sum_j c_j d_{i-j}``,
    ``h_n = sigma_{i+1} - sigma_i``, ``k = min(max_order, i + 1)`` weights ``c``.

    ``variant="exact"`` (default): the variable-step Adams-Bashforth weights, ``h_n c_j`` = the
    integral over the step of the Lagrange basis through the last k sigmas (the same numbers as
    ``lms``, ``lms_weights``): order ``max_order`` on any smooth grid.
    ``variant="published"``: zju-pi/diff-sampler's ``ipndm_v_sampler`` (= ComfyUI's
    ``sample_ipndm_v``) reproduced exactly (``ipndm_v_weights``). Its order-2 weights are
    variable-step AB2's; its order-3 weights are only second-order consistent on unequal steps
    (third order on smooth grids); its order-4 weights sum to
    ``1 + temp2 R (h_n_2/h_n_3 - h_n_1/h_n_2)``, which is 1 only where consecutive step ratios
    are equal (a grid geometric in sigma, e.g. log_sigma), and at equal steps they are
    ``(57, -65, 43, -11)/24``, not AB4's ``(55, -59, 37, -9)/24``. With ``max_order=4`` it is at
    best second order where the step ratios change slowly (karras measures 0.5-1.7 at 64-512 steps)
    and stalls where they change fast (kl_optimal: no convergence from 16 to 512 steps; docs/solvers.md).

    Options: ``max_order`` (default 4, in 1..4), ``variant`` (``"exact"`` or ``"published"``)."""
    max_order = check_int("max_order", max_order, 1, MAX_ORDER)
    if variant not in ("exact", "published"):
        raise ValueError(f"variant must be 'exact' or 'published', got {variant!r}")

    if variant == "exact":
        def weights(sigma, i, k, ds):
            return _combine(lms_weights(sigma, i, k), ds)
    else:
        def weights(sigma, i, k, ds):
            return (sigma[i + 1] - sigma[i]) * _combine(ipndm_v_weights(sigma, i, k), ds)

    return multistep_sigma(term, x, ts, save, max_order, weights)


def lms(term, x, ts, *, save=None, order: int = 4):
    """Linear multistep (k-diffusion ``sample_lms``): the exact variable-step Adams-Bashforth method in
    sigma on ``d = (x̂ - D)/sigma``, 1 NFE per step,

        x̂_{i+1} = x̂_i + sum_j b_j d_{i-j},   b_j = int_{sigma_i}^{sigma_{i+1}} L_j(tau) dtau,

    ``L_j`` the Lagrange basis through the last ``k = min(order, i + 1)`` sigmas (``lms_weights``:
    integrated exactly by Gauss-Legendre, where k-diffusion uses ``scipy.integrate.quad``).
    Order ``order`` on any smooth grid.

    Options: ``order`` (default 4, in 1..4)."""
    order = check_int("order", order, 1, MAX_ORDER)

    def weights(sigma, i, k, ds):
        return _combine(lms_weights(sigma, i, k), ds)

    return multistep_sigma(term, x, ts, save, order, weights)


# -- DEIS: Adams-Bashforth on eps with the polynomial fitted in another coordinate -----------

DEIS_MAX_ORDER = 3
# The coordinate each DEIS variant fits its polynomial in, as a function of (t, sigma).
DEIS_VARIANTS = ("tAB", "rhoAB", "logrho")
# Gauss-Legendre nodes per step for the weights, in u = log sigma. The integrand l_j(t(e^u)) e^u
# is analytic near each step; its nearest singularity (VP: where dt/dsigma blows up, at
# sigma^2 ~ -b_min^2/(2 (b_max - b_min)), a distance pi/2 off the real u axis) leaves 64 nodes
# exact to rounding even for a single VP step from t = 1e-3 to 0.1 (checked against scipy quad in t).
DEIS_QUADRATURE_NODES = 64
_GL_NODES = (np.polynomial.legendre.leggauss(DEIS_QUADRATURE_NODES)[0] + 1) / 2
_GL_WEIGHTS = np.polynomial.legendre.leggauss(DEIS_QUADRATURE_NODES)[1] / 2


def deis_weights(process, ts: torch.Tensor, order: int, variant: str = "tAB") -> list[list[float]]:
    """Per-step weights ``b_{i,j}`` (newest first, ``k_i = min(order, i + 1)`` of them) of DEIS
    (Zhang & Chen 2023, eq. 14 and Sec. 4): with ``x̂ = x/s`` and ``eps = (x̂ - D)/sigma``,
    ``dx̂/dt = sigma'(t) eps``, and eps is replaced by its Lagrange interpolant through the last k
    points in a coordinate ``c``:

        b_{i,j} = int_{t_i}^{t_{i+1}} sigma'(tau) l_j(c(tau)) dtau = int_{sigma_i}^{sigma_{i+1}} l_j(c) dsigma,

    ``l_j`` the Lagrange basis through ``c_i, ..., c_{i-k+1}`` that is 1 at ``c_{i-j}``.
    ``variant``: ``"tAB"`` ``c = t`` (the process time; qsh-zh/deis ``get_ab_eps_coef``, which
    integrates the same thing by a 10000-point left Riemann sum in t), ``"rhoAB"`` ``c = sigma``
    (= ``lms_weights``: the exact variable-step Adams-Bashforth in sigma), ``"logrho"``
    ``c = log sigma`` (diffusers' ``DEISMultistepScheduler``, closed form there).
    Computed once per grid, vectorised over the steps: ``DEIS_QUADRATURE_NODES``-point
    Gauss-Legendre in ``u = log sigma`` (``dsigma = e^u du``), ``t(sigma)`` by the process's
    ``_t_of_sigma`` at the nodes."""
    if variant not in DEIS_VARIANTS:
        raise ValueError(f"variant must be one of {list(DEIS_VARIANTS)}, got {variant!r}")
    ts = ts.detach().to("cpu", torch.float64)
    sigma = process._sigma(ts).numpy()
    log_sigma = np.log(sigma)
    u0, du = log_sigma[:-1, None], np.diff(log_sigma)[:, None]
    u = u0 + du * _GL_NODES  # (steps, nodes)
    quad_w = du * _GL_WEIGHTS * np.exp(u)  # int_{sigma_i}^{sigma_{i+1}} f dsigma = sum quad_w f
    if variant == "tAB":
        c_grid = ts.numpy()
        c_nodes = process._t_of_sigma(torch.from_numpy(np.exp(u))).numpy()
    elif variant == "rhoAB":
        c_grid, c_nodes = sigma, np.exp(u)
    else:
        c_grid, c_nodes = log_sigma, u
    out = []
    for i in range(len(sigma) - 1):
        k = min(order, i + 1)
        pts = [c_grid[i - j] for j in range(k)]
        row = []
        for j in range(k):
            basis = np.ones_like(c_nodes[i])
            for m in range(k):
                if m != j:
                    basis = basis * (c_nodes[i] - pts[m]) / (pts[j] - pts[m])
            row.append(float(np.dot(quad_w[i], basis)))
        out.append(row)
    return out


def deis(term, x, ts, *, save=None, order: int = 3, variant: str = "tAB"):
    """DEIS (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator",
    Sec. 4, eq. 14; qsh-zh/deis): the exponential integrator with an Adams-Bashforth polynomial
    for eps, 1 NFE per step. In ``x̂ = x/s`` the linear part is exact (``x_{i+1} = (s_{i+1}/s_i) x_i
    + s_{i+1} (...)``) and

        x̂_{i+1} = x̂_i + sum_j b_{i,j} eps_{i-j},   b_{i,j} = int_{t_i}^{t_{i+1}} sigma'(tau) l_j(tau) dtau,

    ``eps = (x̂ - D)/sigma`` (the same ``d`` as ``lms``), ``l_j`` the Lagrange basis through the last
    ``k = min(order, i + 1)`` grid times (``deis_weights``, precomputed once per grid). Order
    ``order`` on smooth grids. On EDM and PFGM++ (``sigma = t``) tAB is ``lms``.

    Options: ``order`` (default 3, in 1..3; 1 is DDIM), ``variant``: ``"tAB"`` (default, the
    polynomial in t), ``"rhoAB"`` (in sigma: the same method as ``lms``/``ipndm_v``, exact
    variable-step AB in sigma), ``"logrho"`` (in log sigma, diffusers' ``DEISMultistepScheduler``
    without its lower-order final steps)."""
    order = check_int("order", order, 1, DEIS_MAX_ORDER)
    if variant not in DEIS_VARIANTS:
        raise ValueError(f"variant must be one of {list(DEIS_VARIANTS)}, got {variant!r}")
    table = deis_weights(term.process, ts, order, variant)

    def weights(sigma, i, k, ds):
        return _combine(table[i], ds)

    return multistep_sigma(term, x, ts, save, order, weights)


SOLVERS = {"ipndm": ipndm, "ipndm_v": ipndm_v, "lms": lms, "deis": deis}
register_solver("ipndm", ipndm, kind="ode", order=2, nfe_per_step=1, process_aware=True,
                description="improved PNDM: fixed-weight Adams-Bashforth 4 in sigma (Zhang & Chen 2023); order 4 on "
                            "steps equal in sigma, 2 asymptotically on varying steps")
register_solver("ipndm_v", ipndm_v, kind="ode", order=4, nfe_per_step=1, process_aware=True,
                description="variable-step iPNDM: exact variable-step Adams-Bashforth 4 in sigma; variant='published' "
                            "for zju-pi/diff-sampler's (ComfyUI's) weights, which are not consistent on most grids")
register_solver("lms", lms, kind="ode", order=4, nfe_per_step=1, process_aware=True,
                description="k-diffusion's linear multistep: exact variable-step Adams-Bashforth 4 in sigma")

register_solver("deis", deis, kind="ode", order=3, nfe_per_step=1, process_aware=True,
                description="DEIS tAB (Zhang & Chen 2023): exponential integrator, eps polynomial in t, Adams-Bashforth "
                            "order 3; variant='rhoAB' (= lms) or 'logrho' (diffusers')")
