"""Property checks: the theorems behind generative flows, measured on a user's process, field or
solver.

Each ``check_*`` function measures one figure, holds it to a tolerance and returns a
:class:`~flowsolve.testing.CheckResult` (truthy when it passed, with a one-line explanation and
the other figures in ``details``); its ``assert_*`` twin raises ``AssertionError`` with that line.
Statistical checks state their false-alarm rate: the probability that an exact sampler fails.

The references are independent of the code under test: closed forms and 1-D quadrature from
:mod:`flowsolve.testing.references`, autograd, and Monte Carlo estimates of the papers'
integral definitions. docs/verification.md describes every check.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import special, stats

from .._validation import check_int, check_positive, check_real
from ..fields import Field
from ..flows import probability_flow
from ..grids import make_grid
from ..processes import EDM, PFGMPP
from ..processes.kernels import StudentTKernel
from ..solvers import sample, solve
from ..solvers.registry import get_solver
from ..toy.distributions import Empirical, GaussianMixture
from ..toy.exact import exact_field
from . import references
from ._result import CheckResult

# The default problem of check_solver_order: nonlinear (unlike Gaussian data), broad enough for
# 64 -> 256 steps to be in the asymptotic range on EDM's sigma in [0.002, 80].
DEFAULT_ORDER_LAW = GaussianMixture([[-1.0], [1.0]], [0.3, 0.5], [0.4, 0.6])
DEFAULT_ORDER_GRIDS = ("karras", ("karras", {"rho": 3.0}), "log_sigma")

# Solver/grid pairs where a solver can measure above its registered order (the step pattern
# cancels the leading error term; on Gaussian data 3M measures about 4 there, on the default
# mixture 3.0), so only the lower side of the order test applies there.
SUPERCONVERGENT = {
    ("dpmpp_3m", "log_sigma"): "3-step multistep on a grid uniform in lambda (measures about 4)",
    ("dpmpp_3m", "logsnr"): "3-step multistep on a grid uniform in lambda (measures about 4)",
}


def _twin(check: Callable) -> Callable:
    """The ``assert_*`` form of a check: same arguments; raises ``AssertionError`` with the
    check's one-line explanation when it fails, and returns the result otherwise."""

    @functools.wraps(check)
    def assert_(*args, **kwargs) -> CheckResult:
        return check(*args, **kwargs).assert_passed()

    assert_.__name__ = assert_.__qualname__ = "assert_" + check.__name__.removeprefix("check_")
    assert_.__doc__ = f"Run :func:`{check.__name__}` and raise ``AssertionError`` unless it passes.\n\n" + (
        check.__doc__ or "")
    return assert_


def _is_student_t(process) -> bool:
    return isinstance(process.kernel, StudentTKernel)


def _check_time(process, name: str, t) -> float:
    t = float(t)
    if not process.t_min <= t <= process.t_max:
        raise ValueError(f"{name} must lie in [t_min, t_max] = [{process.t_min}, {process.t_max}], got {t!r}")
    return t


def _slope(xs, ys) -> float:
    """Least-squares slope of log ys against log xs."""
    return float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)[0])


def _decay_rate(Ds, errors, floor: float = 1e-12) -> tuple[float, bool]:
    """The rate r of ``error ~ D^-r`` fitted over the errors above rounding level, and whether the
    last error is at rounding level (then the two sides agree at every D, e.g. a single data
    point, where both kernels give the same denoiser, and there is no rate to measure). A
    non-finite error gives rate NaN and no exactness, so the check fails."""
    if not all(math.isfinite(e) for e in errors):
        return float("nan"), False
    above = [(D, e) for D, e in zip(Ds, errors) if e > floor]
    rate = -_slope(*zip(*above)) if len(above) >= 2 else float("nan")
    return rate, errors[-1] <= floor


def _directions(dim: int, count: int, seed: int) -> np.ndarray:
    """The coordinate axes first, then seeded random unit vectors: ``count`` rows of length dim
    (in 1-D the one direction there is)."""
    count = check_int("directions", count, 1)
    if dim == 1:
        return np.ones((1, 1))
    rows = list(np.eye(dim))[:count]
    rng = np.random.default_rng(seed)
    while len(rows) < count:
        v = rng.standard_normal(dim)
        rows.append(v / np.linalg.norm(v))
    return np.stack(rows)


def _projected_ks(x: torch.Tensor, process, law, t: float, directions: np.ndarray):
    """KS p-values of the projections ``u . x`` against the exact projected marginal at t (0 for
    every projection when a sample is not finite: a sampler that blows up fails)."""
    flat = x.detach().reshape(x.shape[0], -1).to(torch.float64).cpu().numpy()
    if not np.isfinite(flat).all():
        return [0.0] * len(directions)
    pvalues = []
    for u in directions:
        marginal = references.marginal_1d(process, law, t, u if law.dim > 1 else None)
        pvalues.append(float(stats.kstest(flat @ u, marginal.cdf).pvalue))
    return pvalues


def _ks_verdict(name: str, pvalues: list, alpha: float, what: str) -> CheckResult:
    """Bonferroni over the projections: the family-wise false-alarm rate is at most alpha."""
    pvalues = [p if math.isfinite(p) else 0.0 for p in pvalues]
    adjusted = min(1.0, min(pvalues) * len(pvalues))
    worst = int(np.argmin(pvalues))
    passed = adjusted >= alpha
    verdict = "consistent with" if passed else "differ from"
    return CheckResult(name, adjusted, alpha, passed,
                       f"{what} {verdict} the exact marginal: smallest KS p-value {min(pvalues):.3g} on projection "
                       f"{worst} of {len(pvalues)} (Bonferroni-adjusted {adjusted:.3g}, false-alarm rate {alpha:g})",
                       {"pvalues": pvalues})


