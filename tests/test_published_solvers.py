"""Published training-free samplers added for issue 9: DEIS (tAB, rhoAB, logrho), UniPC's options
(bh1, predictor order 1-3, UniP alone) and k-diffusion's sample_dpm_2. Each against its published
formula or implementation's output (qsh-zh/deis's coefficient rule written out in numpy, diffusers'
schedulers driven on flowsolve's float64 grids, k-diffusion's loop written out from its source)
and for its order of convergence against the exact flow map of Gaussian data."""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import numpy as np
import pytest
import torch
from scipy import integrate

import flowsolve as fs
from flowsolve.solvers import exponential as ex
from flowsolve.solvers import multistep as ms
from flowsolve.testing import references as refs

F64 = torch.float64
MIXTURE = fs.toy.GaussianMixture([[-1.0, 0.5], [1.0, -0.5], [0.0, 1.5]], [0.3, 0.5, 0.2])
GAUSS = fs.toy.Gaussian(torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64))


@lru_cache(maxsize=None)
def _mixture_problem(name):
    process = {"VP": fs.VP, "EDM": fs.EDM, "VE": fs.VE}[name]()
    field = fs.exact_field(process, MIXTURE)
    x0 = process.prior_std * torch.randn(12, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    return process, field, x0


def _orders(process, solver, steps, grid="log_sigma", **options):
    """log2 err(N)/err(2N), max abs error against the exact map of Gaussian data."""
    flow = fs.probability_flow(process, fs.exact_field(process, GAUSS))
    x0 = process.prior_std * torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    errs = []
    for n in steps:
        ts = fs.make_grid(process, grid, n)
        ref = refs.gaussian_flow_map(process, GAUSS, x0, float(ts[0]), float(ts[-1]))
        errs.append(float((fs.solve(flow, x0, ts, solver, **options).x - ref).abs().max()))
    return [math.log2(a / b) for a, b in zip(errs, errs[1:])], errs


# =========================================================================================
# diffusers' multistep schedulers on flowsolve's float64 grid (as flowsolve.bench.peers does):
# the state is x̂ / sqrt(1 + sigma^2), the model output D ("sample" prediction) at (s x̂, t)
# =========================================================================================

def _diffusers(cls_name, process, field, x0, ts, **config):
    import diffusers

    sig = process._sigma(ts)
    s = process._scale(ts).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        sched = getattr(diffusers, cls_name)(prediction_type="sample", **config)
    steps = len(ts) - 1
    sched.set_timesteps(num_inference_steps=steps)
    assert sched.sigmas.shape == sig.shape
    sched.sigmas = sig.clone()
    sched.set_begin_index(0)
    factor = (1.0 / torch.sqrt(1.0 + sig**2)).tolist()
    sample = x0 / s[0] * factor[0]
    for i in range(steps):
        D = field.denoiser(s[i] * sample / factor[i], float(ts[i]))
        sample = sched.step(D, sched.timesteps[i], sample).prev_sample
    return s[-1] * sample / factor[-1]


# =========================================================================================
# DEIS
# =========================================================================================

def _quad_in_t(process, t, i, j, k):
    """int_{t_i}^{t_{i+1}} sigma'(tau) l_j(tau) dtau by adaptive quadrature in t (the paper's form)."""
    pts = [t[i - m] for m in range(k)]

    def fn(tau):
        basis = math.prod((tau - pts[m]) / (pts[j] - pts[m]) for m in range(k) if m != j)
        return float(process._sigma_derivative(torch.tensor(tau, dtype=F64))) * basis

    return integrate.quad(fn, t[i], t[i + 1], epsabs=0.0, epsrel=1e-13, limit=200)[0]


@pytest.mark.parametrize("name", ["VP", "VE", "SubVP"])
def test_deis_weights_are_the_integral_in_t(name):
    """The weights (Gauss-Legendre in log sigma, t(sigma) at the nodes) against scipy quad of
    sigma'(t) l_j(t) in t, on a Karras grid and on a coarse grid whose last VP step runs from
    t = 0.1 down to t_min = 1e-3, near sigma's sqrt(t) singularity (measured: ~2e-15 relative)."""
    process = {"VP": fs.VP, "VE": fs.VE, "SubVP": fs.SubVP}[name]()
    for ts in (fs.make_grid(process, "karras", 6), torch.tensor([process.t_max, 0.5, 0.1, process.t_min], dtype=F64)):
        t, table = ts.tolist(), ms.deis_weights(process, ts, 3)
        for i, row in enumerate(table):
            assert len(row) == min(3, i + 1)
            quad = [_quad_in_t(process, t, i, j, len(row)) for j in range(len(row))]
            scale = max(abs(q) for q in quad)
            assert np.allclose(row, quad, rtol=0, atol=1e-12 * scale), (i, row, quad)


def _published_tab_coefficients(process, t, order, num_item=10_000):
    """qsh-zh/deis th_deis/multistep.py ``get_ab_eps_coef`` (VPSDE of th_deis/vpsde.py) in numpy:
    ``C_ij = sum_n psi(tau_n, t_{i+1}) eps_integrand(tau_n) l_j(tau_n) dt`` over a left Riemann sum of
    ``num_item`` points, ``psi = sqrt(alpha(t_end)/alpha(tau))``, ``eps_integrand =
    -0.5 (log alpha)'/sqrt(1 - alpha)``, alpha the VP alpha-bar = s^2; the update is
    ``x_{i+1} = psi x_i + sum_j C_ij eps_{i-j}``."""
    b0, b1 = process.beta_min, process.beta_max

    def alpha(tau):
        return np.exp(2 * (-0.25 * tau**2 * (b1 - b0) - 0.5 * tau * b0))

    def dlog_alpha(tau):
        return 2 * (-0.5 * tau * (b1 - b0) - 0.5 * b0)

    out = []
    for i in range(len(t) - 1):
        k = min(order, i + 1)
        tau = np.linspace(t[i], t[i + 1], num_item, endpoint=False)
        integrand = np.sqrt(alpha(t[i + 1]) / alpha(tau)) * (-0.5 * dlog_alpha(tau) / np.sqrt(1 - alpha(tau)))
        poly = [t[i - m] for m in range(k)]
        row = []
        for j in range(k):
            basis = np.prod([(tau - poly[m]) / (poly[j] - poly[m]) for m in range(k) if m != j], axis=0)
            row.append(float(np.sum(integrand * basis) * (t[i + 1] - t[i]) / num_item))
        out.append(row)
    return out


def test_deis_tab_weights_are_the_published_codes_numbers_for_vp():
    """qsh-zh/deis integrates the same integral (in x, so its C_ij = s_{i+1} b_ij) by a first-order
    Riemann sum: its numbers agree with ours to its own quadrature error, O(1/num_item), and
    approach ours at that rate (measured max relative gap 6.7e-5 at 1e4 points, 6.7e-6 at 1e5)."""
    process = fs.VP()
    ts = fs.make_grid(process, "log_sigma", 8)
    scale = process._scale(ts).tolist()
    ours = [[scale[i + 1] * b for b in row] for i, row in enumerate(ms.deis_weights(process, ts, 3))]
    gaps = []
    for num_item in (10_000, 100_000):
        theirs = _published_tab_coefficients(process, ts.tolist(), 3, num_item)
        gaps.append(max(abs(a - b) / max(map(abs, r)) for r, q in zip(theirs, ours) for a, b in zip(r, q)))
    assert gaps[0] < 2e-4 and 5 < gaps[0] / gaps[1] < 20, gaps


def test_deis_weights_sum_to_the_step_and_reduce_to_lms():
    """Every basis sums to 1, so each row sums to sigma_{i+1} - sigma_i; rhoAB (the basis in sigma)
    is lms's exact variable-step AB in sigma; on EDM (sigma = t) tAB is rhoAB."""
    vp, edm = fs.VP(), fs.EDM()
    for process in (vp, edm):
        ts = fs.make_grid(process, "karras", 7)
        sigma = process._sigma(ts).tolist()
        tab, rho = ms.deis_weights(process, ts, 3), ms.deis_weights(process, ts, 3, "rhoAB")
        for i in range(7):
            assert math.isclose(sum(tab[i]), sigma[i + 1] - sigma[i], rel_tol=1e-13)
            assert np.allclose(rho[i], ms.lms_weights(sigma, i, len(rho[i])), rtol=1e-13, atol=0)
            if process is edm:
                assert np.allclose(tab[i], rho[i], rtol=1e-13, atol=0)
    ts = fs.make_grid(vp, "karras", 7)
    assert max(abs(a - b) for a, b in zip(ms.deis_weights(vp, ts, 3)[-1], ms.deis_weights(vp, ts, 3, "rhoAB")[-1])) > 1e-3


@pytest.mark.parametrize("name", ["VP", "EDM"])
def test_deis_logrho_is_diffusers_deis(name):
    """variant='logrho' against diffusers' DEISMultistepScheduler (its only algorithm, closed-form
    log-rho coefficients; lower_order_final off), orders 1-3, float64 grids: measured <= 1.4e-14.
    Order 1 is DDIM for every variant, so tAB meets diffusers there too."""
    process, field, x0 = _mixture_problem(name)
    flow = fs.probability_flow(process, field)
    ts = fs.make_grid(process, "karras", 8)
    scale = float(x0.abs().max())
    for order in (1, 2, 3):
        ref = _diffusers("DEISMultistepScheduler", process, field, x0, ts, solver_order=order, lower_order_final=False)
        ours = fs.solve(flow, x0, ts, "deis", order=order, variant="logrho")
        assert ours.success and ours.nfe.tolist() == [8] * x0.shape[0]
        assert float((ours.x - ref).abs().max()) < 1e-12 * scale, order
    tab1 = fs.solve(flow, x0, ts, "deis", order=1).x
    assert float((tab1 - ref.new_tensor(0) - _diffusers("DEISMultistepScheduler", process, field, x0, ts, solver_order=1,
                                                         lower_order_final=False)).abs().max()) < 1e-12 * scale


def test_deis_orders():
    """VP, Gaussian data, log_sigma grid 32 -> 64 -> 128 steps: tAB order k for k = 1, 2, 3 (measured
    0.97, 0.99; 1.90, 1.95; 2.82, 2.92: from below). logrho measures 3.85, 3.87: on a grid uniform in
    lambda its polynomial in log sigma = -lambda super-converges as DPM-Solver++(3M) does
    (tests/test_exponential.py, test_order_dpmpp_3m); on Karras it is 2.61, 2.85 from 16 steps on."""
    process = fs.VP()
    for k in (1, 2, 3):
        orders, errs = _orders(process, "deis", (32, 64, 128), order=k)
        assert all(abs(o - k) < 0.3 for o in orders), (k, orders, errs)
    orders, errs = _orders(process, "deis", (32, 64, 128), variant="logrho")
    assert all(o > 2.7 for o in orders), (orders, errs)


def test_deis_options_are_checked():
    process = fs.VP()
    field = fs.exact_field(process, GAUSS)
    for bad in (dict(order=0), dict(order=4), dict(variant="t_ab")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            fs.sample(process, field, 2, "deis", steps=4, seed=0, **bad)
    assert fs.available_solvers()["deis"]["options"] == {"order": 3, "variant": "tAB"}
    sol = fs.sample(process, field, 4, "deis", nfe=7, seed=0)
    assert sol.success and sol.nfe.tolist() == [7] * 4 and sol.extras["orders"] == [1, 2, 3, 3, 3, 3, 3]


# =========================================================================================
# UniPC options
# =========================================================================================

def test_unipc_options_are_diffusers_unipc():
    """Every combination of predictor order 1-3, bh1/bh2 and UniC on/off against diffusers'
    UniPCMultistepScheduler (predict_x0; disable_corrector = every step for UniP alone) on the same
    float64 grid: measured <= 3.5e-15. At 6 steps with lower_order_final (both codes drop the last
    steps' orders), at 12 without it, and at 12 with it, which diffusers applies at every step count
    and flowsolve below 10 steps unless lower_order_final="always"."""
    process, field, x0 = _mixture_problem("VP")
    flow = fs.probability_flow(process, field)
    scale = float(x0.abs().max())
    for steps, lower_order_final, ours_rule in ((6, True, True), (12, False, False), (12, True, "always")):
        ts = fs.make_grid(process, "karras", steps)
        for order in (1, 2, 3):
            for variant in ("bh1", "bh2"):
                for corrector in (True, False):
                    ref = _diffusers("UniPCMultistepScheduler", process, field, x0, ts, solver_order=order,
                                     solver_type=variant, predict_x0=True, lower_order_final=lower_order_final,
                                     final_sigmas_type="sigma_min",
                                     disable_corrector=[] if corrector else list(range(steps)))
                    ours = fs.solve(flow, x0, ts, "unipc", order=order, variant=variant, corrector=corrector,
                                    lower_order_final=ours_rule)
                    assert ours.success and ours.nfe.tolist() == [steps] * x0.shape[0]
                    err = float((ours.x - ref).abs().max())
                    assert err < 1e-12 * scale, (steps, order, variant, corrector, err)


def test_unipc_default_is_unchanged_and_bh1_differs():
    process, field, x0 = _mixture_problem("EDM")
    flow = fs.probability_flow(process, field)
    ts = fs.make_grid(process, "karras", 8)
    default = fs.solve(flow, x0, ts, "unipc").x
    assert torch.equal(default, fs.solve(flow, x0, ts, "unipc", order=2, variant="bh2", corrector=True).x)
    assert float((fs.solve(flow, x0, ts, "unipc", variant="bh1").x - default).abs().max()) > 1e-6


def test_unipc_coefficients_solve_the_order_conditions():
    """rho_c solves sum_j rho_j r_j^(i-1) = i! hh phi_{i+1}(hh)/B(h) (Zhao et al. 2023, eq. 9) for both
    B(h); the bh1 and bh2 solutions differ by the factor B2/B1 = (e^hh - 1)/hh."""
    hh, rks = -0.7, [-0.8, -1.9]
    for variant, b_h in (("bh1", hh), ("bh2", math.expm1(hh))):
        rho_p, rho_c, got = ex.unipc_coefficients(3, hh, rks, variant)
        assert math.isclose(got, b_h, rel_tol=1e-14)
        nodes = np.array(rks + [1.0])
        for i in (1, 2, 3):
            assert math.isclose(float(np.dot(rho_c, nodes ** (i - 1))),
                                math.factorial(i) * hh * ex.phi(i + 1, hh) / b_h, rel_tol=1e-12)
        for i in (1, 2):
            assert math.isclose(float(np.dot(rho_p, nodes[:2] ** (i - 1))),
                                math.factorial(i) * hh * ex.phi(i + 1, hh) / b_h, rel_tol=1e-12)
    bh1, bh2 = ex.unipc_coefficients(3, hh, rks, "bh1")[1], ex.unipc_coefficients(3, hh, rks, "bh2")[1]
    assert np.allclose(bh1, bh2 * math.expm1(hh) / hh, rtol=1e-13)


@pytest.mark.parametrize("options, order, grid", [
    (dict(order=1, corrector=False), 1, "log_sigma"), (dict(order=1), 2, "log_sigma"),
    (dict(order=3, variant="bh1", corrector=False), 3, "karras"), (dict(order=3, variant="bh1"), 4, "karras")])
def test_unipc_orders(options, order, grid):
    """UniP-k is order k; UniP-k + UniC is k + 1 (Zhao et al. 2023, Thm. 3.1). VP, Gaussian data,
    32 -> 64 -> 128 steps; measured 0.97, 0.99; 1.96, 1.99; 3.11, 3.05; 3.99, 4.01 (bh2 the same to
    two digits). Order 3 on Karras: on log_sigma (uniform in lambda) UniP-3 super-converges (4.05, 4.10)
    as DPM-Solver++(3M) does, and UniP-3 + UniC measures 2.90, 3.68 there."""
    orders, errs = _orders(fs.VP(), "unipc", (32, 64, 128), grid=grid, **options)
    assert all(abs(o - order) < 0.3 for o in orders), (orders, errs)


def test_unipc_options_are_checked():
    process = fs.VP()
    field = fs.exact_field(process, GAUSS)
    for bad in (dict(order=0), dict(order=4), dict(variant="bh3"), dict(corrector=1),
                dict(lower_order_final="sometimes")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            fs.sample(process, field, 2, "unipc", steps=4, seed=0, **bad)
    assert fs.available_solvers()["unipc"]["options"] == {"lower_order_final": True, "order": 2, "variant": "bh2",
                                                          "corrector": True}


# =========================================================================================
# k-diffusion's sample_dpm_2
# =========================================================================================

def kd_sample_dpm_2(model, x, sigmas):
    """crowsonkb/k-diffusion k_diffusion/sampling.py ``sample_dpm_2`` with s_churn = 0 (gamma = 0)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma_hat = sigmas[i]
        denoised = model(x, sigma_hat * s_in)
        d = (x - denoised) / sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            denoised_2 = model(x_2, sigma_mid * s_in)
            d_2 = (x_2 - denoised_2) / sigma_mid
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


@pytest.mark.parametrize("name", ["VP", "EDM"])
def test_dpm_2_is_k_diffusions_loop(name):
    """Same sigmas, same exact denoiser in x̂ = x/s (D(s x̂; t(sigma))), float64: on flowsolve's grid
    (ending at sigma_min) and, with a 0 appended, against denoise_final=True."""
    process, field, x0 = _mixture_problem(name)

    def model(x_hat, sigma):
        t = process.t_of_sigma(sigma[:1])
        return field.denoiser(process.scale(t) * x_hat, float(t))

    ts = fs.make_grid(process, "karras", 7)
    sig = process._sigma(ts)
    s0, s1 = float(process.scale(ts[0])), float(process.scale(ts[-1]))
    ref = s1 * kd_sample_dpm_2(model, x0 / s0, sig)
    sol = fs.solve(fs.probability_flow(process, field), x0, ts, "dpm_2")
    assert sol.success and sol.nfe.tolist() == [14] * x0.shape[0]
    assert float((sol.x - ref).abs().max()) < 1e-12 * float(x0.abs().max())
    ref0 = kd_sample_dpm_2(model, x0 / s0, torch.cat([sig, sig.new_zeros(1)]))
    sol = fs.sample(process, field, x0.shape[0], "dpm_2", steps=7, x_init=x0, denoise_final=True)
    assert sol.nfe.tolist() == [15] * x0.shape[0]
    assert float((sol.x - ref0).abs().max()) < 1e-12 * float(x0.abs().max())  # D is in data space


def test_dpm_2_order_and_budget():
    """Order 2 (VP, Gaussian data, log_sigma 16 -> 32 -> 64: measured 2.07, 2.04); 2 NFE per step."""
    orders, errs = _orders(fs.VP(), "dpm_2", (16, 32, 64))
    assert all(abs(o - 2) < 0.2 for o in orders), (orders, errs)
    process = fs.EDM()
    sol = fs.sample(process, fs.exact_field(process, GAUSS), 4, "dpm_2", nfe=11, seed=0)
    assert sol.nfe.tolist() == [10] * 4 and sol.n_steps.tolist() == [5] * 4
