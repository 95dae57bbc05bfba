"""The canonical process ``x_t = s(t) (y + sigma(t) n)`` (Karras et al. 2022, EDM, Sec. 2 and App. B.2).

A :class:`Process` knows its schedules ``s(t)`` (``scale``) and ``sigma(t)``, their time
derivatives, its kernel (the law of ``n``) and its time span; it knows nothing of data,
fields or solvers. Schedules are evaluated in float64 and cast to the caller's dtype.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._validation import (check_device, check_event_shape, check_float_dtype, check_int, check_order, check_real,
                           check_same_device, check_time_range, compute_dtype)

_BISECTION_STEPS = 200
#: Points of the float64 grid on which every schedule is checked at construction (both ends included).
SCHEDULE_CHECK_POINTS = 1025


def _as_float64(t, device=None) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t.detach().to(torch.float64) if device is None else t.detach().to(device, torch.float64)
    return torch.as_tensor(t, dtype=torch.float64, device=device)


# -- value semantics ------------------------------------------------------------------------
class _Identity:
    """Compares and hashes an object by identity (user callables, unhashable objects)."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return isinstance(other, _Identity) and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)


def _freeze(value: Any):
    """A hashable stand-in for ``value`` that compares by value: numbers, strings, tuples,
    lists, dicts, tensors and arrays by content; processes and kernels by their own value;
    callables and any other object by identity."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes, np.generic)):
        return value
    if isinstance(value, ValueObject):
        return value
    if isinstance(value, torch.Tensor):
        v = value.detach()
        return ("tensor", str(v.dtype), tuple(v.shape), tuple(v.cpu().reshape(-1).tolist()))
    if isinstance(value, np.ndarray):
        return ("ndarray", str(value.dtype), value.shape, tuple(value.reshape(-1).tolist()))
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_freeze(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted(((repr(k), _freeze(v)) for k, v in value.items()), key=lambda kv: kv[0])))
    return _Identity(value)


class ValueObject:
    """Compares and hashes by value: same value class and equal instance attributes.

    Attributes are compared with :func:`_freeze` (callables by identity). Derived or cached
    state is left out: the names in ``_derived_attributes`` and any name starting with
    ``_cache``. Treat instances as immutable: the hash follows the attributes.
    """

    _derived_attributes: frozenset = frozenset()

    def _value_class(self) -> type:
        """The class that takes part in comparisons (a subclass may name a parent it equals)."""
        return type(self)

    def _value_key(self) -> tuple:
        skip = self._derived_attributes
        items = tuple(sorted((k, _freeze(v)) for k, v in vars(self).items()
                             if k not in skip and not k.startswith("_cache")))
        return (self._value_class(), items)

    def __eq__(self, other):
        if self is other:
            return True
        if not isinstance(other, ValueObject):
            return NotImplemented
        return self._value_key() == other._value_key()

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self):
        return hash(self._value_key())


# -- subclass support -----------------------------------------------------------------------
# A closed-form hook (a derivative, the inverse, an SDE coefficient) is only valid for the
# schedule it was written for. When a subclass overrides a schedule but not the hooks derived
# from it, those hooks fall back to the generic versions (autograd, bisection, the general
# SDE formulas) instead of silently using the parent's formula.
_HOOK_DEPENDS = {
    "_scale_derivative": ("_scale",),
    "_sigma_derivative": ("_sigma",),
    "_t_of_sigma": ("_sigma",),
    "_f": ("_scale", "_scale_derivative"),
    "_g": ("_scale", "_sigma", "_sigma_derivative"),
}
_GENERIC_HOOKS: set = set()


def generic_hook(fn):
    """Mark ``fn`` as valid for any schedule (not a closed form of one particular schedule)."""
    _GENERIC_HOOKS.add(fn)
    return fn


def _owner(cls: type, name: str) -> type | None:
    return next((c for c in cls.__mro__ if name in c.__dict__), None)


def _replace_stale_hooks(cls: type) -> None:
    mro = cls.__mro__
    for hook, depends in _HOOK_DEPENDS.items():
        owner = _owner(cls, hook)
        if owner is None or owner.__dict__[hook] in _GENERIC_HOOKS:
            continue
        stale = any((d := _owner(cls, dep)) is not None and mro.index(d) < mro.index(owner) for dep in depends)
        if stale:
            generic = next((c.__dict__[hook] for c in mro if c.__dict__.get(hook) in _GENERIC_HOOKS), None)
            if generic is not None:
                setattr(cls, hook, generic)


class _ProcessType(type):
    """Checks the schedules once the whole construction (the subclass's own ``__init__``
    included) is done."""

    def __call__(cls, *args, **kwargs):
        obj = super().__call__(*args, **kwargs)
        obj._check_schedules()
        return obj


class Process(ValueObject, metaclass=_ProcessType):
    """Base class of canonical processes ``x_t = s(t) (y + sigma(t) n)``.

    Processes are values: they compare and hash by their parameters (user callables by
    identity), so ``fs.EDM() == fs.EDM()`` and a process can key a dict.

    Subclassing (every public process class can be subclassed). Override, each mapping a
    float64 tensor of times to a float64 tensor of the same shape:

    * ``_sigma(t)`` -- the noise level, strictly increasing on ``[t_min, t_max]``, > 0 at t_min;
    * ``_scale(t)`` -- the scale ``s(t)`` > 0 (default 1);
    * optionally ``_scale_derivative(t)``, ``_sigma_derivative(t)`` (default: autograd of the
      schedule) and ``_t_of_sigma(sigma)`` (default: bisection). A closed form inherited from a
      named parent is dropped in favour of these defaults when you override the schedule it
      belongs to and not the hook itself.

    and call ``super().__init__(...)`` with the time span (``Process.__init__(self, t_min,
    t_max)``). A direct subclass of ``Process`` also sets ``kernel`` (subclass ``Diffusion``
    or ``PFGMPP`` to inherit one). The schedules are checked on a dense float64 grid of the span when the
    object is made, after your ``__init__`` has run: sigma strictly increasing and > 0,
    scale positive and finite, ``scale * sigma`` finite. Attributes you set take part in
    ``==``/``hash``; name caches ``_cache...`` (or list them in ``_derived_attributes``)
    to leave them out.

    Attributes
    ----------
    kernel : GaussianKernel or StudentTKernel
    t_min, t_max : floats, the data end and the prior end of the time span.
    """

    kernel = None
    t_min: float
    t_max: float

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _replace_stale_hooks(cls)

    def __init__(self, t_min: float, t_max: float):
        t_min = check_real("t_min", t_min)
        t_max = check_real("t_max", t_max)
        check_order("t_min", t_min, "t_max", t_max)
        self.t_min, self.t_max = t_min, t_max

    # -- schedules, float64 internals -------------------------------------------------
    def _scale(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def _sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @generic_hook
    def _scale_derivative(self, t: torch.Tensor) -> torch.Tensor:
        return _autograd_derivative(self._scale, t)

    @generic_hook
    def _sigma_derivative(self, t: torch.Tensor) -> torch.Tensor:
        return _autograd_derivative(self._sigma, t)

    @generic_hook
    def _t_of_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        # Vectorised bisection on [t_min, t_max]; sigma is increasing in t for every process.
        lo = torch.full_like(sigma, self.t_min)
        hi = torch.full_like(sigma, self.t_max)
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            below = self._sigma(mid) < sigma
            lo = torch.where(below, mid, lo)
            hi = torch.where(below, hi, mid)
            if bool(((hi - lo) <= 4e-16 * hi.abs().clamp_min(1e-300)).all()):
                break
        return 0.5 * (lo + hi)

    # -- construction-time check of the schedules ---------------------------------------
    def _hook_on_grid(self, hook: str, label: str, t: torch.Tensor) -> torch.Tensor:
        try:
            out = getattr(self, hook)(t)
        except NotImplementedError:
            raise ValueError(f"{type(self).__name__} does not define {label}(t): override {hook}(t) "
                             "(float64 tensor in, float64 tensor of the same shape out)") from None
        if not isinstance(out, torch.Tensor) or out.dtype != torch.float64 or out.shape != t.shape:
            got = (f"a {out.dtype} tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor)
                   else type(out).__name__)
            raise ValueError(f"{type(self).__name__}.{hook}(t) must return a float64 tensor of t's shape; for t of "
                             f"shape {tuple(t.shape)} it returned {got}")
        return out

    def _check_schedules(self) -> None:
        """Refuse a schedule that is invalid on the span, naming it and the first bad time.

        On ``SCHEDULE_CHECK_POINTS`` float64 times spanning ``[t_min, t_max]`` (both ends
        exact): scale finite and > 0 (with a finite 1/scale), sigma finite, > 0 and strictly
        increasing, and ``scale * sigma`` finite.
        """
        name = type(self).__name__
        if not (isinstance(getattr(self, "t_min", None), float) and isinstance(getattr(self, "t_max", None), float)):
            raise ValueError(f"{name}.__init__ must call super().__init__(...) with the time span (t_min, t_max)")
        t = torch.linspace(self.t_min, self.t_max, SCHEDULE_CHECK_POINTS, dtype=torch.float64)
        t[0], t[-1] = self.t_min, self.t_max
        s = self._hook_on_grid("_scale", "scale", t)
        sig = self._hook_on_grid("_sigma", "sigma", t)
        fin_s, fin_sig = torch.isfinite(s), torch.isfinite(sig)
        both = fin_sig[1:] & fin_sig[:-1]
        checks = [  # (mask of bad points, what is wrong, offset of the mask into t)
            (~(fin_s & (s > 0) & torch.isfinite(1.0 / s)), "scale(t) must be positive and finite (with 1/scale(t) "
             "finite)", 0),
            (~fin_sig, "sigma(t) must be finite", 0),
            (fin_sig & (sig <= 0), "sigma(t) must be > 0 (sigma = 0 is the data itself: fields divide by sigma)", 0),
            (both & ~(sig[1:] > sig[:-1]), "sigma(t) must be strictly increasing in t (in float64)", 1),
            (fin_s & fin_sig & ~torch.isfinite(s * sig), "scale(t) * sigma(t), the noise std of x_t, must be finite", 0),
        ]
        worst = None
        for mask, what, offset in checks:
            bad = torch.nonzero(mask)
            if len(bad) and (worst is None or int(bad[0]) + offset < worst[0]):
                worst = (int(bad[0]) + offset, what)
        if worst is None:
            if self.kernel is None:
                raise ValueError(f"{name} has no kernel: subclass Diffusion (Gaussian kernel) or PFGMPP (Student-t "
                                 "kernel), or set kernel to a GaussianKernel() or StudentTKernel(D)")
            return
        i, what = worst
        if what == "sigma(t) must be finite":
            what += ", but it is nan" if bool(torch.isnan(sig[i])) else ", but it overflows to inf"
        values = f"scale(t) = {float(s[i])!r}, sigma(t) = {float(sig[i])!r}"
        if what.startswith("sigma(t) must be strictly"):
            values += f", sigma({float(t[i - 1])!r}) = {float(sig[i - 1])!r}"
        try:
            desc = repr(self)
        except Exception:
            desc = name
        raise ValueError(f"{what}; {desc} fails at t = {float(t[i])!r}, the first bad time on a "
                         f"{SCHEDULE_CHECK_POINTS}-point grid of [t_min, t_max] = [{self.t_min!r}, {self.t_max!r}] "
                         f"({values})")

    # -- public schedule API ----------------------------------------------------------
    def _eval(self, fn, t, name="t") -> torch.Tensor:
        check_time_range(name, t, self.t_min, self.t_max)
        out = fn(_as_float64(t))
        if isinstance(t, torch.Tensor):
            return out.to(device=t.device, dtype=t.dtype if t.is_floating_point() else torch.float64)
        return out

    def scale(self, t) -> torch.Tensor:
        """``s(t)``: float or tensor in, tensor out (t's dtype, float64 for a Python float)."""
        return self._eval(self._scale, t)

    def sigma(self, t) -> torch.Tensor:
        """``sigma(t)``, the noise level of the kernel in the scaled-out frame ``x / s``."""
        return self._eval(self._sigma, t)

    def scale_derivative(self, t) -> torch.Tensor:
        """``ds/dt``."""
        return self._eval(self._scale_derivative, t)

    def sigma_derivative(self, t) -> torch.Tensor:
        """``dsigma/dt``."""
        return self._eval(self._sigma_derivative, t)

    @property
    def sigma_min(self) -> float:
        return float(self._sigma(_as_float64(self.t_min)))

    @property
    def sigma_max(self) -> float:
        return float(self._sigma(_as_float64(self.t_max)))

    def t_of_sigma(self, sigma) -> torch.Tensor:
        """Inverse of ``sigma(t)`` on ``[t_min, t_max]``."""
        check_time_range("sigma", sigma, self.sigma_min, self.sigma_max)
        sig = _as_float64(sigma).clamp(self.sigma_min, self.sigma_max)
        out = self._t_of_sigma(sig).clamp(self.t_min, self.t_max)
        if isinstance(sigma, torch.Tensor):
            return out.to(device=sigma.device, dtype=sigma.dtype if sigma.is_floating_point() else torch.float64)
        return out

    # -- kernel -----------------------------------------------------------------------
    def _schedule_like(self, t, x: torch.Tensor, name="t", batch_ndim: int = 1):
        """``s(t)`` and ``sigma(t)`` shaped ``(n, 1, ..., 1)`` (x.ndim dims) in x's dtype/device,
        for x of shape ``(n, *event_shape)`` and t a float, a 0-d tensor or a tensor ``(n,)``.

        With ``batch_ndim = k`` the first k dims of x are its batch shape (exact fields take any
        batch shape): t broadcasts to ``x.shape[:k]`` and the result has shape
        ``x.shape[:k] + (1,) * (x.ndim - k)``.
        """
        check_time_range(name, t, self.t_min, self.t_max)
        if isinstance(t, torch.Tensor) and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; put them on one device")
        batch = tuple(x.shape[:batch_ndim])
        t64 = _as_float64(t, device=x.device)
        view = batch + (1,) * (x.ndim - len(batch))
        try:
            torch.broadcast_to(t64, batch)
        except RuntimeError:
            per = f"(n,) = {batch}" if batch_ndim == 1 else f"broadcastable to the batch shape {batch}"
            raise ValueError(f"{name} must be a float, a 0-d tensor or a tensor of shape {per} (one time per "
                             f"sample; the batch is dim 0 of x), got shape {tuple(t64.shape)}") from None
        s = torch.broadcast_to(self._scale(t64).to(x.dtype), batch).reshape(view)
        sig = torch.broadcast_to(self._sigma(t64).to(x.dtype), batch).reshape(view)
        return s, sig

    def perturb(self, x0: torch.Tensor, t, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``x_t = s(t) (x0 + sigma(t) n)`` from the forward kernel.

        ``x0`` has shape ``(n, *event_shape)``; ``t`` is a float, a 0-d tensor or a tensor of
        shape ``(n,)`` (one time per sample). The Student-t kernel draws one scale variable per
        sample, shared across its event. Float16/bfloat16 are computed in float32 and cast back.
        """
        _check_batch("x0", x0)
        ct = compute_dtype(x0.dtype)
        x = x0.to(ct)
        s, sig = self._schedule_like(t, x)
        noise = self.kernel.sample(x.shape, generator=generator, dtype=ct, device=x.device)
        return (s * (x + sig * noise)).to(x0.dtype)

    def kernel_log_prob(self, x: torch.Tensor, y: torch.Tensor, t) -> torch.Tensor:
        """``log p_t(x | y)``, density of ``x_t`` given data ``y`` (includes the ``s^-N`` Jacobian).

        ``x`` has shape ``(n, *event_shape)``, ``y`` broadcasts to it; the density is over the
        whole event (N = its number of elements). Returns shape ``(n,)``.
        """
        _check_batch("x", x)
        if not isinstance(y, torch.Tensor):
            raise ValueError(f"y must be a tensor broadcastable to x's shape {tuple(x.shape)}, got {type(y).__name__}")
        check_same_device(x=x, y=y)
        try:
            ok = torch.broadcast_shapes(y.shape, x.shape) == x.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"y of shape {tuple(y.shape)} does not broadcast to x's shape {tuple(x.shape)} "
                             "(x is (n, *event_shape); y is the data point(s) it is compared with)")
        out_dtype = torch.promote_types(x.dtype, y.dtype)
        ct = compute_dtype(out_dtype)
        xc = x.to(ct)
        s, sig = self._schedule_like(t, xc)
        n, dim = x.shape[0], math.prod(x.shape[1:])
        dist_sq = ((xc / s - y.to(ct)) ** 2).reshape(n, dim).sum(1)
        s, sig = s.reshape(n), sig.reshape(n)
        return (self.kernel.log_prob_sq(dist_sq, sig, dim) - dim * torch.log(s)).to(out_dtype)

    @property
    def prior_std(self) -> float:
        """Scale of the prior: ``s(t_max) sigma(t_max)``."""
        t = _as_float64(self.t_max)
        return float(self._scale(t) * self._sigma(t))

    def prior_sample(self, n: int, shape, generator=None, dtype=None, device=None) -> torch.Tensor:
        """``n`` draws from the prior: the kernel at ``t_max`` centred on the origin,
        ``s(t_max) sigma(t_max) n``. (For VE/EDM this is N(0, sigma_max^2 I); for VP and sub-VP
        it is N(0, (1 - alpha^2) I) resp. N(0, (1 - alpha^2)^2 I), within 1e-4 of N(0, I);
        for PFGM++ the Beta-prime radius law at r_max.)

        ``shape`` is the event shape: an int (vectors of that dimension) or a tuple such as
        ``(3, 32, 32)``; the result has shape ``(n, *shape)``. Drawn and scaled in float64,
        then cast once to ``dtype`` (default: torch's default dtype), so a heavy-tailed draw
        is exactly the float64 one rounded (inf only where that does not fit the dtype).
        """
        n = check_int("n", n, 0)
        event = check_event_shape("shape", shape)
        dtype = check_float_dtype("dtype", dtype) or torch.get_default_dtype()
        device = check_device("device", device)
        noise = self.kernel.sample((n, *event), generator=generator, dtype=torch.float64, device=device)
        return (self.prior_std * noise).to(dtype)

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log density of the prior at ``x`` of shape ``(n, *event_shape)``, over the whole
        event; returns shape ``(n,)``."""
        _check_batch("x", x)
        ct = compute_dtype(x.dtype)
        n, dim = x.shape[0], math.prod(x.shape[1:])
        sig = torch.as_tensor(self.prior_std, dtype=ct, device=x.device)
        return self.kernel.log_prob_sq((x.to(ct).reshape(n, dim) ** 2).sum(1), sig, dim).to(x.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t_min={self.t_min!r}, t_max={self.t_max!r})"


def require_canonical(process, what: str) -> None:
    """Raise a clear error when ``process`` has no canonical (scale, sigma, kernel) form."""
    if not isinstance(process, Process):
        raise ValueError(
            f"{what} needs a canonical process x_t = s(t)(y + sigma(t) n) (VE, VP, SubVP, EDM, PFGMPP, "
            f"Poisson, Diffusion, LinearSDE); got {type(process).__name__}, which has no scale/sigma/kernel. "
            "Use a generic solver on fs.probability_flow(sde, score=...) instead."
        )


def callable_name(fn) -> str:
    """A short name for a user callable in a repr (its qualified name, else its repr)."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else repr(fn)



def _check_batch(name: str, x) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or not x.is_floating_point():
        got = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating tensor of shape (n, *event_shape), got {got}")




def _autograd_derivative(fn, t: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        tt = t.detach().clone().requires_grad_(True)
        out = fn(tt)
        if not out.requires_grad:  # a constant schedule
            return torch.zeros_like(t)
        (grad,) = torch.autograd.grad(out.sum(), tt, allow_unused=True)
    return torch.zeros_like(t) if grad is None else grad.detach()
