"""flowsolve: numerical ODE/SDE solvers for generative flows.

Processes (``VE``, ``VP``, ``SubVP``, ``EDM``, ``PFGMPP``, ``Poisson``, ``Diffusion``,
``LinearSDE``, ``SDE``), exact fields of toy data (``exact_field``, ``fs.toy``), field
wrappers (``Field.from_denoiser`` ...), and flows (``probability_flow``, ``reverse_sde``).
"""

from . import toy
from .fields import ExactField, Field, exact_field
from .flows import ProbabilityFlowODE, ReverseSDE, probability_flow, reverse_sde
from .grids import available_grids, make_grid
from .processes import EDM, PFGMPP, SDE, VE, VP, Diffusion, LinearSDE, Poisson, Process, SubVP
from .solvers import (ButcherTableau, NoiseSource, Solution, available_solvers, register_solver, sample,
                      solve)

__version__ = "0.1.0"

__all__ = [
    "Process", "Diffusion", "VE", "VP", "SubVP", "EDM", "LinearSDE", "PFGMPP", "Poisson", "SDE",
    "Field", "ExactField", "exact_field", "probability_flow", "reverse_sde", "ProbabilityFlowODE",
    "ReverseSDE", "toy", "solve", "sample", "Solution", "available_solvers", "register_solver", "ButcherTableau",
    "NoiseSource", "available_grids", "make_grid",
]
