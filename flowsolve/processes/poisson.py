"""Poisson flows: PFGM++ (Xu et al. 2023) and PFGM (Xu et al. 2022, the D = 1 case).

In canonical form ``x_t = y + sigma n`` with ``t = sigma`` and the Student-t kernel of
:class:`~flowsolve.processes.kernels.StudentTKernel`; the augmented radius is
``r = sigma sqrt(D)`` (PFGM++ Sec. 4, "r = sigma sqrt(D)" alignment with EDM). There is no
forward SDE: the process is defined by its kernel, and the probability-flow ODE is
``dx/dr = E_x / E_r`` (PFGM++ Sec. 3), which in ``sigma`` reads ``dx/dsigma = (x - D(x))/sigma``.
"""

from __future__ import annotations

import math

import torch

from .._validation import check_order, check_positive, check_time_range
from .base import Process
from .kernels import StudentTKernel, check_D


class PFGMPP(Process):
    """PFGM++ with augmentation dimension ``D``, a real number in ``(0, 1e15]`` (``D -> inf``
    is EDM; beyond 1e15 the two agree to float64 precision, so use ``fs.EDM()``).

    ``s = 1``, ``sigma(t) = t`` on ``[sigma_min, sigma_max]``, ``r(t) = sigma(t) sqrt(D)``; the
    prior is the kernel at ``r_max = sigma_max sqrt(D)`` around the origin. Compares and
    hashes by ``(D, sigma_min, sigma_max)``; ``Poisson()`` equals ``PFGMPP(D=1)``.

    Subclasses may override ``_sigma(t)`` (and ``_scale(t)``, the derivative hooks and
    ``_t_of_sigma``) as for :class:`~flowsolve.processes.Diffusion`; ``__init__`` sets the
    time span to ``[sigma_min, sigma_max]``, and ``r`` follows the overridden sigma.
    """

    def __init__(self, D: float = 128, sigma_min: float = 0.002, sigma_max: float = 80.0):
        D = check_D(D)
        sigma_min = check_positive("sigma_min", sigma_min)
        sigma_max = check_positive("sigma_max", sigma_max)
        check_order("sigma_min", sigma_min, "sigma_max", sigma_max)
        super().__init__(t_min=sigma_min, t_max=sigma_max)
        self.D = D
        self.kernel = StudentTKernel(D)

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

    def r(self, t) -> torch.Tensor:
        """Augmented radius ``r = sigma(t) sqrt(D)``."""
        return self._eval(lambda u: self._sigma(u) * math.sqrt(self.D), t)

    def t_of_r(self, r) -> torch.Tensor:
        """Inverse of :meth:`r`."""
        root_D = math.sqrt(self.D)
        check_time_range("r", r, self.sigma_min * root_D, self.sigma_max * root_D)
        return self.t_of_sigma(r / root_D)

    def __repr__(self):
        return f"{type(self).__name__}(D={self.D!r}, sigma_min={self.t_min!r}, sigma_max={self.t_max!r})"


class Poisson(PFGMPP):
    """PFGM (Xu et al. 2022): the ``D = 1`` case of PFGM++, a multivariate Cauchy kernel."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        super().__init__(D=1.0, sigma_min=sigma_min, sigma_max=sigma_max)

    def _value_class(self) -> type:
        # the same process as PFGMPP(D=1, ...): equal to it (a subclass keeps its own class)
        cls = type(self)
        return PFGMPP if cls is Poisson else cls

    def __repr__(self):
        return f"{type(self).__name__}(sigma_min={self.t_min!r}, sigma_max={self.t_max!r})"
