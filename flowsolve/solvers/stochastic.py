"""Stochastic samplers for Gaussian-kernel diffusions: reverse-SDE integrators, ancestral
sampling, Langevin correctors, EDM's stochastic sampler, DPM-Solver++(2M) SDE and the
adaptive SDE solver of Jolicoeur-Martineau et al.

Every sampler is ``fn(flow, x, ts, *, noise, save_at=None, **options) -> Solution`` and
draws its Gaussian noise from ``noise.randn()``: one ``(n, dim)`` draw for *all* samples,
every time, in a fixed order, whatever the samples' states. Sample ``i``'s randomness is
therefore its own stream (see :class:`~flowsolve.solvers.base.NoiseSource`), and its result
does not depend on the batch size or on the other samples.

The samplers run from the prior end to the data end (``ts`` decreasing). Notation for the
canonical process ``x_t = s(t) (y + sigma(t) n)`` with ``n ~ N(0, I)``: ``x̂ = x / s`` is the
scaled-out state, ``D(x; t)`` the denoiser, ``score = (s D - x) / (s sigma)^2``; on a step
from ``t_i`` to ``t_{i+1} < t_i`` we write ``s_i, sigma_i`` and ``s_{i+1}, sigma_{i+1}``.

* ``euler_maruyama``    -- generic reverse-SDE Euler-Maruyama (any flow with drift/diffusion).
* ``reverse_diffusion`` -- reverse of the discretised forward chain (Song et al. 2021, eq. 46).
* ``ancestral``         -- posterior ``q(x_{i+1} | x_i, y = D)`` of the discretised chain
  (DDPM for VP, SMLD ancestral for VE), any Gaussian-kernel process; ``eta`` interpolates to DDIM.
* ``pc``                -- predictor-corrector with the Langevin corrector of Song et al. 2021
  (step ``2 alpha (snr ||z|| / ||score||)^2``, norms per sample; or the state-independent
  ``ald`` step ``2 alpha (snr s sigma)^2``).
* ``annealed_langevin`` -- NCSN annealed Langevin dynamics (Song & Ermon 2019).
* ``edm_stochastic``    -- EDM Algorithm 2 (Karras et al. 2022), in sigma on ``x̂``.
* ``dpmpp_2m_sde``      -- DPM-Solver++(2M) SDE, k-diffusion's midpoint variant (Lu et al. 2022).
* ``adaptive_sde``      -- EM / improved-Euler pair with per-sample steps (Jolicoeur-Martineau
  et al. 2021, "Gotta Go Fast"); ``error_control="independent"`` decides on one draw and steps
  with another, which removes the selection bias of the paper's rule in low dimension.

Two rules that make a sample's step depend on its own draw (the per-sample snr corrector and
the paper's adaptive error control) bias the sampled law by O(1/dim): fine for images, wrong
for 1-D/2-D toys. docs/solvers_stochastic.md gives the measurements and the alternatives.

PFGM++ processes have no SDE; the process-aware samplers refuse them (and any non-Gaussian
kernel) with a ValueError naming the process.
"""

from __future__ import annotations

import math

import torch

from ..flows import ProbabilityFlowODE, ReverseSDE
from ..processes.base import Process
from .base import (MAX_STEPS, NONFINITE, SUCCESS, UNDERFLOW, Solution, as_time, get_solver, register_solver,
                   run_fixed_grid)
from .rk import _adaptive_save_times, _check_tolerances

# ---------------------------------------------------------------------------------------
# shared plumbing
# ---------------------------------------------------------------------------------------


class _Counter:
    """Per-sample NFE counts for the field / drift calls of one run."""

    def __init__(self, n: int, device):
        self.nfe = torch.zeros(n, dtype=torch.long, device=device)

    def tick(self, idx=None, k: int = 1):
        if idx is None:
            self.nfe += k
        else:
            self.nfe[idx] += k


def _require_gaussian(flow, solver: str):
    """``(process, field)`` of a flow built from a Gaussian-kernel canonical process, or a
    ValueError saying why not."""
    process, field = getattr(flow, "process", None), getattr(flow, "field", None)
    if field is None or not isinstance(process, Process):
        raise ValueError(
            f"solver {solver!r} is process-aware: it needs fs.reverse_sde(process, field) of a canonical "
            f"Gaussian-kernel diffusion (VE, VP, SubVP, EDM, Diffusion, LinearSDE); got a flow of "
            f"{type(process).__name__} without a field. Use 'euler_maruyama' or 'adaptive_sde' for a general SDE.")
    if getattr(process.kernel, "name", None) != "gaussian":
        raise ValueError(
            f"solver {solver!r} samples a reverse SDE, which only Gaussian-kernel diffusions have; {process!r} "
            f"has a {type(process.kernel).__name__} (PFGM++/Poisson) kernel and no SDE. Sample it with an ODE "
            "solver on fs.probability_flow (e.g. solver='heun' or an exponential integrator).")
    return process, field


