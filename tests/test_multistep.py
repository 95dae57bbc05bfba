"""Linear multistep samplers in sigma (iPNDM, variable-step iPNDM, LMS) and the kl_optimal grid:
agreement with the published loops (reimplemented here from their sources, float64, same
denoiser, same sigmas), the weights, observed orders, every process, NFE accounting."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest
import torch
from scipy import integrate

import flowsolve as fs
from flowsolve.solvers import multistep as ms
from flowsolve.testing import references as refs

F64 = torch.float64


# =========================================================================================
# The published loops, written out as independent references. Each takes a k-diffusion
# denoiser ``model(x̂, sigma)`` (sigma of shape (n,)), the state x̂ = x/s at sigmas[0] and the
# sigmas, and returns x̂ at sigmas[-1].
# =========================================================================================

def _to_d(x, sigma, denoised):
    return (x - denoised) / sigma


def kd_linear_multistep_coeff(order, t, i, j):
    """crowsonkb/k-diffusion k_diffusion/sampling.py, ``linear_multistep_coeff`` (scipy quad)."""
    if order - 1 > i:
        raise ValueError(f"Order {order} too high for step {i}")

    def fn(tau):
        prod = 1.0
        for k in range(order):
            if j == k:
                continue
            prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]


def kd_sample_lms(model, x, sigmas, order=4):
    """crowsonkb/k-diffusion k_diffusion/sampling.py, ``sample_lms``."""
    s_in = x.new_ones([x.shape[0]])
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        ds.append(_to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        cur_order = min(i + 1, order)
        coeffs = [kd_linear_multistep_coeff(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
    return x


def comfy_sample_ipndm(model, x, sigmas, max_order=4):
    """ComfyUI comfy/k_diffusion/sampling.py, ``sample_ipndm`` (from zju-pi/diff-sampler
    diff-solvers-main/solvers.py, ``ipndm_sampler``). max_order=1 raises IndexError there."""
    s_in = x.new_ones([x.shape[0]])
    x_next = x
    buffer_model = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        x_cur = x_next
        denoised = model(x_cur, t_cur * s_in)
        d_cur = (x_cur - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x_cur + (t_next - t_cur) * d_cur
        elif order == 2:
            x_next = x_cur + (t_next - t_cur) * (3 * d_cur - buffer_model[-1]) / 2
        elif order == 3:
            x_next = x_cur + (t_next - t_cur) * (23 * d_cur - 16 * buffer_model[-1] + 5 * buffer_model[-2]) / 12
        elif order == 4:
            x_next = x_cur + (t_next - t_cur) * (55 * d_cur - 59 * buffer_model[-1] + 37 * buffer_model[-2]
                                                 - 9 * buffer_model[-3]) / 24
        if len(buffer_model) == max_order - 1:
            for k in range(max_order - 2):
                buffer_model[k] = buffer_model[k + 1]
            buffer_model[-1] = d_cur
        else:
            buffer_model.append(d_cur)
    return x_next


def comfy_sample_ipndm_v(model, x, sigmas, max_order=4):
    """ComfyUI comfy/k_diffusion/sampling.py, ``sample_ipndm_v`` (from zju-pi/diff-sampler
    diff-solvers-main/solvers.py, ``ipndm_v_sampler``)."""
    s_in = x.new_ones([x.shape[0]])
    x_next = x
    t_steps = sigmas
    buffer_model = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        x_cur = x_next
        denoised = model(x_cur, t_cur * s_in)
        d_cur = (x_cur - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x_cur + (t_next - t_cur) * d_cur
        elif order == 2:
            h_n = t_next - t_cur
            h_n_1 = t_cur - t_steps[i - 1]
            coeff1 = (2 + (h_n / h_n_1)) / 2
            coeff2 = -(h_n / h_n_1) / 2
            x_next = x_cur + (t_next - t_cur) * (coeff1 * d_cur + coeff2 * buffer_model[-1])
        elif order == 3:
            h_n = t_next - t_cur
            h_n_1 = t_cur - t_steps[i - 1]
            h_n_2 = t_steps[i - 1] - t_steps[i - 2]
            temp = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
            coeff1 = (2 + (h_n / h_n_1)) / 2 + temp
            coeff2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp
            coeff3 = temp * h_n_1 / h_n_2
            x_next = x_cur + (t_next - t_cur) * (coeff1 * d_cur + coeff2 * buffer_model[-1] + coeff3 * buffer_model[-2])
        elif order == 4:
            h_n = t_next - t_cur
            h_n_1 = t_cur - t_steps[i - 1]
            h_n_2 = t_steps[i - 1] - t_steps[i - 2]
            h_n_3 = t_steps[i - 2] - t_steps[i - 3]
            temp1 = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
            temp2 = ((1 - h_n / (3 * (h_n + h_n_1))) / 2 + (1 - h_n / (2 * (h_n + h_n_1))) * h_n / (6 * (h_n + h_n_1 + h_n_2))) \
                * (h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2)) / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3))
            coeff1 = (2 + (h_n / h_n_1)) / 2 + temp1 + temp2
            coeff2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp1 - (1 + (h_n_1 / h_n_2) + (h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3)))) * temp2
            coeff3 = temp1 * h_n_1 / h_n_2 + ((h_n_1 / h_n_2) + (h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))) * (1 + h_n_2 / h_n_3)) * temp2
            coeff4 = -temp2 * (h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))) * h_n_1 / h_n_2
            x_next = x_cur + (t_next - t_cur) * (coeff1 * d_cur + coeff2 * buffer_model[-1] + coeff3 * buffer_model[-2]
                                                 + coeff4 * buffer_model[-3])
        if len(buffer_model) == max_order - 1:
            for k in range(max_order - 2):
                buffer_model[k] = buffer_model[k + 1]
            buffer_model[-1] = d_cur.detach()
        else:
            buffer_model.append(d_cur.detach())
    return x_next


# ours (name, options) -> the published loop and its options
PUBLISHED = {
    ("lms", "order"): (kd_sample_lms, "order"),
    ("ipndm", "max_order"): (comfy_sample_ipndm, "max_order"),
    ("ipndm_v", "max_order"): (comfy_sample_ipndm_v, "max_order"),
}

PROCESSES = {"EDM": fs.EDM, "VP": fs.VP, "PFGMPP": lambda: fs.PFGMPP(D=8)}


@lru_cache(maxsize=None)
def _problem(name):
    process = PROCESSES[name]()
    gen = torch.Generator().manual_seed(3)
    if name == "PFGMPP":  # closed-form exact field under the Student-t kernel
        law = fs.toy.Empirical(torch.randn(12, 2, generator=gen, dtype=F64))
    else:
        law = fs.toy.GaussianMixture([[-1.0, 0.5], [1.0, -0.5], [0.0, 1.5]], [0.3, 0.5, 0.2])
    field = fs.exact_field(process, law)
    x0 = process.prior_std * torch.randn(24, 2, generator=gen, dtype=F64)
    return process, field, x0


def _published(name, process, field, x0, ts, fn, **options):
    """The published loop on x̂ = x/s with model(x̂, sigma) = D(s x̂; t(sigma)) at the grid's own times."""
    sig = process._sigma(ts)
    scale = process._scale(ts)
    times = {float(s): (float(t), float(a)) for s, t, a in zip(sig, ts, scale)}

    def model(x_hat, sigma):
        t, s = times[float(sigma[0])]
        return field.denoiser(s * x_hat, t)

    return float(scale[-1]) * fn(model, x0 / float(scale[0]), sig, **options)