def _prior_draw(process, law, n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return process.prior_sample(n, law.event_shape, generator=generator, dtype=dtype)


def _marginal_draw(process, law, n: int, t: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return process.perturb(law.sample(n, generator=generator, dtype=torch.float64), t, generator=generator)


# --- D -> infinity: PFGM++ becomes diffusion ------------------------------------------------

def _check_Ds(Ds) -> list[float]:
    Ds = [float(D) for D in Ds]
    if len(Ds) < 2 or any(not (0 < D < math.inf) for D in Ds) or sorted(set(Ds)) != Ds:
        raise ValueError(f"Ds must be at least two strictly increasing finite positive augmentation dimensions, "
                         f"got {Ds!r}")
    return Ds


def check_d_limit(data, x: torch.Tensor, sigma: float, *, Ds: Sequence[float] = (1e3, 1e4, 1e5, 1e6),
                  poisson_field: Callable | None = None, score: Callable | None = None,
                  tolerance: float = 1e-2, min_rate: float = 0.75) -> CheckResult:
    """PFGM++ -> diffusion as D -> infinity with r = sigma sqrt(D) (Xu et al. 2023, PFGM++,
    Theorem 4.1, with the sign the seed text drops):

        sqrt(D) E_x / E_r  ->  -sigma grad_x log p_sigma(x).

    The theorem states the limit only; the O(1/D) rate checked here is ours (the Student-t
    kernel's log density differs from the Gaussian's by O(1/D) at fixed sigma), and is what the
    exact fields measure (``err * D`` constant to 1 %).

    Measures ``err(D) = max |sqrt(D) E_x/E_r + sigma score| / max |sigma score|`` over the points
    ``x`` for each D. Passes when the error falls at least like ``D**-min_rate`` (least-squares
    slope in log-log) and is below ``tolerance`` at the largest D. ``details`` has the errors,
    ``err * D`` (about constant when the rate is 1/D) and the error of the sign-dropped identity.

    ``poisson_field(x, sigma, D)`` gives ``E_x/E_r`` (default: flowsolve's exact PFGM++ field of
    the toy law ``data``); ``score(x, sigma)`` the Gaussian-kernel score (default: the exact EDM
    field of ``data``).
    """
    sigma = check_positive("sigma", sigma)
    Ds = _check_Ds(Ds)
    tolerance, min_rate = check_positive("tolerance", tolerance), check_positive("min_rate", min_rate)
    x = x.detach().to(torch.float64)
    if poisson_field is None:
        def poisson_field(x, sigma, D):
            return exact_field(PFGMPP(D=D, sigma_min=min(sigma, 0.002), sigma_max=max(sigma, 80.0)),
                               data).poisson_field(x, sigma)
    if score is None:
        edm = exact_field(EDM(sigma_min=min(sigma, 0.002), sigma_max=max(sigma, 80.0)), data)
        score = edm.score
    target = -sigma * score(x, sigma).to(torch.float64)
    norm = float(target.abs().max()) or 1.0
    errors, flipped = [], []
    for D in Ds:
        signed = math.sqrt(D) * poisson_field(x, sigma, D).to(torch.float64)
        errors.append(float((signed - target).abs().max()) / norm)
        flipped.append(float((signed + target).abs().max()) / norm)
    rate, exact = _decay_rate(Ds, errors)
    passed = errors[-1] <= tolerance and (rate >= min_rate or exact)
    hint = ""
    if not passed and flipped[-1] < errors[-1] / 10:
        hint = "; it matches +sigma grad log p instead: the minus sign is dropped (as in the seed text's statement)"
    explanation = (f"sqrt(D) E_x/E_r vs -sigma grad log p_sigma at sigma={sigma:g}: relative error {errors[-1]:.3g} at "
                   f"D={Ds[-1]:g} (tolerance {tolerance:g}), decay rate D^-{rate:.2f} (at least {min_rate:g}){hint}")
    return CheckResult("d_limit", errors[-1], tolerance, passed, explanation,
                       {"D": Ds, "error": errors, "error_times_D": [e * D for e, D in zip(errors, Ds)],
                        "rate": rate, "sign_dropped_error": flipped})


def check_d_limit_trajectory(data, x_init: torch.Tensor, *, Ds: Sequence[float] = (1e2, 1e3, 1e4),
                             sigma_min: float = 0.002, sigma_max: float = 80.0, solver: str = "heun",
                             steps: int = 32, field_for: Callable | None = None, tolerance: float = 1e-2,
                             min_rate: float = 0.75) -> CheckResult:
    """Given the same start point, the PFGM++ ODE trajectory matches the diffusion (EDM) ODE
    trajectory as D -> infinity (PFGM++, Theorem 4.1, second part; the O(1/D) rate is ours).

    Solves both ODEs (``dx/dsigma = (x - D(x; sigma))/sigma`` with each kernel's denoiser) from
    ``x_init`` at ``sigma_max`` to ``sigma_min`` with ``solver`` on the same Karras grid of
    ``steps`` steps, so the discretisation is shared, and measures the largest end-point gap
    relative to the largest end-point norm for each D. Passes as :func:`check_d_limit` does.
    ``field_for(process)`` builds the field (default ``fs.exact_field(process, data)``).
    """
    Ds = _check_Ds(Ds)
    tolerance, min_rate = check_positive("tolerance", tolerance), check_positive("min_rate", min_rate)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")
    x_init = x_init.detach().to(torch.float64)
    field_for = field_for or (lambda process: exact_field(process, data))

    def end_point(process):
        flow = probability_flow(process, field_for(process))
        return solve(flow, x_init, make_grid(process, "karras", steps), solver).x.to(torch.float64)

    diffusion = end_point(EDM(sigma_min, sigma_max))
    norm = float(diffusion.abs().max()) or 1.0
    errors = [float((end_point(PFGMPP(D, sigma_min, sigma_max)) - diffusion).abs().max()) / norm for D in Ds]
    rate, exact = _decay_rate(Ds, errors)
    passed = errors[-1] <= tolerance and (rate >= min_rate or exact)
    return CheckResult("d_limit_trajectory", errors[-1], tolerance, passed,
                       f"PFGM++ vs diffusion ODE end points from the same start ({solver}, {steps} steps): relative gap "
                       f"{errors[-1]:.3g} at D={Ds[-1]:g} (tolerance {tolerance:g}), decay rate D^-{rate:.2f} "
                       f"(at least {min_rate:g})",
                       {"D": Ds, "error": errors, "error_times_D": [e * D for e, D in zip(errors, Ds)], "rate": rate})


# --- the prior ------------------------------------------------------------------------------

def prior_kl(process, law, *, n: int = 4096, seed: int = 0, log_prob: Callable | None = None) -> tuple[float, float]:
    """``KL(p_{t_max} || prior)`` and its standard error.

    Gaussian data under a Gaussian kernel: the closed form (standard error 0). Otherwise a
    Monte Carlo estimate of ``E[log p_{t_max}(x) - log prior(x)]`` over ``x ~ p_{t_max}``, with
    antithetic kernel draws ``s(y + sigma n)``, ``s(y - sigma n)`` (which cancel the term linear in
    the noise that dominates the variance), and the standard error of the pair means.
    ``log_prob(x, t)`` defaults to flowsolve's exact field of ``law``.
    """
    n = check_int("n", n, 4) // 2
    if log_prob is None and not _is_student_t(process) and isinstance(law, GaussianMixture) and law.n_components == 1:
        return references.prior_kl(process, law), 0.0
    log_prob = log_prob or exact_field(process, law).log_prob
    generator = torch.Generator().manual_seed(seed)
    y = law.sample(n, generator=generator, dtype=torch.float64)
    noise = process.perturb(torch.zeros_like(y), process.t_max, generator=generator)
    s = float(process.scale(process.t_max))
    pairs = []
    for x in (s * y + noise, s * y - noise):
        pairs.append(log_prob(x, process.t_max).to(torch.float64) - process.prior_log_prob(x).to(torch.float64))
    per_pair = 0.5 * (pairs[0] + pairs[1])
    return float(per_pair.mean()), float(per_pair.std() / math.sqrt(n))


def check_prior_convergence(processes: Sequence, law, *, tolerance: float = 1e-2, n: int = 4096, seed: int = 0,
                            log_prob: Callable | None = None, expected_rate: float | None = None,
                            rate_tolerance: float = 0.5) -> CheckResult:
    """The perturbed marginal converges to the prior as the noise at t_max grows (the prior limit
    in PFGM++ Theorem 1 as the seed states it, r_max -> infinity; for diffusions the Gaussian
    prior limit of score_sde). The theorem, for C^1 data with compact support, is a statement
    about the ODE's bijection; the check measures the KL itself, for any law.

    ``processes`` is a sequence with growing noise at ``t_max`` (sigma_max, beta_max, or r_max =
    sigma_max sqrt(D)). Measures ``KL(p_{t_max} || prior)`` for each (:func:`prior_kl`: closed
    form for Gaussian data under a Gaussian kernel, else an estimate with its standard error).
    Passes when the KL never rises by more than 3 standard errors along the sequence (each
    estimate uses its own draws) and the last is below ``tolerance`` by 3 standard errors. ``details["rate"]`` is the log-log slope of KL against sigma(t_max),
    over the values resolved from their standard error: about -2 once sigma(t_max) dominates the
    data (the mean term ``s^2 |mu|^2 / (2 prior_std^2)``), -4 when the data mean is 0. With
    ``expected_rate`` the slope must also be within ``rate_tolerance`` of it.
    """
    processes = list(processes)
    if len(processes) < 2:
        raise ValueError(f"processes must hold at least two processes with growing noise, got {len(processes)}")
    sigmas = [float(p.sigma(p.t_max)) for p in processes]
    if sorted(set(sigmas)) != sigmas:
        raise ValueError(f"processes must have strictly growing sigma(t_max), got {sigmas}")
    tolerance = check_positive("tolerance", tolerance)
    rate_tolerance = check_positive("rate_tolerance", rate_tolerance)
    # independent draws per process, so that the standard errors of successive estimates add
    kls, ses = zip(*(prior_kl(p, law, n=n, seed=seed + i, log_prob=log_prob) for i, p in enumerate(processes)))
    monotone = all(b <= a + 3 * math.hypot(sa, sb) for a, b, sa, sb in zip(kls, kls[1:], ses, ses[1:]))
    resolved = [(s, k) for s, k, e in zip(sigmas, kls, ses) if k > 5 * e and k > 0]
    rate = _slope(*zip(*resolved)) if len(resolved) >= 2 else float("nan")
    # the last KL must be below the tolerance by 3 standard errors, not only on average
    passed = monotone and all(map(math.isfinite, kls)) and kls[-1] + 3 * ses[-1] <= tolerance
    rate_note = ""
    if expected_rate is not None:
        rate_ok = math.isfinite(rate) and abs(rate - expected_rate) <= rate_tolerance
        passed = passed and rate_ok
        rate_note = f" (expected {expected_rate:g} +- {rate_tolerance:g}{'' if rate_ok else ': missed'})"
    trend = "decreases" if monotone else "does not decrease"
    return CheckResult("prior_convergence", kls[-1], tolerance, passed,
                       f"KL(p_t_max || prior) {trend} along the {len(processes)} processes: last {kls[-1]:.3g} +- "
                       f"{ses[-1]:.2g} (tolerance {tolerance:g}); log-log rate in sigma(t_max) {rate:.2f}{rate_note}",
                       {"kl": list(kls), "standard_error": list(ses), "sigma_t_max": sigmas, "rate": rate})


# --- marginals ------------------------------------------------------------------------------

def check_perturb_marginal(process, law, t, *, n: int = 2000, directions: int = 4, seed: int = 0,
                           alpha: float = 1e-3, perturb: Callable | None = None) -> CheckResult:
    """Samples of the forward kernel follow the analytic marginal ``p_t`` (DESIGN.md section 1):
    ``x_t = s(t)(y + sigma(t) n)``, n Gaussian or the PFGM++ Student-t kernel.

    Draws ``y ~ law``, ``x = perturb(y, t, generator)`` (default ``process.perturb``) and runs a
    KS test of the projections of x on ``directions`` unit vectors (the axes, then seeded random
    ones) against the exact projected marginal (:func:`references.marginal_1d`). Passes when the
    Bonferroni-adjusted smallest p-value is at least ``alpha``: an exact sampler fails with
    probability at most ``alpha``.
    """
    t = _check_time(process, "t", t)
    n, alpha = check_int("n", n, 2), check_real("alpha", alpha, 0.0, 1.0, strict_min=True, strict_max=True)
    perturb = perturb or process.perturb
    generator = torch.Generator().manual_seed(seed)
    x = perturb(law.sample(n, generator=generator, dtype=torch.float64), t, generator=generator)
    pvalues = _projected_ks(x, process, law, t, _directions(law.dim, directions, seed))
    return _ks_verdict("perturb_marginal", pvalues, alpha, f"{n} perturbed samples at t={t:g}")


def _exact_map(process, law, x: torch.Tensor, t: float, s: float) -> torch.Tensor:
    """The exact probability-flow map from t to s, in float64 on x's device."""
    x = x.detach().to(torch.float64)
    if isinstance(law, GaussianMixture) and law.n_components == 1 and not _is_student_t(process):
        return references.gaussian_flow_map(process, law, x, t, s)
    if law.dim == 1:
        mapped = references.flow_map_1d(process, law, x.reshape(-1).cpu().numpy(), t, s)
        return torch.as_tensor(np.asarray(mapped), dtype=torch.float64, device=x.device).reshape(x.shape)
    raise ValueError("the exact probability-flow map is known for Gaussian data under a Gaussian kernel and for "
                     f"1-D laws; got a {law.dim}-D {type(law).__name__} under {process!r} "
                     "(use check_marginal_pushforward, which tests the law instead)")


def check_flow_map(process, law, t, s, *, field: Field | None = None, x: torch.Tensor | None = None, n: int = 64,
                   solver: str = "dopri5", rtol: float = 1e-9, atol: float = 1e-9, tolerance: float = 1e-6,
                   seed: int = 0, **options) -> CheckResult:
    """The probability-flow ODE pushes marginal samples at t to marginal samples at s, point by
    point, as the exact map does (Song et al. 2021, eq. 13).

    Exact map: Gaussian data under a Gaussian kernel scale each eigen-coordinate of
    ``x/s - mu`` by ``sqrt((lambda + sigma_s^2)/(lambda + sigma_t^2))``; any 1-D law under either
    kernel has the monotone map ``F_s^{-1}(F_t(x))`` (the optimal-transport map between the
    marginals). Solves from ``x`` (default: ``n`` draws of the marginal at t) with ``solver`` and
    measures the largest error relative to ``max(1, max |exact|)``; passes below ``tolerance``.
    """
    t, s = _check_time(process, "t", t), _check_time(process, "s", s)
    if t == s:
        raise ValueError(f"t and s must differ (got t = s = {t!r}): the map from t to itself is the identity")
    tolerance = check_positive("tolerance", tolerance)
    x = _marginal_draw(process, law, check_int("n", n, 1), t, seed) if x is None else x
    exact = _exact_map(process, law, x, t, s)
    flow = probability_flow(process, field or exact_field(process, law))
    if get_solver(solver).adaptive:
        options.update(rtol=rtol, atol=atol)
    solved = solve(flow, x, (t, s), solver, **options).x
    error = float((solved.to(torch.float64) - exact.to(torch.float64)).abs().max()) / max(1.0, float(exact.abs().max()))
    return CheckResult("flow_map", error, tolerance, error <= tolerance,
                       f"probability-flow map t={t:g} -> s={s:g} ({solver}) vs the exact map: relative error "
                       f"{error:.3g} (tolerance {tolerance:g}) over {x.shape[0]} points", {"error": error})


def check_marginal_pushforward(process, law, t, s, *, field: Field | None = None, n: int = 2000,
                               directions: int = 4, solver: str = "dopri5", rtol: float = 1e-6,
                               atol: float = 1e-6, seed: int = 0, alpha: float = 1e-3, **options) -> CheckResult:
    """The probability-flow ODE pushes the marginal at t to the marginal at s (the law, not
    point by point; works for any law with an exact projected marginal). ``rtol``/``atol`` go
    to an adaptive solver; ``options`` (e.g. ``steps=``) to any.

    Draws ``n`` marginal samples at t, solves to s, and runs the projected KS test of
    :func:`check_perturb_marginal` against the marginal at s. False-alarm rate at most ``alpha``
    for an exact solve (a solver error visible at this n fails it, by design).
    """
    t, s = _check_time(process, "t", t), _check_time(process, "s", s)
    if t == s:
        raise ValueError(f"s must differ from t (got t = s = {t!r})")
    n, alpha = check_int("n", n, 2), check_real("alpha", alpha, 0.0, 1.0, strict_min=True, strict_max=True)
    flow = probability_flow(process, field or exact_field(process, law))
    tolerances = dict(rtol=rtol, atol=atol) if get_solver(solver).adaptive else {}
    x = solve(flow, _marginal_draw(process, law, n, t, seed), (t, s), solver, **tolerances, **options).x
    pvalues = _projected_ks(x, process, law, s, _directions(law.dim, directions, seed + 1))
    return _ks_verdict("marginal_pushforward", pvalues, alpha, f"{n} samples pushed from t={t:g} to s={s:g}")


def check_sde_ode_same_law(process, law, *, field: Field | None = None, n: int = 2000, sde_solver: str = "euler_maruyama",
                           sde_steps: int = 500, ode_solver: str = "dopri5", rtol: float = 1e-6, directions: int = 4,
                           seed: int = 0, alpha: float = 1e-3, device=None, **sde_options) -> CheckResult:
    """The reverse SDE and the probability-flow ODE started from the prior end in the same law,
    the marginal at t_min (Song et al. 2021, section 4.3).

    Samples ``n`` points with each and runs, on each projection, a two-sample KS test between
    them and a KS test of each against the exact marginal at t_min (3 tests per projection,
    Bonferroni over all). The false-alarm rate is at most ``alpha`` for exact samplers; a
    discretised SDE carries a bias that a large ``n`` will detect, so pick ``sde_steps`` to
    match ``n``. Both run in float64 on ``device``.
    """
    n, alpha = check_int("n", n, 2), check_real("alpha", alpha, 0.0, 1.0, strict_min=True, strict_max=True)
    field = field or exact_field(process, law)
    common = dict(shape=law.event_shape, dtype=torch.float64, device=device)
    sde = sample(process, field, n, sde_solver, steps=sde_steps, seed=seed, **common, **sde_options).x
    ode = sample(process, field, n, ode_solver, rtol=rtol, atol=rtol, seed=seed + 1, **common).x
    dirs = _directions(law.dim, directions, seed)
    pvalues = _projected_ks(sde, process, law, process.t_min, dirs) + _projected_ks(ode, process, law, process.t_min, dirs)
    flat = [z.detach().reshape(n, -1).to(torch.float64).cpu().numpy() for z in (sde, ode)]
    if all(np.isfinite(f).all() for f in flat):
        pvalues += [float(stats.ks_2samp(flat[0] @ u, flat[1] @ u).pvalue) for u in dirs]
    return _ks_verdict("sde_ode_same_law", pvalues, alpha,
                       f"reverse SDE ({sde_solver}, {sde_steps} steps) and ODE ({ode_solver}) samples, n={n},")


def marginal_moments(process, law, t) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of ``x_t = s(y + sigma n)`` (flattened event): ``s E[y]`` and
    ``s^2 (Cov y + sigma^2 E[n n^T])`` with ``E[n n^T] = I`` (Gaussian kernel) or ``D/(D-2) I``
    (PFGM++ kernel, finite for D > 2 only)."""
    t = _check_time(process, "t", t)
    s, sigma = float(process.scale(t)), float(process.sigma(t))
    second = 1.0
    if _is_student_t(process):
        D = process.kernel.D
        if D <= 2:
            raise ValueError(f"the PFGM++ kernel has no covariance for D <= 2 (got D={D:g})")
        second = D / (D - 2)
    mean = s * law.mean().reshape(-1)
    cov = s**2 * (law.covariance() + sigma**2 * second * torch.eye(law.dim, dtype=torch.float64))
    return mean, cov


def check_sampler_law(process, law, solver: str, *, field: Field | None = None, steps: int | None = None,
                      nfe: int | None = None, n: int = 4000, seed: int = 0, z_max: float = 4.0,
                      covariance_tolerance: float = 0.1, **options) -> CheckResult:
    """A sampler's output against the data law's marginal at t_min, at a given budget.

    Samples ``n`` points (``fs.sample`` with ``solver``, ``steps``/``nfe``, ``options``) and
    compares, against the exact moments (:func:`marginal_moments`):

    - each coordinate's mean, by its z-score (standard error from the exact variance);
    - each covariance entry, by its error in correlation units ``|C^_ij - C_ij| / sqrt(C_ii C_jj)``
      (on the diagonal: the variance ratio minus 1).

    Passes when every mean |z| <= ``z_max`` and every covariance error is within
    ``max(covariance_tolerance, z_max standard errors)``. The standard error of ``C^_ij`` is that
    of a mean of centred products, taken from a fresh exact draw of the marginal, never from the
    samples under test (whose outliers would widen their own allowance). For an exact sampler the false-alarm rate is at most
    about ``dim (dim + 3) / 2 * 6e-5`` at z_max = 4 (normal approximation), less where the
    tolerance floor applies. ``details`` also has the energy distance between the samples and a
    fresh draw of the marginal, next to its value between two fresh draws (its noise level at
    this n). This is how the bias of a rule such as score_sde's per-sample Langevin step size
    shows.
    """
    z_max = check_positive("z_max", z_max)
    covariance_tolerance = check_real("covariance_tolerance", covariance_tolerance, 0.0)
    n = check_int("n", n, 2)
    if steps is not None and nfe is not None:
        raise ValueError(f"give steps or nfe, not both (got steps={steps!r}, nfe={nfe!r})")
    field = field or exact_field(process, law)
    budget = {"steps": steps} if steps is not None else {"nfe": nfe} if nfe is not None else {}
    shown = ", ".join(f"{k}={v}" for k, v in {**budget, **options}.items()) or "default budget"
    options.setdefault("dtype", torch.float64)
    x = sample(process, field, n, solver, seed=seed, shape=law.event_shape, **budget, **options).x
    x = x.detach().reshape(n, -1).to(torch.float64).cpu()
    mean, cov = marginal_moments(process, law, process.t_min)
    fresh = [_marginal_draw(process, law, n, process.t_min, seed + k).reshape(n, -1).to(torch.float64) for k in (1, 2)]
    z = (x.mean(0) - mean) / torch.sqrt(torch.diagonal(cov) / n)

    def centred_products(v):
        c = v - v.mean(0)
        return c[:, :, None] * c[:, None, :]  # (n, dim, dim)

    unit = torch.sqrt(torch.diagonal(cov)[:, None] * torch.diagonal(cov)[None, :])
    cov_error = (centred_products(x).mean(0) - cov) / unit
    allowed = torch.clamp(z_max * centred_products(fresh[0]).std(0) / math.sqrt(n) / unit, min=covariance_tolerance)
    worst_z = float(z.abs().max())
    worst_cov = float(cov_error.abs().max())
    finite = bool(torch.isfinite(x).all())
    passed = finite and worst_z <= z_max and bool((cov_error.abs() <= allowed).all())
    energy, noise_level = _energy_distance(x, fresh[0]), _energy_distance(fresh[0], fresh[1])
    return CheckResult("sampler_law", worst_z, z_max, passed,
                       f"{solver} ({shown}), n={n}{'' if finite else ', NON-FINITE samples'}: mean |z| up to {worst_z:.2f} (at most {z_max:g}), covariance "
                       f"off by up to {worst_cov:.3f} in correlation units (allowed {float(allowed.max()):.3f}); "
                       f"energy distance {energy:.2e} vs {noise_level:.2e} between two exact draws",
                       {"z": z.tolist(), "variance_ratio": (torch.diagonal(cov_error) + 1).tolist(),
                        "covariance_error": cov_error.tolist(), "energy_distance": energy,
                        "energy_distance_null": noise_level})


def _energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Squared energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (V-statistic, Szekely & Rizzo)."""
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


# --- field identities -----------------------------------------------------------------------

def check_score_autograd(field: Field, x: torch.Tensor, t, *, log_prob: Callable | None = None,
                         rtol: float = 1e-8) -> CheckResult:
    """The score is the gradient of the log density: ``field.score(x, t) = grad_x log p_t(x)``,
    with the gradient taken by autograd of ``log_prob(x, t)`` (default ``field.log_prob``, which
    flowsolve's exact fields have). Measures the largest difference relative to the size of the
    terms of ``(s D - x)/(s^2 sigma^2)`` (the score can be 0, at a mode); passes below ``rtol``."""
    rtol = check_positive("rtol", rtol)
    log_prob = log_prob or getattr(field, "log_prob", None)
    if log_prob is None:
        raise ValueError("log_prob is required: this field has no log_prob(x, t)")
    t = _check_time(field.process, "t", t)
    x64 = x.detach().to(torch.float64)
    xg = x64.clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(log_prob(xg, t).sum(), xg)
    score = field.score(x64, t).to(torch.float64)
    s, sigma = float(field.process.scale(t)), float(field.process.sigma(t))
    size = (s * field.denoiser(x64, t).to(torch.float64).abs() + x64.abs()) / (s * sigma) ** 2
    error = float((score - grad).abs().max()) / max(float(size.max()), float(grad.abs().max()), 1e-300)
    error = error if math.isfinite(error) else math.inf
    return CheckResult("score_autograd", error, rtol, error <= rtol,
                       f"score vs autograd of log p_t: relative difference {error:.3g} (tolerance {rtol:g})",
                       {"error": error})


def _schedule_rates(process, t: float):
    """s, sigma and their time derivatives at t. The derivatives are 4th-order finite differences
    of the schedules (5 points, step 1e-3 of |t| or of the span, shifted inward at the ends), independent
    of the processes' own derivative hooks and valid for interpolated schedules (LinearSDE);
    accurate to about 1e-8 relative."""
    lo, hi = process.t_min, process.t_max
    h = 1e-3 * min(hi - lo, max(abs(t), 1e-2 * (hi - lo)))  # relative to t: VP's sigma ~ sqrt(t) near 0
    first = min(max(-2, math.ceil((lo - t) / h)), 0)
    first = max(min(first, math.floor((hi - t) / h) - 4), -4)
    offsets = np.arange(first, first + 5, dtype=np.float64)
    pts = torch.as_tensor(t + h * offsets, dtype=torch.float64).clamp(lo, hi)
    # weights of the derivative at offset 0 of the interpolating quartic
    weights = np.linalg.solve(np.vander(offsets, 5, increasing=True).T, np.array([0.0, 1.0, 0.0, 0.0, 0.0])) / h
    s_pts, sig_pts = process.scale(pts).numpy(), process.sigma(pts).numpy()
    return (float(process.scale(t)), float(process.sigma(t)), float(weights @ s_pts), float(weights @ sig_pts))


def check_field_conversions(field: Field, x: torch.Tensor, t, *, rtol: float = 1e-7) -> CheckResult:
    """Every quantity of a field is the right conversion of its denoiser (DESIGN.md section 2),
    written here independently of flowsolve's conversion code:

        eps = (x/s - D)/sigma,   score = (s D - x)/(s^2 sigma^2)  (Gaussian kernel),
        velocity = (s'/s) x + (sigma'/sigma)(x - s D),   E_x/E_r = (x/s - D)/(sigma sqrt(D_aug)),

    with s', sigma' by finite differences of the schedules (about 1e-8 relative); and each
    quantity round-trips: a field built from it (``Field.from_eps`` ...) gives back the same
    denoiser. Measures the largest difference relative to the size of the terms of each formula
    (a value may cancel to 0); passes below ``rtol`` (one time ``t`` for the whole batch).
    """
    process = field.process
    x64 = x.detach().to(torch.float64)
    s, sigma, ds, dsigma = _schedule_rates(process, _check_time(process, "t", t))
    den = field.denoiser(x64, t).to(torch.float64)
    # each value with the size of its terms, the scale of its rounding error (a value can
    # cancel to 0, e.g. the velocity of a stationary marginal)
    expected = {"eps": ((x64 / s - den) / sigma, (x64.abs() / s + den.abs()) / sigma),
                "velocity": (ds / s * x64 + dsigma / sigma * (x64 - s * den),
                             (ds / s * x64).abs() + (dsigma / sigma * (x64.abs() + (s * den).abs())).abs())}
    if _is_student_t(process):
        root_d = math.sqrt(process.kernel.D)
        expected["poisson_field"] = ((x64 / s - den) / (sigma * root_d), (x64.abs() / s + den.abs()) / (sigma * root_d))
    else:
        expected["score"] = ((s * den - x64) / (s**2 * sigma**2), ((s * den).abs() + x64.abs()) / (s**2 * sigma**2))
    errors = {}
    for kind, (value, size) in expected.items():
        got = getattr(field, kind)(x64, t).to(torch.float64)
        scale = max(float(size.max()), 1e-300)
        rebuilt = getattr(Field, "from_" + kind)(process, getattr(field, kind), event_shape=tuple(x.shape[1:]))
        errors[kind] = float((got - value).abs().max()) / scale
        errors[kind + " round trip"] = float((rebuilt.denoiser(x64, t) - den).abs().max()) / max(
            float(den.abs().max()), 1.0)
    errors = {k: (e if math.isfinite(e) else math.inf) for k, e in errors.items()}  # NaN must not hide
    worst = max(errors, key=errors.get)
    return CheckResult("field_conversions", errors[worst], rtol, errors[worst] <= rtol,
                       f"field quantities vs their definitions from the denoiser: worst {worst} relative error "
                       f"{errors[worst]:.3g} (tolerance {rtol:g})", {"errors": errors})


def check_poisson_field_monte_carlo(process, data, x: torch.Tensor, t, *, field: Field | None = None,
                                    n: int = 100_000, seed: int = 0, z_max: float = 5.0,
                                    min_effective_size: float = 100.0) -> CheckResult:
    """The PFGM++ field from its integral definition over the data (PFGM++ eq. 3, Xu et al.
    2023) agrees with the closed form:

        E(x~) ∝ ∫ (x~ - y~) / ||x~ - y~||^(N+D) p(y) dy,   x~ = (x/s, r e),  y~ = (y, 0),
        E_x/E_r = E_y[(x/s - y) w(y)] / E_y[r w(y)],   w = (||x/s - y||^2 + r^2)^(-(N+D)/2).

    For an ``Empirical`` law the expectations are exact sums; otherwise they are Monte Carlo
    averages over ``n`` draws of the data, and the ratio's standard error comes from the delta
    method. Passes when every coordinate's |difference| <= ``z_max`` standard errors and the
    self-normalised weights keep an effective sample size of at least ``min_effective_size``
    (below it the standard error itself is unreliable: small r makes the weights peak on the
    nearest data draws; raise n or sigma). Exact sums pass at a relative difference <= 1e-9.
    ``field`` defaults to flowsolve's exact field.
    """
    if not _is_student_t(process):
        raise ValueError(f"process must use the PFGM++ kernel (PFGMPP or Poisson), got {process!r}")
    field = field or exact_field(process, data)
    D, dim = process.kernel.D, data.dim
    t = _check_time(process, "t", t)
    s, sigma = float(process.scale(t)), float(process.sigma(t))
    r = sigma * math.sqrt(D)
    xhat = x.detach().to(torch.float64).reshape(x.shape[0], -1) / s
    if isinstance(data, Empirical):
        y, logp = data.points.to(xhat.device), torch.log(data.weights).to(xhat.device)
    else:
        n = check_int("n", n, 2)
        y = data.sample(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64,
                        device=xhat.device).reshape(n, -1)
        logp = torch.full((n,), -math.log(n), dtype=torch.float64, device=xhat.device)
    diff = xhat[:, None, :] - y[None, :, :]  # (B, M, N)
    logw = logp - 0.5 * (dim + D) * torch.log((diff**2).sum(-1) + r**2)
    w = torch.softmax(logw, dim=-1)  # the normalisation cancels in the ratio
    estimate = (w[..., None] * diff).sum(1) / r
    closed = field.poisson_field(x, t).to(torch.float64).reshape(x.shape[0], -1)
    if isinstance(data, Empirical):
        # relative to the size of the terms of (x/s - D)/r: the field is 0 at a centre of symmetry
        size = (xhat.abs() + (xhat - r * closed).abs()) / r
        error = float((estimate - closed).abs().max()) / max(float(size.max()), 1e-300)
        error = error if math.isfinite(error) else math.inf
        return CheckResult("poisson_field_integral", error, 1e-9, error <= 1e-9,
                           f"E_x/E_r: closed form vs the exact sum over the {y.shape[0]} data points: relative "
                           f"difference {error:.3g} (tolerance 1e-9)", {"error": error})
    # delta method for the ratio of means A/B with A = (x - y) w / r, B = w (w normalised per row)
    m = y.shape[0]
    a = w[..., None] * diff * m / r
    b = (w * m)[..., None]
    ratio = a.mean(1) / b.mean(1)
    resid = a - ratio[:, None, :] * b
    se = resid.std(1) / math.sqrt(m) / b.mean(1)
    z = (closed - estimate).abs() / se.clamp_min(1e-300)
    worst = float(z.max())
    ess = float((1.0 / (w**2).sum(-1)).min())
    passed = worst <= z_max and ess >= min_effective_size
    few = "" if ess >= min_effective_size else f"; effective sample size below {min_effective_size:g}: raise n or sigma"
    return CheckResult("poisson_field_integral", worst, z_max, passed,
                       f"E_x/E_r: closed form vs Monte Carlo of the integral ({m} data draws, smallest effective "
                       f"sample size {ess:.0f}): largest |z| {worst:.2f} (at most {z_max:g}){few}",
                       {"z": z.tolist(), "estimate": estimate.tolist(), "standard_error": se.tolist(),
                        "effective_sample_size": ess})


# --- solvers --------------------------------------------------------------------------------

def _grid_label(spec) -> str:
    name, options = (spec, {}) if isinstance(spec, str) else spec
    return name + (f"({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")


def observed_orders(solver: str, process, law, *, grids: Sequence = DEFAULT_ORDER_GRIDS,
                    steps: Sequence[int] = (64, 128, 256), n: int = 16, seed: int = 0, field: Field | None = None,
                    **options) -> dict:
    """Observed convergence order of a fixed-step ODE solver per grid: end-point errors against
    the exact probability-flow map (Gaussian data under a Gaussian kernel, or any 1-D law) from
    ``n`` prior draws, and ``log(err_a/err_b)/log(b/a)`` for consecutive step counts. A grid is
    a name of :func:`~flowsolve.available_grids` or a pair ``(name, options)`` such as
    ``("karras", {"rho": 3.0})``. Returns ``{label: {"errors": [...], "orders": [...]}}``."""
    steps = [int(k) for k in steps]
    if len(steps) < 2 or sorted(steps) != steps or steps[0] < 2:
        raise ValueError(f"steps must be at least two increasing step counts >= 2, got {steps!r}")
    if not grids:
        raise ValueError("grids must name at least one grid")
    x = _prior_draw(process, law, check_int("n", n, 1), seed)
    exact = _exact_map(process, law, x, process.t_max, process.t_min).to(torch.float64)
    flow = probability_flow(process, field or exact_field(process, law))
    result = {}
    for spec in grids:
        name, grid_options = (spec, {}) if isinstance(spec, str) else spec
        errors = [float((solve(flow, x, make_grid(process, name, k, **grid_options), solver, **options).x
                         - exact).abs().max()) for k in steps]
        orders = [math.log(a / b) / math.log(kb / ka) if a > 0 and b > 0 else float("nan")
                  for a, b, ka, kb in zip(errors, errors[1:], steps, steps[1:])]
        result[_grid_label(spec)] = {"errors": errors, "orders": orders}
    return result


def check_solver_order(solver: str, *, process=None, law=None, order: float | None = None,
                       grids: Sequence = DEFAULT_ORDER_GRIDS, steps: Sequence[int] = (64, 128, 256), n: int = 16, seed: int = 0, tolerance: float = 0.3, field: Field | None = None,
                       **options) -> CheckResult:
    """The observed order of a fixed-step ODE solver matches its registered order.

    Step-halving sweep (:func:`observed_orders`) on an exact problem (default: EDM and the
    two-mode 1-D mixture ``DEFAULT_ORDER_LAW``, whose exact map is the 1-D optimal-transport map;
    any 1-D law, or Gaussian data under a Gaussian kernel, can be given), on each of ``grids``
    (default Karras rho=7, Karras rho=3 and uniform in log sigma), from ``n`` prior draws;
    the order of a grid is the one of its last two step counts. Gaussian data make a linear
    ODE, on which some methods measure above their order (midpoint 3.0 on every grid,
    DPM-Solver++(3M) about 4 on grids uniform in lambda); a nonlinear problem such as the default
    mixture shows the generic order. The t-interval treats the grids as a sample: it describes
    their spread, it is not a coverage guarantee. Grids whose step ratios in lambda vary strongly (e.g.
    "quadratic" on EDM) leave multistep methods pre-asymptotic at these step counts. Passes when every grid's order is
    within ``tolerance`` of ``order`` (default: the registered one), or above it on a known
    super-convergent solver/grid pair (``SUPERCONVERGENT``). ``details`` has the per-grid errors
    and orders, and the mean order with a 95% t-interval over the grids.
    """
    info = get_solver(solver)
    if info.kind != "ode" or info.adaptive:
        raise ValueError(f"solver must be a fixed-step ODE solver, got {solver!r} ({info.category})")
    process = process or EDM()
    law = law or DEFAULT_ORDER_LAW
    order = float(info.order if order is None else order)
    per_grid = observed_orders(solver, process, law, grids=grids, steps=steps, n=n, seed=seed, field=field, **options)
    last = {g: r["orders"][-1] for g, r in per_grid.items()}
    bad = [g for g, o in last.items()
           if not (o >= order - tolerance and (o <= order + tolerance or (solver, g.split("(")[0]) in SUPERCONVERGENT))]
    values = np.array(list(last.values()))
    mean = float(values.mean())
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))) \
        if len(values) > 1 else float("nan")
    shown = ", ".join(f"{g} {o:.2f}" for g, o in last.items())
    explanation = (f"{solver}: observed order {shown} at {steps[-2]}->{steps[-1]} steps (mean {mean:.2f} +- {half:.2f}, "
                   f"95% over grids) vs registered {order:g} +- {tolerance:g}")
    if bad:
        explanation += f"; off on {', '.join(bad)}"
    return CheckResult("solver_order", min(last.values()), order - tolerance, not bad, explanation,
                       {"grids": per_grid, "orders": last, "mean": mean, "ci95": (mean - half, mean + half)})


