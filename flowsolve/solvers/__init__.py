"""Solvers behind :func:`solve` and :func:`sample`.

Every registered solver is also an attribute of this module, so ``help(fs.solvers.heun)`` shows
its equations and options: fixed-step and adaptive Runge-Kutta (``rk``), exponential integrators
(``exponential``), linear multistep samplers in sigma (``multistep``) and stochastic samplers
(``stochastic``). A fixed-step solver is a step function
run by :func:`run_fixed_grid`; an adaptive one is a method run by :func:`run_adaptive` under a
:class:`PIDController`; every field evaluation goes through a :class:`Term`, which counts it.
"""

from . import dpm2, exponential, multistep, rk, stochastic
from .adaptive import PIDController, run_adaptive
from .adaptive_exponential import dpm_adaptive  # noqa: F401
from .api import sample, solve
from .dpm2 import dpm_2  # noqa: F401
from .exponential import (dpm_solver_1, dpm_solver_2, dpm_solver_3, dpmpp_2m, dpmpp_3m,  # noqa: F401
                          unipc)
from .fixed import run_fixed_grid
from .multistep import deis, ipndm, ipndm_v, lms  # noqa: F401
from .noise import BrownianMemory, GeneratorNoise, NoiseSource
from .registry import SolverInfo, available_solvers, get_solver, register_solver
from .rk import ButcherTableau, EmbeddedPair, rk_step
from .saving import SaveAt
from .solution import FAULT_KINDS, Solution
from .stochastic import (adaptive_sde, ancestral, annealed_langevin, dpmpp_2m_sde, edm_stochastic,  # noqa: F401
                         euler_maruyama, pc, reverse_diffusion)
from .term import FieldError, Term

# the Runge-Kutta solvers are made from their tableaus
euler, midpoint, heun, ralston, rk4, bosh3, tsit5, dopri5 = (rk.SOLVERS[k] for k in (  # noqa: F401
    "euler", "midpoint", "heun", "ralston", "rk4", "bosh3", "tsit5", "dopri5"))

__all__ = ["solve", "sample", "Solution", "FAULT_KINDS", "SolverInfo", "available_solvers", "register_solver",
           "get_solver", "PIDController", "run_fixed_grid", "run_adaptive", "SaveAt", "Term", "FieldError",
           "NoiseSource", "GeneratorNoise", "BrownianMemory", "ButcherTableau", "EmbeddedPair", "rk_step",
           *rk.SOLVERS, *exponential.SOLVERS, *multistep.SOLVERS, *dpm2.SOLVERS, *stochastic.SOLVERS]