@pytest.mark.parametrize("proc", sorted(PROCESSES))
@pytest.mark.parametrize("grid, steps", [("karras", 14), ("kl_optimal", 9)])
@pytest.mark.parametrize("solver, option", sorted(PUBLISHED))
def test_agrees_with_the_published_loop(proc, grid, steps, solver, option):
    """Same sigmas (ending at sigma_min), same exact denoiser, float64: k-diffusion's sample_lms
    and ComfyUI's sample_ipndm / sample_ipndm_v (zju-pi/diff-sampler) agree with ours to
    rounding, for every order the published code runs (its max_order=1 raises IndexError)."""
    process, field, x0 = _problem(proc)
    flow = fs.probability_flow(process, field)
    ts = fs.make_grid(process, grid, steps)
    fn, their_option = PUBLISHED[(solver, option)]
    extra = {"variant": "published"} if solver == "ipndm_v" else {}
    for order in ((1, 2, 3, 4) if solver == "lms" else (2, 3, 4)):
        ref = _published(solver, process, field, x0, ts, fn, **{their_option: order})
        sol = fs.solve(flow, x0, ts, solver, **{option: order}, **extra)
        assert sol.success and torch.equal(sol.nfe, torch.full_like(sol.nfe, steps))
        err = float((sol.x - ref).abs().max())
        assert err < 1e-12 * max(1.0, float(ref.abs().max())), (order, err)


