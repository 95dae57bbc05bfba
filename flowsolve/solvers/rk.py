"""Explicit Runge-Kutta solvers from Butcher tableaus: one fixed-step loop and one adaptive
loop serve every tableau (Hairer, Nørsett & Wanner, *Solving ODEs I*, II.1 and II.4).

Adaptive solvers use an embedded pair, an error norm per sample (each sample has its own
step size unless ``shared_step=True``), a PI step-size controller (Gustafsson 1991; HNW
IV.2), and Hairer's starting-step heuristic (HNW II.4), with every stage inside the span.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction as F

import torch

from .._validation import check_int
from .base import (MAX_STEPS, SUCCESS, UNDERFLOW, CountingFlow, Solution, as_time, register_solver,
                   run_fixed_grid)


@dataclass(frozen=True)
class ButcherTableau:
    """``c`` nodes, ``a`` lower-triangular rows, ``b`` weights; ``b_low`` the embedded
    lower-order weights (adaptive pairs); ``fsal`` when the last stage is the next first."""

    name: str
    order: int
    c: tuple
    a: tuple
    b: tuple
    b_low: tuple | None = None
    low_order: int | None = None
    fsal: bool = False

    def __post_init__(self):
        s = len(self.c)
        if len(self.a) != s or len(self.b) != s or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError(f"tableau {self.name!r}: a must be strictly lower-triangular with len(c) = len(b) rows")
        if abs(sum(float(v) for v in self.b) - 1.0) > 1e-12:
            raise ValueError(f"tableau {self.name!r}: the weights b must sum to 1 (consistency)")
        for ci, row in zip(self.c, self.a):
            if abs(sum(float(v) for v in row) - float(ci)) > 1e-12:
                raise ValueError(f"tableau {self.name!r}: each row of a must sum to its node c")

    @property
    def stages(self) -> int:
        return len(self.c)


def _t(*rows):
    return tuple(tuple(F(v) for v in row) for row in rows)


EULER = ButcherTableau("euler", 1, (F(0),), ((),), (F(1),))
MIDPOINT = ButcherTableau("midpoint", 2, (F(0), F(1, 2)), _t((), (F(1, 2),)), (F(0), F(1)))
HEUN = ButcherTableau("heun", 2, (F(0), F(1)), _t((), (1,)), (F(1, 2), F(1, 2)))
RALSTON = ButcherTableau("ralston", 2, (F(0), F(2, 3)), _t((), (F(2, 3),)), (F(1, 4), F(3, 4)))
RK4 = ButcherTableau("rk4", 4, (F(0), F(1, 2), F(1, 2), F(1)),
                     _t((), (F(1, 2),), (0, F(1, 2)), (0, 0, 1)), (F(1, 6), F(1, 3), F(1, 3), F(1, 6)))
BOSH3 = ButcherTableau(
    "bosh3", 3, (F(0), F(1, 2), F(3, 4), F(1)),
    _t((), (F(1, 2),), (0, F(3, 4)), (F(2, 9), F(1, 3), F(4, 9))),
    (F(2, 9), F(1, 3), F(4, 9), F(0)), b_low=(F(7, 24), F(1, 4), F(1, 3), F(1, 8)), low_order=2, fsal=True)
DOPRI5 = ButcherTableau(
    "dopri5", 5, (F(0), F(1, 5), F(3, 10), F(4, 5), F(8, 9), F(1), F(1)),
    _t((), (F(1, 5),), (F(3, 40), F(9, 40)), (F(44, 45), F(-56, 15), F(32, 9)),
       (F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)),
       (F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)),
       (F(35, 384), F(0), F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84))),
    (F(35, 384), F(0), F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), F(0)),
    b_low=(F(5179, 57600), F(0), F(7571, 16695), F(393, 640), F(-92097, 339200), F(187, 2100), F(1, 40)),
    low_order=4, fsal=True)

# Tsitouras 2011 (Comput. Math. Appl. 62, 770-775), 5(4), FSAL; the coefficients as
# tabulated in OrdinaryDiffEq's Tsit5 (floats: the pair has no closed rational form).
_TSIT5_B = (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
            2.324710524099774, 0.0)
_TSIT5_BTILDE = (-0.00178001105222577714, -0.0008164344596567469, 0.007880878010261995, -0.1447110071732629,
                 0.5823571654525552, -0.45808210592918697, 1.0 / 66.0)  # b - b_low
TSIT5 = ButcherTableau(
    "tsit5", 5, (0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    ((), (0.161,), (-0.008480655492356989, 0.335480655492357),
     (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
     (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
     (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.028269050394068383),
     _TSIT5_B[:6]),
    _TSIT5_B, b_low=tuple(b - e for b, e in zip(_TSIT5_B, _TSIT5_BTILDE)), low_order=4, fsal=True)


def _combine(x, h, coefs, ks):
    """``x + h * sum_j coefs[j] k_j`` skipping zero coefficients; ``h`` broadcasts per sample."""
    acc = None
    for a, k in zip(coefs, ks):
        if a != 0:
            term = float(a) * k
            acc = term if acc is None else acc + term
    return x if acc is None else x + h * acc


def _stage_time(t0: float, t1: float, c: float) -> float:
    """``t0 + c (t1 - t0)``, exactly ``t1`` for ``c = 1`` and never outside ``[t0, t1]``:
    rounding must not put a field evaluation outside the span (e.g. below sigma_min)."""
    if c == 1.0:
        return t1
    return min(max(t0 + c * (t1 - t0), min(t0, t1)), max(t0, t1))


def rk_fixed(tableau: ButcherTableau, flow, x: torch.Tensor, ts: torch.Tensor, *, save_at=None):
    """Integrate ``dx/dt = flow.drift(x, t)`` along the grid ``ts`` with one tableau."""
    counter = CountingFlow(flow, x.shape[0], x.device)

    def step(i, x, t0, t1):
        h = t1 - t0
        ks = []
        for c, row in zip(tableau.c, tableau.a):
            ks.append(counter.drift(_combine(x, h, row, ks), as_time(_stage_time(t0, t1, float(c)), x)))
        return _combine(x, h, tableau.b, ks)

    return run_fixed_grid(x, ts, save_at, counter.nfe, step)


def _rms(v: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((v.reshape(v.shape[0], -1) ** 2).mean(-1))


def rk_adaptive(tableau: ButcherTableau, flow, x: torch.Tensor, span, *, rtol: float = 1e-5, atol: float = 1e-5,
                max_steps: int = 10_000, shared_step: bool = False, first_step: float | None = None,
                safety: float = 0.9, min_factor: float = 0.2, max_factor: float = 10.0,
                pi_beta: tuple[float, float] = (0.7, 0.4), save_at=None):
    """Adaptive integration from ``span[0]`` to ``span[1]`` with an embedded pair.

    Error per sample ``e = rms((x_high - x_low) / (atol + rtol max(|x|, |x_new|)))``; accept
    when ``e <= 1``; PI controller ``h <- h * safety * e^(-b1/q) * e_prev^(b2/q)`` with
    ``q = low_order + 1`` (Gustafsson's gains, ``b = (0.7, 0.4)``). Stages are clipped to
    the span, so the field is never evaluated outside ``[t0, t1]``.
    """
    _check_tolerances(rtol, atol, max_steps)
    _check_controller(safety, min_factor, max_factor, pi_beta)
    if first_step is not None and not (math.isfinite(float(first_step)) and float(first_step) > 0):
        raise ValueError(f"first_step must be a finite number > 0 (its sign follows the span), got {first_step!r}")
    t0, t1 = float(span[0]), float(span[1])
    n, dev = x.shape[0], x.device
    direction = 1.0 if t1 > t0 else -1.0
    counter = CountingFlow(flow, n, dev)
    q = float(tableau.low_order + 1)
    b1, b2 = pi_beta
    targets = _adaptive_save_times(save_at, t0, t1)

    t = torch.full((n,), t0, dtype=torch.float64, device=dev)
    all_idx = torch.arange(n, device=dev)
    k_first = counter.drift(x, as_time(t0, x))
    if not bool(torch.isfinite(k_first).all()):
        raise FloatingPointError(f"non-finite field at the initial time t={t0!r} (step 0)")
    if first_step is None:
        h = _initial_step(counter, x, t0, t1, k_first, tableau.order, rtol, atol)
    else:
        h = torch.full((n,), float(first_step), dtype=torch.float64, device=dev)
    if shared_step:
        h = h.min().expand(n).clone()
    err_prev = torch.ones(n, dtype=torch.float64, device=dev)
    steps = torch.zeros(n, dtype=torch.long, device=dev)
    accepted = torch.zeros_like(steps)
    done = torch.zeros(n, dtype=torch.bool, device=dev)
    nonfinite_last = torch.zeros(n, dtype=torch.bool, device=dev)
    failed = torch.zeros(n, dtype=torch.bool, device=dev)
    save_ptr = torch.zeros(n, dtype=torch.long, device=dev)
    # a save time never reached (max_steps, a stopped sample) stays NaN, never stale memory
    saved = torch.full((len(targets), *x.shape), float("nan"), dtype=x.dtype, device=dev) if targets else None
    tgt = torch.as_tensor(targets, dtype=torch.float64, device=dev) if targets else None
    if targets:
        hit0 = torch.tensor([abs(v - t0) == 0 for v in targets], device=dev)
        if bool(hit0.any()):
            saved[0] = x
            save_ptr += 1
    status, message = SUCCESS, ""
    span_len = abs(t1 - t0)
    while True:
        active = ~done & ~failed & (steps < max_steps)
        if not bool(active.any()):
            break
        idx = all_idx[active]
        xa, ta, ka = x[idx], t[idx], k_first[idx]
        remaining = (t1 - ta) * direction
        ha = torch.minimum(h[idx], remaining)
        t_next = torch.where(h[idx] >= remaining, torch.full_like(ta, t1), ta + ha * direction)
        if targets:
            nxt = tgt[save_ptr[idx].clamp(max=len(targets) - 1)]
            to_target = (nxt - ta) * direction
            clip = (save_ptr[idx] < len(targets)) & (to_target > 0) & (to_target <= ha)
            ha = torch.where(clip, to_target, ha)
            t_next = torch.where(clip, nxt, t_next)  # land exactly on the save time
        tiny = 64 * torch.finfo(torch.float64).eps * torch.maximum(ta.abs(), torch.full_like(ta, span_len))
        under = h[idx] < tiny  # a step clipped short by the end or a save time is not underflow
        if bool(under.any()):
            # those samples stop where they are; the others go on
            bad = int(idx[under][0])
            if status == SUCCESS:
                status = UNDERFLOW
                cause = " after non-finite field values" if bool(nonfinite_last[bad]) else ""
                message = (f"step size underflow (h={float(h[bad]):.3g}){cause} for sample {bad} at "
                           f"t={float(t[bad])!r} in step {int(steps[bad])}")
            failed[idx[under]] = True
            continue
        hs = (ha * direction).to(x.dtype).unsqueeze(-1)
        ks = [ka]
        for c, row in zip(tableau.c[1:], tableau.a[1:]):
            tc = ta + float(c) * (t_next - ta) if float(c) != 1.0 else t_next
            tc = torch.clamp(tc, min(t0, t1), max(t0, t1))
            ks.append(counter.drift(_combine(xa, hs, row, ks), as_time(tc, xa), active=idx))
        x_new = _combine(xa, hs, tableau.b, ks)
        x_low = _combine(xa, hs, tableau.b_low, ks)
        scale = atol + rtol * torch.maximum(xa.abs(), x_new.abs())
        err = _rms((x_new - x_low) / scale).to(torch.float64)
        finite = torch.isfinite(x_new).all(-1) & torch.isfinite(err)
        nonfinite_last[idx] = ~finite
        err = torch.where(finite, err, torch.full_like(err, float("inf")))
        if shared_step:
            err = err.max().expand_as(err)
        ok = err <= 1.0
        steps[idx] += 1
        # PI controller; a rejected step does not update the memory term
        # powers as exp(r log e): a tensor ``**`` may round differently with the batch size,
        # and the step sizes must not depend on the other samples
        log_e = torch.log(err.clamp_min(1e-10))
        factor = safety * torch.exp(-b1 / q * log_e + b2 / q * torch.log(err_prev[idx]))
        factor = torch.where(ok, factor.clamp(min_factor, max_factor),
                             (safety * torch.exp(-log_e / q)).clamp(min_factor, 1.0))
        factor = torch.where(torch.isfinite(factor), factor, torch.full_like(factor, min_factor))
        # an accepted step cut short by the end or a save time says little about the step the
        # controller wanted: keep that one rather than scaling the clipped one
        h_new = torch.where(ok & (ha < h[idx]), h[idx], ha * factor)
        if shared_step:
            h_new = h_new.min().expand_as(h_new)
        acc_idx = idx[ok]
        if acc_idx.numel():
            x[acc_idx] = x_new[ok]
            t[acc_idx] = t_next[ok]
            last = ks[-1] if tableau.fsal else None
            k_first[acc_idx] = last[ok] if last is not None else counter.drift(x[acc_idx], as_time(t[acc_idx], x),
                                                                             active=acc_idx)
            accepted[acc_idx] += 1
            err_prev[acc_idx] = torch.exp(log_e[ok])
            if targets:
                for j in acc_idx.tolist():
                    while int(save_ptr[j]) < len(targets) and float(t[j]) == float(tgt[int(save_ptr[j])]):
                        saved[int(save_ptr[j]), j] = x[j]
                        save_ptr[j] += 1
            done[acc_idx] = (t[acc_idx] - t1) * direction >= 0
        h[idx] = h_new
    if status == UNDERFLOW:
        message += f" ({int(failed.sum())} sample(s) stopped by underflow; the others ran on)"
    if status == SUCCESS and not bool(done.all()):
        undone = all_idx[~done]
        status = MAX_STEPS
        message = (f"max_steps={max_steps} reached by {undone.numel()} sample(s) before t1={t1!r}; "
                   f"e.g. sample {int(undone[0])} stopped at t={float(t[undone[0]])!r}")
    return Solution(x=x, t=t, nfe=counter.nfe, n_steps=steps, n_accepted=accepted, n_rejected=steps - accepted,
                    status=status, message=message,
                    ts=torch.as_tensor(targets, dtype=torch.float64) if targets else None, xs=saved,
                    extras={"failed": failed})


def _check_controller(safety, min_factor, max_factor, pi_beta):
    if not (math.isfinite(safety) and 0 < safety <= 1):
        raise ValueError(f"safety must lie in (0, 1], got {safety!r}")
    if not (math.isfinite(min_factor) and 0 < min_factor < 1):
        raise ValueError(f"min_factor must lie in (0, 1), got {min_factor!r}")
    if not (math.isfinite(max_factor) and max_factor > 1):
        raise ValueError(f"max_factor must be a finite number > 1, got {max_factor!r}")
    if len(tuple(pi_beta)) != 2 or not all(math.isfinite(b) and b >= 0 for b in pi_beta) or pi_beta[0] <= 0:
        raise ValueError(f"pi_beta must be (b1 > 0, b2 >= 0), finite, got {pi_beta!r}")


def _check_tolerances(rtol, atol, max_steps):
    if not (rtol > 0 and atol >= 0):
        raise ValueError(f"rtol must be > 0 and atol >= 0, got rtol={rtol!r}, atol={atol!r}")
    check_int("max_steps", max_steps, 1)


def _adaptive_save_times(save_at, t0, t1):
    if save_at is None or save_at is False:
        return []
    if save_at is True:
        raise ValueError("adaptive solvers save at given times: pass save_at=[t, ...] inside the span")
    vals = torch.as_tensor(save_at, dtype=torch.float64).reshape(-1).tolist()
    lo, hi = min(t0, t1), max(t0, t1)
    if any(not lo <= v <= hi for v in vals):
        raise ValueError(f"save_at times must lie in the span [{lo!r}, {hi!r}], got {vals!r}")
    # a time within rounding of an end is that end (a step cannot land between them)
    tol = 64 * torch.finfo(torch.float64).eps * max(abs(t0), abs(t1), hi - lo)
    vals = [t1 if abs(v - t1) <= tol else t0 if abs(v - t0) <= tol else v for v in vals]
    if len(set(vals)) != len(vals):
        raise ValueError(f"save_at times must be distinct (after rounding to the span's ends), got {vals!r}")
    return sorted(vals, reverse=t1 < t0)


def _initial_step(counter, x, t0, t1, k0, order, rtol, atol):
    """Hairer's starting step (HNW II.4), per sample, with the probe point inside the span."""
    span = abs(t1 - t0)
    direction = 1.0 if t1 > t0 else -1.0
    scale = atol + rtol * x.abs()
    d0 = _rms(x / scale).to(torch.float64)
    d1 = _rms(k0 / scale).to(torch.float64)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    h0 = torch.minimum(h0, torch.full_like(h0, span))
    x1 = x + (direction * h0).to(x.dtype).unsqueeze(-1) * k0
    t_probe = torch.clamp(t0 + direction * h0, min(t0, t1), max(t0, t1))
    k1 = counter.drift(x1, as_time(t_probe, x))
    d2 = (_rms((k1 - k0) / scale).to(torch.float64) / h0)
    d2 = torch.where(torch.isfinite(d2), d2, torch.full_like(d2, float("inf")))
    big = torch.maximum(d1, d2)
    h1 = torch.where(big <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3),
                     (0.01 / big) ** (1.0 / (order + 1)))
    return torch.minimum(torch.minimum(100 * h0, h1), torch.full_like(h0, span))


