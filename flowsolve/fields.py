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

:func:`exact_field` gives closed-form fields for the toy laws of :mod:`flowsolve.toy`;
:meth:`Field.from_denoiser` and friends wrap a user's network or callable.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from scipy.optimize import brentq

from ._validation import check_dim
from .processes.base import Process, _as_float64
from .processes.kernels import StudentTKernel, log_gamma_density_norm
from .processes.sde import require_canonical
from .toy.distributions import Empirical, GaussianMixture

_LOG_2PI = math.log(2.0 * math.pi)


class Field:
    """Base class: subclasses implement ``_denoise(x, t, s, sigma)`` (x in process space,
    ``s`` and ``sigma`` shaped ``x.shape[:-1] + (1,)`` in x's dtype)."""

    dim: int | None = None

    def __init__(self, process: Process):
        require_canonical(process, "a field")
        self.process = process

    @property
    def is_poisson(self) -> bool:
        return isinstance(self.process.kernel, StudentTKernel)

    # -- plumbing ------------------------------------------------------------------------
    def _prep(self, x: torch.Tensor, t):
        if not isinstance(x, torch.Tensor) or x.ndim < 1 or not x.is_floating_point():
            raise ValueError("x must be a floating-point tensor of shape (..., N)")
        if self.dim is not None:
            check_dim("x", x, self.dim)
        return self.process._schedule_like(t, x)

    def _rates(self, x, t):
        """``s'/s`` and ``sigma'/sigma`` shaped like ``x.shape[:-1] + (1,)``."""
        t64 = torch.broadcast_to(_as_float64(t, device=x.device), x.shape[:-1])
        p = self.process
        a = p._scale_derivative(t64) / p._scale(t64)
        b = p._sigma_derivative(t64) / p._sigma(t64)
        return a.to(x.dtype).unsqueeze(-1), b.to(x.dtype).unsqueeze(-1)

    def _denoise(self, x, t, s, sigma) -> torch.Tensor:
        raise NotImplementedError

    # -- public quantities ---------------------------------------------------------------
    def denoiser(self, x: torch.Tensor, t) -> torch.Tensor:
        """``D(x; t) = E[y | x_t = x]``, in data space (shape of x)."""
        s, sig = self._prep(x, t)
        return self._denoise(x, t, s, sig)

    def eps(self, x: torch.Tensor, t) -> torch.Tensor:
        """Noise prediction ``(x/s - D)/sigma``."""
        s, sig = self._prep(x, t)
        return (x / s - self._denoise(x, t, s, sig)) / sig

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """``grad_x log p_t(x) = (s D - x)/(s^2 sigma^2)`` (Gaussian kernel only)."""
        if self.is_poisson:
            raise ValueError(
                "score is not a conversion of the denoiser under the PFGM++ kernel (the ODE drift is "
                "velocity/poisson_field); exact fields give the true gradient of log p_t, wrapped ones cannot")
        s, sig = self._prep(x, t)
        return (s * self._denoise(x, t, s, sig) - x) / (s * sig) ** 2

    def velocity(self, x: torch.Tensor, t) -> torch.Tensor:
        """Probability-flow ODE drift ``dx/dt = (s'/s) x + (sigma'/sigma)(x - s D)``."""
        s, sig = self._prep(x, t)
        a, b = self._rates(x, t)
        return a * x + b * (x - s * self._denoise(x, t, s, sig))

    def poisson_field(self, x: torch.Tensor, t) -> torch.Tensor:
        """PFGM++ normalised field ``E_x/E_r = (x/s - D)/r`` with ``r = sigma sqrt(D)`` (the
        drift of ``dx/dr``)."""
        if not self.is_poisson:
            raise ValueError("poisson_field needs a PFGM++/Poisson process (Student-t kernel); "
                             f"got {type(self.process).__name__}")
        s, sig = self._prep(x, t)
        r = sig * math.sqrt(self.process.kernel.D)
        return (x / s - self._denoise(x, t, s, sig)) / r

    # -- wrappers ------------------------------------------------------------------------
    @classmethod
    def from_denoiser(cls, process, fn: Callable) -> "Field":
        """Wrap ``fn(x, t) -> E[y | x_t = x]`` (data space)."""
        return WrappedField(process, fn, "denoiser")

    @classmethod
    def from_eps(cls, process, fn: Callable) -> "Field":
        """Wrap a noise prediction ``fn(x, t) -> (x/s - D)/sigma``."""
        return WrappedField(process, fn, "eps")

    @classmethod
    def from_score(cls, process, fn: Callable) -> "Field":
        """Wrap ``fn(x, t) -> grad_x log p_t(x)`` (Gaussian-kernel processes)."""
        return WrappedField(process, fn, "score")

    @classmethod
    def from_velocity(cls, process, fn: Callable) -> "Field":
        """Wrap the probability-flow ODE drift ``fn(x, t) -> dx/dt`` in the process's time."""
        return WrappedField(process, fn, "velocity")

    @classmethod
    def from_poisson_field(cls, process, fn: Callable) -> "Field":
        """Wrap a PFGM++ normalised field ``fn(x, t) -> E_x/E_r``."""
        return WrappedField(process, fn, "poisson_field")


