"""Flows: the probability-flow ODE and the reverse SDE of a process and a field.

For a canonical process with forward SDE ``dx = f(t) x dt + g(t) dW`` (Song et al. 2021,
score SDE, eqs. 6 and 13):

    probability-flow ODE:  dx/dt = f(t) x - g(t)^2 score(x, t) / 2
    reverse SDE:           dx    = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dW̄   (t decreasing)

For canonical processes the ODE drift is the field's ``velocity`` (the same expression
written with ``s`` and ``sigma``), which also covers PFGM++ (``dx/dsigma = (x - D)/sigma``).
A general :class:`~flowsolve.processes.SDE` needs a ``score`` callable, and only generic
solvers apply to it.

Flows are values: two flows of equal processes and the same field (or score) are equal.
Keyword arguments given to ``drift`` go to the field (a network's class labels, ...).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ._validation import compute_dtype
from .fields import Field, schedule_at
from .processes import SDE, Diffusion, Process


def _as_field(process, field) -> Field:
    """``field`` as a :class:`Field` of ``process`` (a callable is taken as a denoiser)."""
    if isinstance(field, Field):
        if field.process != process:
            raise ValueError(f"field was made for {field.process!r}, which is not the process given, {process!r}: "
                             "pass the process the field was made for (processes compare by value)")
        return field
    if callable(field):
        return Field.from_denoiser(process, field)
    raise ValueError(f"field must be a flowsolve Field or a denoiser callable fn(x, t), got {type(field).__name__}")


def _per_sample(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return g.reshape(g.shape[0], *([1] * (x.ndim - 1))) if g.ndim else g


class _Flow:
    """What both flows share: the process, the field (None for a general SDE) and value semantics."""

    def __init__(self, process, field: Field | None, score: Callable | None = None):
        self.process, self.field, self._score = process, field, score
        self.t_min, self.t_max = process.t_min, process.t_max

    @property
    def canonical(self) -> bool:
        return self.field is not None

    def _key(self):
        return (type(self), self.process, id(self.field), id(self._score))

    def __eq__(self, other):
        return isinstance(other, _Flow) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def _coefficient(self, name: str, t, x: torch.Tensor) -> torch.Tensor:
        """``f(t)`` or ``g(t)`` of the forward SDE in x's dtype, per sample when t is a tensor. A
        canonical process's float64 schedules are used directly (the solver entry checked the
        times once); a general SDE's own callables otherwise."""
        if self.field is not None and not isinstance(t, torch.Tensor):  # one time: a float, once per time
            return schedule_at(self.process, name, float(t))
        if self.field is not None:
            t64 = torch.as_tensor(t, dtype=torch.float64, device=x.device)
            return _per_sample(getattr(self.process, "_" + name)(t64).to(x.dtype), x)
        if name == "g":
            return _per_sample(torch.as_tensor(self.process.diffusion(t), dtype=x.dtype, device=x.device), x)
        raise AssertionError("a general SDE has no linear drift coefficient")

    def _forward_drift(self, x, t):
        """``f(t) x``; None when ``f(t)`` is the number 0 (EDM, VE): nothing to add."""
        if self.field is not None:
            f = self._coefficient("f", t, x)
            return None if isinstance(f, float) and f == 0.0 else f * x
        return self.process.drift(x, t)

    def __repr__(self):
        return f"{type(self).__name__}({self.process!r})"


class ProbabilityFlowODE(_Flow):
    """``dx/dt = drift(x, t)`` on ``[t_min, t_max]``; carries ``process`` and ``field`` so
    process-aware solvers can use them (``field`` is None for a general SDE)."""

    def drift(self, x: torch.Tensor, t, **kwargs) -> torch.Tensor:
        if self.field is not None:
            return self.field.velocity(x, t, **kwargs)
        wide = x.to(compute_dtype(x.dtype))  # float16 g^2 overflows
        score = self._score(x, t, **kwargs).to(wide.dtype)
        return (self.process.drift(wide, t) - 0.5 * self._coefficient("g", t, wide) ** 2 * score).to(x.dtype)


class ReverseSDE(_Flow):
    """Reverse-time SDE ``dx = drift(x, t) dt + diffusion(t) dW̄``, integrated from ``t_max``
    down to ``t_min``."""

    def drift(self, x: torch.Tensor, t, **kwargs) -> torch.Tensor:
        score = self.field.score(x, t, **kwargs) if self.field is not None else self._score(x, t, **kwargs)
        return self.drift_from_score(x, t, score)

    def drift_from_score(self, x: torch.Tensor, t, score: torch.Tensor) -> torch.Tensor:
        """``f(t) x - g(t)^2 score`` for a score already evaluated at ``(x, t)``, computed in at
        least float32 (``g^2`` alone overflows float16 for VE with sigma_max in the hundreds)."""
        wide = x.to(compute_dtype(x.dtype))  # float16 g^2 overflows
        g = self._coefficient("g", t, wide)
        if wide.dtype == torch.float32 and not isinstance(g, torch.Tensor):
            g = float(np.float32(g))  # g in the state's dtype before squaring, as the tensor path has it
        diffusive = g**2 * score.to(wide.dtype)
        forward = self._forward_drift(wide, t)
        out = -diffusive if forward is None else forward - diffusive
        return out.to(x.dtype)

    def diffusion(self, t) -> torch.Tensor:
        """``g(t)``, float64 (checked: t must lie in the span)."""
        return self.process.diffusion(t)

    def diffusion_like(self, t, x: torch.Tensor) -> torch.Tensor:
        """``g(t)`` in x's dtype, shaped to broadcast against x (unchecked: for solvers)."""
        g = self._coefficient("g", t, x)
        return torch.tensor(g, dtype=x.dtype, device=x.device) if isinstance(g, float) else g


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
    """The probability-flow ODE of ``process`` driven by ``field`` (a :class:`Field` made for an
    equal process, or a denoiser callable), or by ``score=`` for a general :class:`SDE`."""
    return ProbabilityFlowODE(process, _check_args(process, field, score, "probability_flow"), score)


def reverse_sde(process, field=None, *, score: Callable | None = None) -> ReverseSDE:
    """The reverse-time SDE of a diffusion (Gaussian kernel) or a general :class:`SDE`."""
    if isinstance(process, Process) and not isinstance(process, Diffusion):
        raise ValueError(f"reverse_sde needs a diffusion (VE, VP, SubVP, EDM, Diffusion, LinearSDE) or an SDE; "
                         f"{process!r} has no forward SDE (Poisson flows are defined by their kernel): use "
                         "fs.probability_flow with an ODE solver")
    return ReverseSDE(process, _check_args(process, field, score, "reverse_sde"), score)
