"""Gaussian-kernel processes (diffusions) and their forward SDEs.

For ``x_t = s(t) (y + sigma(t) n)``, ``n ~ N(0, I)``, the forward SDE
``dx = f(t) x dt + g(t) dW`` has (Karras et al. 2022, EDM, App. B.2)

    f(t) = s'(t) / s(t),        g(t) = s(t) sqrt(2 sigma(t) sigma'(t)),

equivalently ``s = exp(∫ f)`` and ``sigma^2 = ∫ g^2 / s^2``. The named processes below give
their schedules in closed form (Song et al. 2021, score SDE, eqs. 9, 11, 12 and App. B;
Karras et al. 2022, Table 1).

VE time offset: we follow the score-SDE code, where the kernel's std is
``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` itself, so ``sigma(0) = sigma_min > 0``.
The forward SDE started from clean data at t = 0 would give ``sigma(t)^2 - sigma_min^2``;
our kernel is that SDE started from ``y + sigma_min n`` at t = 0. (``LinearSDE`` with
``t0=0`` gives the offset version, if you want it.)
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .._validation import check_order, check_positive, check_real, check_same_device
from .base import Process, callable_name, generic_hook
from .kernels import GaussianKernel


class Diffusion(Process):
    """A Gaussian-kernel process from its schedules.

    ``Diffusion(scale=s, sigma=sigma, t_min=..., t_max=...)`` with callables mapping a
    float64 tensor of times to a float64 tensor; ``scale=None`` means ``s = 1``. Derivatives
    come from autograd unless ``scale_derivative`` / ``sigma_derivative`` are given.
    ``sigma`` must be strictly increasing and > 0 on ``[t_min, t_max]`` and ``scale``
    positive and finite: this is checked at construction, on a dense float64 grid of the span.
    Two ``Diffusion`` objects are equal when their span is equal and their callables are the
    same objects.

    Subclassing, instead of passing callables::

        class Cosine(fs.Diffusion):
            def __init__(self, s=0.008):
                self.s = s                      # parameters take part in == and hash
                super().__init__(t_min=1e-3, t_max=0.999)

            def _alpha(self, t):
                return torch.cos(0.5 * math.pi * (t + self.s) / (1 + self.s))

            def _scale(self, t):                # float64 tensor in, float64 tensor out
                return self._alpha(t)

            def _sigma(self, t):
                return torch.sqrt(1 - self._alpha(t) ** 2) / self._alpha(t)

    Optionally override ``_scale_derivative``, ``_sigma_derivative`` (default: autograd) and
    ``_t_of_sigma`` (default: bisection), and the forward-SDE coefficients ``_f`` and ``_g``
    (default ``f = s'/s``, ``g = s sqrt(2 sigma sigma')``). Subclasses of the named
    processes (VE, VP, SubVP, EDM) work the same way: their closed-form derivative, inverse
    and SDE hooks are replaced by these defaults when you override the schedule they were
    written for and not the hook.
    """

    kernel = GaussianKernel()

    def __init__(
        self,
        scale: Callable | None = None,
        sigma: Callable | None = None,
        t_min: float = 0.0,
        t_max: float = 1.0,
        scale_derivative: Callable | None = None,
        sigma_derivative: Callable | None = None,
    ):
        super().__init__(t_min, t_max)
        name = type(self).__name__
        own_sigma = type(self)._sigma is not Diffusion._sigma
        own_scale = type(self)._scale is not Diffusion._scale
        if sigma is None and not own_sigma:
            raise ValueError(f"{name} needs a noise schedule: pass sigma= (a callable sigma(t), float64 tensor in, "
                             "tensor out) or subclass it and override _sigma(t)")
        if sigma is not None and own_sigma:
            raise ValueError(f"{name} overrides _sigma(t): do not also pass sigma=")
        if scale is not None and own_scale:
            raise ValueError(f"{name} overrides _scale(t): do not also pass scale=")
        if sigma is not None and not callable(sigma):
            raise ValueError(f"sigma must be a callable sigma(t) (float64 tensor in, tensor out), got {sigma!r}")
        if scale is not None and not callable(scale):
            raise ValueError(f"scale must be a callable s(t) or None (meaning s = 1), got {scale!r}")
        for label, fn in (("scale_derivative", scale_derivative), ("sigma_derivative", sigma_derivative)):
            if fn is not None and not callable(fn):
                raise ValueError(f"{label} must be a callable of t or None (autograd), got {fn!r}")
        self._user = dict(scale=scale, sigma=sigma, scale_derivative=scale_derivative,
                          sigma_derivative=sigma_derivative)

    # Composed schedules ------------------------------------------------------------------
    def _scale(self, t):
        fn = self._user["scale"]
        return torch.ones_like(t) if fn is None else torch.as_tensor(fn(t), dtype=torch.float64) * torch.ones_like(t)

    def _sigma(self, t):
        return torch.as_tensor(self._user["sigma"](t), dtype=torch.float64) * torch.ones_like(t)

    @generic_hook
    def _scale_derivative(self, t):
        fn = self._user["scale_derivative"]
        return super()._scale_derivative(t) if fn is None else fn(t) * torch.ones_like(t)

    @generic_hook
    def _sigma_derivative(self, t):
        fn = self._user["sigma_derivative"]
        return super()._sigma_derivative(t) if fn is None else fn(t) * torch.ones_like(t)

    def __repr__(self):
        user = self._user
        if user["sigma"] is None:  # a subclass with its own schedules
            return super().__repr__()
        parts = [f"{k}={callable_name(v)}" for k, v in user.items() if v is not None]
        return f"{type(self).__name__}({', '.join(parts)}, t_min={self.t_min!r}, t_max={self.t_max!r})"

    # Forward SDE -------------------------------------------------------------------------
    @generic_hook
    def _f(self, t):
        return self._scale_derivative(t) / self._scale(t)

    @generic_hook
    def _g(self, t):
        s, sig = self._scale(t), self._sigma(t)
        return s * torch.sqrt(2.0 * sig * self._sigma_derivative(t))

    def drift_coefficient(self, t) -> torch.Tensor:
        """``f(t) = s'(t)/s(t)``, so that the forward drift is ``f(t) x``."""
        return self._eval(self._f, t)

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        """Forward SDE drift ``f(t) x``; x of shape ``(n, *event_shape)``, ``t`` a float, a
        0-d tensor or a tensor of shape ``(n,)``."""
        check_same_device(x=x, t=t)
        f = self._eval(self._f, t).to(dtype=x.dtype, device=x.device)
        if f.ndim > 1 or (f.ndim == 1 and x.ndim and f.shape[0] not in (1, x.shape[0])):
            raise ValueError(f"t must be a float, a 0-d tensor or a tensor of shape (n,) = ({x.shape[0]},) (one time per "
                             f"sample), got shape {tuple(f.shape)}")
        if f.ndim:
            f = f.reshape(f.shape + (1,) * (x.ndim - f.ndim))
        return f * x

    def diffusion(self, t) -> torch.Tensor:
        """Forward SDE diffusion ``g(t) = s(t) sqrt(2 sigma(t) sigma'(t))``."""
        return self._eval(self._g, t)


