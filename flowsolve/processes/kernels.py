"""Perturbation kernels: the law of the unit noise ``n`` in ``x_t = s(t) (y + sigma(t) n)``.

* :class:`GaussianKernel` -- ``n ~ N(0, I)`` (every diffusion).
* :class:`StudentTKernel` -- the PFGM++ kernel with augmentation dimension ``D``:
  ``p(n) ∝ (||n||^2 + D)^(-(N+D)/2)`` in N dimensions, a multivariate Student-t with D
  degrees of freedom and unit scale. With ``r = sigma sqrt(D)`` the perturbation kernel is
  ``p_r(x | y) ∝ (||x - y||^2 + r^2)^(-(N+D)/2)`` (Xu et al. 2023, PFGM++, Sec. 3).
  D = 1 is PFGM's multivariate Cauchy kernel; D -> inf recovers the Gaussian.

Both kernels are written as functions of the squared distance so that fields can use one
code path for point data, and the Student-t is also a Gaussian scale mixture,
``n = g / sqrt(u)`` with ``g ~ N(0, I)`` and ``u ~ Gamma(D/2, rate=D/2)`` (= chi2_D / D),
which is how it is sampled here and how fields integrate it against Gaussian data.
"""

from __future__ import annotations

import math

import torch

from .._validation import check_real
from .base import ValueObject

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

#: Largest augmentation dimension accepted. The Student-t kernel differs from the Gaussian by
#: O(1/D) (in log density, for O(1) distances); at D = 1e15 that is ~1e-15, float64's resolution,
#: so a larger D is EDM in float64. Everything here is checked up to it: Stirling's series
#: (``log_gamma_ratio`` against mpmath at D/2 = 1e15), sampling, and the exact fields. Far
#: beyond it the series overflows (x**9 at D ~ 4e34) and Gauss quadrature of the mixing
#: variable loses its root bracket (D ~ 1e30).
D_MAX = 1e15


def check_D(D) -> float:
    """The PFGM++ augmentation dimension: a real number in (0, D_MAX]."""
    value = check_real("D", D, minimum=0.0, strict_min=True, allow_inf=True)
    if value > D_MAX:
        raise ValueError(
            f"D must be a real number in (0, 1e15], got {D!r}: beyond D = 1e15 the PFGM++ kernel equals "
            "the Gaussian (EDM) kernel to float64 precision (they differ by ~1/D); use fs.EDM(sigma_min, sigma_max)"
        )
    return value


def _stirling_tail(x: float) -> float:
    """``lgamma(x) - [(x - 1/2) log x - x + log(2 pi)/2]``; the omitted term is < 2e-14 for x >= 10."""
    return 1.0 / (12.0 * x) - 1.0 / (360.0 * x**3) + 1.0 / (1260.0 * x**5) - 1.0 / (1680.0 * x**7) + 1.0 / (1188.0 * x**9)


def log_gamma_ratio(a: float, h: float) -> float:
    """``lgamma(a + h) - lgamma(a)`` without the cancellation of two huge lgammas.

    For ``a >= 10`` it uses Stirling's series (see ``_stirling_tail``) rearranged as ``(a - 1/2) log1p(h/a) + h log(a + h) - h + ...``, which stays
    exact to ~1e-12 for ``a`` up to 1e300 (D up to 1e9 and beyond needs this).
    """
    if a < 10.0:
        return math.lgamma(a + h) - math.lgamma(a)
    b = a + h
    return (a - 0.5) * math.log1p(h / a) + h * math.log(b) - h + _stirling_tail(b) - _stirling_tail(a)


def log_gamma_density_norm(a: float) -> float:
    """``a log a - lgamma(a) - a``: log normaliser of ``Gamma(a, rate=a)`` written in
    ``exp(a (log u - u + 1))`` form. Stable for huge ``a`` (Stirling: ``½ log(a / 2π) - ...``)."""
    if a < 10.0:
        return a * math.log(a) - math.lgamma(a) - a
    return 0.5 * math.log(a) - _HALF_LOG_2PI - _stirling_tail(a)


