"""A general (possibly non-linear) SDE ``dx = f(x, t) dt + g(t) dW``.

It has no canonical form ``x_t = s(t)(y + sigma(t) n)``: no kernel, no exact fields, and the
process-aware solvers (exponential integrators, ancestral samplers) refuse it. Generic
ODE/SDE solvers integrate it given a score.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .._validation import check_order, check_time_range


class SDE:
    """``SDE(drift=f(x, t), diffusion=g(t), t_min=0, t_max=1)``."""

    canonical = False

    def __init__(self, drift: Callable, diffusion: Callable, t_min: float = 0.0, t_max: float = 1.0):
        if not callable(drift) or not callable(diffusion):
            raise ValueError("drift must be a callable f(x, t) and diffusion a callable g(t)")
        t_min, t_max = float(t_min), float(t_max)
        if not (math.isfinite(t_min) and math.isfinite(t_max)):
            raise ValueError(f"t_min and t_max must be finite, got {t_min!r}, {t_max!r}")
        check_order("t_min", t_min, "t_max", t_max)
        self._drift, self._diffusion = drift, diffusion
        self.t_min, self.t_max = t_min, t_max

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        check_time_range("t", t, self.t_min, self.t_max)
        return self._drift(x, t)

    def diffusion(self, t) -> torch.Tensor:
        check_time_range("t", t, self.t_min, self.t_max)
        return torch.as_tensor(self._diffusion(t))

    def __repr__(self):
        return f"SDE(t_min={self.t_min!r}, t_max={self.t_max!r})"


def require_canonical(process, what: str) -> None:
    """Raise a clear error when ``process`` has no canonical (scale, sigma, kernel) form."""
    from .base import Process

    if not isinstance(process, Process):
        raise ValueError(
            f"{what} needs a canonical process x_t = s(t)(y + sigma(t) n) (VE, VP, SubVP, EDM, PFGMPP, "
            f"Poisson, Diffusion, LinearSDE); got {type(process).__name__}, which has no scale/sigma/kernel. "
            "Use a generic solver on fs.probability_flow(sde, score=...) instead."
        )