def _fixed(tableau):
    def solve_fixed(flow, x, ts, **options):
        return rk_fixed(tableau, flow, x, ts, **options)

    solve_fixed.__doc__ = f"Fixed-step {tableau.name} (order {tableau.order}, {tableau.stages} NFE per step)."
    return solve_fixed


def _adaptive(tableau):
    def solve_adaptive(flow, x, span, **options):
        return rk_adaptive(tableau, flow, x, span, **options)

    solve_adaptive.__doc__ = (f"Adaptive {tableau.name} {tableau.order}({tableau.low_order}) with a PI controller "
                              "and per-sample step sizes.")
    return solve_adaptive


_FIXED = {
    EULER: "Euler's method, x + h f(t, x)",
    MIDPOINT: "explicit midpoint rule",
    HEUN: "Heun's method (trapezoidal predictor-corrector, EDM Alg. 1 without the final Euler step)",
    RALSTON: "Ralston's 2nd-order method (minimal error bound)",
    RK4: "the classical 4th-order Runge-Kutta method",
}
for _tab, _desc in _FIXED.items():
    register_solver(_tab.name, _fixed(_tab), kind="ode", order=_tab.order, nfe_per_step=_tab.stages,
                    description=_desc)
register_solver("bosh3", _adaptive(BOSH3), kind="ode", order=3, nfe_per_step=3, adaptive=True,
                description="Bogacki-Shampine 3(2) pair, FSAL (Bogacki & Shampine 1989)")
register_solver("tsit5", _adaptive(TSIT5), kind="ode", order=5, nfe_per_step=6, adaptive=True,
                description="Tsitouras 5(4) pair, FSAL (Tsitouras 2011)")
register_solver("dopri5", _adaptive(DOPRI5), kind="ode", order=5, nfe_per_step=6, adaptive=True,
                description="Dormand-Prince 5(4) pair, FSAL (Dormand & Prince 1980)")
