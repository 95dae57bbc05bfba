"""Stochastic samplers for Gaussian-kernel diffusions: reverse-SDE integrators, ancestral
sampling, Langevin correctors, EDM's stochastic sampler, DPM-Solver++(2M) SDE and the
adaptive SDE solver of Jolicoeur-Martineau et al.

Every sampler draws its Gaussian noise from ``noise.randn()``: one ``(n, *event_shape)`` draw for
*all* samples, every time, in a fixed order, whatever the samples' states. Sample ``i``'s
randomness is therefore its own stream (:class:`~flowsolve.solvers.noise.NoiseSource`), and its
result does not depend on the batch size or on the other samples (the one exception is the
published batch-mean Langevin rule, ``corrector="langevin_batch"``).

The samplers run from the prior end to the data end (``ts`` decreasing). Notation for the
canonical process ``x_t = s(t) (y + sigma(t) n)`` with ``n ~ N(0, I)``: ``x̂ = x / s`` is the
scaled-out state, ``D(x; t)`` the denoiser, ``score = (s D - x) / (s sigma)^2``; on a step from
``t_i`` to ``t_{i+1} < t_i`` we write ``s_i, sigma_i`` and ``s_{i+1}, sigma_{i+1}``.

Defaults give the right law on low-dimensional data too (docs/solvers_stochastic.md has the
measurements); the published rules that do not -- score_sde's signal-to-noise Langevin step and
Gotta-Go-Fast's redraw of rejected noise -- stay reachable as named options, with their bias
documented.
"""

from __future__ import annotations

import math

import torch

from .._validation import check_bool, check_int, check_real
from ..flows import ProbabilityFlowODE
from .adaptive import PIDController, run_adaptive
from .fixed import run_fixed_grid
from .noise import BrownianMemory
from .registry import get_solver, register_solver
from .solution import per_sample


def _row_norm(v: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=-1)


# ---------------------------------------------------------------------------------------
# one-step updates (also the predictors of ``pc``)
# ---------------------------------------------------------------------------------------


def euler_maruyama_step(term, x, t0, t1, z):
    """``x + drift(x, t0) dt + g(t0) sqrt(|dt|) z`` (Euler-Maruyama; dt < 0 on the reverse SDE)."""
    dt = t1 - t0
    return x + dt * term.drift(x, t0) + math.sqrt(abs(dt)) * term.diffusion(t0, x) * z


def reverse_diffusion_step(term, x, t0, t1, z):
    """Reverse of the forward chain ``x_{t0} = a x_{t1} + G n`` (the exact transition of the
    canonical process: ``a = s_0/s_1``, ``G^2 = s_0^2 (sigma_0^2 - sigma_1^2)``), Song et al. 2021
    eq. 46: ``x_{t1} = x - (a - 1) x + G^2 score(x, t0) + G z``."""
    s0, sigma0 = term.schedule(t0)
    s1, sigma1 = term.schedule(t1)
    a = s0 / s1
    g2 = s0 * s0 * (sigma0 * sigma0 - sigma1 * sigma1)
    return (2.0 - a) * x + g2 * term.score(x, t0) + math.sqrt(g2) * z


def ancestral_step(term, x, t0, t1, z, eta: float = 1.0):
    """Posterior of the chain given ``y = D(x; t0)``, in the scaled-out frame:
    ``x̂_1 = D + sqrt(sigma_1^2 - c^2) (x̂_0 - D)/sigma_0 + c z``, ``c = eta sigma_1 sqrt(1 - sigma_1^2/sigma_0^2)``;
    eta = 1 is the exact posterior ``N(D + (sigma_1/sigma_0)^2 (x̂_0 - D), sigma_1^2 (1 - sigma_1^2/sigma_0^2))``,
    eta = 0 the deterministic DDIM step."""
    s0, sigma0 = term.schedule(t0)
    s1, sigma1 = term.schedule(t1)
    c = eta * sigma1 * math.sqrt(max(0.0, 1.0 - (sigma1 / sigma0) ** 2))
    keep = math.sqrt(max(0.0, sigma1 * sigma1 - c * c)) / sigma0
    denoised = term.denoiser(x, t0)
    return s1 * (denoised + keep * (x / s0 - denoised) + c * z)