def test_published_ipndm_to_sigma_zero_is_our_grid_then_the_final_denoising():
    """The published loops run on sigmas with a 0 appended; sample_ipndm's step to 0 returns D.
    flowsolve's grids end at sigma_min; denoise_final=True adds that same D(x; sigma_min)."""
    process, field, x0 = _problem("EDM")
    ts = fs.make_grid(process, "karras", 10)
    ref = comfy_sample_ipndm(lambda x, s: field.denoiser(x, float(s[0])) if float(s[0]) > 0 else None, x0,
                             torch.cat([ts, ts.new_zeros(1)]))
    sol = fs.sample(process, field, x0.shape[0], "ipndm", steps=10, x_init=x0, denoise_final=True)
    assert sol.nfe.tolist() == [11] * x0.shape[0]
    assert float((sol.x - ref).abs().max()) < 1e-12


# =========================================================================================
# The weights
# =========================================================================================

def _random_grid(seed, n=7):
    steps = np.random.default_rng(seed).uniform(0.2, 3.0, n)
    return np.cumsum(steps)[::-1].tolist()  # decreasing, unequal steps


@pytest.mark.parametrize("seed", range(4))
def test_lms_weights_integrate_the_lagrange_basis_as_quad_does(seed):
    sigma = _random_grid(seed)
    for k in (1, 2, 3, 4):
        i = 4
        ours = ms.lms_weights(sigma, i, k)
        theirs = [kd_linear_multistep_coeff(k, np.array(sigma), i, j) for j in range(k)]
        assert np.allclose(ours, theirs, rtol=1e-13, atol=1e-13 * abs(sigma[i + 1] - sigma[i]))
        # exact for polynomials of degree < k: the variable-step Adams-Bashforth order conditions
        h = sigma[i + 1] - sigma[i]
        nodes = np.array([sigma[i - j] - sigma[i] for j in range(k)])
        for m in range(k):
            assert math.isclose(float(np.dot(ours, nodes**m)), h ** (m + 1) / (m + 1), rel_tol=1e-12, abs_tol=1e-12)


