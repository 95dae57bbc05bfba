"""Processes in the canonical form ``x_t = s(t) (y + sigma(t) n)``."""

from .base import Process, require_canonical
from .diffusions import EDM, VE, VP, Diffusion, LinearSDE, SubVP
from .kernels import GaussianKernel, StudentTKernel
from .poisson import PFGMPP, Poisson
from .sde import SDE

__all__ = ["Process", "require_canonical", "Diffusion", "VE", "VP", "SubVP", "EDM", "LinearSDE", "PFGMPP", "Poisson", "SDE",
           "GaussianKernel", "StudentTKernel"]