class WrappedField(Field):
    """A user's callable ``fn(x, t)`` giving one quantity; the others follow exactly.

    ``fn`` receives ``x`` and ``t`` as a tensor of shape ``x.shape[:-1]`` in x's dtype. Asking
    for the quantity ``fn`` provides returns its output untouched.
    """

    KINDS = ("denoiser", "eps", "score", "velocity", "poisson_field")

    def __init__(self, process, fn: Callable, kind: str):
        super().__init__(process)
        if not callable(fn):
            raise ValueError(f"fn must be a callable fn(x, t), got {type(fn).__name__}")
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        if kind == "score" and self.is_poisson:
            raise ValueError("from_score needs a Gaussian-kernel process: under the PFGM++ kernel the score "
                             "does not determine the denoiser; wrap a denoiser or poisson_field instead")
        if kind == "poisson_field" and not self.is_poisson:
            raise ValueError("from_poisson_field needs a PFGM++/Poisson process")
        self.fn, self.kind = fn, kind

    def _call(self, x, t):
        tt = torch.broadcast_to(torch.as_tensor(t, dtype=x.dtype, device=x.device), x.shape[:-1])
        out = self.fn(x, tt)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the wrapped {self.kind} must return a tensor of x's shape {tuple(x.shape)}, got {got}")
        if out.device != x.device:
            raise ValueError(f"the wrapped {self.kind} returned a tensor on device {out.device}, but x is on {x.device}")
        return out

    def _denoise(self, x, t, s, sig):
        out = self._call(x, t)
        if self.kind == "denoiser":
            return out
        if self.kind == "eps":
            return x / s - sig * out
        if self.kind == "score":
            return (x + (s * sig) ** 2 * out) / s
        if self.kind == "poisson_field":
            return x / s - sig * math.sqrt(self.process.kernel.D) * out
        a, b = self._rates(x, t)  # velocity v = a x + b (x - s D)
        return (x - (out - a * x) / b) / s

    def _native(self, kind, x, t):
        if self.kind == kind:
            self._prep(x, t)
            return self._call(x, t)
        return None

    def denoiser(self, x, t):
        out = self._native("denoiser", x, t)
        return super().denoiser(x, t) if out is None else out

    def eps(self, x, t):
        out = self._native("eps", x, t)
        return super().eps(x, t) if out is None else out

    def score(self, x, t):
        out = self._native("score", x, t)
        return super().score(x, t) if out is None else out

    def velocity(self, x, t):
        out = self._native("velocity", x, t)
        return super().velocity(x, t) if out is None else out

    def poisson_field(self, x, t):
        out = self._native("poisson_field", x, t)
        return super().poisson_field(x, t) if out is None else out


class ExactField(Field):
    """Closed-form field of a toy law under a process: adds ``log_prob`` (the log density of
    the noised marginal ``p_t``) and, for PFGM++, the true ``score`` (the gradient of
    ``log p_t``, which is *not* the ODE drift there)."""

    def __init__(self, process, data):
        super().__init__(process)
        self.data = data
        self.dim = data.dim
        self._cache: dict = {}

    def _params(self, x):
        """Data parameters cast to x's dtype/device, cached per (dtype, device)."""
        key = (x.dtype, x.device)
        if key not in self._cache:
            self._cache[key] = self._cast(x.dtype, x.device)
        return self._cache[key]

    def _denoise(self, x, t, s, sig):
        return self._posterior(x / s, sig)[0]

    def log_prob(self, x: torch.Tensor, t) -> torch.Tensor:
        """``log p_t(x)``, the noised marginal at time t (includes the ``s^-N`` Jacobian)."""
        s, sig = self._prep(x, t)
        return self._posterior(x / s, sig)[2] - self.dim * torch.log(s.squeeze(-1))

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """``grad_x log p_t(x)``; for PFGM++ the true gradient of the noised log density."""
        s, sig = self._prep(x, t)
        return self._posterior(x / s, sig)[1] / s

    def _posterior(self, xhat, sig):
        """Return (denoiser, grad_xhat log p_sigma(xhat), log p_sigma(xhat))."""
        raise NotImplementedError


