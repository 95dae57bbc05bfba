"""The solver registry: every solver by name, with its kind, order, cost and options.

A solver is a function ``fn(term, x, ts, *, save, **options) -> Solution`` (plus ``noise`` for
stochastic solvers and ``controller`` for adaptive ones), registered with
:func:`register_solver`. Its options are its keyword-only parameters; their defaults are read
from its signature, so :func:`available_solvers` lists them and a misspelt option is caught
before any work.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Callable

from .._validation import check_int, unknown_choice
from .adaptive import PIDController

# keyword parameters the entry points fill in themselves; they are not user options
_PLUMBING = ("save", "noise", "controller")


@dataclass(frozen=True)
class SolverInfo:
    """What the registry knows of one solver. ``single_step(term, x, t0, t1, **options)`` is
    set for one-step methods (usable as a predictor inside other samplers);
    ``default_controller`` for adaptive ones."""

    name: str
    fn: Callable
    kind: str  # "ode" or "sde"
    order: float
    nfe_per_step: int
    adaptive: bool = False
    process_aware: bool = False
    description: str = ""
    cost: Callable | None = None  # options -> NFE per step, when the options change it
    steps_for_budget: Callable | None = None  # (nfe, options) -> steps, when steps cost unequal amounts
    single_step: Callable | None = None
    default_controller: PIDController | None = None
    options: dict = field(default_factory=dict)
    default_grid: str = "karras"

    @property
    def category(self) -> str:
        """"fixed-step ODE", "adaptive ODE", "fixed-step stochastic" or "adaptive stochastic"."""
        return f"{'adaptive' if self.adaptive else 'fixed-step'} {'ODE' if self.kind == 'ode' else 'stochastic'}"

    def nfe_per_step_for(self, options: dict) -> int:
        """NFE per step with these options (``nfe_per_step`` unless ``cost`` says otherwise)."""
        return int(self.cost(options)) if self.cost is not None else self.nfe_per_step

    def max_steps_within(self, nfe: int, options: dict) -> int:
        """The most steps whose evaluations fit in ``nfe``."""
        if self.steps_for_budget is not None:
            return int(self.steps_for_budget(nfe, options))
        return nfe // self.nfe_per_step_for(options)

    def accepted_options(self) -> dict:
        """Option name -> default, the controller's fields included for adaptive solvers."""
        opts = dict(self.options)
        if self.default_controller is not None:
            for name in PIDController.option_names():
                opts.setdefault(name, getattr(self.default_controller, name))
        return opts

    def check_options(self, options: dict):
        """Refuse an option this solver does not take, naming the solver, its kind, what it takes
        and the closest name."""
        accepted = self.accepted_options()
        for name in options:
            if name in accepted:
                continue
            close = difflib.get_close_matches(name, list(accepted), n=1)
            takes = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "no options"
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown option {name!r} for solver {self.name!r} ({self.category}): it takes "
                             f"{takes}{hint}")

    def as_dict(self) -> dict:
        return {"kind": self.kind, "category": self.category, "order": self.order, "nfe_per_step": self.nfe_per_step,
                "adaptive": self.adaptive, "process_aware": self.process_aware, "description": self.description,
                "options": self.accepted_options(), "default_grid": None if self.adaptive else self.default_grid}


_REGISTRY: dict[str, SolverInfo] = {}


def _signature_options(fn: Callable) -> dict:
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _PLUMBING}


def register_solver(name: str, fn: Callable, *, kind: str, order: float, nfe_per_step: int, adaptive: bool = False,
                    process_aware: bool = False, description: str = "", overwrite: bool = False,
                    cost: Callable | None = None, steps_for_budget: Callable | None = None,
                    single_step: Callable | None = None, default_controller: PIDController | None = None,
                    default_grid: str = "karras") -> SolverInfo:
    """Make ``fn`` available as ``solver=name`` in :func:`~flowsolve.solve` and :func:`~flowsolve.sample`.

    ``fn(term, x, ts, *, save, **options)`` (stochastic solvers also get ``noise``, adaptive ones
    ``controller``) returns a :class:`~flowsolve.Solution`; a fixed-step solver usually hands a
    step function to :func:`~flowsolve.solvers.run_fixed_grid`, an adaptive one a method to
    :func:`~flowsolve.solvers.run_adaptive`. Its keyword-only parameters are its options.
    ``nfe_per_step`` is the cost with default options; ``cost(options) -> int`` gives it for other
    options, and ``steps_for_budget(nfe, options) -> steps`` when steps do not all cost the same,
    so that ``sample(nfe=...)`` stays within budget. ``default_grid`` is the time grid
    :func:`~flowsolve.sample` uses when none is named (fixed-step solvers).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a solver named {name!r} is already registered (pass overwrite=True to replace it)")
    if not callable(fn):
        raise ValueError(f"fn must be a callable fn(term, x, ts, *, save, **options), got {type(fn).__name__}")
    if kind not in ("ode", "sde"):
        raise ValueError(f"kind must be 'ode' or 'sde', got {kind!r}")
    nfe_per_step = check_int("nfe_per_step", nfe_per_step, 1)
    for arg, value in (("cost", cost), ("steps_for_budget", steps_for_budget), ("single_step", single_step)):
        if value is not None and not callable(value):
            raise ValueError(f"{arg} must be a callable or None, got {type(value).__name__}")
    if adaptive and default_controller is None:
        default_controller = PIDController()
    info = SolverInfo(name, fn, kind, float(order), nfe_per_step, bool(adaptive), bool(process_aware), description,
                      cost, steps_for_budget, single_step, default_controller if adaptive else None,
                      _signature_options(fn), default_grid)
    _REGISTRY[name] = info
    return info


def get_solver(name) -> SolverInfo:
    if name not in _REGISTRY:
        raise unknown_choice("solver", name, sorted(_REGISTRY))
    return _REGISTRY[name]


def available_solvers() -> dict[str, dict]:
    """Solver name -> what it is: kind ("ode"/"sde"), category ("fixed-step ODE", "adaptive ODE",
    "fixed-step stochastic", "adaptive stochastic"), order, nfe_per_step, adaptive, process_aware,
    description, options (name -> default; adaptive solvers also take the fields of
    :class:`~flowsolve.PIDController`, listed with the solver's defaults) and default_grid (the
    grid :func:`~flowsolve.sample` uses when none is named; None for adaptive solvers)."""
    return {name: info.as_dict() for name, info in sorted(_REGISTRY.items())}
