"""Analytic toy distributions with exact fields at every noise level."""

from .distributions import Empirical, Gaussian, GaussianMixture
from .exact import ExactField, exact_field
from .named import bimodal_1d, grid, random_mixture, ring, standard_gaussian

__all__ = ["Gaussian", "GaussianMixture", "Empirical", "ring", "grid", "random_mixture", "bimodal_1d",
           "standard_gaussian", "exact_field", "ExactField"]
