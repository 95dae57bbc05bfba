"""Analytic toy data laws: Gaussian, Gaussian mixture (full covariances), empirical points.

Parameters are stored in float64 on the CPU, flattened: ``N`` is the number of elements of
one event. ``event_shape`` (default ``(N,)``) is the shape of one draw: ``sample`` returns
``(n, *event_shape)``, ``log_prob`` takes ``(*batch, *event_shape)``, ``mean()`` has the event
shape and ``covariance()`` is ``(N, N)`` over the flattened event. ``sample`` and ``log_prob``
return the caller's dtype/device. Exact fields of these laws live in :mod:`flowsolve.toy.exact`.
"""

from __future__ import annotations

import math

import torch

from .._validation import check_int
from .._validation import compute_dtype
from ..fields import batch_shape, check_event_shape

_WEIGHT_TOL = 1e-6
#: Laws with at most this many numbers in their parameters have an exact, pasteable repr.
REPR_MAX_NUMBERS = 64


def _as64(name, value) -> torch.Tensor:
    try:
        out = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a number array, got {type(value).__name__}: {err}") from None
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name} must be finite")
    return out


def _check_weights(weights, k: int) -> torch.Tensor:
    if weights is None:
        return torch.full((k,), 1.0 / k, dtype=torch.float64)
    w = _as64("weights", weights).reshape(-1)
    if w.numel() != k:
        raise ValueError(f"weights must have {k} entries (one per component/point), got {w.numel()}")
    if bool((w < 0).any()):
        raise ValueError(f"weights must be >= 0, got min {float(w.min())!r}")
    if abs(float(w.sum()) - 1.0) > _WEIGHT_TOL:
        raise ValueError(f"weights must sum to 1 (within {_WEIGHT_TOL}), got sum {float(w.sum())!r}")
    # Renormalise only weights that need it, so that printed weights rebuild the same law exactly.
    return w if abs(float(w.sum()) - 1.0) <= 1e-12 else w / w.sum()


def _categorical(weights: torch.Tensor, n: int, generator) -> torch.Tensor:
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def _check_n(n) -> int:
    return check_int("n", n, 0)


class _Law:
    """Shape plumbing shared by the toy laws (``event_shape`` over a flat dimension ``dim``)."""

    event_shape: tuple[int, ...]

    def _set_event_shape(self, event_shape, dim: int) -> None:
        self.event_shape = (dim,) if event_shape is None else check_event_shape("event_shape", event_shape, dim)

    def _shaped(self, flat: torch.Tensor, dtype, device) -> torch.Tensor:
        return flat.reshape(flat.shape[0], *self.event_shape).to(dtype=dtype or torch.get_default_dtype(),
                                                                 device=device)

    def _shape_repr(self) -> str:
        return "" if self.event_shape == (self.dim,) else f", event_shape={self.event_shape}"