# --- Lipschitz constant of the sampling map -------------------------------------------------

def sampling_map_jacobian_norms(process, field: Field, z: torch.Tensor, *, solver: str = "heun", steps: int = 64,
                                grid: str = "karras", **options) -> torch.Tensor:
    """Spectral norms of the Jacobian of the sampling map ``g(z) = solve(prior_std z)`` at each
    row of ``z`` (z in standard-normal units, so that ``g`` pushes N(0, I) to the samples' law),
    by autograd through the solve (``differentiable=True``), one backward pass per output
    coordinate. Returns a float64 tensor of shape ``(n,)``."""
    z = z.detach().to(torch.float64).requires_grad_(True)
    flow = probability_flow(process, field)
    with torch.enable_grad():
        out = solve(flow, process.prior_std * z, make_grid(process, grid, steps), solver, differentiable=True,
                    **options).x.reshape(z.shape[0], -1)
        rows = [torch.autograd.grad(out[:, j].sum(), z, retain_graph=j + 1 < out.shape[1])[0].reshape(z.shape[0], -1)
                for j in range(out.shape[1])]
    jac = torch.stack(rows, 1)  # (n, out, in): samples are independent, so column sums are per-sample rows
    return torch.linalg.matrix_norm(jac, ord=2)


def lipschitz_lower_bound(process, law, *, directions: int = 8, seed: int = 0) -> tuple[float, np.ndarray, float]:
    """The seed text's lower bound on the Lipschitz constant of any map pushing N(0, I) to the
    marginal ``nu`` at t_min (its Theorem 1 corollary, Lip(g) >= Lip(T_OT) with
    ``T_OT = F_nu^-1 o Phi`` in 1-D). For a d-dimensional law, ``u . g`` pushes N(0, I) to the
    projection ``u#nu`` and ``Lip(u . g) <= Lip(g)``, so the largest 1-D bound over the unit
    vectors ``u`` (the axes, then seeded random ones) bounds Lip(g). Returns (bound, the
    direction, the z where the 1-D map is steepest)."""
    directions = check_int("directions", directions, 1)
    best = (-1.0, None, 0.0)
    for u in _directions(law.dim, directions if law.dim > 1 else 1, seed):
        lip, z_star = references.ot_lipschitz_1d(references.marginal_1d(process, law, process.t_min,
                                                                        u if law.dim > 1 else None))
        if not lip >= 0:  # NaN: the reference failed; do not let a smaller bound stand in for it
            raise ValueError(f"the optimal-transport bound is not finite along direction {u.tolist()}: got {lip!r}")
        if lip > best[0]:
            best = (float(lip), u, float(z_star))
    return best


