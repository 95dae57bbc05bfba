"""Solvers: registry, fixed-step and adaptive Runge-Kutta, exponential integrators and
stochastic samplers, behind :func:`solve` and :func:`sample`."""

from . import rk  # noqa: F401  (registers the Runge-Kutta solvers)
from . import exponential  # noqa: F401
from . import stochastic  # noqa: F401
from .api import sample, solve
from .base import NoiseSource, Solution, SolverInfo, available_solvers, register_solver
from .rk import ButcherTableau, rk_adaptive, rk_fixed

__all__ = ["solve", "sample", "Solution", "SolverInfo", "NoiseSource", "available_solvers", "register_solver",
           "ButcherTableau", "rk_fixed", "rk_adaptive"]