class GaussianMixture(_Law):
    """``sum_k w_k N(mean_k, cov_k)``.

    ``covs_or_stds`` may be: a ``(K, N, N)`` stack of covariances (symmetric positive
    definite); a ``(K, N)`` array of per-coordinate standard deviations (diagonal); a ``(K,)``
    array or a scalar of isotropic standard deviations. ``event_shape`` (default ``(N,)``, any
    shape of ``N`` elements) is the shape of one draw; parameters index the flattened event.
    """

    def __init__(self, means, covs_or_stds, weights=None, event_shape=None):
        means = _as64("means", means)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, N), got {tuple(means.shape)}")
        k, n = means.shape
        if k < 1 or n < 1:
            raise ValueError(f"means must have at least one component and one dimension, got shape {(k, n)}")
        cov = _as64("covs_or_stds", covs_or_stds)
        if cov.ndim == 3:
            if cov.shape != (k, n, n):
                raise ValueError(f"covariances must have shape ({k}, {n}, {n}), got {tuple(cov.shape)}")
            if not torch.allclose(cov, cov.transpose(-1, -2), rtol=1e-10, atol=1e-12):
                raise ValueError("covariances must be symmetric positive definite (got a non-symmetric matrix)")
            cov = 0.5 * (cov + cov.transpose(-1, -2))
            lam, vecs = torch.linalg.eigh(cov)
            if bool((lam <= 0).any()):
                raise ValueError(
                    f"covariances must be symmetric positive definite, got an eigenvalue {float(lam.min())!r}")
            self.eigvecs = vecs
        else:
            stds = cov.reshape(-1) if cov.ndim <= 1 else cov
            if stds.ndim == 1:
                if stds.numel() == 1:
                    stds = stds.expand(k)
                if stds.numel() != k:
                    raise ValueError(f"isotropic stds must have {k} entries, got {stds.numel()}")
                stds = stds[:, None].expand(k, n)
            if stds.shape != (k, n):
                raise ValueError(f"stds must have shape ({k},), ({k}, {n}) or be a scalar, got {tuple(stds.shape)}")
            if bool((stds <= 0).any()):
                raise ValueError(f"standard deviations must be > 0, got min {float(stds.min())!r}")
            lam = stds.clone() ** 2
            cov = torch.diag_embed(lam)
            self.eigvecs = None  # diagonal: the eigenbasis is the coordinate basis
        self.means, self.covs, self.eigvals = means, cov, lam
        self.weights = _check_weights(weights, k)
        self._set_event_shape(event_shape, n)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def mean(self) -> torch.Tensor:
        """The mean, of shape ``event_shape``."""
        return (self.weights[:, None] * self.means).sum(0).reshape(self.event_shape)

    def covariance(self) -> torch.Tensor:
        """The ``(N, N)`` covariance of the flattened event."""
        mu = self.mean().reshape(-1)
        d = self.means - mu
        return (self.weights[:, None, None] * (self.covs + d[:, :, None] * d[:, None, :])).sum(0)

    def sample(self, n: int, generator=None, dtype=None, device=None) -> torch.Tensor:
        n = _check_n(n)
        comp = _categorical(self.weights, n, generator)
        g = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        root = self.eigvals.sqrt()[comp]
        if self.eigvecs is None:
            x = self.means[comp] + root * g
        else:
            x = self.means[comp] + torch.einsum("bij,bj->bi", self.eigvecs[comp], root * g)
        return self._shaped(x, dtype, device)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log density at ``x`` of shape ``(*batch, *event_shape)``; returns shape ``batch`` in x's
        dtype (computed in at least float32)."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        xc = x.reshape(*batch_shape("x", x, self.event_shape), self.dim).to(compute_dtype(x.dtype))
        mu = self.means.to(xc)
        lam = self.eigvals.to(xc)
        d = xc.unsqueeze(-2) - mu
        z = d if self.eigvecs is None else torch.einsum("...kn,knm->...km", d, self.eigvecs.to(xc))
        comp = -0.5 * ((z**2 / lam).sum(-1) + torch.log(lam).sum(-1) + self.dim * math.log(2 * math.pi))
        return torch.logsumexp(comp + torch.log(self.weights.to(xc)), dim=-1).to(x.dtype)

    def __repr__(self):
        """Pasteable and exact (``GaussianMixture(means=[[...]], covs_or_stds=[[...]], weights=[...])``:
        stds for a diagonal mixture, covariances otherwise) when the parameters hold at most
        ``REPR_MAX_NUMBERS`` numbers; a summary otherwise."""
        spread = self.eigvals.sqrt() if self.eigvecs is None else self.covs  # stds or covariances
        if self.means.numel() + spread.numel() + self.weights.numel() > REPR_MAX_NUMBERS:
            return f"{type(self).__name__}(n_components={self.n_components}, dim={self.dim}{self._shape_repr()})"
        return (f"{type(self).__name__}(means={self.means.tolist()!r}, covs_or_stds={spread.tolist()!r}, "
                f"weights={self.weights.tolist()!r}{self._shape_repr()})")