class EmpiricalField(ExactField):
    """Point data ``sum_i w_i delta(y_i)``: posterior weights ``w_i k_sigma(x̂ - y_i)`` under
    either kernel (PFGM++: ``w_i ∝ p(y_i)(||x - y_i||^2 + r^2)^(-(N+D)/2)``), normalised
    with log-sum-exp; distances are computed directly, not by the ``|x|^2 - 2xy + |y|^2``
    expansion, which loses all precision at sigma = 0.002 in float32."""

    def _cast(self, dtype, device):
        return (self.data.points.to(device, dtype), torch.log(self.data.weights).to(device, dtype))

    def _posterior(self, xhat, sig):
        pts, logw = self._params(xhat)
        batch = xhat.shape[:-1]
        flat = xhat.reshape(-1, self.dim)
        dist_sq = torch.cdist(flat, pts, compute_mode="donot_use_mm_for_euclid_dist").square()
        dist_sq = dist_sq.reshape(*batch, -1)
        kernel = self.process.kernel
        logits = logw + kernel.log_prob_sq(dist_sq, sig, self.dim)
        log_p = torch.logsumexp(logits, dim=-1)
        post = torch.softmax(logits, dim=-1)
        den = post @ pts
        c = post * kernel.grad_coef(dist_sq, sig, self.dim)
        grad = -(c.sum(-1, keepdim=True) * xhat - c @ pts)
        return den, grad, log_p


