"""Explicit Runge-Kutta solvers from Butcher tableaus: one step function serves every tableau on
a fixed grid (:func:`rk_step` inside :func:`~flowsolve.solvers.fixed.run_fixed_grid`), and one
embedded-pair method serves every adaptive tableau inside
:func:`~flowsolve.solvers.adaptive.run_adaptive` (Hairer, Nørsett & Wanner, *Solving ODEs I*,
II.1 and II.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction as F

import torch

from .adaptive import run_adaptive
from .fixed import run_fixed_grid
from .registry import register_solver
from .solution import per_sample


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


def _combine(x, h, coefs, ks, consume: bool = False):
    """``x + h * sum_j coefs[j] k_j`` skipping zero coefficients and products by 1 (exact); ``h``
    a float or per-sample tensor. The sum accumulates in place in a buffer of its own: one
    temporary of the state's size however many stages, with the operations (hence the bits) of
    the plain expression. ``consume``: this is the last use of ``ks`` (the step's final
    combination), so each stage is dropped from the list once folded in, and freed."""
    acc, owned = None, False
    for j, (a, k) in enumerate(zip(coefs, ks)):
        if consume:
            ks[j] = None
        if a == 0:
            continue
        a = float(a)
        term = k if a == 1.0 else a * k
        if acc is None:
            acc, owned = term, term is not k
        elif owned:
            acc.add_(term)
        else:
            acc, owned = acc + term, True
    if acc is None:
        return x
    if isinstance(h, torch.Tensor):  # per-sample steps (adaptive): the plain expression
        return x + h * acc
    # h * acc + x is x + h * acc to the bit; made in a buffer of its own, one temporary fewer
    return (acc.mul_(h) if owned else acc * h).add_(x)


def _stage_time(t0: float, t1: float, c: float) -> float:
    """``t0 + c (t1 - t0)``, exactly ``t1`` for ``c = 1`` and never outside ``[t0, t1]``:
    rounding must not put a field evaluation outside the span (e.g. below sigma_min)."""
    if c == 1.0:
        return t1
    return min(max(t0 + c * (t1 - t0), min(t0, t1)), max(t0, t1))


def rk_step(tableau: ButcherTableau, term, x: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
    """One explicit Runge-Kutta step of ``dx/dt = drift(x, t)`` from ``t0`` to ``t1``:
    ``k_i = f(x + h sum_j a_ij k_j, t0 + c_i h)``, ``x1 = x + h sum_i b_i k_i``."""
    h = t1 - t0
    c, a, b = _float_tableau(tableau)
    ks = []
    for ci, row in zip(c, a):
        ks.append(term.drift(_combine(x, h, row, ks), _stage_time(t0, t1, ci)))
    return _combine(x, h, b, ks, consume=True)


def _float_tableau(tableau: ButcherTableau):
    """``(c, a, b)`` as floats, converted once per tableau rather than at every stage (kept on the
    tableau: hashing its fractions for a cache lookup would cost as much as converting them)."""
    floats = tableau.__dict__.get("_floats")
    if floats is None:
        floats = (tuple(float(v) for v in tableau.c), tuple(tuple(float(v) for v in row) for row in tableau.a),
                  tuple(float(v) for v in tableau.b))
        object.__setattr__(tableau, "_floats", floats)
    return floats


class EmbeddedPair:
    """An adaptive method from a tableau with embedded weights ``b_low``: the step is the
    higher-order solution, the error estimate ``h sum_i (b_i - b_low_i) k_i``; FSAL tableaus
    reuse the last stage as the next step's first. The first step is Hairer's heuristic."""

    def __init__(self, tableau: ButcherTableau):
        if tableau.b_low is None:
            raise ValueError(f"tableau {tableau.name!r} has no embedded weights b_low: it cannot adapt its steps")
        self.tableau = tableau
        self.order = tableau.order
        self.error_order = tableau.low_order + 1

    def init(self, term, x, t0):
        return {"k0": term.drift(x, t0)}

    def first_step(self, term, x, t0, t1, carry, controller):
        return controller.hairer_first_step(term, x, t0, t1, carry["k0"], self.order)

    def attempt(self, term, x, t, t_next, h, carry, rows):
        tab = self.tableau
        hs = per_sample(h.to(x.dtype), x)
        ks = [carry["k0"]]
        lo, hi = torch.minimum(t, t_next), torch.maximum(t, t_next)
        for c, row in zip(tab.c[1:], tab.a[1:]):
            tc = t_next if float(c) == 1.0 else torch.minimum(torch.maximum(t + float(c) * (t_next - t), lo), hi)
            ks.append(term.drift(_combine(x, hs, row, ks), tc, rows))
        x_new = _combine(x, hs, tab.b, ks)
        err = hs * sum(float(b - bl) * k for b, bl, k in zip(tab.b, tab.b_low, ks) if b != bl)
        return x_new, err, (x, x_new), {"k_last": ks[-1]}

    def commit(self, term, rows, accepted, carry, carry_new, x_new, t_next):
        if self.tableau.fsal:
            k_next = carry_new["k_last"]
        else:  # the first stage of the next step, for the accepted samples only
            k_next = carry_new["k_last"].clone()
            acc = accepted.nonzero().flatten()
            if acc.numel():
                k_next[acc] = term.drift(x_new[acc], t_next[acc], rows[acc])
        return {"k0": torch.where(per_sample(accepted, k_next), k_next, carry["k0"])}


def _fixed_solver(tableau: ButcherTableau, what: str):
    def solver(term, x, ts, *, save=None):
        return run_fixed_grid(term, x, ts, lambda i, x, t0, t1: rk_step(tableau, term, x, t0, t1), save)

    solver.__name__ = solver.__qualname__ = tableau.name
    solver.__doc__ = (f"{what}: fixed-step explicit Runge-Kutta of order {tableau.order}, {tableau.stages} "
                      f"field evaluation(s) per step.\n\nButcher tableau: c = {[str(v) for v in tableau.c]}, "
                      f"a = {[[str(v) for v in row] for row in tableau.a]}, b = {[str(v) for v in tableau.b]}. "
                      "No options.")
    return solver


def _adaptive_solver(tableau: ButcherTableau, what: str):
    method = EmbeddedPair(tableau)

    def solver(term, x, ts, *, save=None, controller, max_steps: int = 10_000):
        return run_adaptive(term, x, float(ts[0]), float(ts[-1]), method, controller, save, max_steps)

    solver.__name__ = solver.__qualname__ = tableau.name
    solver.__doc__ = (f"{what}: adaptive embedded Runge-Kutta pair {tableau.order}({tableau.low_order}), "
                      f"{tableau.stages} stages{' (FSAL: one fewer evaluation per accepted step)' if tableau.fsal else ''}, "
                      "one step size per sample.\n\nOptions: max_steps (attempts per sample, default 10000) and the "
                      "step-size controller, fs.PIDController (rtol=1e-5, atol=1e-5, PI coefficients, safety, "
                      "factor limits, first_step, dt_min, dt_max, shared_step), given as controller= or as "
                      "its fields directly (rtol=, atol=, ...).")
    return solver


_FIXED = {
    EULER: "Euler's method, x + h f(t, x)",
    MIDPOINT: "explicit midpoint rule",
    HEUN: "Heun's method (trapezoidal predictor-corrector, EDM Alg. 1 without the final Euler step)",
    RALSTON: "Ralston's 2nd-order method (minimal error bound)",
    RK4: "the classical 4th-order Runge-Kutta method",
}
_ADAPTIVE = {
    BOSH3: "Bogacki-Shampine 3(2) pair, FSAL (Bogacki & Shampine 1989)",
    TSIT5: "Tsitouras 5(4) pair, FSAL (Tsitouras 2011)",
    DOPRI5: "Dormand-Prince 5(4) pair, FSAL (Dormand & Prince 1980)",
}
SOLVERS = {}
for _tab, _desc in _FIXED.items():
    SOLVERS[_tab.name] = _fixed_solver(_tab, _desc)
    register_solver(_tab.name, SOLVERS[_tab.name], kind="ode", order=_tab.order, nfe_per_step=_tab.stages,
                    description=_desc,
                    single_step=lambda term, x, t0, t1, _tab=_tab: rk_step(_tab, term, x, t0, t1))
for _tab, _desc in _ADAPTIVE.items():
    SOLVERS[_tab.name] = _adaptive_solver(_tab, _desc)
    register_solver(_tab.name, SOLVERS[_tab.name], kind="ode", order=_tab.order, nfe_per_step=_tab.stages - 1 if _tab.fsal else _tab.stages,
                    adaptive=True, description=_desc)