def test_published_ipndm_v_weights_are_not_variable_step_adams_bashforth():
    """At equal steps the published order-3 weights are AB3's and the order-4 ones are not AB4's;
    on unequal steps the order-4 weights sum to 1 + temp2 R (h2/h3 - h1/h2) (1 only for equal
    step ratios) and the order-3 ones miss the third order condition."""
    equal = [10.0 - j for j in range(8)]
    assert np.allclose(ms.ipndm_v_weights(equal, 4, 3), np.array([23, -16, 5]) / 12, rtol=0, atol=1e-14)
    assert np.allclose(ms.ipndm_v_weights(equal, 4, 4), np.array([57, -65, 43, -11]) / 24, rtol=0, atol=1e-14)
    assert np.allclose(np.array(ms.lms_weights(equal, 4, 4)) / -1.0, np.array([55, -59, 37, -9]) / 24, atol=1e-14)
    geometric = [0.8**j for j in range(8)]
    assert math.isclose(sum(ms.ipndm_v_weights(geometric, 4, 4)), 1.0, rel_tol=1e-13)
    sigma = _random_grid(5)
    i = 4
    h_n, h_n_1, h_n_2, h_n_3 = (sigma[i + 1] - sigma[i], sigma[i] - sigma[i - 1], sigma[i - 1] - sigma[i - 2],
                                sigma[i - 2] - sigma[i - 3])
    temp2 = (((1 - h_n / (3 * (h_n + h_n_1))) / 2 + (1 - h_n / (2 * (h_n + h_n_1))) * h_n / (6 * (h_n + h_n_1 + h_n_2)))
             * (h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2)) / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3)))
    ratio = h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))
    assert math.isclose(sum(ms.ipndm_v_weights(sigma, i, 4)) - 1.0, temp2 * ratio * (h_n_2 / h_n_3 - h_n_1 / h_n_2),
                        rel_tol=1e-10)
    c3 = np.array(ms.ipndm_v_weights(sigma, i, 3))
    nodes = np.array([sigma[i - j] - sigma[i] for j in range(3)]) / h_n
    assert abs(c3.sum() - 1) < 1e-13 and abs(np.dot(c3, nodes) - 0.5) < 1e-13
    assert abs(np.dot(c3, nodes**2) - 1 / 3) > 1e-2


def test_order_one_is_euler_in_sigma_and_exact_ipndm_v_is_lms():
    process, field, x0 = _problem("EDM")  # sigma = t: Euler in t is Euler in sigma
    flow = fs.probability_flow(process, field)
    ts = fs.make_grid(process, "karras", 8)
    euler = fs.solve(flow, x0, ts, "euler").x
    for name, kw in (("ipndm", dict(max_order=1)), ("lms", dict(order=1)), ("ipndm_v", dict(max_order=1)),
                     ("ipndm_v", dict(max_order=1, variant="published"))):
        assert float((fs.solve(flow, x0, ts, name, **kw).x - euler).abs().max()) < 1e-13, (name, kw)
    for k in (1, 2, 3, 4):
        assert torch.equal(fs.solve(flow, x0, ts, "ipndm_v", max_order=k).x, fs.solve(flow, x0, ts, "lms", order=k).x)
    # on steps equal in sigma the fixed weights are the variable-step ones
    even = torch.linspace(process.t_max, 1.0, 9, dtype=F64)
    assert float((fs.solve(flow, x0, even, "ipndm").x - fs.solve(flow, x0, even, "lms").x).abs().max()) < 1e-12


def test_warm_up_orders_are_recorded():
    process, field, x0 = _problem("EDM")
    sol = fs.solve(fs.probability_flow(process, field), x0[:2], fs.make_grid(process, "karras", 6), "ipndm")
    assert sol.extras["orders"] == [1, 2, 3, 4, 4, 4]
    sol = fs.solve(fs.probability_flow(process, field), x0[:2], fs.make_grid(process, "karras", 6), "lms", order=2)
    assert sol.extras["orders"] == [1, 2, 2, 2, 2, 2]


# =========================================================================================
# Observed orders, against the exact flow map of Gaussian data
# =========================================================================================

MEAN = torch.tensor([0.5, -1.0], dtype=F64)
COV = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64)
GAUSS = fs.toy.Gaussian(MEAN, COV)


def _orders(process, solver, grids, x0_scale, **options):
    """log2 err(N)/err(2N) for a list of grids (tensors), max abs error against the exact map."""
    flow = fs.probability_flow(process, fs.exact_field(process, GAUSS))
    x0 = x0_scale * torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    errs = []
    for ts in grids:
        ref = refs.gaussian_flow_map(process, GAUSS, x0, float(ts[0]), float(ts[-1]))
        errs.append(float((fs.solve(flow, x0, ts, solver, **options).x - ref).abs().max()))
    return [math.log2(a / b) for a, b in zip(errs, errs[1:])], errs


