"""Argument checks shared by every module.

Each check raises ``ValueError`` naming the argument and the allowed range, before any
work is done (so a bad call never leaves half-computed state behind).
"""

from __future__ import annotations

import math
from typing import Any

import torch

# Relative slack for time-range checks, per end: a float32 time may land a few ulps outside
# [t_min, t_max] after a float64 -> float32 cast, and that must not be an error.
_TIME_RTOL = 1e-6


def check_positive(name: str, value: Any) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def check_order(lo_name: str, lo: float, hi_name: str, hi: float) -> None:
    if not lo < hi:
        raise ValueError(f"{lo_name} must be < {hi_name}, got {lo_name}={lo!r} and {hi_name}={hi!r}")


def check_same_device(**tensors: torch.Tensor) -> torch.device | None:
    """All tensors given must live on one device; returns that device."""
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{k} on {v}" for k, v in devices.items())
        raise ValueError(f"tensors must be on one device, got {listing}")
    return next(iter(devices.values()), None)


def check_dim(name: str, x: torch.Tensor, dim: int) -> None:
    if x.ndim < 1 or x.shape[-1] != dim:
        raise ValueError(
            f"{name} must have last dimension {dim} (the data dimension), got shape {tuple(x.shape)}"
        )


def check_time_range(name: str, t: torch.Tensor | float, t_min: float, t_max: float) -> None:
    """Raise unless every entry of ``t`` lies in [t_min, t_max] (up to float32 rounding)."""
    lo_slack, hi_slack = _TIME_RTOL * abs(t_min), _TIME_RTOL * abs(t_max)
    if isinstance(t, torch.Tensor):
        if t.numel() == 0:
            return
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be finite, got non-finite entries")
        lo, hi = float(t.min()), float(t.max())
    else:
        lo = hi = float(t)
        if not math.isfinite(lo):
            raise ValueError(f"{name} must be finite, got {t!r}")
    if lo < t_min - lo_slack or hi > t_max + hi_slack:
        raise ValueError(f"{name} must lie in [{t_min!r}, {t_max!r}], got values in [{lo!r}, {hi!r}]")


def check_int(name: str, value: Any, minimum: int = 0) -> int:
    """An integer-valued number >= ``minimum`` (so 3 and 3.0 pass; nan, inf, 2.5, "3" do not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__index__"):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    as_float = float(value)
    if not math.isfinite(as_float) or as_float != int(as_float) or as_float < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(as_float)
