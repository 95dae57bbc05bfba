"""Fields: what a model (or the exact solution) provides at each noise level.

The central quantity is the denoiser ``D(x; t) = E[y | x_t = x]`` (returned in data space)
for the process ``x_t = s(t) (y + sigma(t) n)``. With ``x̂ = x / s`` every other quantity is
a conversion (Karras et al. 2022, EDM, Sec. 2 and App. B; Xu et al. 2023, PFGM++, Secs. 3-4):

    eps(x, t)           = (x̂ - D) / sigma
    score(x, t)         = grad_x log p_t(x) = (s D - x) / (s^2 sigma^2)      (Gaussian kernel)
    velocity(x, t)      = dx/dt = (s'/s) x + (sigma'/sigma) (x - s D)        (probability-flow ODE)
    poisson_field(x, t) = E_x / E_r = (x̂ - D) / r,  r = sigma sqrt(D)      (PFGM++ kernel)

``velocity`` holds for every kernel: for PFGM++ it is ``dx/dsigma = (x - D)/sigma``, the
r-ODE ``dx/dr = E_x/E_r`` rescaled by ``dr/dsigma = sqrt(D)``. Sign: ``E`` points away from
the data, so ``sqrt(D) E_x / E_r -> -sigma grad log p_sigma`` as ``D -> inf`` at fixed sigma.

Shapes: a batch ``x`` has shape ``(n, *event_shape)`` (vectors ``(n, N)``, images
``(n, C, H, W)``); ``t`` is a Python float, a 0-d tensor or a tensor of shape ``(n,)``.
Schedules are computed in float64 from ``t`` and cast to the compute dtype (x's dtype, or
float32 for float16/bfloat16 inputs); results come back in x's dtype.

:meth:`Field.from_denoiser` and friends wrap a user's network; the exact fields of the toy
laws live in :mod:`flowsolve.toy.exact`.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import torch

from ._validation import check_event_shape as _check_event_shape
from ._validation import check_time_range, compute_dtype
from .processes.base import Process, require_canonical
from .processes.kernels import StudentTKernel

KINDS = ("denoiser", "eps", "score", "velocity", "poisson_field")


# ----------------------------------------------------------------------------- shapes
def check_event_shape(name: str, value, dim: int | None = None) -> tuple[int, ...]:
    """An event shape (an int or a sequence of ints >= 1; ``()`` is a scalar event); with ``dim``
    given, its number of elements must be ``dim``."""
    shape = _check_event_shape(name, value)
    if dim is not None and math.prod(shape) != dim:
        raise ValueError(f"{name} {shape} has {math.prod(shape)} elements, but the data dimension is {dim}")
    return shape


def batch_shape(name: str, x: torch.Tensor, event_shape: tuple[int, ...], batch_dims: int | None = None) -> torch.Size:
    """The leading dims of ``x`` of shape ``(*batch, *event_shape)`` (exactly ``batch_dims`` of
    them when given); a clear error otherwise."""
    k = len(event_shape)
    ok = x.ndim >= k and tuple(x.shape[x.ndim - k:]) == tuple(event_shape)
    if not ok or (batch_dims is not None and x.ndim != batch_dims + k):
        lead = "n" if batch_dims == 1 else "*batch"
        what = f"last dimension {event_shape[0]}, " if k == 1 else ""
        raise ValueError(f"{name} must have shape ({', '.join([lead, *map(str, event_shape)])}) ({what}event shape "
                         f"{tuple(event_shape)}), got shape {tuple(x.shape)}")
    return x.shape[: x.ndim - k]


def check_output(out, x: torch.Tensor, what: str) -> torch.Tensor:
    """A callable's ``out`` as a tensor of x's shape, device and dtype: another floating dtype is
    cast to x's, anything else is refused with a ValueError naming ``what``."""
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the {what} must return a tensor of x's shape {tuple(x.shape)}, got {got}")
    if out.device != x.device:
        raise ValueError(f"the {what} returned a tensor on device {out.device}, but x is on {x.device}")
    if out.dtype != x.dtype:
        if not out.is_floating_point():
            raise ValueError(f"the {what} must return a floating-point tensor, got {out.dtype}")
        out = out.to(x.dtype)
    return out