@pytest.mark.parametrize("proc", ["EDM", "VP"])
def test_observed_orders_on_the_log_sigma_grid(proc):
    """Gaussian data, log_sigma grid, 32 -> 64 -> 128 steps. Measured (EDM / VP): lms 3.29, 3.63 /
    3.36, 3.67; ipndm 2.08, 2.03 / 2.07, 2.02 (fixed weights on steps that vary in sigma)."""
    process = PROCESSES[proc]()
    grids = [fs.make_grid(process, "log_sigma", n) for n in (32, 64, 128)]
    lms, _ = _orders(process, "lms", grids, process.prior_std)
    assert lms[-1] > 3.4 and lms[0] > 3.0, lms
    ipndm, _ = _orders(process, "ipndm", grids, process.prior_std)
    assert all(1.8 < o < 2.3 for o in ipndm), ipndm


def test_ipndm_is_fourth_order_on_steps_equal_in_sigma():
    """EDM, Gaussian data, sigma from 10 to 1 in 32/64/128 equal steps: measured 3.33, 3.56
    (the same numbers as lms: equal steps make the fixed weights exact)."""
    process = fs.EDM()
    grids = [torch.linspace(10.0, 1.0, n + 1, dtype=F64) for n in (32, 64, 128)]
    ipndm, _ = _orders(process, "ipndm", grids, 10.0)
    assert ipndm[-1] > 3.4 and ipndm[0] > 3.1, ipndm


def test_published_ipndm_v_stalls_where_step_ratios_change_fast():
    """kl_optimal's first steps shrink by factors 2-5 until N >> 100: the published order-4 weights,
    not consistent there, leave an error that does not fall from 32 to 128 steps (measured
    1.6e-2, 1.7e-2, 1.8e-2 on EDM), while the exact weights converge."""
    process = fs.EDM()
    grids = [fs.make_grid(process, "kl_optimal", n) for n in (32, 64, 128)]
    _, published = _orders(process, "ipndm_v", grids, process.prior_std, variant="published")
    assert published[-1] > 0.5 * published[0] and published[-1] > 5e-3, published
    orders, exact = _orders(process, "ipndm_v", grids, process.prior_std)
    assert exact[-1] < 1e-3 and all(o > 1.8 for o in orders), (orders, exact)


def test_registered_orders_hold_on_the_default_order_check():
    """flowsolve.testing.check_solver_order (EDM, a two-mode mixture, Karras rho=7 and 3 and
    log_sigma, 64 -> 128 -> 256 steps) passes at the registered orders: lms and ipndm_v 4
    (measured 3.94, 3.87, 3.80), ipndm 2 (2.01, 2.03, 2.01)."""
    import flowsolve.testing as ft

    for solver in ("lms", "ipndm"):
        result = ft.check_solver_order(solver)
        assert result, result


# =========================================================================================
# Every process, NFE, budgets, options
# =========================================================================================

@pytest.mark.parametrize("process", [fs.VE(), fs.VP(), fs.SubVP(), fs.EDM(), fs.PFGMPP(D=8), fs.PFGMPP(D=1)],
                         ids=["VE", "VP", "SubVP", "EDM", "PFGMPP8", "PFGMPP1"])
@pytest.mark.parametrize("solver", ["ipndm", "ipndm_v", "lms"])
def test_runs_on_every_process_at_one_nfe_per_step(process, solver):
    law = fs.toy.Empirical(torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]], dtype=F64))
    field = fs.exact_field(process, law)
    sol = fs.sample(process, field, 16, solver, steps=12, seed=0, dtype=F64)
    assert sol.success and torch.isfinite(sol.x).all()
    assert sol.nfe.tolist() == [12] * 16 and sol.n_steps.tolist() == [12] * 16
    # 40 steps land near a data point (the ODE's end at t_min is within sigma_min of the data). The
    # median: PFGM's (D = 1) Cauchy prior puts a sample now and then hundreds of sigma_max out, and
    # from there even dopri5 at rtol 1e-9 ends 0.24 from the data (seed 0, sample 1).
    fine = fs.sample(process, field, 16, solver, steps=40, seed=0, dtype=F64)
    dist = torch.cdist(fine.x / float(process.scale(process.t_min)), law.points).min(dim=1).values
    assert float(dist.median()) < 0.02, dist
    if getattr(process, "D", None) != 1:
        assert float(dist.max()) < 0.2, dist