class VE(Diffusion):
    """Variance exploding (SMLD/NCSN; Song et al. 2021, eq. 9, App. B): ``s = 1``,
    ``sigma(t) = sigma_min (sigma_max/sigma_min)^t`` on t in [0, 1],
    ``g(t) = sigma(t) sqrt(2 ln(sigma_max/sigma_min))``. Subclassable as :class:`Diffusion` is."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        sigma_min = check_positive("sigma_min", sigma_min)
        sigma_max = check_positive("sigma_max", sigma_max)
        check_order("sigma_min", sigma_min, "sigma_max", sigma_max)
        super().__init__(t_min=0.0, t_max=1.0)
        self._smin, self._smax = sigma_min, sigma_max
        self._log_ratio = math.log(sigma_max / sigma_min)

    def _scale(self, t):
        return torch.ones_like(t)

    def _scale_derivative(self, t):
        return torch.zeros_like(t)

    def _sigma(self, t):
        return self._smin * torch.exp(t * self._log_ratio)

    def _sigma_derivative(self, t):
        return self._sigma(t) * self._log_ratio

    def _t_of_sigma(self, sigma):
        return torch.log(sigma / self._smin) / self._log_ratio

    def _g(self, t):
        return self._sigma(t) * math.sqrt(2.0 * self._log_ratio)

    def __repr__(self):
        return f"{type(self).__name__}(sigma_min={self._smin!r}, sigma_max={self._smax!r})"


class _BetaLinear(Diffusion):
    """Shared by VP and sub-VP: linear ``beta(t) = beta_min + t (beta_max - beta_min)``,
    ``alpha(t) = exp(-L(t))`` with ``L(t) = ∫_0^t beta / 2 = a t^2 + b t``."""

    def __init__(self, beta_min: float, beta_max: float, t_min: float, t_max: float):
        beta_min = check_positive("beta_min", beta_min)
        beta_max = check_positive("beta_max", beta_max)
        if beta_max < beta_min:
            raise ValueError(f"beta_min must be <= beta_max, got beta_min={beta_min!r}, beta_max={beta_max!r}")
        t_min = check_real("t_min", t_min)
        if not t_min > 0:
            raise ValueError(f"t_min must be > 0 (sigma(0) = 0 is the data itself), got {t_min!r}")
        super().__init__(t_min=t_min, t_max=t_max)
        self.beta_min, self.beta_max = beta_min, beta_max
        self._a, self._b = 0.25 * (beta_max - beta_min), 0.5 * beta_min

    def _L(self, t):
        return (self._a * t + self._b) * t

    def _dL(self, t):  # = beta(t) / 2
        return 2.0 * self._a * t + self._b

    def beta(self, t) -> torch.Tensor:
        """``beta(t) = beta_min + t (beta_max - beta_min)``."""
        return self._eval(lambda u: 2.0 * self._dL(u), t)

    def _scale(self, t):
        return torch.exp(-self._L(t))

    def _scale_derivative(self, t):
        return -self._dL(t) * self._scale(t)

    def _f(self, t):
        return -self._dL(t)

    def _t_of_L(self, L):
        # positive root of a t^2 + b t - L = 0, in the form that is stable for a -> 0
        return 2.0 * L / (self._b + torch.sqrt(self._b**2 + 4.0 * self._a * L))

    def __repr__(self):
        return (f"{type(self).__name__}(beta_min={self.beta_min!r}, beta_max={self.beta_max!r}, "
                f"t_min={self.t_min!r}, t_max={self.t_max!r})")


class VP(_BetaLinear):
    """Variance preserving (DDPM; Song et al. 2021, eq. 11): ``s = alpha(t)``,
    ``sigma = sqrt(1 - alpha^2)/alpha``, ``f = -beta/2``, ``g = sqrt(beta)``. Subclassable as
    :class:`Diffusion` is (``self._L(t)``, ``self._dL(t)`` give ``L`` and ``beta/2``)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0):
        super().__init__(beta_min, beta_max, t_min, t_max)

    def _sigma(self, t):
        return torch.sqrt(torch.expm1(2.0 * self._L(t)))

    def _sigma_derivative(self, t):
        # sigma^2 = expm1(2L)  =>  sigma' = L' e^{2L} / sigma
        L = self._L(t)
        return self._dL(t) * torch.exp(2.0 * L) / torch.sqrt(torch.expm1(2.0 * L))

    def _t_of_sigma(self, sigma):
        return self._t_of_L(0.5 * torch.log1p(sigma**2))

    def _g(self, t):
        return torch.sqrt(2.0 * self._dL(t))


