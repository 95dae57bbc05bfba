"""Argument checks shared by every module.

Each check raises ``ValueError`` naming the argument and the allowed range, before any
work is done (so a bad call never leaves half-computed state behind).
"""

from __future__ import annotations

import difflib
import math
import numbers
from typing import Any, Iterable

import numpy as np
import torch

# Relative slack for time-range checks, per end: a time may land a little outside
# [t_min, t_max] after a float64 -> float32 (or lower) cast, and that must not be an error.
# Float64, float32 and Python floats get this slack; lower precisions get one unit of
# their own precision (bfloat16: 2^-7, float16: 2^-10), which is twice their worst rounding.
_TIME_RTOL = 1e-6

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_)) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool)


def _real_number(value: Any) -> float | None:
    """``value`` as a Python float if it is a real number (not a bool, a string, a complex,
    None or a tensor with more than one element); otherwise None. Overflowing ints give inf."""
    if _is_bool(value):
        return None
    if isinstance(value, torch.Tensor):
        if value.ndim != 0 or value.is_complex() or value.device.type == "meta":
            return None
        return float(value.item())
    if isinstance(value, numbers.Real):
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    return None


def _fmt(x) -> str:
    """A bound as a reader writes it: 0 and 1 rather than 0.0 and 1.0."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def _interval(minimum, maximum, strict_min: bool, strict_max: bool) -> str:
    if minimum is None and maximum is None:
        return ""
    lo, hi = _fmt(minimum), _fmt(maximum)
    if maximum is None:
        return f" {'>' if strict_min else '>='} {lo}"
    if minimum is None:
        return f" {'<' if strict_max else '<='} {hi}"
    return f" in {'(' if strict_min else '['}{lo}, {hi}{')' if strict_max else ']'}"


def check_real(name: str, value: Any, minimum: float | None = None, maximum: float | None = None, *,
               strict_min: bool = False, strict_max: bool = False, allow_inf: bool = False) -> float:
    """A real number (int, float, numpy real scalar, 0-d real tensor) inside the given range.

    Strings, bools, complex numbers and None are refused; nan always; +-inf unless
    ``allow_inf`` (and then only where the range admits it). Returns a Python float.
    """
    what = ("a real number" if allow_inf else "a finite real number") + _interval(minimum, maximum, strict_min,
                                                                                  strict_max)
    x = _real_number(value)
    if x is None or math.isnan(x) or (math.isinf(x) and not allow_inf):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if minimum is not None and (x < minimum or (strict_min and x == minimum)):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if maximum is not None and (x > maximum or (strict_max and x == maximum)):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return x


def check_positive(name: str, value: Any) -> float:
    """A finite real number > 0 (strings such as ``'128'`` are refused)."""
    return check_real(name, value, minimum=0.0, strict_min=True)


def check_bool(name: str, value: Any) -> bool:
    """A real bool (Python or numpy); ``'no'``, ``1``, ``None`` are refused."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"{name} must be True or False, got {value!r}")


def check_int(name: str, value: Any, minimum: int = 0, maximum: int | None = None) -> int:
    """An integer-valued number in ``[minimum, maximum]`` (3 and 3.0 pass; bools, strings,
    nan, inf, 2.5 and values above ``maximum`` do not)."""
    hi = "inf)" if maximum is None else f"{maximum}]"
    msg = f"{name} must be an integer in [{minimum}, {hi}, got {value!r}"
    if _is_bool(value) or isinstance(value, str):
        raise ValueError(msg)
    if isinstance(value, (numbers.Integral, np.integer)):
        as_int = int(value)
    else:
        x = _real_number(value)
        if x is None or not math.isfinite(x) or x != int(x):
            raise ValueError(msg)
        as_int = int(x)
    if as_int < minimum or (maximum is not None and as_int > maximum):
        raise ValueError(msg)
    return as_int