@pytest.mark.parametrize("solver", ["ipndm", "ipndm_v", "lms"])
def test_nfe_budget(solver):
    process = fs.EDM()
    field = fs.exact_field(process, GAUSS)
    assert fs.available_solvers()[solver]["nfe_per_step"] == 1
    sol = fs.sample(process, field, 8, solver, nfe=10, seed=0)
    assert sol.nfe.tolist() == [10] * 8 and sol.n_steps.tolist() == [10] * 8
    sol = fs.sample(process, field, 8, solver, nfe=10, seed=0, denoise_final=True)
    assert sol.nfe.tolist() == [10] * 8 and sol.n_steps.tolist() == [9] * 8


def test_options_are_checked():
    process = fs.EDM()
    field = fs.exact_field(process, GAUSS)
    for solver, bad in (("ipndm", dict(max_order=0)), ("ipndm", dict(max_order=5)), ("ipndm", dict(max_order=2.5)),
                        ("lms", dict(order=5)), ("ipndm_v", dict(max_order=0)), ("ipndm_v", dict(variant="comfy"))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            fs.sample(process, field, 2, solver, steps=4, seed=0, **bad)
    with pytest.raises(ValueError, match="did you mean 'max_order'"):
        fs.sample(process, field, 2, "ipndm", steps=4, seed=0, order=3)
    assert fs.available_solvers()["ipndm_v"]["options"] == {"max_order": 4, "variant": "exact"}
    assert fs.available_solvers()["lms"]["options"] == {"order": 4}


def test_a_plain_ode_is_refused():
    class Decay:  # any flow with a drift, but no process or field
        def drift(self, x, t):
            return -x

    flow = Decay()
    with pytest.raises(ValueError, match="process-aware"):
        fs.solve(flow, torch.ones(2, 1, dtype=F64), torch.linspace(1.0, 0.5, 5, dtype=F64), "lms")


# =========================================================================================
# The kl_optimal grid
# =========================================================================================

@pytest.mark.parametrize("process", [fs.EDM(), fs.VP(), fs.VE(), fs.SubVP(), fs.PFGMPP(D=8)],
                         ids=["EDM", "VP", "VE", "SubVP", "PFGMPP"])
@pytest.mark.parametrize("steps", [1, 7, 40])
def test_kl_optimal_grid_is_the_closed_form(process, steps):
    """sigma_i = tan((1 - i/N) atan(sigma_max) + (i/N) atan(sigma_min)) (Sabour et al. 2024; ComfyUI's
    kl_optimal_scheduler with n = N + 1 points, i/(n-1) = i/N), from t_max down to t_min."""
    t = fs.make_grid(process, "kl_optimal", steps)
    assert t.dtype == F64 and t.shape == (steps + 1,)
    assert float(t[0]) == process.t_max and float(t[-1]) == process.t_min
    assert bool((t[1:] < t[:-1]).all())
    i = np.arange(steps + 1) / steps
    closed = np.tan((1 - i) * math.atan(process.sigma_max) + i * math.atan(process.sigma_min))
    assert np.allclose(process._sigma(t).numpy(), closed, rtol=1e-10, atol=0)


def test_kl_optimal_grid_is_listed_and_takes_no_options():
    assert "kl_optimal" in fs.available_grids()
    with pytest.raises(ValueError, match="rho= is not used by grid='kl_optimal'"):
        fs.make_grid(fs.EDM(), "kl_optimal", 5, rho=7.0)
    sol = fs.sample(fs.EDM(), fs.exact_field(fs.EDM(), GAUSS), 4, "ipndm", nfe=6, grid="kl_optimal", seed=0)
    assert sol.success and sol.nfe.tolist() == [6] * 4
