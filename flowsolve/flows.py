"""Flows: the probability-flow ODE and the reverse SDE of a process and a field.

For a canonical process with forward SDE ``dx = f(t) x dt + g(t) dW`` (Song et al. 2021,
score SDE, eqs. 6 and 13):

    probability-flow ODE:  dx/dt = f(t) x - g(t)^2 score(x, t) / 2
    reverse SDE:           dx    = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dW̄   (t decreasing)

For canonical processes the ODE drift is the field's ``velocity`` (the same expression
written with ``s`` and ``sigma``), which also covers PFGM++ (``dx/dsigma = (x - D)/sigma``).
A general :class:`~flowsolve.processes.SDE` needs a ``score`` callable, and only generic
solvers apply to it.
"""

from __future__ import annotations

from typing import Callable

import torch

from .fields import Field
from .processes.base import Process
from .processes.diffusions import Diffusion
from .processes.sde import SDE


def _as_field(process, field) -> Field:
    if isinstance(field, Field):
        if field.process is not process:
            raise ValueError("field was built for a different process object; pass the process it was made with")
        return field
    if callable(field):
        return Field.from_denoiser(process, field)
    raise ValueError(f"field must be a flowsolve Field or a denoiser callable fn(x, t), got {type(field).__name__}")


class ProbabilityFlowODE:
    """``dx/dt = drift(x, t)`` on ``[t_min, t_max]``; carries ``process`` and ``field`` so
    process-aware solvers can use them (``field`` is None for a general SDE)."""

    def __init__(self, process, field: Field | None, score: Callable | None = None):
        self.process, self.field, self._score = process, field, score
        self.t_min, self.t_max = process.t_min, process.t_max

    @property
    def canonical(self) -> bool:
        return self.field is not None

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        if self.field is not None:
            return self.field.velocity(x, t)
        g = torch.as_tensor(self.process.diffusion(t), dtype=x.dtype, device=x.device)
        g = g.unsqueeze(-1) if g.ndim else g
        return self.process.drift(x, t) - 0.5 * g**2 * self._score(x, t)

    def __repr__(self):
        return f"ProbabilityFlowODE({self.process!r})"


class ReverseSDE:
    """Reverse-time SDE ``dx = drift(x, t) dt + diffusion(t) dW̄``, integrated from
    ``t_max`` down to ``t_min``."""

    def __init__(self, process, field: Field | None, score: Callable | None = None):
        self.process, self.field = process, field
        self._score = field.score if field is not None else score
        self.t_min, self.t_max = process.t_min, process.t_max

    @property
    def canonical(self) -> bool:
        return self.field is not None

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        g = torch.as_tensor(self.process.diffusion(t), dtype=x.dtype, device=x.device)
        g = g.unsqueeze(-1) if g.ndim else g
        return self.process.drift(x, t) - g**2 * self._score(x, t)

    def diffusion(self, t) -> torch.Tensor:
        return self.process.diffusion(t)

    def __repr__(self):
        return f"ReverseSDE({self.process!r})"


def _check_args(process, field, score, what):
    if isinstance(process, SDE):
        if score is None or not callable(score) or field is not None:
            raise ValueError(f"{what} of a general SDE needs score=callable(x, t) (and no field): "
                             "it has no canonical form, so a denoiser cannot be converted")
        return None
    if not isinstance(process, Process):
        raise ValueError(f"process must be a flowsolve process or SDE, got {type(process).__name__}")
    if score is not None:
        if field is not None:
            raise ValueError("give either field or score, not both")
        return Field.from_score(process, score)
    if field is None:
        raise ValueError(f"{what} needs a field (a Field or a denoiser callable) or score=")
    return _as_field(process, field)


def probability_flow(process, field=None, *, score: Callable | None = None) -> ProbabilityFlowODE:
    """The probability-flow ODE of ``process`` driven by ``field`` (a :class:`Field` or a
    denoiser callable), or by ``score=`` for a general :class:`SDE`."""
    return ProbabilityFlowODE(process, _check_args(process, field, score, "probability_flow"), score)


def reverse_sde(process, field=None, *, score: Callable | None = None) -> ReverseSDE:
    """The reverse-time SDE of a diffusion (Gaussian kernel) or a general :class:`SDE`."""
    if isinstance(process, Process) and not isinstance(process, Diffusion):
        raise ValueError(f"reverse_sde needs a diffusion (VE, VP, SubVP, EDM, Diffusion, LinearSDE) or an SDE; "
                         f"{type(process).__name__} has no forward SDE (use probability_flow)")
    return ReverseSDE(process, _check_args(process, field, score, "reverse_sde"), score)