def _times(t, batch, device) -> torch.Tensor:
    """``t`` (a number or a tensor broadcastable to ``batch``) as a contiguous float64 tensor of
    shape ``batch`` on ``device``; no host synchronisation."""
    if isinstance(t, torch.Tensor):
        return torch.broadcast_to(t.detach().to(device=device, dtype=torch.float64), batch).contiguous()
    return torch.full(tuple(batch), float(t), dtype=torch.float64, device=device)


# ------------------------------------------------------------------ schedules at one time
#: Distinct times whose schedule values a process keeps (a fixed grid, its stage times and the
#: grids of a few solves); past this the memo starts afresh.
_SCALAR_CACHE_SIZE = 4096
_SCHEDULES = {"s": "_scale", "sigma": "_sigma", "ds": "_scale_derivative", "dsigma": "_sigma_derivative",
              "f": "_f", "g": "_g", "t_of_sigma": "_t_of_sigma"}


def schedule_at(process: Process, name: str, t: float) -> float:
    """The schedule ``name`` (``s``, ``sigma``, ``ds``, ``dsigma``, ``f``, ``g`` or ``t_of_sigma``)
    of ``process`` at the Python float ``t``, as a Python float computed in float64.

    Memoised per process and time, so a fixed-step solve computes each of its grid's (and stage
    times') schedule values once, on the host, whatever the state's device: a step then multiplies
    the state by Python numbers, with no per-step schedule tensors, no host-device copies and no
    reads back (``LinearSDE``'s schedules, interpolated by SciPy, used to copy to the host at every
    evaluation). The memo lives on the process (an attribute named ``_cache...``, so it takes no
    part in the process's value)."""
    memo = process.__dict__.get("_cache_schedule_at")
    if memo is None or len(memo) > _SCALAR_CACHE_SIZE:
        memo = process.__dict__["_cache_schedule_at"] = {}
    key = (name, t)
    value = memo.get(key)
    if value is None:
        # a 0-d float64 host tensor, as the schedules of one time have always been evaluated
        value = memo[key] = float(getattr(process, _SCHEDULES[name])(torch.tensor(t, dtype=torch.float64)))
    return value


class _ScalarCoefficients(NamedTuple):
    """:class:`Coefficients` at one time as Python floats, each rounded to the compute dtype as
    the tensor path's casts round them; ``dtype`` is that dtype."""

    s: float
    sig: float
    a: float | None
    b: float | None
    root_D: float
    dtype: torch.dtype

    def squared_noise(self) -> float:
        """``(s sigma)^2`` rounded at each product, as ``(c.s * c.sig) ** 2`` is on tensors."""
        q = self.round(self.s * self.sig)
        return self.round(q * q)

    def round(self, value: float) -> float:
        """``value`` rounded to the compute dtype (float32 through numpy, float64 as it is): a
        product of coefficients rounded as the same product of cast tensors is."""
        return float(np.float32(value)) if self.dtype == torch.float32 else value


def scalar_coefficients(process: Process, t: float, dtype: torch.dtype, rates: bool = False) -> _ScalarCoefficients:
    """``s``, ``sigma`` (and the rates ``s'/s``, ``sigma'/sigma``) at the time ``t``, computed once in
    float64 (:func:`schedule_at`) and rounded to ``dtype`` (float32 or float64): the numbers the
    tensor path's ``Coefficients`` hold in every row."""
    memo = process.__dict__.get("_cache_schedule_at")
    key = ("coefficients", t, dtype, rates)
    if memo is not None and key in memo:
        return memo[key]
    s, sig = schedule_at(process, "s", t), schedule_at(process, "sigma", t)
    a = b = None
    if rates:
        a, b = schedule_at(process, "ds", t) / s, schedule_at(process, "dsigma", t) / sig
    c = _ScalarCoefficients(s, sig, a, b, math.sqrt(process.kernel.D), dtype)
    if dtype == torch.float32:
        r = c.round
        c = c._replace(s=r(s), sig=r(sig), a=None if a is None else r(a), b=None if b is None else r(b),
                       root_D=r(c.root_D))
    process.__dict__["_cache_schedule_at"][key] = c  # schedule_at made the memo
    return c


