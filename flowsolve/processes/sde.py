"""A general (possibly non-linear) SDE ``dx = f(x, t) dt + g(t) dW``.

It has no canonical form ``x_t = s(t)(y + sigma(t) n)``: no kernel, no exact fields, and the
process-aware solvers (exponential integrators, ancestral samplers) refuse it. Generic
ODE/SDE solvers integrate it given a score.
"""

from __future__ import annotations

from typing import Callable

import torch

from .._validation import check_order, check_real, check_time_range
from .base import ValueObject, callable_name


class SDE(ValueObject):
    """``SDE(drift=f(x, t), diffusion=g(t), t_min=0, t_max=1)``.

    Compares and hashes by value: equal when ``drift`` and ``diffusion`` are the same objects
    and the spans are equal.
    """

    canonical = False

    def __init__(self, drift: Callable, diffusion: Callable, t_min: float = 0.0, t_max: float = 1.0):
        if not callable(drift) or not callable(diffusion):
            raise ValueError("drift must be a callable f(x, t) and diffusion a callable g(t)")
        t_min, t_max = check_real("t_min", t_min), check_real("t_max", t_max)
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
        return (f"{type(self).__name__}(drift={callable_name(self._drift)}, diffusion={callable_name(self._diffusion)}, "
                f"t_min={self.t_min!r}, t_max={self.t_max!r})")