def check_float_dtype(name: str, dtype: Any) -> torch.dtype | None:
    """A floating torch dtype (float16, bfloat16, float32, float64). ``None`` passes through
    (meaning: the caller's default). Integer, bool and complex dtypes are refused: noise and
    states would be truncated."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype) and dtype in FLOAT_DTYPES:
        return dtype
    allowed = ", ".join(str(d) for d in FLOAT_DTYPES)
    raise ValueError(f"{name} must be a floating dtype ({allowed}), got {dtype!r}")


def check_device(name: str, device: Any) -> torch.device | None:
    """A device (``torch.device``, ``'cpu'``, ``'cuda:0'``, an int for a CUDA index) or None.

    The ``meta`` device is refused: it holds no data, so nothing can be sampled or checked on it.
    """
    if device is None:
        return None
    if _is_bool(device):
        raise ValueError(f"{name} must be a torch.device, a device string such as 'cpu' or 'cuda:0', or None, "
                         f"got {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name} must be a torch.device, a device string such as 'cpu' or 'cuda:0', or None, "
                         f"got {device!r}") from None
    if dev.type == "meta":
        raise ValueError(f"{name} must be a device that holds data; got the 'meta' device (shapes only)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}={device!r}: CUDA is not available on this machine")
    return dev


def unknown_choice(arg: str, value: Any, choices: Iterable[str]) -> ValueError:
    """The error for ``value`` not among ``choices``: lists them and suggests the closest
    (difflib; no suggestion when none is close). Returned, not raised: ``raise unknown_choice(...)``."""
    choices = [str(c) for c in choices]
    msg = f"{arg} must be one of {choices}, got {value!r}"
    if isinstance(value, str):
        lowered = {c.lower(): c for c in choices}
        close = difflib.get_close_matches(value.lower(), list(lowered), n=1, cutoff=0.6)
        if close:
            msg += f"; did you mean {lowered[close[0]]!r}?"
    return ValueError(msg)


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


def time_rtol(dtype: torch.dtype | None) -> float:
    """Relative slack of the time-range check for times given in ``dtype`` (None: a Python float)."""
    if dtype is None or not dtype.is_floating_point:
        return _TIME_RTOL
    return max(_TIME_RTOL, torch.finfo(dtype).eps)


def check_time_range(name: str, t: torch.Tensor | float, t_min: float, t_max: float) -> None:
    """Raise unless every entry of ``t`` lies in [t_min, t_max], up to the rounding of t's
    dtype at each end (1e-6 relative for float64/float32 and Python floats, one unit of
    precision for float16/bfloat16)."""
    if isinstance(t, torch.Tensor):
        if t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{name} must hold real numbers, got a {t.dtype} tensor")
        if t.device.type == "meta":
            raise ValueError(f"{name} is on the 'meta' device, which holds no values to check")
        if t.numel() == 0:
            return
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be finite, got non-finite entries")
        lo, hi = float(t.min()), float(t.max())
        rtol = time_rtol(t.dtype)
    else:
        x = _real_number(t)
        if x is None:
            raise ValueError(f"{name} must be a real number or a tensor, got {t!r}")
        if not math.isfinite(x):
            raise ValueError(f"{name} must be finite, got {t!r}")
        lo = hi = x
        rtol = _TIME_RTOL
    if lo < t_min - rtol * abs(t_min) or hi > t_max + rtol * abs(t_max):
        raise ValueError(f"{name} must lie in [{t_min!r}, {t_max!r}], got values in [{lo!r}, {hi!r}]")


def check_event_shape(name: str, value: Any) -> tuple[int, ...]:
    """One sample's shape: an int >= 1 (a vector's dimension) or a sequence of ints >= 1 (``()`` is a
    scalar event)."""
    message = (f"{name} must be an int >= 1 (the data dimension) or a tuple of ints >= 1 (the event shape, e.g. "
               f"(3, 32, 32)), got {value!r}")
    if _is_bool(value) or isinstance(value, (str, bytes)) or not (
            isinstance(value, numbers.Integral) or hasattr(value, "__iter__")):
        raise ValueError(message)
    items = (value,) if isinstance(value, numbers.Integral) else tuple(value)
    try:
        return tuple(check_int(name, v, 1) for v in items)
    except ValueError:
        raise ValueError(message) from None


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype delicate arithmetic runs in: float32 and float64 their own, lower precisions
    (float16, bfloat16, whose squares and coefficients overflow or lose everything) float32."""
    return torch.promote_types(dtype, torch.float32)