class SubVP(_BetaLinear):
    """sub-VP (Song et al. 2021, eq. 12): ``s = alpha(t)``, ``sigma = (1 - alpha^2)/alpha
    = 2 sinh(L)``, ``f = -beta/2``, ``g = sqrt(beta (1 - alpha^4))``. Subclassable as :class:`Diffusion` is."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0):
        super().__init__(beta_min, beta_max, t_min, t_max)

    def _sigma(self, t):
        return 2.0 * torch.sinh(self._L(t))

    def _sigma_derivative(self, t):
        return 2.0 * torch.cosh(self._L(t)) * self._dL(t)

    def _t_of_sigma(self, sigma):
        return self._t_of_L(torch.asinh(0.5 * sigma))

    def _g(self, t):
        return torch.sqrt(-2.0 * self._dL(t) * torch.expm1(-4.0 * self._L(t)))


class EDM(Diffusion):
    """EDM (Karras et al. 2022, Table 1): ``s = 1``, ``sigma(t) = t`` on
    ``[sigma_min, sigma_max]``, ``g = sqrt(2 t)``. Subclassable as :class:`Diffusion` is."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        sigma_min = check_positive("sigma_min", sigma_min)
        sigma_max = check_positive("sigma_max", sigma_max)
        check_order("sigma_min", sigma_min, "sigma_max", sigma_max)
        super().__init__(t_min=sigma_min, t_max=sigma_max)

    def _scale(self, t):
        return torch.ones_like(t)

    def _scale_derivative(self, t):
        return torch.zeros_like(t)

    def _sigma(self, t):
        return t.clone()

    def _sigma_derivative(self, t):
        return torch.ones_like(t)

    def _t_of_sigma(self, sigma):
        return sigma.clone()

    def __repr__(self):
        return f"{type(self).__name__}(sigma_min={self.t_min!r}, sigma_max={self.t_max!r})"