_SDE_PREDICTORS = {"euler_maruyama": euler_maruyama_step, "reverse_diffusion": reverse_diffusion_step,
                   "ancestral": ancestral_step}


# ---------------------------------------------------------------------------------------
# samplers
# ---------------------------------------------------------------------------------------


def euler_maruyama(term, x, ts, *, save=None, noise):
    """Euler-Maruyama on ``dx = drift(x, t) dt + g(t) dW`` along ``ts`` (either direction; the
    reverse SDE runs with t decreasing):
    ``x_{i+1} = x_i + drift(x_i, t_i) (t_{i+1} - t_i) + g(t_i) sqrt(|t_{i+1} - t_i|) z_i``.
    Weak order 1. Needs only a drift and a diffusion (any fs.reverse_sde, or a general fs.SDE). No options."""
    return run_fixed_grid(term, x, ts, lambda i, x, t0, t1: euler_maruyama_step(term, x, t0, t1, noise.randn()), save)


def reverse_diffusion(term, x, ts, *, save=None, noise):
    """Reverse-diffusion predictor (Song et al. 2021, eq. 46 and App. E) on a Gaussian-kernel
    process: the discretised forward chain reversed, see :func:`reverse_diffusion_step`. No options."""
    return run_fixed_grid(term, x, ts, lambda i, x, t0, t1: reverse_diffusion_step(term, x, t0, t1, noise.randn()),
                          save)


def ancestral(term, x, ts, *, save=None, noise, eta: float = 1.0):
    """Ancestral sampling from the posterior of the discretised chain (Ho et al. 2020 for VP;
    Song et al. 2021 App. F for VE), for any Gaussian-kernel process.

    Options: ``eta`` in [0, 1] (default 1): 1 = the chain's posterior (DDPM), 0 = the deterministic
    DDIM step."""
    eta = check_real("eta", eta, minimum=0.0, maximum=1.0)
    return run_fixed_grid(term, x, ts, lambda i, x, t0, t1: ancestral_step(term, x, t0, t1, noise.randn(), eta), save)


_CORRECTORS = ("ald", "langevin", "langevin_batch", None)


def langevin_step(term, x, t, z, corrector: str, snr: float, alpha: float, std: float,
                  max_step_ratio: float | None):
    """One Langevin corrector step ``x + eps score(x, t) + sqrt(2 eps) z`` (Song et al. 2021, Alg. 4-5),
    with ``std = s sigma`` the kernel's scale at t and ``alpha`` score_sde's ``1 - beta_i``:

    - ``"ald"``: ``eps = 2 alpha (snr std)^2`` for every sample (score_sde's annealed Langevin step);
    - ``"langevin"``: per sample ``eps = 2 alpha (snr ||z|| / ||score||)^2``, capped at
      ``max_step_ratio std^2`` (ULA is stable below ``2 std^2``; None: no cap);
    - ``"langevin_batch"``: score_sde's ``LangevinCorrector`` exactly: the norms are averaged over
      the batch, ``eps = 2 alpha (snr mean||z|| / mean||score||)^2``.

    The two signal-to-noise rules make a sample's step depend on its own draw and score; in low
    dimension that biases the law (see docs/solvers_stochastic.md).
    """
    score = term.score(x, t)
    if corrector == "ald":
        eps = torch.full((x.shape[0],), 2.0 * alpha * (snr * std) ** 2, dtype=x.dtype, device=x.device)
    else:
        score_norm, z_norm = _row_norm(score), _row_norm(z)
        if corrector == "langevin_batch":
            score_norm, z_norm = score_norm.mean().expand_as(score_norm), z_norm.mean().expand_as(z_norm)
        safe = torch.where(score_norm > 0, score_norm, torch.ones_like(score_norm))
        eps = 2.0 * alpha * (snr * z_norm / safe) ** 2
        if max_step_ratio is None or corrector == "langevin_batch":  # a zero score gives no step
            eps = torch.where(score_norm > 0, eps, torch.zeros_like(eps))
        else:  # a zero score means the snr rule asks for an infinite step: take the cap
            cap = max_step_ratio * std**2
            eps = torch.where(score_norm > 0, eps.clamp(max=cap), torch.full_like(eps, cap))
    eps = per_sample(eps, x)
    return x + eps * score + torch.sqrt(2.0 * eps) * z


