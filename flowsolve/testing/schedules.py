"""Small schedule functions of time, as values, for composing processes in tests.

Each class is a callable ``fn(t)`` (float64 tensor in, float64 tensor of the same shape out,
differentiable by autograd) with a few float parameters, from which
``fs.Diffusion(scale=..., sigma=..., ...)`` and ``fs.LinearSDE(f=..., g=..., ...)`` are built.
They compare and hash by value (so the processes built from them do too), and their repr is
Python that rebuilds them: ``fs.testing.schedules.Exponential(a=0.5, b=2.0)``.
"""

from __future__ import annotations

import torch

from ..processes.base import ValueObject


class Schedule(ValueObject):
    """Base class: float parameters set in ``__init__``, in the order the repr prints them."""

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={value!r}" for name, value in vars(self).items())
        return f"fs.testing.schedules.{type(self).__name__}({args})"


class Constant(Schedule):
    """``value`` at every time."""

    def __init__(self, value: float):
        self.value = float(value)

    def __call__(self, t):
        return torch.full_like(t, self.value)


class Linear(Schedule):
    """``a + b t``."""

    def __init__(self, a: float, b: float):
        self.a, self.b = float(a), float(b)

    def __call__(self, t):
        return self.a + self.b * t


class Exponential(Schedule):
    """``a exp(b t)``."""

    def __init__(self, a: float, b: float):
        self.a, self.b = float(a), float(b)

    def __call__(self, t):
        return self.a * torch.exp(self.b * t)


class Power(Schedule):
    """``a t^p``, for ``t > 0``."""

    def __init__(self, a: float, p: float):
        self.a, self.p = float(a), float(p)

    def __call__(self, t):
        return self.a * t**self.p


__all__ = ["Schedule", "Constant", "Linear", "Exponential", "Power"]
