"""The canonical process ``x_t = s(t) (y + sigma(t) n)`` (Karras et al. 2022, EDM, Sec. 2 and App. B.2).

A :class:`Process` knows its schedules ``s(t)`` (``scale``) and ``sigma(t)``, their time
derivatives, its kernel (the law of ``n``) and its time span; it knows nothing of data,
fields or solvers. Schedules are evaluated in float64 and cast to the caller's dtype.
"""

from __future__ import annotations

import math

import torch

from .._validation import check_dim, check_int, check_order, check_same_device, check_time_range

_BISECTION_STEPS = 200


def _as_float64(t, device=None) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t.detach().to(torch.float64) if device is None else t.detach().to(device, torch.float64)
    return torch.as_tensor(t, dtype=torch.float64, device=device)


class Process:
    """Base class of canonical processes.

    Subclasses implement ``_scale``, ``_sigma`` (float64 tensor in, float64 tensor out) and
    may override ``_scale_derivative``, ``_sigma_derivative`` (default: autograd) and
    ``_t_of_sigma`` (default: bisection, for any increasing sigma).

    Attributes
    ----------
    kernel : GaussianKernel or StudentTKernel
    t_min, t_max : floats, the data end and the prior end of the time span.
    """

    kernel = None
    t_min: float
    t_max: float

    def __init__(self, t_min: float, t_max: float):
        t_min, t_max = float(t_min), float(t_max)
        if not (math.isfinite(t_min) and math.isfinite(t_max)):
            raise ValueError(f"t_min and t_max must be finite, got t_min={t_min!r}, t_max={t_max!r}")
        check_order("t_min", t_min, "t_max", t_max)
        self.t_min, self.t_max = t_min, t_max

    # -- schedules, float64 internals -------------------------------------------------
    def _scale(self, t: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(t)

    def _sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _scale_derivative(self, t: torch.Tensor) -> torch.Tensor:
        return _autograd_derivative(self._scale, t)

    def _sigma_derivative(self, t: torch.Tensor) -> torch.Tensor:
        return _autograd_derivative(self._sigma, t)

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
    def _schedule_like(self, t, x: torch.Tensor, name="t"):
        """``s(t)`` and ``sigma(t)`` shaped ``x.shape[:-1] + (1,)`` in x's dtype/device."""
        check_time_range(name, t, self.t_min, self.t_max)
        if isinstance(t, torch.Tensor) and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; put them on one device")
        t64 = _as_float64(t, device=x.device)
        try:
            t64 = torch.broadcast_to(t64, x.shape[:-1])
        except RuntimeError:
            raise ValueError(
                f"{name} of shape {tuple(t64.shape)} does not broadcast to the batch shape {tuple(x.shape[:-1])}"
            ) from None
        s = self._scale(t64).to(x.dtype).unsqueeze(-1)
        sig = self._sigma(t64).to(x.dtype).unsqueeze(-1)
        return s, sig

    def perturb(self, x0: torch.Tensor, t, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``x_t = s(t) (x0 + sigma(t) n)`` from the forward kernel.

        ``x0`` has shape ``(..., N)``; ``t`` is a float or a tensor broadcastable to
        ``x0.shape[:-1]`` (one time per sample).
        """
        if not isinstance(x0, torch.Tensor) or x0.ndim < 1:
            raise ValueError("x0 must be a tensor of shape (..., N)")
        s, sig = self._schedule_like(t, x0)
        n = self.kernel.sample(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        return s * (x0 + sig * n)

    def kernel_log_prob(self, x: torch.Tensor, y: torch.Tensor, t) -> torch.Tensor:
        """``log p_t(x | y)``, density of ``x_t`` given data ``y`` (includes the ``s^-N`` Jacobian)."""
        check_dim("x", x, y.shape[-1])
        check_same_device(x=x, y=y)
        s, sig = self._schedule_like(t, x)
        dim = x.shape[-1]
        dist_sq = ((x / s - y) ** 2).sum(-1)
        return self.kernel.log_prob_sq(dist_sq, sig.squeeze(-1), dim) - dim * torch.log(s.squeeze(-1))

    @property
    def prior_std(self) -> float:
        """Scale of the prior: ``s(t_max) sigma(t_max)``."""
        t = _as_float64(self.t_max)
        return float(self._scale(t) * self._sigma(t))

    def prior_sample(self, n: int, dim: int, generator=None, dtype=None, device=None) -> torch.Tensor:
        """``n`` draws from the prior: the kernel at ``t_max`` centred on the origin,
        ``s(t_max) sigma(t_max) n``. (For VE/EDM this is N(0, sigma_max^2 I); for VP and sub-VP
        it is N(0, (1 - alpha^2) I) resp. N(0, (1 - alpha^2)^2 I), within 1e-4 of N(0, I);
        for PFGM++ the Beta-prime radius law at r_max.)"""
        n, dim = check_int("n", n, 0), check_int("dim", dim, 1)
        noise = self.kernel.sample((int(n), int(dim)), generator=generator, dtype=dtype, device=device)
        return self.prior_std * noise

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log density of the prior at ``x`` (shape ``(..., N)``), summed over the last dim."""
        dim = x.shape[-1]
        sig = torch.as_tensor(self.prior_std, dtype=x.dtype, device=x.device)
        return self.kernel.log_prob_sq((x**2).sum(-1), sig, dim)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t_min={self.t_min!r}, t_max={self.t_max!r})"


def _autograd_derivative(fn, t: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        tt = t.detach().clone().requires_grad_(True)
        out = fn(tt)
        if not out.requires_grad:  # a constant schedule
            return torch.zeros_like(t)
        (grad,) = torch.autograd.grad(out.sum(), tt, allow_unused=True)
    return torch.zeros_like(t) if grad is None else grad.detach()