def pc(term, x, ts, *, save=None, noise, predictor: str | None = "reverse_diffusion", corrector: str | None = "ald",
       snr: float = 0.16, n_corrector_steps: int = 1, max_step_ratio: float | None = 1.0,
       predictor_options: dict | None = None):
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1-3).

    Each step ``t_i -> t_{i+1}``: ``n_corrector_steps`` Langevin corrector steps at ``t_i``, then one
    predictor step (score_sde's order). NFE per step = the predictor's + ``n_corrector_steps``.

    Options:

    - ``predictor``: ``"reverse_diffusion"`` (default), ``"euler_maruyama"``, ``"ancestral"``, a
      registered one-step ODE solver (a probability-flow predictor: ``"euler"``, ``"heun"``,
      ``"dpm_solver_2"``, ...), or None (corrector only: x is rescaled by ``s_{i+1}/s_i``);
      ``predictor_options`` go to it (e.g. ``{"eta": 0.5}`` for ancestral).
    - ``corrector``: ``"ald"`` (default: the step ``eps = 2 alpha (snr s_i sigma_i)^2`` of score_sde's
      annealed Langevin dynamics, the same for every sample: unbiased in any dimension, variance
      ratio 1.00-1.04 measured), ``"langevin"`` (score_sde's signal-to-noise step with per-sample
      norms, capped at ``max_step_ratio (s_i sigma_i)^2``), ``"langevin_batch"`` (score_sde's
      ``LangevinCorrector`` exactly, norms averaged over the batch: reproduces the paper; its law
      depends on the batch size), or None. Both snr rules bias low-dimensional laws (variance x3.2
      in 1-D, +64 % in 3-D), see :func:`langevin_step`.
    - ``snr`` (default 0.16), ``n_corrector_steps`` (default 1), ``max_step_ratio`` (default 1.0).

    ``alpha = (s_i/s_{i+1})^2`` is score_sde's ``1 - beta_i`` for VP (1 for VE).
    """
    if corrector not in _CORRECTORS:
        raise ValueError(f"corrector must be one of {list(_CORRECTORS)}, got {corrector!r}")
    n_corr = check_int("n_corrector_steps", n_corrector_steps, 0)
    snr = check_real("snr", snr, minimum=0.0, strict_min=True)
    if corrector is None:
        n_corr = 0
    if max_step_ratio is not None:
        max_step_ratio = check_real("max_step_ratio", max_step_ratio, minimum=0.0, strict_min=True)
    predict = _predictor(term, noise, predictor, predictor_options)

    def step(i, x, t0, t1):
        if n_corr:
            s0, sigma0 = term.schedule(t0)
            alpha = (s0 / term.schedule(t1)[0]) ** 2
            for _ in range(n_corr):
                x = langevin_step(term, x, t0, noise.randn(), corrector, snr, alpha, s0 * sigma0, max_step_ratio)
        return predict(x, t0, t1)

    return run_fixed_grid(term, x, ts, step, save, extras={"nfe_per_step": _pc_cost(
        dict(predictor=predictor, corrector=corrector, n_corrector_steps=n_corrector_steps,
             predictor_options=predictor_options))})


def _predictor(term, noise, predictor, predictor_options):
    """The predictor of ``pc`` as ``predict(x, t0, t1)``, its options checked."""
    options = dict(predictor_options or {})
    if predictor is None:
        if options:
            raise ValueError(f"predictor_options {sorted(options)} given, but predictor is None")
        return lambda x, t0, t1: x * (term.schedule(t1)[0] / term.schedule(t0)[0])
    if predictor in _SDE_PREDICTORS:
        update = _SDE_PREDICTORS[predictor]
        allowed = {"eta"} if predictor == "ancestral" else set()
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ValueError(f"unknown predictor_options {unknown} for predictor {predictor!r}: it takes "
                             f"{sorted(allowed) or 'none'}")
        if "eta" in options:
            options["eta"] = check_real("predictor_options['eta']", options["eta"], minimum=0.0, maximum=1.0)
        return lambda x, t0, t1: update(term, x, t0, t1, noise.randn(), **options)
    info = _ode_predictor(predictor)
    if options:
        raise ValueError(f"predictor_options {sorted(options)} given, but the ODE predictor {predictor!r} takes none")
    ode = term.view(ProbabilityFlowODE(term.process, term.field))
    return lambda x, t0, t1: info.single_step(ode, x, t0, t1)


def _ode_predictor(predictor):
    """The registry entry of a one-step ODE solver used as ``pc``'s predictor, or a ValueError."""
    try:
        info = get_solver(predictor)
    except ValueError:
        info = None
    if info is None or info.kind != "ode" or info.single_step is None:
        raise ValueError(f"predictor must be one of {sorted(_SDE_PREDICTORS)}, a registered one-step ODE solver "
                         f"(a probability-flow predictor, e.g. 'euler', 'heun', 'dpm_solver_2'; multistep and adaptive "
                         f"ones would restart every step) or None; got {predictor!r}")
    return info


def annealed_langevin(term, x, ts, *, save=None, noise, eps: float | None = None, n_steps_each: int = 100):
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1), on the noise levels ``ts[1:]``
    (``fs.sample``'s default grid for it is NCSN's geometric sequence, ``"log_sigma"``).

    At level ``t_i`` (``i = 1..L``), in the scaled-out frame ``x̂ = x/s`` (= x for VE/EDM),
    ``n_steps_each`` steps ``x̂ <- x̂ + eps_i score_x̂ + sqrt(2 eps_i) z`` with ``score_x̂ = s score`` and
    ``eps_i = eps sigma_i^2 / sigma_L^2``; x is rescaled by ``s_i/s_{i-1}`` on entering a level.

    Options: ``eps`` (default ``0.2 sigma_L^2``, NCSN's 2e-5 at sigma_L = 0.01; must be
    ``< 2 sigma_L^2``, the step stays below ``2/Lipschitz(score)``), ``n_steps_each`` (default 100, the
    NFE per level). Its bias is O(eps), not a time discretisation.
    """
    m_steps = check_int("n_steps_each", n_steps_each, 1)
    sigma_last = term.schedule(float(ts[-1]))[1]
    eps = 0.2 * sigma_last**2 if eps is None else check_real("eps", eps)
    if not 0 < eps < 2.0 * sigma_last**2:
        raise ValueError(f"eps must lie in (0, 2 sigma_L^2) = (0, {2.0 * sigma_last**2!r}) for sigma_L = "
                         f"{sigma_last!r} (larger steps diverge at the smallest noise level), got {eps!r}")

    def step(i, x, t0, t1):
        s0 = term.schedule(t0)[0]
        s1, sigma1 = term.schedule(t1)
        x_hat = x / s0
        eps_i = eps * (sigma1 / sigma_last) ** 2
        for _ in range(m_steps):
            x_hat = x_hat + eps_i * s1 * term.score(s1 * x_hat, t1) + math.sqrt(2.0 * eps_i) * noise.randn()
        return s1 * x_hat

    return run_fixed_grid(term, x, ts, step, save, extras={"nfe_per_step": m_steps, "eps": eps})


def edm_stochastic(term, x, ts, *, save=None, noise, S_churn: float = 40.0, S_tmin: float = 0.0,
                   S_tmax: float = math.inf, S_noise: float = 1.0):
    """EDM's stochastic sampler (Karras et al. 2022, Alg. 2), in sigma on ``x̂ = x/s``.

    Step ``i`` of N: ``gamma = min(S_churn/N, sqrt(2)-1)`` if ``S_tmin <= sigma_i <= S_tmax`` else 0;
    ``sigma_hat = sigma_i (1 + gamma)`` (clipped to sigma_max: the field is never evaluated outside
    the span); ``x̂_hat = x̂ + sqrt(sigma_hat^2 - sigma_i^2) S_noise z``; a Heun step of
    ``dx̂/dsigma = (x̂ - D)/sigma`` from sigma_hat to sigma_{i+1} (Euler on the last step, which saves an
    evaluation; Alg. 2 uses Euler only on a step to sigma = 0, so on a grid ending at sigma_min > 0
    this last step differs from Alg. 2, and ``denoise_final`` adds the step to 0). Any
    Gaussian-kernel process is the same ODE in (x̂, sigma). 2 NFE per step, 1 on the last.

    Options: ``S_churn`` (default 40, >= 0), ``S_tmin`` (default 0), ``S_tmax`` (default inf),
    ``S_noise`` (default 1).
    """
    S_churn = check_real("S_churn", S_churn, minimum=0.0)
    S_noise = check_real("S_noise", S_noise, minimum=0.0)
    S_tmin = check_real("S_tmin", S_tmin, minimum=0.0)
    S_tmax = check_real("S_tmax", S_tmax, minimum=0.0, allow_inf=True)
    if S_tmin > S_tmax:
        raise ValueError(f"S_tmin must be <= S_tmax, got S_tmin={S_tmin!r}, S_tmax={S_tmax!r}")
    n_steps = len(ts) - 1
    sigma_max = term.process.sigma_max

    def step(i, x, t0, t1):
        s0, sigma0 = term.schedule(t0)
        s1, sigma1 = term.schedule(t1)
        gamma = min(S_churn / n_steps, math.sqrt(2.0) - 1.0) if S_tmin <= sigma0 <= S_tmax else 0.0
        z = noise.randn()
        t_hat, s_hat, sigma_hat = t0, s0, sigma0
        if gamma > 0 and sigma0 < sigma_max:
            t_hat = term.t_of_sigma(min(sigma0 * (1.0 + gamma), sigma_max))
            s_hat, sigma_hat = term.schedule(t_hat)
        x_hat = x / s0 + math.sqrt(max(0.0, sigma_hat**2 - sigma0**2)) * S_noise * z
        d = (x_hat - term.denoiser(s_hat * x_hat, t_hat)) / sigma_hat
        x_next = x_hat + (sigma1 - sigma_hat) * d
        if i < n_steps - 1:
            d_next = (x_next - term.denoiser(s1 * x_next, t1)) / sigma1
            x_next = x_hat + (sigma1 - sigma_hat) * (0.5 * d + 0.5 * d_next)
        return s1 * x_next

    return run_fixed_grid(term, x, ts, step, save)


def dpmpp_2m_sde(term, x, ts, *, save=None, noise, eta: float = 1.0, s_noise: float = 1.0,
                 solver_type: str = "midpoint"):
    """DPM-Solver++(2M) SDE (Lu et al. 2022, "DPM-Solver++", data prediction; k-diffusion's
    ``sample_dpmpp_2m_sde``), on ``x̂ = x/s`` with ``lambda = -log sigma``, ``h = lambda_{i+1} - lambda_i``:

        x̂' = (sigma_{i+1}/sigma_i) e^{-eta h} x̂ + (1 - e^{-(1+eta) h}) D_i
             + c (D_i - D_{i-1}) / r + sigma_{i+1} sqrt(1 - e^{-2 eta h}) s_noise z,  r = h_{i-1}/h,

    ``c = (1 - e^{-(1+eta)h})/2`` (midpoint) or ``1 - (1 - e^{-(1+eta)h})/((1+eta)h)`` (heun); the
    correction is skipped on the first step. eta = 1 and no correction is the ancestral step.

    Options: ``eta`` (default 1, >= 0), ``s_noise`` (default 1, >= 0), ``solver_type``
    ("midpoint", default, or "heun").
    """
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    eta = check_real("eta", eta, minimum=0.0)
    s_noise = check_real("s_noise", s_noise, minimum=0.0)
    previous = {"denoised": None, "h": None}

    def step(i, x, t0, t1):
        s0, sigma0 = term.schedule(t0)
        s1, sigma1 = term.schedule(t1)
        denoised = term.denoiser(x, t0)
        h = math.log(sigma0 / sigma1)
        eta_h = eta * h
        one_minus = -math.expm1(-h - eta_h)  # 1 - e^{-(1+eta) h}
        x_hat = (sigma1 / sigma0) * math.exp(-eta_h) * (x / s0) + one_minus * denoised
        if previous["denoised"] is not None:
            r = previous["h"] / h
            c = 0.5 * one_minus if solver_type == "midpoint" else 1.0 - one_minus / (h + eta_h)
            x_hat = x_hat + (c / r) * (denoised - previous["denoised"])
        x_hat = x_hat + sigma1 * math.sqrt(-math.expm1(-2.0 * eta_h)) * s_noise * noise.randn()
        previous["denoised"], previous["h"] = denoised, h
        return s1 * x_hat

    return run_fixed_grid(term, x, ts, step, save)


# ---------------------------------------------------------------------------------------
# adaptive: Gotta Go Fast
# ---------------------------------------------------------------------------------------


class GottaGoFast:
    """The Euler-Maruyama / improved-Euler pair of Jolicoeur-Martineau et al. 2021 ("Gotta Go Fast",
    Alg. 1) as a method of :func:`~flowsolve.solvers.adaptive.run_adaptive`.

    With the Brownian increment ``dW`` over the step and signed step ``h``:
    ``x' = x + h drift(x, t) + g(t) dW`` (EM), ``x~ = x + h drift(x', t+h) + g(t+h) dW``,
    ``x'' = (x' + x~)/2`` (improved Euler); the error is ``x' - x''`` scaled by
    ``max(atol, rtol max(|x'|, |x'_prev|))`` (``x'_prev`` the last accepted EM proposal); an accepted
    step moves to ``x''`` (``extrapolate``) or ``x'``. The controller's exponent ``1/q`` is the paper's
    ``r``, so ``error_order = 1/r``.

    ``rejection="bridge"``: the increments come from a per-sample Brownian path kept consistent
    across rejections (:class:`~flowsolve.solvers.noise.BrownianMemory`): a rejected attempt
    refines the path instead of redrawing it, so acceptance selects no noise and the law is right.
    ``rejection="redraw"``: the paper's rule, every attempt draws ``dW = sqrt(|h|) z`` afresh; the
    acceptance test then sees the draw it steps with, which biases the law in low dimension (the
    mean by 9 standard errors at rtol 1e-2 on a 3-D Gaussian; see docs/solvers_stochastic.md).
    """

    def __init__(self, noise, rejection: str, extrapolate: bool, exponent: float, n: int, event_shape, dtype,
                 device, direction: float):
        self.noise, self.rejection, self.extrapolate = noise, rejection, extrapolate
        self.error_order = 1.0 / exponent
        self.path = (BrownianMemory(n, event_shape, direction, dtype, device) if rejection == "bridge" else None)

    def init(self, term, x, t0):
        return {"x_prev": x.clone()}

    def first_step(self, term, x, t0, t1, carry, controller):
        return torch.full((x.shape[0],), 0.01 * abs(t1 - t0), dtype=torch.float64, device=x.device)

    def attempt(self, term, x, t, t_next, h, carry, rows):
        z = self.noise.randn()[rows]  # every sample's next draw, every attempt (its own stream)
        if self.path is not None:
            dW = self.path.increment(rows, t, t_next, z)
        else:
            dW = per_sample(torch.sqrt(h.abs()).to(x.dtype), x) * z
        hx = per_sample(h.to(x.dtype), x)
        k1 = hx * term.drift(x, t, rows) + term.diffusion(t, x) * dW
        x_em = x + k1
        k2 = hx * term.drift(x_em, t_next, rows) + term.diffusion(t_next, x) * dW
        x_heun = x + 0.5 * (k1 + k2)
        x_new = x_heun if self.extrapolate else x_em
        return x_new, x_em - x_heun, (x_em, carry["x_prev"]), {"x_prev": x_em}

    def commit(self, term, rows, accepted, carry, carry_new, x_new, t_next):
        if self.path is not None:
            self.path.commit(accepted)
        return {"x_prev": torch.where(per_sample(accepted, x_new), carry_new["x_prev"], carry["x_prev"])}


def adaptive_sde(term, x, ts, *, save=None, noise, controller, max_steps: int = 10_000, rejection: str = "bridge",
                 extrapolate: bool = True, exponent: float = 0.9):
    """Adaptive reverse-SDE solver of Jolicoeur-Martineau et al. 2021 ("Gotta Go Fast"): the
    EM / improved-Euler pair of :class:`GottaGoFast` with one step size per sample, every step
    clipped to the span. Generic: any flow with drift and diffusion.

    Options: ``rejection`` ("bridge", default: a rejected step keeps its Brownian path, so the law
    is not biased; "redraw": the paper's rule, biased in low dimension), ``extrapolate`` (default
    True: step to the improved-Euler point), ``exponent`` (the paper's r = 0.9), ``max_steps``
    (attempts per sample) and the controller: fs.PIDController with the paper's rule as default
    (rtol=atol=1e-2, ``error_scale="max"``, an I controller ``h <- 0.9 h E^-r`` with no factor
    limits, first step 1 % of the span), given as ``controller=`` or as its fields (``rtol=``, ...).
    """
    if rejection not in ("bridge", "redraw"):
        raise ValueError(f"rejection must be 'bridge' or 'redraw', got {rejection!r}")
    method = GottaGoFast(noise, rejection, check_bool("extrapolate", extrapolate),
                         check_real("exponent", exponent, minimum=0.0, strict_min=True), x.shape[0],
                         tuple(x.shape[1:]), x.dtype, x.device, 1.0 if float(ts[-1]) > float(ts[0]) else -1.0)
    return run_adaptive(term, x, float(ts[0]), float(ts[-1]), method, controller, save, max_steps)


GOTTA_GO_FAST_CONTROLLER = PIDController(rtol=1e-2, atol=1e-2, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, safety=0.9,
                                         factor_min=0.0, factor_max=math.inf, error_scale="max")


# ---------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------

def _pc_cost(options: dict) -> int:
    predictor = options.get("predictor", "reverse_diffusion")
    if predictor is None:
        pred = 0
    elif predictor in _SDE_PREDICTORS:
        pred = 1
    else:
        pred = _ode_predictor(predictor).nfe_per_step
    corrector = options.get("corrector", "ald")
    corr = check_int("n_corrector_steps", options.get("n_corrector_steps", 1), 0) if corrector is not None else 0
    return max(1, pred + corr)


SOLVERS = {"euler_maruyama": euler_maruyama, "reverse_diffusion": reverse_diffusion, "ancestral": ancestral,
           "pc": pc, "annealed_langevin": annealed_langevin, "edm_stochastic": edm_stochastic,
           "dpmpp_2m_sde": dpmpp_2m_sde, "adaptive_sde": adaptive_sde}

# ``order`` is the weak order (accuracy of the sampled law), measured on Gaussian data in
# tests/test_stochastic.py from the exact law of each sampler's output.
register_solver("euler_maruyama", euler_maruyama, kind="sde", order=1.0, nfe_per_step=1,
                description="Euler-Maruyama on the reverse SDE, weak order 1; any flow with drift/diffusion, "
                            "incl. a general SDE")
register_solver("reverse_diffusion", reverse_diffusion, kind="sde", order=1.0, nfe_per_step=1, process_aware=True,
                description="reverse-diffusion predictor, the discretised forward chain reversed (Song et al. 2021)")
register_solver("ancestral", ancestral, kind="sde", order=1.0, nfe_per_step=1, process_aware=True,
                description="ancestral sampling from the chain's posterior q(x_{i+1}|x_i, D) (DDPM/SMLD); "
                            "eta=0 is DDIM")
register_solver("pc", pc, kind="sde", order=1.0, nfe_per_step=2, process_aware=True, cost=_pc_cost,
                description="predictor-corrector; Langevin corrector 'ald' (default), 'langevin' or 'langevin_batch' "
                            "(score_sde's snr rules); NFE per step = predictor's + n_corrector_steps")
register_solver("annealed_langevin", annealed_langevin, kind="sde", order=1.0, nfe_per_step=100, process_aware=True,
                cost=lambda options: check_int("n_steps_each", options.get("n_steps_each", 100), 1),
                default_grid="log_sigma",  # NCSN's geometric noise levels
                description="NCSN annealed Langevin dynamics, n_steps_each (default 100) steps per noise level; "
                            "bias O(eps), not a time discretisation")
register_solver("edm_stochastic", edm_stochastic, kind="sde", order=2.0, nfe_per_step=2, process_aware=True,
                steps_for_budget=lambda nfe, options: (nfe + 1) // 2,  # N steps cost 2N - 1 (Euler last)
                description="EDM Algorithm 2 (churn S_churn/S_tmin/S_tmax/S_noise, Heun in sigma, Euler last step), "
                            "weak order 2")
register_solver("dpmpp_2m_sde", dpmpp_2m_sde, kind="sde", order=1.0, nfe_per_step=1, process_aware=True,
                description="DPM-Solver++(2M) SDE, data prediction, k-diffusion's midpoint variant (weak order 2 "
                            "measured on Gaussian data, 1 claimed)")
register_solver("adaptive_sde", adaptive_sde, kind="sde", order=1.0, nfe_per_step=2, adaptive=True,
                default_controller=GOTTA_GO_FAST_CONTROLLER,
                description="adaptive EM/improved-Euler pair with per-sample steps (Jolicoeur-Martineau et al. 2021); "
                            "rejected steps keep their Brownian path (rejection='bridge')")