def _row_view(n: int, ndim: int) -> tuple:
    """Shape ``(n, 1, ..., 1)`` with ``ndim`` dims: one value per sample (dim 0), broadcast over the event."""
    return (n,) + (1,) * (ndim - 1)


class GaussianKernel(ValueObject):
    """``n ~ N(0, I)``. Kernels compare and hash by value (``GaussianKernel() == GaussianKernel()``)."""

    name = "gaussian"
    D = math.inf

    def sample(self, shape, generator=None, dtype=None, device=None) -> torch.Tensor:
        """Unit noise of shape ``(n, *event_shape)``, drawn in ``dtype`` (default: torch's)."""
        return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)

    def log_prob_sq(self, dist_sq: torch.Tensor, sigma: torch.Tensor, dim: int) -> torch.Tensor:
        """log density of ``sigma * n`` at a point of squared norm ``dist_sq`` (dimension ``dim``)."""
        return -dim * (_HALF_LOG_2PI + torch.log(sigma)) - 0.5 * dist_sq / sigma**2

    def grad_coef(self, dist_sq: torch.Tensor, sigma: torch.Tensor, dim: int) -> torch.Tensor:
        """``c`` in ``grad_d log k(d) = -c d``."""
        return 1.0 / sigma**2 + 0.0 * dist_sq

    def mean_sq_norm(self, dim: int) -> float:
        """``E||n||^2``."""
        return float(dim)

    def __repr__(self) -> str:
        return "GaussianKernel()"


class StudentTKernel(ValueObject):
    """PFGM++ kernel: multivariate Student-t with ``D`` degrees of freedom, unit scale, over a
    sample's whole event (all non-batch dims: N = their product). ``0 < D <= D_MAX``.
    Compares and hashes by ``D``."""

    name = "student_t"

    def __init__(self, D: float):
        self.D = check_D(D)

    def sample(self, shape, generator=None, dtype=None, device=None) -> torch.Tensor:
        """Unit noise of shape ``(n, *event_shape)``: one scale variable ``u`` per sample
        (row), shared across its event; computed in float64 and cast once to ``dtype``."""
        # n = g / sqrt(u), u = chi2_D / D = Gamma(D/2, rate D/2): equivalently ||n|| = r/sigma *
        # sqrt(B/(1-B)) with B ~ Beta(N/2, D/2) (the Beta-prime radius law of PFGM++).
        shape = tuple(shape)
        if not shape:
            raise ValueError("shape must be (n, *event_shape), with the batch size n first; got ()")
        g = torch.randn(shape, generator=generator, dtype=torch.float64, device=device)
        alpha = torch.full(shape[:1], 0.5 * self.D, dtype=torch.float64, device=device)
        u = torch._standard_gamma(alpha, generator=generator) / (0.5 * self.D)
        n = g / torch.sqrt(u).reshape(_row_view(shape[0], len(shape)))
        return n.to(dtype if dtype is not None else torch.get_default_dtype())

    def log_prob_sq(self, dist_sq: torch.Tensor, sigma: torch.Tensor, dim: int) -> torch.Tensor:
        D = self.D
        # log Γ((N+D)/2) - log Γ(D/2) - (N/2) log(π D σ²) - ((N+D)/2) log1p(d² / (D σ²))
        log_norm = log_gamma_ratio(0.5 * D, 0.5 * dim) - 0.5 * dim * math.log(math.pi * D)
        return log_norm - dim * torch.log(sigma) - 0.5 * (dim + D) * torch.log1p(dist_sq / (D * sigma**2))

    def grad_coef(self, dist_sq: torch.Tensor, sigma: torch.Tensor, dim: int) -> torch.Tensor:
        # grad_d log k = -(N+D) d / (||d||^2 + r^2); divided through by D to stay finite at D = 1e9.
        D = self.D
        return (dim / D + 1.0) / (dist_sq / D + sigma**2)

    def mean_sq_norm(self, dim: int) -> float:
        if self.D <= 2:
            return math.inf
        return dim * self.D / (self.D - 2.0)

    def __repr__(self) -> str:
        return f"StudentTKernel(D={self.D!r})"
