"""Named toy laws that experiments reach for: rings and grids of sharp modes, random
mixtures in d dimensions, a 1-D bimodal law."""

from __future__ import annotations

import math

import torch

from .._validation import check_int, check_positive
from .distributions import Gaussian, GaussianMixture


def _check_count(name, value, minimum=1) -> int:
    return check_int(name, value, minimum)


def ring(n_modes: int = 8, radius: float = 4.0, std: float = 0.05) -> GaussianMixture:
    """``n_modes`` equal-weight isotropic Gaussians evenly spaced on a circle in 2-D."""
    n_modes = _check_count("n_modes", n_modes)
    radius, std = check_positive("radius", radius), check_positive("std", std)
    angle = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
    means = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return GaussianMixture(means, std)


def grid(n_per_side: int = 5, spacing: float = 2.0, std: float = 0.05) -> GaussianMixture:
    """A square ``n_per_side x n_per_side`` grid of equal-weight isotropic Gaussians in 2-D,
    centred on the origin."""
    n_per_side = _check_count("n_per_side", n_per_side)
    spacing, std = check_positive("spacing", spacing), check_positive("std", std)
    axis = (torch.arange(n_per_side, dtype=torch.float64) - (n_per_side - 1) / 2) * spacing
    gx, gy = torch.meshgrid(axis, axis, indexing="ij")
    return GaussianMixture(torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1), std)


def random_mixture(dim: int, n_components: int = 4, seed: int = 0, spread: float = 3.0,
                   std_range: tuple[float, float] = (0.1, 0.5), event_shape=None) -> GaussianMixture:
    """A reproducible random mixture in ``dim`` dimensions with full covariances.

    Means ~ N(0, spread^2 I); each covariance is ``R diag(std^2) R^T`` with a random rotation
    ``R`` and stds uniform in ``std_range``; weights ~ Dirichlet(2, ..., 2). ``event_shape``
    (``dim`` elements; default ``(dim,)``) is the shape of one draw.
    """
    dim, n_components = _check_count("dim", dim), _check_count("n_components", n_components)
    spread = check_positive("spread", spread)
    lo, hi = (check_positive("std_range[0]", std_range[0]), check_positive("std_range[1]", std_range[1]))
    if lo > hi:
        raise ValueError(f"std_range must be (low, high) with low <= high, got {std_range!r}")
    gen = torch.Generator().manual_seed(int(seed))
    means = spread * torch.randn(n_components, dim, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(torch.randn(n_components, dim, dim, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # Haar-distributed rotation
    stds = lo + (hi - lo) * torch.rand(n_components, dim, generator=gen, dtype=torch.float64)
    covs = q @ torch.diag_embed(stds**2) @ q.transpose(-1, -2)
    gam = torch._standard_gamma(torch.full((n_components,), 2.0, dtype=torch.float64), generator=gen)
    return GaussianMixture(means, covs, gam / gam.sum(), event_shape)


def bimodal_1d(separation: float = 4.0, std: float = 0.5, weight: float = 0.5) -> GaussianMixture:
    """``weight N(-separation/2, std^2) + (1 - weight) N(separation/2, std^2)`` in 1-D."""
    separation, std = check_positive("separation", separation), check_positive("std", std)
    if not 0.0 < weight < 1.0:
        raise ValueError(f"weight must lie in (0, 1), got {weight!r}")
    means = torch.tensor([[-separation / 2], [separation / 2]], dtype=torch.float64)
    return GaussianMixture(means, std, [weight, 1.0 - weight])


def standard_gaussian(dim: int, event_shape=None) -> Gaussian:
    """``N(0, I)`` in ``dim`` dimensions; draws of shape ``event_shape`` (default ``(dim,)``)."""
    dim = _check_count("dim", dim)
    return Gaussian(torch.zeros(dim, dtype=torch.float64), torch.ones(dim, dtype=torch.float64), event_shape)