# ------------------------------------------------------------------------ conversions
class Coefficients(NamedTuple):
    """Schedules at ``t`` shaped ``(*batch, 1, ..., 1)`` in the compute dtype: ``s``, ``sigma``,
    the rates ``a = s'/s`` and ``b = sigma'/sigma`` (None unless asked for) and ``sqrt(D)``."""

    s: torch.Tensor
    sig: torch.Tensor
    a: torch.Tensor | None
    b: torch.Tensor | None
    root_D: float


def from_denoiser(kind: str, x: torch.Tensor, den: torch.Tensor, c: Coefficients) -> torch.Tensor:
    """The quantity ``kind`` from the denoiser ``den`` at ``x`` (the equations of the module
    docstring, each written once)."""
    if kind == "denoiser":
        return den
    if kind == "eps":
        return (x / c.s - den) / c.sig
    if kind == "score":
        return (c.s * den - x) / (c.s * c.sig) ** 2
    if kind == "velocity":
        return c.a * x + c.b * (x - c.s * den)
    return (x / c.s - den) / (c.sig * c.root_D)  # poisson_field


def _from_denoiser_scalar(kind: str, x: torch.Tensor, den: torch.Tensor, c: _ScalarCoefficients) -> torch.Tensor:
    """:func:`from_denoiser` with the coefficients of one time as floats: the same operations in
    the same order, giving the same bits, less the products by ``s = 1`` and the term
    ``(s'/s) x`` when ``s' = 0`` (EDM, VE, PFGM++), which change nothing but the work."""
    one = c.s == 1.0
    if kind == "velocity":  # in place on the fresh difference: a state-sized temporary fewer
        v = (x - den if one else x - c.s * den).mul_(c.b)
        return v if c.a == 0.0 else v.add_(c.a * x)
    if kind == "eps":
        return ((x if one else x / c.s) - den) / c.sig
    if kind == "score":
        return ((den if one else c.s * den) - x) / c.squared_noise()
    if kind == "poisson_field":
        return ((x if one else x / c.s) - den) / c.round(c.sig * c.root_D)
    return den


def _to_denoiser_scalar(kind: str, x: torch.Tensor, value: torch.Tensor, c: _ScalarCoefficients) -> torch.Tensor:
    """:func:`to_denoiser` with the coefficients of one time as floats (same operations)."""
    if kind == "eps":
        return x / c.s - c.sig * value
    if kind == "score":
        return (x + c.squared_noise() * value) / c.s
    if kind == "velocity":
        return (x - (value - c.a * x) / c.b) / c.s
    if kind == "poisson_field":
        return x / c.s - c.round(c.sig * c.root_D) * value
    return value


def to_denoiser(kind: str, x: torch.Tensor, value: torch.Tensor, c: Coefficients) -> torch.Tensor:
    """The exact inverse of :func:`from_denoiser`."""
    if kind == "denoiser":
        return value
    if kind == "eps":
        return x / c.s - c.sig * value
    if kind == "score":
        return (x + (c.s * c.sig) ** 2 * value) / c.s
    if kind == "velocity":
        return (x - (value - c.a * x) / c.b) / c.s
    return x / c.s - c.sig * c.root_D * value  # poisson_field