class LinearSDE(Diffusion):
    """A process from its linear forward SDE ``dx = f(t) x dt + g(t) dW``.

    ``s(t) = exp(∫_{t0}^t f)`` and ``sigma(t)^2 = ∫_{t0}^t g(u)^2 / s(u)^2 du``, where ``t0``
    (default 0, and it must be < ``t_min``) is the time at which x is the clean data, so that
    ``sigma(t_min) > 0``. Both integrals are solved
    together once, at construction, by SciPy's DOP853 with dense output (rtol 1e-12), so
    later evaluations are interpolations accurate to ~1e-10. Derivatives are exact:
    ``s' = f s`` and ``sigma' = g^2 / (2 s^2 sigma)``.

    ``f`` and ``g`` map a float64 tensor of times to a tensor. Two ``LinearSDE`` objects are
    equal when ``f`` and ``g`` are the same objects and the times are equal (the SciPy
    solution is derived state and takes no part).
    """

    _derived_attributes = frozenset({"_dense"})

    def __init__(self, f: Callable, g: Callable, t_min: float, t_max: float, t0: float = 0.0):
        from scipy.integrate import solve_ivp

        if not callable(f) or not callable(g):
            raise ValueError("f and g must be callables of t (float64 tensor in, tensor out)")
        super().__init__(t_min=t_min, t_max=t_max)
        t0 = check_real("t0", t0)
        if not t0 < self.t_min:
            raise ValueError(f"t0 must be < t_min={self.t_min!r} (sigma(t_min) must be > 0), got t0={t0!r}")
        self._fn_f, self._fn_g, self.t0 = f, g, t0

        def rhs(t, y):
            tt = torch.tensor(t, dtype=torch.float64)
            ft = float(torch.as_tensor(f(tt), dtype=torch.float64))
            gt = float(torch.as_tensor(g(tt), dtype=torch.float64))
            return [ft, gt * gt * math.exp(-2.0 * y[0])]

        with np.errstate(over="ignore", invalid="ignore"):  # a failed integration is reported below
            sol = solve_ivp(rhs, (t0, self.t_max), [0.0, 0.0], method="DOP853", dense_output=True,
                            rtol=1e-12, atol=1e-14)
        if not sol.success:
            raise ValueError(f"could not integrate f and g on [{t0}, {self.t_max}]: {sol.message}")
        self._dense = sol.sol
        var = self._dense(np.linspace(self.t_min, self.t_max, 257))[1]
        # the construction check names sigma(t); say here which input is at fault
        if np.isfinite(var).all() and (not (np.diff(var) > 0).all() or var[0] <= 0):
            raise ValueError("g(t) must be > 0 on [t0, t_max] so that sigma(t) increases from sigma(t_min) > 0")

    def _interp(self, t: torch.Tensor):
        logs, var = self._dense(t.detach().cpu().numpy().ravel())
        to = lambda a: torch.as_tensor(a, dtype=torch.float64, device=t.device).reshape(t.shape)
        return to(logs), to(np.maximum(var, 0.0))

    def _scale(self, t):
        return torch.exp(self._interp(t)[0])

    def _sigma(self, t):
        return torch.sqrt(self._interp(t)[1])

    def _fg(self, t):
        f = torch.as_tensor(self._fn_f(t), dtype=torch.float64, device=t.device) * torch.ones_like(t)
        g = torch.as_tensor(self._fn_g(t), dtype=torch.float64, device=t.device) * torch.ones_like(t)
        return f, g

    def _scale_derivative(self, t):
        return self._fg(t)[0] * self._scale(t)

    def _sigma_derivative(self, t):
        logs, var = self._interp(t)
        g = self._fg(t)[1]
        return g**2 * torch.exp(-2.0 * logs) / (2.0 * torch.sqrt(var))

    def _f(self, t):
        return self._fg(t)[0]

    def _g(self, t):
        return self._fg(t)[1].abs()

    def __repr__(self):
        return (f"{type(self).__name__}(f={callable_name(self._fn_f)}, g={callable_name(self._fn_g)}, "
                f"t_min={self.t_min!r}, t_max={self.t_max!r}, t0={self.t0!r})")
