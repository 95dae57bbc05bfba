"""Brute-force references, independent of flowsolve's own algorithms (used by the tests)."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln, logsumexp


def student_t_mixture_posterior(x, means, covs, weights, sigma, D, t_lo=-160.0, t_hi=12.0, n=400_001):
    """``log p(x)`` and ``E[y | x]`` for Gaussian-mixture data under the PFGM++ kernel.

    Brute force: the Student-t kernel is ``N(0, sigma^2/u I)`` with ``u ~ Gamma(D/2, rate D/2)``;
    integrate over ``t = log u`` with Simpson's rule on a fixed dense grid (no mode finding,
    no adaptivity), with the Gaussian posterior written with plain matrix inverses.
    """
    x = np.asarray(x, dtype=np.float64)
    means, covs, weights = (np.asarray(a, dtype=np.float64) for a in (means, covs, weights))
    dim = x.shape[0]
    t = np.linspace(t_lo, t_hi, n)
    a = D / 2.0
    log_prior = a * math.log(a) - gammaln(a) + a * t - a * np.exp(t)
    v = sigma**2 * np.exp(-t)
    logs, dens = [], []
    for mu, cov, w in zip(means, covs, weights):
        lam, q = np.linalg.eigh(cov)
        z = q.T @ (x - mu)
        lv = lam[None, :] + v[:, None]
        loglik = -0.5 * (np.log(2 * np.pi * lv).sum(1) + (z[None, :] ** 2 / lv).sum(1))
        logs.append(math.log(w) + log_prior + loglik)
        dens.append(mu[None, :] + ((lam[None, :] / lv) * z[None, :]) @ q.T)
    logf = np.stack(logs)  # (K, n)
    simpson = np.ones(n)
    simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
    logw = logf + np.log(simpson * (t[1] - t[0]) / 3.0)
    log_p = logsumexp(logw)
    post = np.exp(logw - log_p)
    den = np.einsum("kn,knd->d", post, np.stack(dens))
    assert post[:, :50].sum() < 1e-12 and post[:, -50:].sum() < 1e-12, "grid does not cover the mass"
    assert dim == means.shape[1]
    return log_p, den