def _sched(process, t: float) -> tuple[float, float]:
    """``(s(t), sigma(t))`` as Python floats (float64)."""
    return float(process.scale(float(t))), float(process.sigma(float(t)))


def _check_grid(ts, solver: str) -> torch.Tensor:
    ts = torch.as_tensor(ts, dtype=torch.float64).reshape(-1)
    if ts.numel() < 2 or not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"solver {solver!r} runs from the prior end to the data end: ts must be strictly "
                         f"decreasing with at least 2 times, got {ts.tolist()!r}")
    return ts


def _diffusion_coef(flow, t, x: torch.Tensor) -> torch.Tensor:
    """``g(t)`` of the flow, shaped to broadcast against ``x`` (per sample when t is a tensor)."""
    g = torch.as_tensor(flow.diffusion(t), dtype=x.dtype, device=x.device)
    return g.unsqueeze(-1) if g.ndim else g


def _row_norm(v: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(v.flatten(1), dim=-1)


def _finite_rows(v: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(v.flatten(1)).all(-1)


# ---------------------------------------------------------------------------------------
# one-step updates (also the predictors of ``pc``)
# ---------------------------------------------------------------------------------------


def _em_update(flow, counter, x, t0, t1, z):
    """Euler-Maruyama on the reverse SDE: ``x + drift(x, t0) dt + g(t0) sqrt(-dt) z``, dt < 0."""
    dt = t1 - t0
    drift = flow.drift(x, as_time(t0, x))
    counter.tick()
    return x + dt * drift + math.sqrt(-dt) * _diffusion_coef(flow, as_time(t0, x), x) * z


def _reverse_diffusion_update(process, field, counter, x, t0, t1, z):
    """Reverse of the forward chain ``x_{t0} = a x_{t1} + G n`` (exact transition of the
    canonical process: ``a = s0/s1``, ``G^2 = s0^2 (sigma0^2 - sigma1^2)``), Song et al. 2021
    eq. 46: ``x_{t1} = x - (a - 1) x + G^2 score(x, t0) + G z``."""
    s0, sg0 = _sched(process, t0)
    s1, sg1 = _sched(process, t1)
    a = s0 / s1
    g2 = s0 * s0 * (sg0 * sg0 - sg1 * sg1)
    score = field.score(x, t0)
    counter.tick()
    return (2.0 - a) * x + g2 * score + math.sqrt(g2) * z


def _ancestral_update(process, field, counter, x, t0, t1, z, eta: float = 1.0):
    """Posterior of the chain given ``y = D(x; t0)``, in the scaled-out frame:
    ``x̂1 = D + sqrt(sigma1^2 - c^2) (x̂0 - D)/sigma0 + c z``, ``c = eta sigma1 sqrt(1 - sigma1^2/sigma0^2)``;
    eta = 1 is the exact posterior ``N(D + (sigma1/sigma0)^2 (x̂0 - D), sigma1^2 (1 - sigma1^2/sigma0^2))``."""
    s0, sg0 = _sched(process, t0)
    s1, sg1 = _sched(process, t1)
    c = eta * sg1 * math.sqrt(max(0.0, 1.0 - (sg1 / sg0) ** 2))
    keep = math.sqrt(max(0.0, sg1 * sg1 - c * c)) / sg0
    den = field.denoiser(x, t0)
    counter.tick()
    return s1 * (den + keep * (x / s0 - den) + c * z)


def _langevin_update(field, counter, x, t, z, snr: float, alpha: float, std: float, rule: str,
                     max_step_ratio: float | None):
    """One Langevin corrector step ``x + eps score + sqrt(2 eps) z`` (Song et al. 2021, Alg. 4/5).

    rule "langevin": per-sample ``eps = 2 alpha (snr ||z|| / ||score||)^2`` (score_sde's form with
    per-sample norms instead of batch means), capped at ``max_step_ratio std^2`` (``std = s sigma``;
    the score's Lipschitz constant is at most ``1/std^2``, so ULA is stable below ``2 std^2``).
    rule "ald": ``eps = 2 alpha (snr std)^2`` for every sample (score_sde's ``ald`` corrector)."""
    score = field.score(x, t)
    counter.tick()
    if rule == "ald":
        eps = torch.full((x.shape[0], 1), 2.0 * alpha * (snr * std) ** 2, dtype=x.dtype, device=x.device)
    else:
        gnorm, znorm = _row_norm(score), _row_norm(z)
        safe = torch.where(gnorm > 0, gnorm, torch.ones_like(gnorm))
        eps = 2.0 * alpha * (snr * znorm / safe) ** 2
        if max_step_ratio is None:  # score_sde's rule as is; a zero score gives no step
            eps = torch.where(gnorm > 0, eps, torch.zeros_like(eps))
        else:  # a zero score means the snr rule asks for an infinite step: take the cap
            cap = max_step_ratio * std**2
            eps = torch.where(gnorm > 0, eps.clamp(max=cap), torch.full_like(eps, cap))
        eps = eps.unsqueeze(-1)
    return x + eps * score + torch.sqrt(2.0 * eps) * z


# ---------------------------------------------------------------------------------------
# samplers
# ---------------------------------------------------------------------------------------


def euler_maruyama(flow, x, ts, *, noise, save_at=None):
    """Euler-Maruyama on ``dx = drift(x, t) dt + g(t) dW̄`` with t decreasing along ``ts``:
    ``x_{i+1} = x_i + drift(x_i, t_i) (t_{i+1} - t_i) + g(t_i) sqrt(t_i - t_{i+1}) z_i``.
    Needs only ``flow.drift`` and ``flow.diffusion`` (any fs.reverse_sde, incl. a general SDE)."""
    ts = _check_grid(ts, "euler_maruyama")
    if not callable(getattr(flow, "diffusion", None)):
        raise ValueError("euler_maruyama integrates an SDE: flow needs drift(x, t) and diffusion(t) (fs.reverse_sde)")
    counter = _Counter(x.shape[0], x.device)
    return run_fixed_grid(x, ts, save_at, counter.nfe, lambda i, xx, t0, t1: _em_update(flow, counter, xx, t0, t1,
                                                                               noise.randn()))


def reverse_diffusion(flow, x, ts, *, noise, save_at=None):
    """Reverse-diffusion predictor (Song et al. 2021, eq. 46 and App. E) on a Gaussian-kernel process."""
    process, field = _require_gaussian(flow, "reverse_diffusion")
    ts = _check_grid(ts, "reverse_diffusion")
    counter = _Counter(x.shape[0], x.device)
    return run_fixed_grid(x, ts, save_at, counter.nfe,
                      lambda i, xx, t0, t1: _reverse_diffusion_update(process, field, counter, xx, t0, t1,
                                                                      noise.randn()))


def ancestral(flow, x, ts, *, noise, save_at=None, eta: float = 1.0):
    """Ancestral sampling from the posterior of the discretised chain (Ho et al. 2020 for VP;
    Song et al. 2021 App. F for VE), for any Gaussian-kernel process. ``eta`` in [0, 1]:
    1 = posterior (DDPM), 0 = deterministic DDIM step."""
    process, field = _require_gaussian(flow, "ancestral")
    ts = _check_grid(ts, "ancestral")
    eta = float(eta)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    counter = _Counter(x.shape[0], x.device)
    return run_fixed_grid(x, ts, save_at, counter.nfe,
                      lambda i, xx, t0, t1: _ancestral_update(process, field, counter, xx, t0, t1, noise.randn(),
                                                              eta))


_SDE_PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral")


def pc(flow, x, ts, *, noise, save_at=None, predictor: str | None = "reverse_diffusion",
       corrector: str | None = "langevin", snr: float = 0.16, n_corrector_steps: int = 1,
       max_step_ratio: float | None = 1.0, predictor_options: dict | None = None):
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1-3).

    Each step ``t_i -> t_{i+1}``: ``n_corrector_steps`` corrector steps at ``t_i``, then one
    predictor step (score_sde's order). ``predictor``: ``"reverse_diffusion"``,
    ``"euler_maruyama"``, ``"ancestral"``, any registered fixed-step ODE solver (a
    probability-flow predictor, e.g. ``"euler"``, ``"heun"``, taken one grid step at a time), or
    None (corrector only: x is rescaled by ``s_{i+1}/s_i``); ``predictor_options`` go to it.
    ``corrector``: ``"langevin"`` (score_sde's ``LangevinCorrector`` with per-sample norms,
    ``eps = 2 alpha (snr ||z||/||score||)^2``, capped at ``max_step_ratio (s_i sigma_i)^2``, None
    for no cap), ``"ald"`` (score_sde's ``AnnealedLangevinDynamics``, ``eps = 2 alpha (snr s_i
    sigma_i)^2`` for every sample) or None; ``alpha = (s_i/s_{i+1})^2`` (score_sde's ``1 - beta_i``
    for VP, 1 for VE). NFE per step = predictor's + ``n_corrector_steps``.
    """
    process, field = _require_gaussian(flow, "pc")
    ts = _check_grid(ts, "pc")
    if corrector not in ("langevin", "ald", None):
        raise ValueError(f"corrector must be 'langevin', 'ald' or None, got {corrector!r}")
    if max_step_ratio is not None and not (math.isfinite(max_step_ratio) and max_step_ratio > 0):
        raise ValueError(f"max_step_ratio must be a finite number > 0 or None, got {max_step_ratio!r}")
    if int(n_corrector_steps) != n_corrector_steps or n_corrector_steps < 0:
        raise ValueError(f"n_corrector_steps must be an integer >= 0, got {n_corrector_steps!r}")
    n_corr = int(n_corrector_steps) if corrector is not None else 0
    snr = float(snr)
    if n_corr and not (math.isfinite(snr) and snr > 0):
        raise ValueError(f"snr must be a finite number > 0, got {snr!r}")
    popts = dict(predictor_options or {})
    rev = flow if isinstance(flow, ReverseSDE) else ReverseSDE(process, field)
    counter = _Counter(x.shape[0], x.device)

    if predictor is None:
        pred_nfe = 0

        def predict(xx, t0, t1):
            return xx * (_sched(process, t1)[0] / _sched(process, t0)[0])
    elif predictor in _SDE_PREDICTORS:
        pred_nfe = 1
        if predictor == "euler_maruyama":
            def predict(xx, t0, t1):
                return _em_update(rev, counter, xx, t0, t1, noise.randn())
        elif predictor == "reverse_diffusion":
            def predict(xx, t0, t1):
                return _reverse_diffusion_update(process, field, counter, xx, t0, t1, noise.randn())
        else:
            eta = float(popts.pop("eta", 1.0))

            def predict(xx, t0, t1):
                return _ancestral_update(process, field, counter, xx, t0, t1, noise.randn(), eta)
        if popts:
            raise ValueError(f"unknown predictor_options for {predictor!r}: {sorted(popts)}")
    else:
        try:
            info = get_solver(predictor)
        except ValueError:
            info = None
        if info is None or info.kind != "ode" or info.adaptive or info.name in _MULTISTEP:
            raise ValueError(f"predictor must be one of {list(_SDE_PREDICTORS)}, a registered single-step fixed-step "
                             f"ODE solver (a probability-flow predictor, e.g. 'euler', 'heun'; multistep ones would "
                             f"restart every step) or None; got {predictor!r}")
        pred_nfe = info.nfe_per_step
        ode = ProbabilityFlowODE(process, field)

        def predict(xx, t0, t1):
            try:
                sol = info.fn(ode, xx.clone(), torch.tensor([t0, t1], dtype=torch.float64), **popts)
            except TypeError as err:
                raise ValueError(f"predictor_options do not fit predictor {predictor!r}: {err}") from None
            counter.tick(k=sol.nfe)
            if not sol.success:
                return torch.full_like(xx, float("nan"))
            return sol.x

    def step(i, xx, t0, t1):
        if n_corr:
            s0, sg0 = _sched(process, t0)
            alpha = (s0 / _sched(process, t1)[0]) ** 2
            for _ in range(n_corr):
                xx = _langevin_update(field, counter, xx, t0, noise.randn(), snr, alpha, s0 * sg0, corrector,
                                      max_step_ratio)
        return predict(xx, t0, t1)

    return run_fixed_grid(x, ts, save_at, counter.nfe, step, extras={"nfe_per_step": pred_nfe + n_corr})


def annealed_langevin(flow, x, ts, *, noise, save_at=None, eps: float | None = None, n_steps_each: int = 100):
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1), on the noise levels ``ts[1:]``.

    At level ``t_i`` (``i = 1..L``), in the scaled-out frame ``x̂ = x/s`` (= x for VE/EDM),
    ``n_steps_each`` steps ``x̂ <- x̂ + eps_i scorê + sqrt(2 eps_i) z`` with ``scorê = s score`` and
    ``eps_i = eps sigma_i^2 / sigma_L^2``; x is rescaled by ``s_i/s_{i-1}`` on entering a level.
    ``eps`` defaults to ``0.2 sigma_L^2`` (NCSN's 2e-5 at sigma_L = 0.01) and must be
    ``< 2 sigma_L^2`` (the step stays below ``2/Lipschitz(score)``). NFE per level = ``n_steps_each``.
    """
    process, field = _require_gaussian(flow, "annealed_langevin")
    ts = _check_grid(ts, "annealed_langevin")
    if int(n_steps_each) != n_steps_each or n_steps_each < 1:
        raise ValueError(f"n_steps_each must be an integer >= 1, got {n_steps_each!r}")
    m_steps = int(n_steps_each)
    sig_last = _sched(process, float(ts[-1]))[1]
    eps = 0.2 * sig_last**2 if eps is None else float(eps)
    if not (math.isfinite(eps) and 0 < eps < 2.0 * sig_last**2):
        raise ValueError(f"eps must lie in (0, 2 sigma_L^2) = (0, {2.0 * sig_last**2!r}) for sigma_L = "
                         f"{sig_last!r} (larger steps diverge at the smallest noise level), got {eps!r}")
    counter = _Counter(x.shape[0], x.device)

    def step(i, xx, t0, t1):
        s0 = _sched(process, t0)[0]
        s1, sg1 = _sched(process, t1)
        xh = xx / s0
        eps_i = eps * (sg1 / sig_last) ** 2
        for _ in range(m_steps):
            score_h = s1 * field.score(s1 * xh, t1)
            counter.tick()
            xh = xh + eps_i * score_h + math.sqrt(2.0 * eps_i) * noise.randn()
        return s1 * xh

    return run_fixed_grid(x, ts, save_at, counter.nfe, step, extras={"nfe_per_step": m_steps, "eps": eps})


def edm_stochastic(flow, x, ts, *, noise, save_at=None, S_churn: float = 40.0, S_tmin: float = 0.0,
                   S_tmax: float = float("inf"), S_noise: float = 1.0):
    """EDM's stochastic sampler (Karras et al. 2022, Alg. 2), in sigma on ``x̂ = x/s``.

    Step ``i`` of N: ``gamma = min(S_churn/N, sqrt(2)-1)`` if ``S_tmin <= sigma_i <= S_tmax``
    else 0; ``sigma_hat = sigma_i (1 + gamma)`` (clipped to sigma_max, the field is never
    evaluated outside the span); ``x̂_hat = x̂ + sqrt(sigma_hat^2 - sigma_i^2) S_noise z``;
    Heun step of ``dx̂/dsigma = (x̂ - D)/sigma`` from sigma_hat to sigma_{i+1} (Euler on the last
    step, which saves an evaluation; Alg. 2 uses Euler only on a step to sigma = 0, so on a grid
    ending at sigma_min > 0 this last step differs from Alg. 2, and ``denoise_final`` adds the
    step to 0). Any Gaussian-kernel process is the same ODE in (x̂, sigma). 2 NFE per step, 1 on
    the last.
    """
    process, field = _require_gaussian(flow, "edm_stochastic")
    ts = _check_grid(ts, "edm_stochastic")
    S_churn, S_noise = float(S_churn), float(S_noise)
    if not (math.isfinite(S_churn) and S_churn >= 0):
        raise ValueError(f"S_churn must be a finite number >= 0, got {S_churn!r}")
    if not (math.isfinite(S_noise) and S_noise >= 0):
        raise ValueError(f"S_noise must be a finite number >= 0, got {S_noise!r}")
    n_steps = len(ts) - 1
    sigma_max = process.sigma_max
    counter = _Counter(x.shape[0], x.device)

    def step(i, xx, t0, t1):
        s0, sg0 = _sched(process, t0)
        s1, sg1 = _sched(process, t1)
        gamma = min(S_churn / n_steps, math.sqrt(2.0) - 1.0) if S_tmin <= sg0 <= S_tmax else 0.0
        z = noise.randn()
        t_hat, s_hat, sg_hat = t0, s0, sg0
        if gamma > 0 and sg0 < sigma_max:
            t_hat = float(process.t_of_sigma(min(sg0 * (1.0 + gamma), sigma_max)))
            s_hat, sg_hat = _sched(process, t_hat)
        xh = xx / s0 + math.sqrt(max(0.0, sg_hat**2 - sg0**2)) * S_noise * z
        d = (xh - field.denoiser(s_hat * xh, t_hat)) / sg_hat
        counter.tick()
        xh_next = xh + (sg1 - sg_hat) * d
        if i < n_steps - 1:
            d2 = (xh_next - field.denoiser(s1 * xh_next, t1)) / sg1
            counter.tick()
            xh_next = xh + (sg1 - sg_hat) * (0.5 * d + 0.5 * d2)
        return s1 * xh_next

    return run_fixed_grid(x, ts, save_at, counter.nfe, step)


def dpmpp_2m_sde(flow, x, ts, *, noise, save_at=None, eta: float = 1.0, s_noise: float = 1.0,
                 solver_type: str = "midpoint"):
    """DPM-Solver++(2M) SDE (Lu et al. 2022, "DPM-Solver++", data prediction; k-diffusion's
    ``sample_dpmpp_2m_sde``), on ``x̂ = x/s`` with ``lambda = -log sigma``, ``h = lambda_{i+1} - lambda_i``:

        x̂' = (sigma_{i+1}/sigma_i) e^{-eta h} x̂ + (1 - e^{-(1+eta) h}) D_i
             + c (D_i - D_{i-1}) / r + sigma_{i+1} sqrt(1 - e^{-2 eta h}) s_noise z,  r = h_{i-1}/h,

    ``c = (1 - e^{-(1+eta)h})/2`` (midpoint) or ``1 - (1 - e^{-(1+eta)h})/((1+eta)h)`` (heun); the
    correction is skipped on the first step. eta = 1 and no correction is the ancestral step.
    """
    process, field = _require_gaussian(flow, "dpmpp_2m_sde")
    ts = _check_grid(ts, "dpmpp_2m_sde")
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    eta, s_noise = float(eta), float(s_noise)
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    if not (math.isfinite(s_noise) and s_noise >= 0):
        raise ValueError(f"s_noise must be a finite number >= 0, got {s_noise!r}")
    counter = _Counter(x.shape[0], x.device)
    memory = {"den": None, "h": None}

    def step(i, xx, t0, t1):
        s0, sg0 = _sched(process, t0)
        s1, sg1 = _sched(process, t1)
        den = field.denoiser(xx, t0)
        counter.tick()
        h = math.log(sg0 / sg1)
        eh = eta * h
        one_minus = -math.expm1(-h - eh)  # 1 - e^{-(1+eta) h}
        xh = (sg1 / sg0) * math.exp(-eh) * (xx / s0) + one_minus * den
        if memory["den"] is not None:
            r = memory["h"] / h
            c = 0.5 * one_minus if solver_type == "midpoint" else 1.0 - one_minus / (h + eh)
            xh = xh + (c / r) * (den - memory["den"])
        xh = xh + sg1 * math.sqrt(-math.expm1(-2.0 * eh)) * s_noise * noise.randn()
        memory["den"], memory["h"] = den, h
        return s1 * xh

    return run_fixed_grid(x, ts, save_at, counter.nfe, step)


def adaptive_sde(flow, x, ts, *, noise, rtol: float = 1e-2, atol: float = 1e-2, max_steps: int = 10_000,
                 first_step: float | None = None, safety: float = 0.9, exponent: float = 0.9,
                 extrapolate: bool = True, error_control: str = "paper", save_at=None):
    """Adaptive reverse-SDE solver of Jolicoeur-Martineau et al. 2021 ("Gotta Go Fast", Alg. 1).

    Per sample, with step h > 0 (time decreasing) and a draw z:
    ``K1 = -h drift(x, t) + g(t) sqrt(h) z``, ``x' = x + K1`` (Euler-Maruyama),
    ``K2 = -h drift(x', t-h) + g(t-h) sqrt(h) z``, ``x'' = x + (K1 + K2)/2`` (improved Euler);
    ``delta = max(atol, rtol max(|x'|, |x'_prev|))``, ``E = ||(x' - x'')/delta||_2 / sqrt(dim)``;
    accept if ``E <= 1`` (x <- x'' when ``extrapolate``, else x'; x'_prev <- x');
    ``h <- min(t - t1, safety h E^-exponent)`` after every attempt. ``first_step`` defaults to
    1 % of the span. Generic: any flow with drift and diffusion. A sample whose step underflows
    or whose drift is non-finite stops where it is (``extras["failed"]``); the others run on.

    ``error_control="paper"``: the accepted step is the pair above, and a rejected attempt
    draws a new z (as the paper does); 2 NFE per attempt. ``"independent"``: the decision uses z,
    an accepted step is recomputed with a second, independent draw (1 more NFE), so acceptance
    does not select the noise. Two draws per iteration for every sample in that mode.
    """
    _check_tolerances(rtol, atol, max_steps)
    if error_control not in ("paper", "independent"):
        raise ValueError(f"error_control must be 'paper' or 'independent', got {error_control!r}")
    t_all = torch.as_tensor(ts, dtype=torch.float64).reshape(-1)
    if t_all.numel() != 2 or not float(t_all[1]) < float(t_all[0]):
        raise ValueError(f"adaptive_sde takes ts=(t0, t1) with t1 < t0 (prior end first), got {t_all.tolist()!r}")
    if not callable(getattr(flow, "diffusion", None)):
        raise ValueError("adaptive_sde integrates an SDE: flow needs drift(x, t) and diffusion(t) (fs.reverse_sde)")
    if not (0 < safety <= 1 and exponent > 0):
        raise ValueError(f"need 0 < safety <= 1 and exponent > 0, got safety={safety!r}, exponent={exponent!r}")
    t0, t1 = float(t_all[0]), float(t_all[1])
    n, dev = x.shape[0], x.device
    span = t0 - t1
    h0 = 0.01 * span if first_step is None else float(first_step)
    if not (math.isfinite(h0) and h0 > 0):
        raise ValueError(f"first_step must be a finite number > 0, got {first_step!r}")
    counter = _Counter(n, dev)
    targets = _adaptive_save_times(save_at, t0, t1)
    tgt = torch.as_tensor(targets, dtype=torch.float64, device=dev) if targets else None

    t = torch.full((n,), t0, dtype=torch.float64, device=dev)
    h = torch.full((n,), min(h0, span), dtype=torch.float64, device=dev)
    x_prev = x.clone()
    all_idx = torch.arange(n, device=dev)
    steps = torch.zeros(n, dtype=torch.long, device=dev)
    accepted = torch.zeros_like(steps)
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    save_ptr = torch.zeros(n, dtype=torch.long, device=dev)
    saved = torch.full((len(targets), *x.shape), float("nan"), dtype=x.dtype, device=dev) if targets else None
    if targets and targets[0] == t0:
        saved[0] = x
        save_ptr += 1
    dim = x[0].numel() if n else 1
    failed = torch.zeros(n, dtype=torch.bool, device=dev)
    faults: list[tuple[str, str]] = []

    def fail(sel, kind, text):
        """Stop the samples ``sel`` (indices) where they are; the others run on."""
        failed[sel] = True
        faults.append((kind, text))

    while True:
        active = ~done & ~failed & (steps < max_steps)
        if not bool(active.any()):
            break
        # the draws of every sample, every iteration: a running sample's j-th attempt always uses
        # its j-th draw(s), whatever the other samples do
        z_all = noise.randn()
        zs_all = noise.randn() if error_control == "independent" else None
        idx = all_idx[active]
        ta = t[idx]
        remaining = ta - t1
        ha = torch.minimum(h[idx], remaining)
        t_next = torch.where(h[idx] >= remaining, torch.full_like(ta, t1), ta - ha)
        if targets:
            nxt = tgt[save_ptr[idx].clamp(max=len(targets) - 1)]
            clip = (save_ptr[idx] < len(targets)) & (ta - nxt > 0) & (ta - nxt <= ha)
            ha = torch.where(clip, ta - nxt, ha)
            t_next = torch.where(clip, nxt, t_next)
        tiny = 64 * torch.finfo(torch.float64).eps * torch.maximum(ta.abs(), torch.full_like(ta, span))
        under = h[idx] < tiny  # a step clipped short by the end or a save time is not underflow
        if bool(under.any()):
            bad = int(idx[under][0])
            fail(idx[under], UNDERFLOW, f"step size underflow (h={float(h[bad]):.3g}) for sample {bad} at "
                                        f"t={float(t[bad])!r} after {int(steps[bad])} attempts")
            idx, ta, ha, t_next = idx[~under], ta[~under], ha[~under], t_next[~under]
            if idx.numel() == 0:
                continue
        xa = x[idx]
        drift1 = flow.drift(xa, as_time(ta, xa))
        counter.tick(idx)
        bad_here = ~_finite_rows(drift1)
        if bool(bad_here.any()):
            bad = int(idx[bad_here][0])
            fail(idx[bad_here], NONFINITE, f"non-finite drift for sample {bad} at its accepted state, "
                                           f"t={float(t[bad])!r} (step {int(accepted[bad])})")
            keep = ~bad_here
            idx, ta, ha, t_next, xa, drift1 = idx[keep], ta[keep], ha[keep], t_next[keep], xa[keep], drift1[keep]
        if idx.numel() == 0:
            continue
        hx = ha.to(x.dtype).unsqueeze(-1)
        g1 = _diffusion_coef(flow, as_time(ta, xa), xa)
        g2 = _diffusion_coef(flow, as_time(t_next, xa), xa)
        sq = torch.sqrt(hx)

        def pair(z):
            """EM and improved-Euler proposals sharing the draw z (one more drift evaluation)."""
            k1 = -hx * drift1 + g1 * sq * z
            drift2 = flow.drift(xa + k1, as_time(t_next, xa))
            k2 = -hx * drift2 + g2 * sq * z
            return xa + k1, xa + 0.5 * (k1 + k2)

        x_em, x_heun = pair(z_all[idx])
        counter.tick(idx)
        delta = torch.clamp(rtol * torch.maximum(x_em.abs(), x_prev[idx].abs()), min=atol)
        err = (_row_norm((x_em - x_heun) / delta) / math.sqrt(dim)).to(torch.float64)
        finite = _finite_rows(x_heun) & _finite_rows(x_em) & torch.isfinite(err)
        err = torch.where(finite, err, torch.full_like(err, float("inf")))  # a non-finite trial is rejected
        ok = err <= 1.0
        steps[idx] += 1
        # exp(-r log E) rather than E ** -r: torch's vectorised pow differs from its scalar tail by an
        # ulp, which would make a sample's step sizes depend on how many samples are still active
        factor = safety * torch.exp(-exponent * torch.log(err.clamp_min(1e-12)))
        factor = torch.where(torch.isfinite(factor) & (factor > 0), factor, torch.full_like(factor, 0.2))
        h[idx] = torch.where(ok & (ha < h[idx]), h[idx], ha * factor)  # a clipped step keeps the wanted size
        if error_control == "independent" and bool(ok.any()):
            # the decision used the first draw only; an accepted step takes the independent second draw
            x_em, x_heun = pair(zs_all[idx])
            counter.tick(idx)  # pair() evaluated every active row, rejected ones too
            bad_step = ok & ~(_finite_rows(x_heun) & _finite_rows(x_em))
            if bool(bad_step.any()):
                bad = int(idx[bad_step][0])
                fail(idx[bad_step], NONFINITE, f"non-finite state for sample {bad} in step {int(accepted[bad])} "
                                               f"from t={float(t[bad])!r} to t={float(t_next[bad_step][0])!r}")
                ok = ok & ~bad_step
        acc = idx[ok]
        if acc.numel():
            x[acc] = (x_heun if extrapolate else x_em)[ok]
            x_prev[acc] = x_em[ok]
            t[acc] = t_next[ok]
            accepted[acc] += 1
            if targets:
                for j in acc.tolist():
                    while int(save_ptr[j]) < len(targets) and float(t[j]) == float(tgt[int(save_ptr[j])]):
                        saved[int(save_ptr[j]), j] = x[j]
                        save_ptr[j] += 1
            done[acc] = t[acc] <= t1
    status, message = SUCCESS, ""
    if faults:
        status, message = faults[0]
        message += f" ({int(failed.sum())} sample(s) stopped early; the others ran on)"
    elif not bool(done.all()):
        undone = all_idx[~done]
        status = MAX_STEPS
        message = (f"max_steps={max_steps} reached by {undone.numel()} sample(s) before t1={t1!r}; "
                   f"e.g. sample {int(undone[0])} stopped at t={float(t[undone[0]])!r}")
    return Solution(x=x, t=t, nfe=counter.nfe, n_steps=steps, n_accepted=accepted, n_rejected=steps - accepted,
                    status=status, message=message, ts=tgt.cpu() if targets else None, xs=saved,
                    extras={"failed": failed})


# ---------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------

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
_MULTISTEP = ("dpmpp_2m", "dpmpp_3m", "unipc")


def _pc_cost(options: dict) -> int:
    predictor = options.get("predictor", "reverse_diffusion")
    if predictor is None:
        pred = 0
    elif predictor in _SDE_PREDICTORS:
        pred = 1
    else:
        try:
            pred = get_solver(predictor).nfe_per_step
        except ValueError:
            raise ValueError(f"predictor must be one of {list(_SDE_PREDICTORS)}, a registered fixed-step ODE "
                             f"solver or None; got {predictor!r}") from None
    corr = int(options.get("n_corrector_steps", 1)) if options.get("corrector", "langevin") is not None else 0
    return max(1, pred + corr)


register_solver("pc", pc, kind="sde", order=1.0, nfe_per_step=2, process_aware=True, cost=_pc_cost,
                description="predictor-corrector, Langevin corrector with snr ('langevin' per-sample or 'ald'); NFE "
                            "per step = predictor's + n_corrector_steps (2 with the defaults)")
register_solver("annealed_langevin", annealed_langevin, kind="sde", order=1.0, nfe_per_step=100, process_aware=True,
                cost=lambda options: int(options.get("n_steps_each", 100)),
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
                description="adaptive EM/improved-Euler pair, per-sample steps (Jolicoeur-Martineau et al. 2021); "
                            "error_control='independent' for low-dimensional data")