def _points_near(u: torch.Tensor, z_star: float, seed: int) -> torch.Tensor:
    """Points where the sampling map is likely steepest: along u around z* (two zoom levels),
    across a perpendicular direction in d > 1, and seeded normal draws."""
    generator = torch.Generator().manual_seed(seed)
    if not math.isfinite(z_star):  # steepest in the tails (a Gaussian): only the draws and the far tails
        far = torch.tensor([-6.0, -4.0, 4.0, 6.0], dtype=torch.float64)[:, None] * u
        return torch.cat([far, torch.randn(64, u.numel(), generator=generator, dtype=torch.float64)])
    along = z_star + torch.cat([torch.linspace(-0.2, 0.2, 33), torch.linspace(-0.01, 0.01, 21)]).to(torch.float64)
    pts = along[:, None] * u
    if u.numel() > 1:
        v = torch.randn(u.numel(), generator=generator, dtype=torch.float64)
        v = v - (v @ u) * u
        v = v / v.norm()
        across = torch.linspace(-2.0, 2.0, 9, dtype=torch.float64)
        pts = (along[::3, None, None] * u + across[None, :, None] * v).reshape(-1, u.numel())
    return torch.cat([pts, torch.randn(64, u.numel(), generator=generator, dtype=torch.float64)])