# ------------------------------------------------------------------------------ field
class Field:
    """A field of a canonical process: the denoiser and its conversions.

    Public quantities (``denoiser``, ``eps``, ``score``, ``velocity``, ``poisson_field``) take
    ``(x, t, **kwargs)`` and validate their input; :meth:`evaluate` is the unchecked fast path
    solvers call. A subclass implements ``_denoise(x, t, kwargs)`` (``t`` a float64 tensor of
    shape ``(n,)``) or overrides ``_evaluate``.

    Attributes: ``process``; ``event_shape`` (a tuple, or None when unknown); ``dim`` (the number
    of elements of an event, or None); ``is_poisson``.
    """

    KINDS = KINDS
    _true_score = False  # True when ``score`` is the gradient of log p_t, not a conversion

    def __init__(self, process: Process, event_shape=None):
        require_canonical(process, "a field")
        self.process = process
        self.event_shape = None if event_shape is None else check_event_shape("event_shape", event_shape)

    @property
    def dim(self) -> int | None:
        return None if self.event_shape is None else math.prod(self.event_shape)

    @property
    def is_poisson(self) -> bool:
        return isinstance(self.process.kernel, StudentTKernel)

    # -- public quantities ---------------------------------------------------------------
    def denoiser(self, x: torch.Tensor, t, /, **kwargs) -> torch.Tensor:
        """``D(x; t) = E[y | x_t = x]``, in data space (shape of x)."""
        return self._checked("denoiser", x, t, kwargs)

    def eps(self, x: torch.Tensor, t, /, **kwargs) -> torch.Tensor:
        """Noise prediction ``(x/s - D)/sigma``."""
        return self._checked("eps", x, t, kwargs)

    def score(self, x: torch.Tensor, t, /, **kwargs) -> torch.Tensor:
        """``grad_x log p_t(x) = (s D - x)/(s^2 sigma^2)`` (Gaussian kernel)."""
        return self._checked("score", x, t, kwargs)

    def velocity(self, x: torch.Tensor, t, /, **kwargs) -> torch.Tensor:
        """Probability-flow ODE drift ``dx/dt = (s'/s) x + (sigma'/sigma)(x - s D)``."""
        return self._checked("velocity", x, t, kwargs)

    def poisson_field(self, x: torch.Tensor, t, /, **kwargs) -> torch.Tensor:
        """PFGM++ normalised field ``E_x/E_r = (x/s - D)/r`` with ``r = sigma sqrt(D)`` (the
        drift of ``dx/dr``)."""
        return self._checked("poisson_field", x, t, kwargs)

    # -- fast path -----------------------------------------------------------------------
    def evaluate(self, kind: str, x: torch.Tensor, t, kwargs: dict | None = None) -> torch.Tensor:
        """``kind`` at ``x`` of shape ``(n, *event_shape)`` and ``t`` (a Python float or a float64
        tensor of shape ``(n,)``), with the extra arguments ``kwargs``; x's shape and dtype.

        No time-range, shape or device checks and no host synchronisation: for solvers, which
        validate their input once. The public methods validate and then run this same code.
        """
        if kind not in self._fast_kinds:
            self._check_kind(kind)
        if not isinstance(t, torch.Tensor) and self._scalar_path:
            return self._evaluate_scalar(kind, x, float(t), kwargs or {})
        return self._evaluate(kind, x, _times(t, x.shape[:1], x.device), kwargs or {})

    def denoised_from(self, kind: str, x: torch.Tensor, t, value: torch.Tensor) -> torch.Tensor:
        """The denoiser from ``value = evaluate(kind, x, t, ...)``, without a new evaluation (the
        exact inverse of the conversion; ``t`` as in :meth:`evaluate`)."""
        self._check_kind(kind)
        if kind == "score" and self.is_poisson:
            raise ValueError("denoised_from('score') needs a Gaussian-kernel process: under the PFGM++ kernel "
                             "the score does not determine the denoiser")
        if kind == "denoiser":
            return value
        cd = compute_dtype(x.dtype)
        c = self._coefficients(_times(t, x.shape[:1], x.device), x.ndim, cd, rates=kind == "velocity")
        return to_denoiser(kind, x.to(cd), value.to(cd), c).to(x.dtype)

    # -- plumbing ------------------------------------------------------------------------
    @property
    def _fast_kinds(self) -> frozenset:
        """The kinds :meth:`evaluate` may skip checking (valid for this field)."""
        kinds = self.__dict__.get("_cache_fast_kinds")
        if kinds is None:
            ok = []
            for kind in KINDS:
                try:
                    self._check_kind(kind)
                    ok.append(kind)
                except ValueError:
                    pass
            kinds = self.__dict__["_cache_fast_kinds"] = frozenset(ok)
        return kinds

    @property
    def _scalar_path(self) -> bool:
        """Whether a Python-float time may take :meth:`_evaluate_scalar`: the field's own
        ``_evaluate`` is the generic one (a subclass implementing ``_denoise``, or a wrapped
        callable), so only the schedules differ, and they are the same numbers."""
        return type(self)._evaluate in (Field._evaluate, WrappedField._evaluate)

    def _evaluate_scalar(self, kind, x, t: float, kwargs):
        """``_evaluate`` at one Python-float time for the whole batch: the conversion uses the
        schedules at ``t`` as Python floats (:func:`scalar_coefficients`, computed once per time)
        instead of per-sample float64 tensors."""
        den = self._denoise(x, _times(t, x.shape[:1], x.device), kwargs)
        return self._convert_scalar("denoiser", kind, x, t, den)

    def _convert_scalar(self, src, dst, x, t: float, value):
        """:meth:`_convert` with the schedules at one time as Python floats; the same operations,
        less those that multiply by 1 or add 0 times the state."""
        if src == dst:
            return value
        cd = compute_dtype(x.dtype)
        c = scalar_coefficients(self.process, t, cd, rates="velocity" in (src, dst))
        if cd == x.dtype and value.dtype == cd:  # nothing to cast (a no-op .to still costs a dispatch)
            return _from_denoiser_scalar(dst, x, _to_denoiser_scalar(src, x, value, c), c)
        xc = x.to(cd)
        return _from_denoiser_scalar(dst, xc, _to_denoiser_scalar(src, xc, value.to(cd), c), c).to(x.dtype)

    def _denoise(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _denoise(x, t, kwargs) or _evaluate")

    def _evaluate(self, kind, x, t64, kwargs):
        return self._convert("denoiser", kind, x, t64, self._denoise(x, t64, kwargs))

    def _convert(self, src, dst, x, t64, value):
        """``value`` (the quantity ``src``) as the quantity ``dst``, via the denoiser, computed
        in at least float32 and returned in x's dtype."""
        if src == dst:
            return value
        cd = compute_dtype(x.dtype)
        c = self._coefficients(t64, x.ndim, cd, rates="velocity" in (src, dst))
        xc = x.to(cd)
        return from_denoiser(dst, xc, to_denoiser(src, xc, value.to(cd), c), c).to(x.dtype)

    def _coefficients(self, t64: torch.Tensor, ndim: int, dtype, rates: bool = False) -> Coefficients:
        """Schedules at the float64 times ``t64`` (shape ``batch``), computed in float64 and cast
        to ``dtype``, shaped ``(*batch, 1, ..., 1)`` with ``ndim`` dims."""
        p = self.process
        shape = tuple(t64.shape) + (1,) * (ndim - t64.ndim)
        s64 = p._scale(t64)
        sig64 = p._sigma(t64)
        a = b = None
        if rates:
            a = (p._scale_derivative(t64) / s64).to(dtype).reshape(shape)
            b = (p._sigma_derivative(t64) / sig64).to(dtype).reshape(shape)
        return Coefficients(s64.to(dtype).reshape(shape), sig64.to(dtype).reshape(shape), a, b,
                            math.sqrt(p.kernel.D))

    def _check_kind(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == "poisson_field" and not self.is_poisson:
            raise ValueError("poisson_field needs a PFGM++/Poisson process (Student-t kernel); "
                             f"got {type(self.process).__name__}")
        if kind == "score" and self.is_poisson and not self._true_score:
            raise ValueError(
                "score is not a conversion of the denoiser under the PFGM++ kernel (the ODE drift is "
                "velocity/poisson_field); exact fields give the true gradient of log p_t, wrapped ones cannot")

    def _batch_shape(self, x: torch.Tensor) -> torch.Size:
        """Batch = dim 0; the rest must be the event shape when it is known."""
        if x.ndim < 1:
            raise ValueError(f"x must have shape (n, *event_shape) with a batch dimension, got shape {tuple(x.shape)}")
        if self.event_shape is not None:
            batch_shape("x", x, self.event_shape, batch_dims=1)
        return x.shape[:1]

    def _validated_times(self, x, t) -> torch.Tensor:
        """Check x and t (type, dtype, shape, device, time range); t as float64 of the batch shape."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a floating-point tensor of shape (n, *event_shape), got {got}")
        batch = self._batch_shape(x)
        if isinstance(t, torch.Tensor):
            if t.device != x.device:
                raise ValueError(f"t is on {t.device} but x is on {x.device}; put them on one device")
            try:
                ok = torch.broadcast_shapes(t.shape, batch) == batch
            except RuntimeError:
                ok = False
            if not ok:
                raise ValueError(f"t must be a number or a tensor of shape {tuple(batch)} (one time per sample), "
                                 f"got shape {tuple(t.shape)}")
        check_time_range("t", t, self.process.t_min, self.process.t_max)  # also refuses non-real t
        return _times(t, batch, x.device)

    def _checked(self, kind, x, t, kwargs):
        self._check_kind(kind)
        return self._evaluate(kind, x, self._validated_times(x, t), kwargs)

    # -- wrappers ------------------------------------------------------------------------
    @classmethod
    def from_denoiser(cls, process, fn: Callable, /, *, event_shape=None, **fixed) -> "WrappedField":
        """Wrap ``fn(x, t, **kw) -> E[y | x_t = x]`` (data space)."""
        return WrappedField(process, fn, "denoiser", event_shape=event_shape, fixed=fixed)

    @classmethod
    def from_eps(cls, process, fn: Callable, /, *, event_shape=None, **fixed) -> "WrappedField":
        """Wrap a noise prediction ``fn(x, t, **kw) -> (x/s - D)/sigma``."""
        return WrappedField(process, fn, "eps", event_shape=event_shape, fixed=fixed)

    @classmethod
    def from_score(cls, process, fn: Callable, /, *, event_shape=None, **fixed) -> "WrappedField":
        """Wrap ``fn(x, t, **kw) -> grad_x log p_t(x)`` (Gaussian-kernel processes)."""
        return WrappedField(process, fn, "score", event_shape=event_shape, fixed=fixed)

    @classmethod
    def from_velocity(cls, process, fn: Callable, /, *, event_shape=None, **fixed) -> "WrappedField":
        """Wrap the probability-flow ODE drift ``fn(x, t, **kw) -> dx/dt`` in the process's time."""
        return WrappedField(process, fn, "velocity", event_shape=event_shape, fixed=fixed)

    @classmethod
    def from_poisson_field(cls, process, fn: Callable, /, *, event_shape=None, **fixed) -> "WrappedField":
        """Wrap a PFGM++ normalised field ``fn(x, t, **kw) -> E_x/E_r``."""
        return WrappedField(process, fn, "poisson_field", event_shape=event_shape, fixed=fixed)


class WrappedField(Field):
    """A user's callable ``fn(x, t, **kw)`` giving one quantity; the others follow exactly.

    ``fn`` receives ``x`` of shape ``(n, *event_shape)``, ``t`` as a tensor of shape ``(n,)`` in
    x's dtype, and ``kw = {**fixed, **per_call_kwargs}``. It must return a floating tensor of x's
    shape on x's device; another floating dtype is cast to x's. Asking for the quantity ``fn``
    provides returns its output untouched.
    """

    def __init__(self, process, fn: Callable, kind: str, *, event_shape=None, fixed: dict | None = None):
        super().__init__(process, event_shape)
        if not callable(fn):
            raise ValueError(f"fn must be a callable fn(x, t, **kwargs), got {type(fn).__name__}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == "score" and self.is_poisson:
            raise ValueError("from_score needs a Gaussian-kernel process: under the PFGM++ kernel the score "
                             "does not determine the denoiser; wrap a denoiser or poisson_field instead")
        if kind == "poisson_field" and not self.is_poisson:
            raise ValueError("from_poisson_field needs a PFGM++/Poisson process")
        self.fn, self.kind, self.fixed = fn, kind, dict(fixed or {})

    def _call(self, x, t64, kwargs):
        return check_output(self.fn(x, t64.to(x.dtype), **{**self.fixed, **kwargs}), x, f"wrapped {self.kind}")

    def _evaluate(self, kind, x, t64, kwargs):
        return self._convert(self.kind, kind, x, t64, self._call(x, t64, kwargs))

    def _evaluate_scalar(self, kind, x, t: float, kwargs):
        # the network's times made in x's dtype at once: the same numbers as float64 cast down
        times = torch.full(x.shape[:1], t, dtype=x.dtype, device=x.device)
        kw = {**self.fixed, **kwargs} if self.fixed else kwargs
        out = check_output(self.fn(x, times, **kw), x, f"wrapped {self.kind}")
        return self._convert_scalar(self.kind, kind, x, t, out)

    def __repr__(self):
        return f"Field.from_{self.kind}({self.process!r}, {getattr(self.fn, '__name__', type(self.fn).__name__)})"

