"""flowsolve: numerical ODE/SDE solvers for generative flows.

Processes (``VE``, ``VP``, ``SubVP``, ``EDM``, ``PFGMPP``, ``Poisson``, ``Diffusion``,
``LinearSDE``, ``SDE``), exact fields of toy data (``exact_field``, ``fs.toy``), field
wrappers (``Field.from_denoiser`` ...), flows (``probability_flow``, ``reverse_sde``), and the
solvers behind ``solve`` and ``sample`` (``fs.solvers``, ``fs.available_solvers()``).
"""

from . import solvers, toy
from .fields import Field
from .flows import ProbabilityFlowODE, ReverseSDE, probability_flow, reverse_sde
from .grids import available_grids, make_grid
from .interop import to_torchsde
from .processes import EDM, PFGMPP, SDE, VE, VP, Diffusion, LinearSDE, Poisson, Process, SubVP
from .solvers import (ButcherTableau, FieldError, NoiseSource, PIDController, Solution, available_solvers,
                      register_solver, sample, solve)
from .toy.exact import ExactField, exact_field
from .tuning import TunedGrid, gits_grid, tune_grid

__version__ = "0.1.0"


def __getattr__(name):
    # fs.testing (property checks, strategies) and fs.bench load on first use: `import flowsolve`
    # stays light.
    if name in ("testing", "bench"):
        import importlib
        return importlib.import_module(".testing", __name__)
    raise AttributeError(f"module 'flowsolve' has no attribute {name!r}")


__all__ = [
    "Process", "Diffusion", "VE", "VP", "SubVP", "EDM", "LinearSDE", "PFGMPP", "Poisson", "SDE",
    "Field", "ExactField", "exact_field", "probability_flow", "reverse_sde", "ProbabilityFlowODE",
    "ReverseSDE", "toy", "solvers", "solve", "sample", "Solution", "FieldError", "PIDController",
    "available_solvers", "register_solver", "ButcherTableau", "NoiseSource", "available_grids", "make_grid",
    "to_torchsde", "tune_grid", "TunedGrid", "gits_grid",
]