def check_lipschitz_bound(process, law, *, field: Field | None = None, z: torch.Tensor | None = None,
                          solver: str = "heun", steps: int = 64, directions: int = 8, seed: int = 0,
                          rtol: float = 0.05, **options) -> CheckResult:
    """The sampling map is at least as steep as the optimal-transport bound (the seed's Theorem 1
    corollary): ``max_i ||J_g(z_i)|| >= Lip(T_OT) (1 - rtol)``.

    ``g(z) = solve(prior_std z)`` with ``solver`` over ``steps`` Karras steps;
    :func:`lipschitz_lower_bound` gives the bound. The sampled maximum is itself a lower
    estimate of Lip(g), so the points matter: by default ``z`` holds points around where the
    bound's map is steepest, carried to the sampling map's own start (the quantile ``Phi(z*)`` of
    ``u . x_t_max``, over prior_std; offsets up to 0.2 along u, and in d > 1 up to 2 along a
    second, perpendicular direction) plus 64 seeded normal draws. In 1-D the flow map is the monotone
    (optimal-transport) map, so the two agree: ``details["ratio"]`` is then about 1 (the
    difference is the solver's error and the gap between p_{t_max} and the prior).
    """
    if _is_student_t(process):
        raise ValueError("the bound concerns maps that push a Gaussian to the samples' law; under the PFGM++ kernel "
                         "the marginal has Student-t tails, which no Lipschitz map of a Gaussian reaches (the bound is "
                         f"infinite), and the prior itself is heavy-tailed; got {process!r}")
    rtol = check_real("rtol", rtol, 0.0, 1.0, strict_max=True)
    field = field or exact_field(process, law)
    bound, u, z_star = lipschitz_lower_bound(process, law, directions=directions, seed=seed)
    if z is None:
        if math.isfinite(z_star):
            # T_OT is steepest at z*, i.e. at the quantile Phi(z*) of nu; the sampling map starts
            # from p_t_max, not N(0, 1), so that quantile sits at F_t_max^-1(Phi(z*)) / prior_std
            at_t_max = references.marginal_1d(process, law, process.t_max, u if law.dim > 1 else None)
            z_peak = float(at_t_max.ppf_log(np.array([special.log_ndtr(z_star)]))[0]) / process.prior_std
        else:
            z_peak = z_star
        z = _points_near(torch.as_tensor(u, dtype=torch.float64), z_peak, seed).reshape(-1, *law.event_shape)
    norms = sampling_map_jacobian_norms(process, field, z, solver=solver, steps=steps, **options)
    measured = float(norms.max()) if bool(torch.isfinite(norms).all()) else math.nan  # NaN fails below
    ratio = measured / bound
    passed = ratio >= 1 - rtol
    return CheckResult("lipschitz_bound", measured, bound * (1 - rtol), passed,
                       f"sampling map ({solver}, {steps} steps): max Jacobian norm {measured:.4g} over {z.shape[0]} points "
                       f"vs the optimal-transport lower bound {bound:.4g} (ratio {ratio:.3f}, at least {1 - rtol:g})",
                       {"bound": bound, "measured": measured, "ratio": ratio, "direction": np.asarray(u).tolist(),
                        "z_star": z_star})


# --- assert_* twins -------------------------------------------------------------------------

assert_d_limit = _twin(check_d_limit)
assert_d_limit_trajectory = _twin(check_d_limit_trajectory)
assert_prior_convergence = _twin(check_prior_convergence)
assert_perturb_marginal = _twin(check_perturb_marginal)
assert_flow_map = _twin(check_flow_map)
assert_marginal_pushforward = _twin(check_marginal_pushforward)
assert_sde_ode_same_law = _twin(check_sde_ode_same_law)
assert_sampler_law = _twin(check_sampler_law)
assert_score_autograd = _twin(check_score_autograd)
assert_field_conversions = _twin(check_field_conversions)
assert_poisson_field_monte_carlo = _twin(check_poisson_field_monte_carlo)
assert_solver_order = _twin(check_solver_order)
assert_lipschitz_bound = _twin(check_lipschitz_bound)
