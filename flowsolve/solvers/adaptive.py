"""The adaptive loop every adaptive solver shares, and the step-size controller it uses.

:class:`PIDController` holds everything about choosing step sizes (tolerances, norm, PID
coefficients, safety, factor limits, first step, step bounds); :func:`run_adaptive` runs any
*method* -- an object that proposes a step and an error estimate (the embedded Runge-Kutta pairs,
the adaptive SDE pair) -- with one step size per sample (or one for the batch) and per-sample
faults. Model: diffrax's ``PIDController`` and ``diffeqsolve`` loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Callable

import torch

from .._validation import check_bool, check_int, check_real, compute_dtype
from .saving import SaveAt
from .solution import (MAX_STEPS, NONE, NONFINITE, UNDERFLOW, Solution, finite_rows, interrupted, per_sample,
                       summarise)
from .term import FieldError, Term

_NONFINITE_SHRINK = 0.2  # step factor after an attempt whose error is not finite (NaN/inf field values)


def _rms(v: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((v.reshape(v.shape[0], -1) ** 2).mean(-1))


def _max_abs(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1).abs().amax(-1) if v[0].numel() else torch.zeros(v.shape[0], dtype=v.dtype,
                                                                                      device=v.device)


_NORMS = {"rms": _rms, "max": _max_abs}


@dataclass(frozen=True)
class PIDController:
    """Step-size control for every adaptive solver (Hairer, Nørsett & Wanner I, II.4; Söderlind 2002).

    Error of an attempt, per sample: ``e = norm(err / scale)`` over all non-batch dims, with
    ``scale = atol + rtol max(|x|, |x'|)`` (``error_scale="sum"``, Hairer) or
    ``max(atol, rtol max(|x|, |x'|))`` (``"max"``, Jolicoeur-Martineau et al. 2021); ``norm`` is
    ``"rms"``, ``"max"`` or a callable ``(n, ...) -> (n,)``. The attempt is accepted when
    ``e <= 1``. The next step is ``h * factor`` with, for an accepted step,

        factor = safety * e_n^(-(p+i+d)/q) * e_{n-1}^((p+2d)/q) * e_{n-2}^(-d/q)

    (``p, i, d = pcoeff, icoeff, dcoeff``; ``q`` the error order of the method), clipped to
    ``[factor_min, factor_max]``; after a rejection ``factor = safety * e^(-1/q)`` clipped to
    ``[factor_min, 1]``. The defaults ``p = 0.4, i = 0.3`` are Gustafsson's PI controller
    (``e_n^-0.7/q e_{n-1}^0.4/q``). ``first_step`` (absolute, > 0) replaces the method's starting
    rule (Hairer's heuristic for Runge-Kutta pairs); ``dt_min`` is the step below which a sample
    stops with an underflow (default ``64 eps max(|t|, span)``); ``dt_max`` caps every step;
    ``shared_step`` gives the whole batch one step size (the largest that all samples accept).
    """

    rtol: float = 1e-5
    atol: float = 1e-5
    norm: str | Callable = "rms"
    pcoeff: float = 0.4
    icoeff: float = 0.3
    dcoeff: float = 0.0
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0
    first_step: float | None = None
    dt_min: float | None = None
    dt_max: float | None = None
    shared_step: bool = False
    error_scale: str = "sum"

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        set_("rtol", check_real("rtol", self.rtol, minimum=0.0))
        set_("atol", check_real("atol", self.atol, minimum=0.0))
        if self.rtol == 0 and self.atol == 0:
            raise ValueError("rtol and atol must not both be 0: give rtol > 0 or atol > 0")
        if not callable(self.norm) and not (isinstance(self.norm, str) and self.norm in _NORMS):
            raise ValueError(f"norm must be 'rms', 'max' or a callable (n, ...) -> (n,), got {self.norm!r}")
        for name in ("pcoeff", "icoeff", "dcoeff"):
            set_(name, check_real(name, getattr(self, name), minimum=0.0))
        if self.pcoeff + self.icoeff + self.dcoeff <= 0:
            raise ValueError("pcoeff + icoeff + dcoeff must be > 0 (the controller must react to the error)")
        set_("safety", check_real("safety", self.safety, minimum=0.0, maximum=1.0, strict_min=True))
        set_("factor_min", check_real("factor_min", self.factor_min, minimum=0.0, maximum=1.0, strict_max=True))
        set_("factor_max", check_real("factor_max", self.factor_max, minimum=1.0, strict_min=True, allow_inf=True))
        for name in ("first_step", "dt_min", "dt_max"):
            if getattr(self, name) is not None:
                set_(name, check_real(name, getattr(self, name), minimum=0.0, strict_min=True))
        if self.dt_min is not None and self.dt_max is not None and self.dt_min > self.dt_max:
            raise ValueError(f"dt_min must be <= dt_max, got dt_min={self.dt_min!r}, dt_max={self.dt_max!r}")
        set_("shared_step", check_bool("shared_step", self.shared_step))
        if self.error_scale not in ("sum", "max"):
            raise ValueError(f"error_scale must be 'sum' or 'max', got {self.error_scale!r}")

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def with_options(self, **options) -> "PIDController":
        """A copy with some fields replaced (``rtol=``/``atol=`` shortcuts of the solvers)."""
        unknown = sorted(set(options) - set(self.option_names()))
        if unknown:
            raise ValueError(f"unknown PIDController field(s) {unknown}: it has {list(self.option_names())}")
        return replace(self, **options)

    def check_resolvable(self, dtype: torch.dtype):
        """A pure relative tolerance below what ``dtype`` resolves can never be met: refuse it up
        front (with ``atol > 0`` the absolute part can still be met)."""
        floor = 4 * torch.finfo(dtype).eps
        if self.atol == 0 and 0 < self.rtol < floor:
            raise ValueError(f"rtol={self.rtol!r} with atol=0 is below what {dtype} arithmetic can resolve: rtol must be "
                             f">= {floor:.3g} (4 eps of the state's dtype), or give atol > 0")

    # -- the error of an attempt -------------------------------------------------------------
    def error_ratio(self, err: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per sample ``norm(err / scale)`` with the scale built from the magnitudes of ``a`` and
        ``b`` (e.g. the state before and after the step), float64. A zero scale with zero error
        gives 0, with non-zero error infinity (``atol = 0`` and a zero coordinate)."""
        # float16/bfloat16 states: the ratios' squares overflow there
        wide = compute_dtype(err.dtype)
        if err.dtype != wide:
            err, a, b = err.to(wide), a.to(wide), b.to(wide)
        mag = torch.maximum(a.abs(), b.abs())
        scale = ((mag * self.rtol).add_(self.atol) if self.rtol > 0 else None) if self.error_scale == "sum" \
            else torch.clamp(self.rtol * mag, min=self.atol)
        if scale is None:  # rtol = 0 (then atol > 0): a constant scale
            ratio = err / self.atol
        elif self.atol > 0:  # the scale is positive everywhere
            ratio = err / scale
        else:
            ratio = torch.where(scale > 0, err / torch.where(scale > 0, scale, torch.ones_like(scale)),
                                torch.where(err == 0, torch.zeros_like(err), torch.full_like(err, math.inf)))
        norm = _NORMS[self.norm] if isinstance(self.norm, str) else self.norm
        out = norm(ratio)
        if not isinstance(out, torch.Tensor) or out.shape != (ratio.shape[0],):
            raise ValueError(f"the controller's norm must return one value per sample, shape ({ratio.shape[0]},), "
                             f"got {tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        return out.to(torch.float64)

    # -- the next step ----------------------------------------------------------------------
    def factor(self, e: torch.Tensor, e_prev: torch.Tensor, e_prev2: torch.Tensor, accepted: torch.Tensor,
               q: float) -> torch.Tensor:
        """Step factor per sample from the errors of this and the last two accepted steps.
        Powers are taken as ``exp(r log e)``: a tensor ``**`` may round differently with the batch
        size, and a sample's steps must not depend on the other samples."""
        log_e = torch.log(e.clamp_min(1e-10))
        b1, b2, b3 = self.pcoeff + self.icoeff + self.dcoeff, -(self.pcoeff + 2 * self.dcoeff), self.dcoeff
        # -(b1 log e_n + b2 log e_{n-1} + b3 log e_{n-2}) / q, the terms with a zero weight left out
        weighted = log_e * b1
        if b2:
            weighted = weighted + torch.log(e_prev.clamp_min(1e-10)) * b2
        if b3:
            weighted = weighted + torch.log(e_prev2.clamp_min(1e-10)) * b3
        # grow after an accepted step, shrink (safety e^(-1/q), at most 1) after a rejection: one exp for both
        factor = torch.exp(torch.where(accepted, weighted, log_e).div_(-q)).mul_(self.safety).clamp_(min=self.factor_min)
        factor = torch.minimum(factor, torch.where(accepted, self.factor_max, 1.0))
        return torch.where(torch.isfinite(factor) & (factor > 0), factor, _NONFINITE_SHRINK)

    def hairer_first_step(self, term: Term, x: torch.Tensor, t0: float, t1: float, k0: torch.Tensor,
                          order: float) -> torch.Tensor:
        """Hairer's starting step (HNW I, II.4), per sample, with the probe point inside the span:
        ``h0 = 0.01 ||x|| / ||f(x)||``, one Euler probe to estimate the second derivative, then
        ``h1 = (0.01 / max(||f||, ||f'||))^(1/(order+1))``; ``min(100 h0, h1, span)``."""
        span = abs(t1 - t0)
        direction = 1.0 if t1 > t0 else -1.0
        zero = torch.zeros_like(x)
        d0 = self.error_ratio(x, x, zero)
        d1 = self.error_ratio(k0, x, zero)
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5) | ~torch.isfinite(d0 / d1), torch.full_like(d0, 1e-6),
                         0.01 * d0 / d1)
        h0 = torch.minimum(h0, torch.full_like(h0, span))
        x1 = x + per_sample((direction * h0).to(x.dtype), x) * k0
        t_probe = torch.clamp(t0 + direction * h0, min(t0, t1), max(t0, t1))
        k1 = term.drift(x1, t_probe)
        d2 = self.error_ratio(k1 - k0, x, zero) / h0
        d2 = torch.where(torch.isfinite(d2), d2, torch.full_like(d2, math.inf))
        big = torch.maximum(d1, d2)
        h1 = torch.where(big <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3),
                         torch.exp(torch.log(0.01 / big) / (order + 1)))
        return torch.minimum(torch.minimum(100 * h0, h1), torch.full_like(h0, span))


@dataclass(frozen=True)
class StepVariable:
    """The variable ``u(t)`` an adaptive method steps in, when it is not the time itself (e.g.
    ``lambda = -log sigma(t)`` for exponential integrators): ``of_time`` maps float64 times to
    ``u``, ``time_of`` maps ``u`` back; both elementwise on float64 tensors, ``u`` increasing or
    decreasing with ``t``. Step sizes, ``first_step``, ``dt_min`` and ``dt_max`` are then in ``u``."""

    name: str
    of_time: Callable[[torch.Tensor], torch.Tensor]
    time_of: Callable[[torch.Tensor], torch.Tensor]


def run_adaptive(term: Term, x: torch.Tensor, t0: float, t1: float, method, controller: PIDController,
                 save: SaveAt | None = None, max_steps: int = 10_000) -> Solution:
    """Integrate from ``t0`` to ``t1`` with ``method`` under ``controller``, one step size per sample.

    ``method`` provides ``error_order`` (q of the controller) and
    ``init(term, x, u0) -> carry`` (per-sample tensors, e.g. the first stage of an FSAL pair),
    ``first_step(term, x, u0, u1, carry, controller) -> h`` (per sample),
    ``attempt(term, x, u, u_next, h, carry, rows) -> (x_new, err, (a, b), carry_new)`` for the
    samples ``rows`` (``h`` signed, float64; ``err`` the local error estimate; ``a, b`` the
    magnitudes the error is scaled by) and
    ``commit(term, rows, accepted, carry, carry_new, x_new, u_next) -> carry`` (the rows' carry
    after the decision). The ``u`` are times, or the method's :class:`StepVariable` when it has
    one as ``method.variable`` (then the loop steps in that variable; the solution's times and
    the save times stay times).

    A sample whose step falls below ``dt_min`` (repeated rejections, or non-finite field values,
    which reject the attempt) stops there with an underflow; a sample whose first evaluation is
    non-finite stops at once; a sample still short of ``t1`` after ``max_steps`` attempts stops
    with ``max_steps``. The others run on. Every step is clipped to the span and lands exactly
    on ``t1`` and on the save times, so the field is never evaluated outside ``[t0, t1]``.
    """
    max_steps = check_int("max_steps", max_steps, 1)
    n, dev = x.shape[0], x.device
    variable = getattr(method, "variable", None)
    if variable is None:
        u0, u1 = t0, t1
    else:
        u0, u1 = (float(variable.of_time(torch.tensor(float(v), dtype=torch.float64))) for v in (t0, t1))
    direction = 1.0 if u1 > u0 else -1.0
    span = abs(u1 - u0)
    q = float(method.error_order)
    u = torch.full((n,), u0, dtype=torch.float64, device=dev)
    code = torch.where(finite_rows(x), NONE, NONFINITE)
    steps = torch.zeros(n, dtype=torch.long, device=dev)
    accepted = torch.zeros_like(steps)
    if save is not None:
        save.start(x, t0)

    def times():
        """The samples' times (the ends exactly)."""
        if variable is None:
            return u
        return torch.where(u == u1, t1, torch.where(u == u0, t0, variable.time_of(u)))

    def interrupt(error: FieldError, step: int):
        """The field raised: say where, with what was computed before."""
        error.step = step
        error.solution = interrupted(_solution(term, x, times(), code, steps, accepted, save), t1)

    try:
        carry = method.init(term, x, u0)
        first_finite = (torch.stack([finite_rows(v) for v in carry.values()]).all(0) if carry
                        else torch.ones_like(code, dtype=torch.bool))
        code = torch.where((code == NONE) & ~first_finite, NONFINITE, code)
        if controller.first_step is not None:
            h = torch.full((n,), controller.first_step, dtype=torch.float64, device=dev)
        else:
            with torch.no_grad():
                h = method.first_step(term, x, u0, u1, carry, controller)
    except FieldError as err:
        interrupt(err, 0)
        raise
    h = h.clamp(max=span if controller.dt_max is None else min(span, controller.dt_max))
    if controller.shared_step and n:
        h = _shared(h, code == NONE)
    e_prev = torch.ones(n, dtype=torch.float64, device=dev)
    e_prev2 = torch.ones_like(e_prev)
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    rejected_nonfinite = torch.zeros(n, dtype=torch.bool, device=dev)
    lo, hi = min(u0, u1), max(u0, u1)
    fixed_dt_min = None if controller.dt_min is None else torch.full_like(u, controller.dt_min)
    iteration = 0
    while True:
        active = ~done & (code == NONE) & (steps < max_steps)
        # a step below dt_min: that sample stops where it is (underflow), the others go on
        dt_min = (64 * torch.finfo(torch.float64).eps * torch.clamp(u.abs(), min=span)
                  if fixed_dt_min is None else fixed_dt_min)
        under = active & (h < dt_min)
        code = torch.where(under, UNDERFLOW, code)
        # the loop's one host synchronisation: which samples step now (and whether any does)
        rows = (active & ~under).nonzero().flatten()
        if rows.numel() == 0:
            break
        # while every sample steps (most iterations), work on the whole batch: no gathers or scatters
        every = rows.numel() == n
        take = (lambda v: v) if every else (lambda v: v[rows])  # noqa: E731
        ua, ha = take(u), take(h)
        remaining = (u1 - ua) * direction
        step = torch.minimum(ha, remaining)
        u_next = torch.where(ha >= remaining, u1, ua + step * direction)
        if save is not None:  # land exactly on the next save time
            target_t, has = save.next_times(rows)
            target = target_t if variable is None else variable.of_time(target_t)
            to_target = (target - ua) * direction
            clip = has & (to_target > 0) & (to_target <= step)
            step = torch.where(clip, to_target, step)
            u_next = torch.where(clip, target, u_next)
        u_next = u_next.clamp(lo, hi)
        term.begin_step()
        carry_rows = carry if every else {k: v[rows] for k, v in carry.items()}
        try:
            x_new, err, (a, b), carry_new = method.attempt(term, take(x), ua, u_next, step * direction, carry_rows,
                                                           rows)
        except FieldError as error:
            interrupt(error, int(steps[rows].max()))
            raise
        # step sizes are decisions, not functions to differentiate (as in diffrax): a differentiable
        # solve differentiates the steps taken, with the step sizes held fixed
        e = controller.error_ratio(err.detach(), a.detach(), b.detach())
        finite = finite_rows(x_new) & torch.isfinite(e)
        e = torch.where(finite, e, math.inf)
        if controller.shared_step:  # the samples with finite values share; a non-finite one shrinks alone
            e = torch.where(finite, torch.where(finite, e, 0.0).amax(), e)
        ok = e <= 1.0
        e_prev_rows = take(e_prev)
        factor = controller.factor(e, e_prev_rows, take(e_prev2), ok, q)
        # an accepted step cut short by the end or a save time says little about the step the
        # controller wanted: keep that one rather than scaling the clipped one
        h_new = torch.where(ok & (step < ha), ha, step * factor)
        if controller.dt_max is not None:
            h_new = h_new.clamp(max=controller.dt_max)
        if controller.shared_step:
            h_new = _shared(h_new, finite)
        try:
            kept = method.commit(term, rows, ok, carry_rows, carry_new, x_new, u_next)
        except FieldError as error:
            interrupt(error, int(steps[rows].max()))
            raise
        moved = per_sample(ok, x_new)
        if every:
            rejected_nonfinite = ~finite
            steps = steps + 1
            h = h_new
            carry = kept
            # out of place: a differentiable solve needs the states it has overwritten
            x = torch.where(moved, x_new, x)
            u = torch.where(ok, u_next, u)
            e_prev2 = torch.where(ok, e_prev, e_prev2)
            e_prev = torch.where(ok, e.clamp_min(1e-10), e_prev)
            accepted = accepted + ok
            done = ok & (u_next == u1)
        else:
            rejected_nonfinite[rows] = ~finite
            steps[rows] += 1
            h[rows] = h_new
            carry = {k: carry[k].index_put((rows,), v) for k, v in kept.items()}
            x = x.index_put((rows,), torch.where(moved, x_new, x[rows]))
            u[rows] = torch.where(ok, u_next, ua)
            e_prev2[rows] = torch.where(ok, e_prev_rows, e_prev2[rows])
            e_prev[rows] = torch.where(ok, e.clamp_min(1e-10), e_prev_rows)
            accepted[rows] += ok
            done[rows] = ok & (u_next == u1)
        if save is not None:  # a rejected attempt reached nothing (NaN is no save time): no boolean indexing
            reached = torch.where(ok, u_next if variable is None else torch.where(clip, target_t, math.nan), math.nan)
            save.record(rows, reached, x_new)
        if term.callback is not None:
            term.callback(iteration, times().clone(), x, None)
        iteration += 1
    code = torch.where((code == NONE) & ~done, MAX_STEPS, code)
    sol = _solution(term, x, times(), code, steps, accepted, save, max_steps)
    underflow_nonfinite = (code == UNDERFLOW) & rejected_nonfinite
    if bool(underflow_nonfinite.any()):
        sol.message += (f"; sample {int(underflow_nonfinite.nonzero()[0])} underflowed after non-finite field "
                        "values")
    elif bool(((code == UNDERFLOW) & (accepted == 0)).any()):
        sol.message += "; an underflow before any accepted step usually means tolerances no step can meet"
    sol.extras["max_steps"] = max_steps
    if variable is not None:
        sol.extras["step_variable"] = variable.name
    return sol


def _shared(h: torch.Tensor, among: torch.Tensor) -> torch.Tensor:
    """One step size for the batch: the smallest of ``h`` over the samples ``among``; the others
    keep theirs (all of them when ``among`` is empty). No host synchronisation."""
    smallest = torch.where(among, h, math.inf).amin()
    return torch.where(among & torch.isfinite(smallest), smallest, h)


def _solution(term, x, t, code, steps, accepted, save, max_steps=None) -> Solution:
    status, message = summarise(code, steps, t, what={MAX_STEPS: f"max_steps={max_steps} reached"})
    ts, xs = save.result() if save is not None else (None, None)
    return Solution(x=x, t=t, nfe=term.nfe, n_steps=steps, n_accepted=accepted, n_rejected=steps - accepted,
                    failed=code != NONE, fault=code, status=status, message=message, ts=ts, xs=xs)