class Gaussian(GaussianMixture):
    """``N(mean, cov)``; ``cov`` a ``(N, N)`` covariance matrix, a ``(N,)`` vector of
    variances (diagonal covariance), or a scalar variance (isotropic). ``event_shape`` as for
    :class:`GaussianMixture`."""

    def __init__(self, mean, cov, event_shape=None):
        mean = _as64("mean", mean)
        if mean.ndim != 1:
            raise ValueError(f"mean must be a vector of shape (N,), got shape {tuple(mean.shape)}")
        mean = mean.reshape(1, -1)
        cov = _as64("cov", cov)
        if cov.ndim == 1 and cov.numel() != mean.shape[1]:
            raise ValueError(f"cov as a vector of variances must have {mean.shape[1]} entries, got {cov.numel()}")
        if cov.ndim > 2 or (cov.ndim == 2 and cov.shape != (mean.shape[1], mean.shape[1])):
            raise ValueError(f"cov must be a ({mean.shape[1]}, {mean.shape[1]}) matrix, a vector of variances or a "
                             f"scalar, got shape {tuple(cov.shape)}")
        if cov.ndim == 2:
            cov = cov.unsqueeze(0)
        else:
            if bool((cov <= 0).any()):
                raise ValueError(f"cov (variances) must be > 0, got min {float(cov.min())!r}")
            cov = cov.sqrt().reshape(1, -1) if cov.ndim == 1 else cov.sqrt()
        super().__init__(mean, cov, None, event_shape)

    def __repr__(self):
        """Pasteable and exact (``Gaussian(mean=[...], cov=[[...]])``, or ``cov=[variances]`` when
        diagonal) when the parameters hold at most ``REPR_MAX_NUMBERS`` numbers; a summary otherwise."""
        cov = self.eigvals[0] if self.eigvecs is None else self.covs[0]
        if self.dim + cov.numel() > REPR_MAX_NUMBERS:
            return f"{type(self).__name__}(dim={self.dim}{self._shape_repr()})"
        return f"{type(self).__name__}(mean={self.means[0].tolist()!r}, cov={cov.tolist()!r}{self._shape_repr()})"


class Empirical(_Law):
    """A weighted point set ``sum_i w_i delta(y_i)`` (has no density, so no ``log_prob``).

    ``points`` has shape ``(M, N)``; ``event_shape`` (default ``(N,)``) is the shape of one draw
    (for a stack of images ``imgs`` of shape ``(M, C, H, W)``:
    ``Empirical(imgs.flatten(1), event_shape=imgs.shape[1:])``).
    """

    def __init__(self, points, weights=None, event_shape=None):
        points = _as64("points", points)
        if points.ndim != 2 or points.shape[0] < 1:
            raise ValueError(f"points must have shape (M, N) with M >= 1, got {tuple(points.shape)}")
        self.points = points
        self.weights = _check_weights(weights, points.shape[0])
        self._set_event_shape(event_shape, points.shape[1])

    @property
    def dim(self) -> int:
        return self.points.shape[1]

    def mean(self) -> torch.Tensor:
        """The mean, of shape ``event_shape``."""
        return (self.weights[:, None] * self.points).sum(0).reshape(self.event_shape)

    def covariance(self) -> torch.Tensor:
        """The ``(N, N)`` covariance of the flattened event."""
        d = self.points - self.mean().reshape(-1)
        return (self.weights[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0)

    def sample(self, n: int, generator=None, dtype=None, device=None) -> torch.Tensor:
        n = _check_n(n)
        idx = _categorical(self.weights, n, generator)
        return self._shaped(self.points[idx], dtype, device)

    def __repr__(self):
        """Pasteable and exact (``Empirical(points=[[...]], weights=[...])``) when the parameters hold
        at most ``REPR_MAX_NUMBERS`` numbers; a summary otherwise."""
        if self.points.numel() + self.weights.numel() > REPR_MAX_NUMBERS:
            return f"{type(self).__name__}(n_points={self.points.shape[0]}, dim={self.dim}{self._shape_repr()})"
        return (f"{type(self).__name__}(points={self.points.tolist()!r}, weights={self.weights.tolist()!r}"
                f"{self._shape_repr()})")