class MixtureField(ExactField):
    """Gaussian-mixture data (full covariances) under either kernel.

    Per component, in its eigenbasis ``Sigma_k = Q_k diag(lambda_k) Q_k^T`` with
    ``z = Q_k^T (x̂ - mu_k)``, a Gaussian kernel of variance ``v`` gives

        p(x̂ | k) = N(x̂; mu_k, Sigma_k + v I),   E[y | x̂, k] = mu_k + Q_k diag(lambda/(lambda+v)) z.

    Gaussian kernel: ``v = sigma^2``. PFGM++ kernel: the Student-t is a Gaussian scale
    mixture, ``v = sigma^2 / u`` with ``u ~ Gamma(D/2, rate D/2)``, and the integral over
    ``t = log u`` is done per (point, component) by the trapezoidal rule centred on the
    posterior mode of t (Newton) and scaled by its curvature (a Laplace-centred trapezoid).
    The integrand is analytic and decays at both ends, so the rule converges exponentially
    (Trefethen & Weideman 2014); the node span covers the prior's tails to ``exp(-32)`` and
    the step keeps the discretisation error below ``exp(-28)``. Target: 1e-6 relative
    (tested against a brute-force dense Simpson rule and Monte Carlo). Computed in float64, returned in
    x's dtype.
    """

    _NEWTON_STEPS = 40
    _TAIL_LOG = 32.0  # node span covers the log-gamma(D/2) prior to exp(-32) on each side
    _CHUNK = 2_000_000  # elements of a (batch, K, J, N) block

    def __init__(self, process, data):
        super().__init__(process, data)
        if self.is_poisson:
            self._offsets = self._trapezoid_offsets(0.5 * process.kernel.D)

    @classmethod
    def _trapezoid_offsets(cls, a: float) -> np.ndarray:
        """Node offsets in units of a window's std in t.

        Left (small u, large kernel variance): the heaviest tail the posterior can have is
        the prior's, ``exp(a t)`` with ``a = D/2``, so the span covers a log-gamma(a) to
        ``exp(-_TAIL_LOG)``; right: the tail is at least Gaussian, so ``sqrt(2 _TAIL_LOG)`` stds. Both
        get a 25 % margin.
        """
        target = cls._TAIL_LOG
        left = 1.25 * math.sqrt(a) * brentq(lambda z: a * (math.expm1(-z) + z) - target, 1e-12, 1e6)
        right = 1.25 * math.sqrt(2.0 * target)
        # Step: trapezoid error ~ exp(-pi^2 / h_t) for the log-gamma integrand (strip of
        # analyticity |Im t| < pi/2), and ~ exp(-2 pi^2 / h^2) in std units near the mode.
        h = min(0.7, 0.35 * math.sqrt(a))
        return h * np.arange(-math.ceil(left / h), math.ceil(right / h) + 1, dtype=np.float64)

    def _cast(self, dtype, device):
        d = self.data
        vecs = None if d.eigvecs is None else d.eigvecs.to(device, dtype)
        return d.means.to(device, dtype), d.eigvals.to(device, dtype), vecs, torch.log(d.weights).to(device, dtype)

    def _posterior(self, xhat, sig):
        if not self.is_poisson:
            return self._mixture_posterior(xhat, sig, self._params(xhat))
        x64, s64 = xhat.to(torch.float64), sig.to(torch.float64)
        batch = x64.shape[:-1]
        x64, s64 = x64.reshape(-1, self.dim), s64.reshape(-1, 1)
        per_row = max(1, self.data.n_components * 2 * len(self._offsets) * self.dim)
        rows = max(1, self._CHUNK // per_row)
        outs = [self._mixture_posterior(x64[i:i + rows], s64[i:i + rows], self._params(x64))
                for i in range(0, x64.shape[0], rows)] or [self._mixture_posterior(x64, s64, self._params(x64))]
        den, grad, logp = (torch.cat(parts, dim=0) for parts in zip(*outs))
        return (den.reshape(*batch, self.dim).to(xhat.dtype), grad.reshape(*batch, self.dim).to(xhat.dtype),
                logp.reshape(batch).to(xhat.dtype))

    def _mixture_posterior(self, xhat, sig, params):
        means, lam, vecs, logw = params
        diff = xhat.unsqueeze(-2) - means  # (..., K, N)
        z = diff if vecs is None else _rotate(diff, vecs)
        sig2 = (sig**2).unsqueeze(-1)  # (..., 1, 1)
        if self.is_poisson:
            v, log_node = self._scale_mixture_nodes(z, lam, sig2)  # (..., K, J)
        else:
            v, log_node = sig2, torch.zeros_like(sig2)  # one node, v = sigma^2
        lv = lam.unsqueeze(-2) + v.unsqueeze(-1)  # (..., K, J, N)
        zz = z.unsqueeze(-2)
        loglik = -0.5 * (torch.log(lv).sum(-1) + (zz**2 / lv).sum(-1) + self.dim * _LOG_2PI)
        logits = logw.unsqueeze(-1) + log_node + loglik  # (..., K, J)
        log_p = torch.logsumexp(logits.flatten(-2), dim=-1)
        rho = torch.exp(logits - log_p[..., None, None])
        shrink = (rho.unsqueeze(-1) * (lam.unsqueeze(-2) / lv)).sum(-2) * z  # (..., K, N)
        inv = (rho.unsqueeze(-1) / lv).sum(-2) * z
        if vecs is not None:
            shrink = _rotate(shrink, vecs.transpose(-1, -2))
            inv = _rotate(inv, vecs.transpose(-1, -2))
        den = (rho.sum(-1).unsqueeze(-1) * means).sum(-2) + shrink.sum(-2)
        return den, -inv.sum(-2), log_p

    def _scale_mixture_nodes(self, z, lam, sig2):
        """Nodes ``v_j = sigma^2 e^{-t_j}`` and log weights for the integral over ``t = log u``,
        per (point, component).

        The posterior of t can have two modes: one driven by the prior (u near 1) and, when
        x is far from the component relative to sigma, one driven by the likelihood (large
        kernel variance, the point-mass mode ``e^t = (D+N)/(D + |z|^2/sigma^2)``). Newton
        runs from both starts; each mode gets its own Laplace-centred trapezoid grid, and a
        smooth partition of unity ``w_i(t) ∝ exp(-(t - c_i)^2 / (2 s_i^2))`` splits the
        integrand between them, so the sum is exact whether the modes coincide or not.
        """
        half_D = 0.5 * self.process.kernel.D

        def derivs(t):
            v = sig2 * torch.exp(-t)  # (..., K, 1)
            lv = lam + v
            h = 1.0 / lv - z**2 / lv**2
            hp = -1.0 / lv**2 + 2.0 * z**2 / lv**3
            g1 = -half_D * torch.expm1(t) + 0.5 * (v * h).sum(-1, keepdim=True)
            g2 = -half_D * torch.exp(t) - 0.5 * (v * (h + v * hp)).sum(-1, keepdim=True)
            return g1, g2

        def newton(t):
            for _ in range(self._NEWTON_STEPS):
                g1, g2 = derivs(t)
                step = torch.where(g2 < 0, -g1 / g2, torch.sign(g1))
                t = t + step.clamp(-2.0, 2.0)
            # never wider than the prior (std 1/sqrt(D/2) in t): keeps the step within the
            # strip of analyticity and the span over the prior's tails
            curv = (-derivs(t)[1]).clamp_min(half_D)
            return t, torch.rsqrt(curv)

        with torch.no_grad():
            point_mass = torch.log((2 * half_D + self.dim) / (2 * half_D + (z**2).sum(-1, keepdim=True) / sig2))
            c1, s1 = newton(torch.zeros_like(point_mass))
            c2, s2 = newton(point_mass)
        offsets = torch.as_tensor(self._offsets, dtype=z.dtype, device=z.device)
        step = float(self._offsets[1] - self._offsets[0])
        # (a) one uniform grid of 2J nodes over the union of both spans: used when it is at
        # least as fine as each mode's own grid (always so when the modes coincide or overlap);
        lo = torch.minimum(c1 + s1 * offsets[0], c2 + s2 * offsets[0])
        hi = torch.maximum(c1 + s1 * offsets[-1], c2 + s2 * offsets[-1])
        n_nodes = 2 * len(self._offsets)
        frac = torch.linspace(0.0, 1.0, n_nodes, dtype=z.dtype, device=z.device)
        merged = lo + (hi - lo) * frac
        merged_step = (hi - lo) / (n_nodes - 1)
        log_merged = torch.log(merged_step).expand_as(merged)
        # (b) otherwise the modes are far apart relative to their widths: a grid per mode and a
        # smooth partition of unity w_i(t) ∝ exp(-(t - c_i)^2 / (2 s_i^2)) between them.
        split = torch.cat([c1 + s1 * offsets, c2 + s2 * offsets], dim=-1)
        second = torch.arange(n_nodes, device=z.device) >= len(self._offsets)
        q1 = -0.5 * ((split - c1) / s1) ** 2 - torch.log(s1)
        q2 = -0.5 * ((split - c2) / s2) ** 2 - torch.log(s2)
        log_split = (torch.log(torch.where(second, s2, s1) * step) + torch.where(second, q2, q1)
                     - torch.logaddexp(q1, q2))
        use_merged = merged_step <= step * torch.minimum(s1, s2)
        nodes = torch.where(use_merged, merged, split)
        log_quad = torch.where(use_merged, log_merged, log_split)
        log_prior = log_gamma_density_norm(half_D) + half_D * (nodes - torch.expm1(nodes))
        return sig2 * torch.exp(-nodes), log_prior + log_quad


def _rotate(v: torch.Tensor, vecs: torch.Tensor) -> torch.Tensor:
    """``out[..., k, m] = sum_n v[..., k, n] vecs[k, n, m]`` as a broadcast product and sum:
    unlike a batched matmul, its rounding does not depend on the batch size, so sample i's
    result is bit-identical whatever the batch it is in."""
    return (v.unsqueeze(-1) * vecs).sum(-2)


def exact_field(process, data) -> ExactField:
    """The exact field of toy ``data`` (:mod:`flowsolve.toy`) under ``process``.

    Closed forms for Gaussian / mixture / empirical data under the Gaussian kernel and for
    empirical data under the PFGM++ kernel; Gaussian and mixture data under PFGM++ by
    scale-mixture quadrature (see :class:`MixtureField`).
    """
    require_canonical(process, "exact_field")
    if isinstance(data, Empirical):
        return EmpiricalField(process, data)
    if isinstance(data, GaussianMixture):
        return MixtureField(process, data)
    raise ValueError(f"data must be a flowsolve.toy Gaussian, GaussianMixture or Empirical, got {type(data).__name__}")
