"""Exact fields of the toy laws of :mod:`flowsolve.toy` under a canonical process.

:func:`exact_field` gives closed-form fields for Gaussian / mixture / empirical data under the
Gaussian kernel and for empirical data under the PFGM++ kernel; Gaussian and mixture data
under PFGM++ by scale-mixture quadrature (see :class:`MixtureField`).

Shapes: an exact field knows its data's ``event_shape`` and accepts ``x`` of shape
``(*batch, *event_shape)`` with any batch shape (``t`` broadcastable to the batch shape). It
flattens to ``(B, N)`` internally, so an image-shaped law gives exactly the numbers of the
flattened one. Precision: at least float32 inside (float64 for the PFGM++ mixture quadrature),
schedules in float64; results in x's dtype.

Memory: the Gaussian-kernel mixture and the empirical fields compute their per-component
(per-point) temporaries in blocks of rows (samples), each temporary under ``_CHUNK_BYTES``
(:func:`_map_rows`), so a call costs a few times the size of x and its results beyond that
bound (empirical data whose ``2 M N`` elements exceed it go one row at a time). Only rows are
split and each row's operations are the same in any block, so the numbers are those of one
unchunked call, bit for bit (tests/test_exact_chunking.py, on the CPU). The PFGM++ mixture
quadrature has its own blocks (``MixtureField._CHUNK``).
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import gammaln, loggamma

from .._validation import compute_dtype
from ..fields import Field, batch_shape, from_denoiser
from ..processes.kernels import log_gamma_density_norm
from ..processes.base import require_canonical
from .distributions import Empirical, GaussianMixture

_LOG_2PI = math.log(2.0 * math.pi)
#: Bytes of one row-blocked temporary (see :func:`_map_rows`). Small blocks are faster as well as
#: smaller: they stay in cache and in reused allocations (one over 32 MiB is a fresh mmap, paid in
#: page faults each time); 1 to 8 MiB measured alike (benchmarks/exact_field_memory.py).
_CHUNK_BYTES = 4 * 2**20


class ExactField(Field):
    """Closed-form field of a toy law under a process: adds ``log_prob`` (the log density of
    the noised marginal ``p_t``) and, for PFGM++, the true ``score`` (the gradient of
    ``log p_t``, which is *not* the ODE drift there). Takes no extra arguments."""

    _true_score = True

    def __init__(self, process, data):
        super().__init__(process, data.event_shape)
        self.data = data
        self._cache: dict = {}

    def _params(self, x):
        """Data parameters cast to x's dtype/device, cached per (dtype, device)."""
        key = (x.dtype, x.device)
        if key not in self._cache:
            self._cache[key] = self._cast(x.dtype, x.device)
        return self._cache[key]

    def _batch_shape(self, x):
        return batch_shape("x", x, self.event_shape)

    def _flat(self, x, t64):
        """x as ``(B, N)`` in the compute dtype, t64 (of the batch shape) as ``(B,)``, and that dtype."""
        cd = compute_dtype(x.dtype)
        xf = x.reshape(-1, self.dim).to(cd)
        return xf, t64.reshape(-1), cd

    def _evaluate(self, kind, x, t64, kwargs):
        if kwargs:
            raise ValueError(f"an exact field takes no extra arguments, got {sorted(kwargs)}")
        xf, tf, cd = self._flat(x, t64)
        c = self._coefficients(tf, 2, cd, rates=kind == "velocity")
        den, grad, _ = self._posterior(xf / c.s, c.sig)
        out = grad / c.s if kind == "score" else from_denoiser(kind, xf, den, c)
        return out.to(x.dtype).reshape(x.shape)

    def log_prob(self, x: torch.Tensor, t) -> torch.Tensor:
        """``log p_t(x)``, the noised marginal at time t (includes the ``s^-N`` Jacobian); shape
        ``batch`` for x of shape ``(*batch, *event_shape)``."""
        t64 = self._validated_times(x, t)
        xf, tf, cd = self._flat(x, t64)
        c = self._coefficients(tf, 2, cd)
        log_p = self._posterior(xf / c.s, c.sig)[2] - self.dim * torch.log(c.s.squeeze(-1))
        return log_p.to(x.dtype).reshape(t64.shape)

    def _posterior(self, xhat, sig):
        """Return (denoiser, grad_xhat log p_sigma(xhat), log p_sigma(xhat)) for xhat ``(B, N)``
        and sig ``(B, 1)``."""
        raise NotImplementedError

    def __repr__(self):
        return f"exact_field({self.process!r}, {self.data!r})"


class EmpiricalField(ExactField):
    """Point data ``sum_i w_i delta(y_i)``: posterior weights ``w_i k_sigma(x̂ - y_i)`` under
    either kernel (PFGM++: ``w_i ∝ p(y_i)(||x - y_i||^2 + r^2)^(-(N+D)/2)``), normalised
    with log-sum-exp; distances are computed directly, not by the ``|x|^2 - 2xy + |y|^2``
    expansion, which loses all precision at sigma = 0.002 in float32. Weighted sums over the
    points are broadcast products (not matmuls, whose rounding depends on the batch size).
    Computed in blocks of rows whose ``(rows, M, N, 2)`` product stays under ``_CHUNK_BYTES``
    (one row at a time when ``2 M N`` elements exceed it)."""

    def _cast(self, dtype, device):
        return (self.data.points.to(device, dtype), torch.log(self.data.weights).to(device, dtype))

    def _posterior(self, xhat, sig):
        pts, logw = self._params(xhat)
        rows = _chunk_rows(2 * pts.numel(), xhat.dtype)
        return _map_rows(lambda x, s: self._block_posterior(x, s, pts, logw), rows, xhat,
                         sig.expand(xhat.shape[0], 1))

    def _block_posterior(self, xhat, sig, pts, logw):
        dist_sq = torch.cdist(xhat, pts, compute_mode="donot_use_mm_for_euclid_dist").square()
        kernel = self.process.kernel
        logits = logw + kernel.log_prob_sq(dist_sq, sig, self.dim)
        log_p = torch.logsumexp(logits, dim=-1)
        post = torch.softmax(logits, dim=-1)
        c = post * kernel.grad_coef(dist_sq, sig, self.dim)
        weighted = (torch.stack([post, c], -1).unsqueeze(-2) * pts.unsqueeze(-1)).sum(-3)  # (rows, N, 2)
        grad = -(c.sum(-1, keepdim=True) * xhat - weighted[..., 1])
        return weighted[..., 0], grad, log_p


class MixtureField(ExactField):
    """Gaussian-mixture data (full covariances) under either kernel.

    Per component, in its eigenbasis ``Sigma_k = Q_k diag(lambda_k) Q_k^T`` with
    ``z = Q_k^T (x̂ - mu_k)``, a Gaussian kernel of variance ``v`` gives

        p(x̂ | k) = N(x̂; mu_k, Sigma_k + v I),   E[y | x̂, k] = mu_k + Q_k diag(lambda/(lambda+v)) z.

    Gaussian kernel: ``v = sigma^2``. PFGM++ kernel: the Student-t is a Gaussian scale mixture,
    ``v = sigma^2 e^-t`` with ``u = e^t ~ Gamma(a, rate a)``, ``a = D/2``, so per (point, component)

        p(x̂ | k) = ∫ e^phi(t) dt,
        phi(t) = a (t - e^t) - ½ Σ_n [log(lambda_n + v) + z_n^2 / (lambda_n + v)] + const,
        E[y | x̂, k] = mu_k + Q_k diag(lambda) E_t[(lambda + v)^-1] z,
        grad log p(x̂ | k) = -Q_k E_t[(lambda + v)^-1] z,

    ``E_t`` the posterior mean over t. The left tail is ``e^(kappa t)``, ``kappa = a + N/2``; the
    right one ``e^(-a e^t)``; between them a prior-driven mode (u ~ 1), a likelihood-driven one
    and a long shoulder can coexist (a narrow likelihood mode with a shoulder that follows the
    prior: where a fixed number of widths around the mode fails). Per (point, component), with
    ``beta = a + Σ_n (lambda_n + z_n^2) / (2 sigma^2)`` (the rate of ``e^t`` in phi as t -> -inf):

    * *Point-mass regime*: with ``w = beta e^t``, ``e^phi ∝ w^(kappa-1) e^-w g(w)``, where
      ``log g = O(w^2 max lambda / (beta sigma^2))``. When ``q = beta sigma^2 / (max lambda
      w_hi (w_hi - w_lo)) >= 0.1 .. 3``, ``[w_lo, w_hi] = kappa -+ (6 sqrt(kappa) + 6)`` the bulk
      of the weight, g is nearly constant there and the generalized Gauss-Laguerre rule for
      ``w^(kappa-1) e^-w`` (nodes cached per D; exact for point data) with 8 to 24 nodes (more
      for smaller q, ``_LAGUERRE``) is accurate to 1e-12 or better (measured for kappa from
      0.55 to 1000 against adaptive quadrature in mpmath).
    * Otherwise the trapezoidal rule in t, on a window from the posterior's own tails:
      1. Modes: ``_NEWTON_STEPS`` vectorised Newton steps on phi' from 0 (the prior's mode) and
         from the point-mass mode ``log((D + N) / (D + |z|^2 / sigma^2))``; widths
         ``s = (-phi'')^-1/2``.
      2. Window: phi is below ``max phi - 32`` outside it (neglected mass ~1e-14 relative). A
         guess from the log-gamma law ``kappa_c (t - e^t)``, ``kappa_c = s^-2``, fitted at each of
         the outermost significant modes, is checked on phi and moved out (x3) until it is
         outside, up to rigorous bounds (``phi(t) <= phi(c) + a (t - c - e^t + e^c) + ½ Σ_n
         log(1 + v_c/lambda_n)`` for ``t >= c``; ``phi(t) <= phi(c) - kappa (c - t) + a e^c +
         ½ Σ_n [log(1 + lambda_n/v_c) + z_n^2 / (lambda_n + v_c)]`` for ``t <= c``), then pulled
         in by a safeguarded Newton step on ``phi = max phi - 32`` (kept only if still outside).
      3. Step: phi is analytic in ``|Im t| < pi/2`` and decays at both ends, so the rule
         converges exponentially (Trefethen & Weideman, SIAM Rev. 56, 2014). On the log-gamma
         law its error is exactly ``2 |Gamma(kappa - 2 pi i / h)| / Gamma(kappa)`` (the Fourier
         transform at ``2 pi / h``); h makes that ``_STEP_TOL`` for kappa_c of the narrowest
         significant mode (0.39 for flat posteriors, 0.83 s for narrow ones).
      4. Tail: left of ``t_b = -log(beta) - 1``, phi is ``kappa t`` plus a convergent series in
         ``e^t``, and the steps grow geometrically, ``t = t_b + H xi + h l (1 - e^(-xi/l))``
         (xi the node index from t_b, a one-sided double-exponential map), so the
         ``e^(kappa t)`` tail costs O(log) nodes.
      5. Node count: ``ceil((t_hi - t_b) / h) + 1`` plus the tail's, rounded up on ``_LADDER``
         (the body step H shrinks to fill the rung).
    * A component whose Laplace-estimated weight is below ``e^-40`` of the point's largest keeps
      that estimate (no nodes).

    Nodes are placed without autograd, so ``score`` is the exact gradient of the computed
    ``log p``. Pairs are integrated in groups of equal node count, so a sample's numbers do not
    depend on its batch, up to rounding where components have many eigenvalue groups (8 or more
    measured): the sums over the groups run over the leading dimension of ``(groups, pairs, ...)``
    blocks, and torch rounds those according to the number of pairs in the block, which depends
    on the batch (~1e-14 relative, for a few samples of a batch of thousands, full covariances in
    48-D). The groups have data-dependent sizes, so on an accelerator each call waits for the
    device (``nonzero``), unlike the other exact fields. Coordinates that share an
    eigenvalue are summed as one (an isotropic component costs one coordinate). Tested
    (tests/test_pfgmpp_quadrature.py) against an independent dense trapezoid rule and the
    Simpson rule of tests/reference.py, in 1 to 256 dimensions, D from 0.3 to 1e8 (and against
    the Gaussian kernel at 1e12 and 1e15), sigma from 0.002 to 80: denoiser, log p and score
    within 1e-9 relative (typically 1e-13). Computed in float64, returned in x's dtype.
    """

    _TAIL = 32.0  # the window leaves out where the integrand is below e^-32 of its peak
    _STEP_TOL = 1e-12  # trapezoid error of the fitted log-gamma law: 1000x below the 1e-9 aim
    _NEWTON_STEPS = 4  # the mode only centres the search: the window is checked on phi itself
    _REFINE = 1  # safeguarded Newton steps that pull the window ends in (a 2nd saves ~1 % of nodes)
    _GRADE = (1.0, 1.0, 3.0)  # delta, eps, l of the tail map; l = 2 (faster growth) lost 2e-10
    # (least reach ratio q, Gauss-Laguerre nodes) for kappa < 4, < 20, >= 20
    _LAGUERRE = (((3.0, 8), (1.0, 12), (0.5, 16), (0.3, 24)), ((1.0, 8), (0.3, 12)),
                 ((1.0, 8), (0.3, 12), (0.15, 16), (0.1, 24)))
    _NEGLIGIBLE = 40.0  # log-weight gap below which a component keeps its Laplace estimate
    _LADDER = (16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024,
               1280, 1536, 2048)
    _CHUNK = 2_000_000  # elements of a (groups, pairs, nodes) block

    def __init__(self, process, data):
        super().__init__(process, data)
        if self.is_poisson:
            a = 0.5 * process.kernel.D
            self._half_D, self._kappa = a, a + 0.5 * self.dim
            self._log_norm = log_gamma_density_norm(a) - 0.5 * self.dim * _LOG_2PI
            k = self._kappa
            hi, lo = k + 6.0 * math.sqrt(k) + 6.0, max(0.0, k - 6.0 * math.sqrt(k) - 6.0)
            self._span = hi * (hi - lo)  # w-range of the Laguerre weight's bulk, times its upper end
            self._groups = _eigenvalue_groups(data.eigvals)
            self._grouped = self._groups[2] is not None

    def _cast(self, dtype, device):
        d = self.data
        vecs = None if d.eigvecs is None else d.eigvecs.to(device, dtype)
        params = (d.means.to(device, dtype), d.eigvals.to(device, dtype), vecs, torch.log(d.weights).to(device, dtype))
        if self.is_poisson:
            f64 = dict(dtype=torch.float64, device=device)
            glam, gmult, onehot, gidx = self._groups
            params += (SimpleNamespace(
                glam=glam.to(**f64), gmult=gmult.to(**f64), lam_max=d.eigvals.amax(-1).to(**f64),
                onehot=None if onehot is None else onehot.to(**f64), gidx=None if gidx is None else gidx.to(device),
                steps=torch.as_tensor(_step_table(self._STEP_TOL), **f64),
                laguerre={n: torch.as_tensor(_laguerre_rule(self._kappa, n), **f64) for _, n in self._laguerre_sizes},
                ladder=torch.tensor(self._LADDER, **f64), sides=torch.tensor([[1.0], [1.0], [-1.0]], **f64),
                trials=torch.tensor([[1.0], [3.0], [math.inf]], **f64)),)
        return params

    def _posterior(self, xhat, sig):
        if not self.is_poisson:
            params = self._params(xhat)
            rows = _chunk_rows(self.data.n_components * self.dim, xhat.dtype)  # (rows, K, N) temporaries
            return _map_rows(lambda x, s: self._mixture_posterior(x, s, params), rows, xhat,
                             sig.expand(xhat.shape[0], 1))
        if xhat.is_meta:  # shapes only: the node counts depend on values a meta tensor does not have
            return torch.empty_like(xhat), torch.empty_like(xhat), xhat.new_empty(xhat.shape[:-1])
        x64, s64 = xhat.to(torch.float64), sig.to(torch.float64)
        batch = x64.shape[:-1]
        x64, s64 = x64.reshape(-1, self.dim), s64.reshape(-1, 1)
        params = self._params(x64)
        quad = params[4]
        n_groups = quad.glam.shape[-1]
        per_row = self.data.n_components * (self.dim * (1 if quad.onehot is None else n_groups) + 16 * n_groups)
        rows = max(1, self._CHUNK // per_row)
        den, grad, logp = _map_rows(lambda x, s: self._student_posterior(x, s, params), rows, x64,
                                    s64.expand(x64.shape[0], 1))
        return (den.reshape(*batch, self.dim).to(xhat.dtype), grad.reshape(*batch, self.dim).to(xhat.dtype),
                logp.reshape(batch).to(xhat.dtype))

    def _mixture_posterior(self, xhat, sig, params):
        """Gaussian kernel: component k is ``N(m_k, S_k + sigma^2 I)``, so its variance per
        eigen-coordinate is ``lambda + sigma^2``; one block of rows."""
        means, lam, vecs, logw = params[:4]
        diff = xhat.unsqueeze(-2) - means  # (..., K, N)
        z = diff if vecs is None else _rotate(diff, vecs)
        lv = lam + (sig**2).unsqueeze(-1)  # lambda + sigma^2, (..., K, N)
        loglik = -0.5 * (torch.log(lv).sum(-1) + (z**2 / lv).sum(-1) + self.dim * _LOG_2PI)
        return self._combine(logw + loglik, 1.0 / lv, z, params)

    def _combine(self, logits, inv_var, z, params):
        """Denoiser, gradient and log p from component logits ``(B, K)`` and ``E_t[(lambda + v)^-1]``
        per coordinate ``(B, K, N)``."""
        means, lam, vecs = params[:3]
        log_p = torch.logsumexp(logits, dim=-1)
        rho = torch.exp(logits - log_p.unsqueeze(-1)).unsqueeze(-1)
        inv = rho * inv_var * z
        shrink = inv * lam
        if vecs is not None:
            shrink = _rotate(shrink, vecs.transpose(-1, -2))
            inv = _rotate(inv, vecs.transpose(-1, -2))
        return (rho * means).sum(-2) + shrink.sum(-2), -inv.sum(-2), log_p

    def _student_posterior(self, xhat, sig, params):
        means, _, vecs, logw, quad = params
        n_pts, n_comp, n_groups = xhat.shape[0], means.shape[0], quad.glam.shape[-1]
        diff = xhat.unsqueeze(-2) - means
        z = diff if vecs is None else _rotate(diff, vecs)  # (B, K, N)
        zg = z.square() if quad.onehot is None else (z.square().unsqueeze(-1) * quad.onehot).sum(-2)
        # one column per (point, component) pair, eigenvalue groups first: sums over the groups
        # run over the leading dimension, which is fast for any M (a sum over a short last one is not)
        cols = (zg.reshape(-1, n_groups).T, quad.glam.T.repeat(1, n_pts), quad.gmult.T.repeat(1, n_pts),
                sig.square().expand(n_pts, n_comp).reshape(-1))
        log_i, moment = self._scale_mixture(cols, quad.lam_max.repeat(n_pts), logw.repeat(n_pts), n_comp, quad)
        moment = moment.T.reshape(n_pts, n_comp, n_groups)
        if quad.gidx is not None:
            moment = moment.gather(-1, quad.gidx.expand(n_pts, -1, -1))
        return self._combine(logw + log_i.view(n_pts, n_comp), moment, z, params)

    # -- the scale-mixture quadrature --------------------------------------------------------
    def _phi(self, t, zg, glam, gmult, sig2, order=0, value=True):
        """phi (unless not ``value``) and its first ``order`` derivatives at t. ``zg, glam,
        gmult`` have the eigenvalue groups first, ``(M, *t.shape)``; the sums run over them."""
        a = self._half_D
        e = torch.exp(t)
        v = sig2 / e
        lv = glam + v
        u = zg / lv
        gm = gmult if self._grouped else 1.0
        out = []
        if value:
            log_lv = torch.log(lv).mul_(gmult) if self._grouped else torch.log(lv)
            out.append(self._log_norm - self._prior_gap(t) - 0.5 * log_lv.add_(u).sum(0))
        if order >= 1:
            w = v / lv
            out.append(torch.expm1(t).mul_(-a).add_((gm - u).mul_(w).sum(0), alpha=0.5))
        if order >= 2:
            curv = (u * (glam - v)).neg_().add_(gm * glam).mul_(w).div_(lv).sum(0)
            out.append(e.mul_(-a).sub_(curv, alpha=0.5))
        return out

    def _scale_mixture(self, cols, lam_max, logw, n_comp, quad):
        """``log ∫ e^phi dt`` (P,) and ``E_t[(lambda + v)^-1]`` (M, P) for the pairs (columns)."""
        zg, glam, gmult, sig2 = cols
        with torch.no_grad():
            mode, width, n_gl, beta, newton = self._locate(tuple(c.detach() for c in cols), lam_max, quad)
        # Laplace estimates: the result where a component's weight is negligible, and the test for it
        log_i = self._phi(mode, *cols)[0] + torch.log(width * math.sqrt(2.0 * math.pi))
        moment = 1.0 / (glam + sig2 * torch.exp(-mode))
        with torch.no_grad():
            score = (logw + log_i.detach()).view(-1, n_comp)
            keep = (score >= score.amax(-1, keepdim=True) - self._NEGLIGIBLE).view(-1)
            groups = self._node_sets(tuple(c.detach() for c in cols), keep, n_gl, beta, newton, quad)
        for idx, nodes, weights in groups:
            rows = max(1, self._CHUNK // (nodes.shape[-1] * zg.shape[0]))
            parts = [self._integrate(nodes[i:i + rows], weights[i:i + rows], *(c[..., idx[i:i + rows]] for c in cols))
                     for i in range(0, idx.numel(), rows)]
            log_i = log_i.index_copy(0, idx, _cat([p[0] for p in parts]))
            moment = moment.index_copy(1, idx, _cat([p[1] for p in parts], dim=1))
        return log_i, moment

    def _integrate(self, t, weights, zg, glam, gmult, sig2):
        """The quadrature sums over nodes ``t (P, J)`` with ``weights`` (broadcastable to t).
        In place wherever autograd allows: fresh (M, P, J) buffers cost more than the arithmetic."""
        free = not (torch.is_grad_enabled() and zg.requires_grad)
        shrink = torch.exp(-t)
        lv = torch.addcmul(glam.unsqueeze(-1), sig2.unsqueeze(-1), shrink)  # (M, P, J)
        r = torch.reciprocal(lv)
        log_lv = lv.log_() if not self._grouped else lv.log_().mul_(gmult.unsqueeze(-1))
        log_f = (zg.unsqueeze(-1) * r).add_(log_lv).sum(0).mul_(-0.5).sub_(self._prior_gap(t, shrink))
        top = log_f.detach().amax(-1, keepdim=True)
        f = torch.exp(log_f.sub_(top))
        f = f.mul_(weights) if free else f * weights
        total = f.sum(-1)
        moment = (r.mul_(f) if free else r * f).sum(-1)
        return self._log_norm + top.squeeze(-1) + torch.log(total), moment / total

    def _prior_gap(self, t, shrink=None):
        """``a (e^t - 1 - t)``, minus the log prior density of t up to its constant. Its cancellation
        costs ~a |t| 1e-16: moderate D takes ``e^t = 1/shrink``, huge D a series near 0."""
        a = self._half_D
        if a > 1e6:
            return a * _expm1_minus(t)
        if shrink is None or a > 1e3:
            return (torch.expm1(t) - t).mul_(a)
        return torch.reciprocal(shrink).sub_(t).sub_(1.0).mul_(a)

    def _locate(self, cols, lam_max, quad):
        """Per pair: the Laplace point and width, the Gauss-Laguerre size (0: trapezoid), beta,
        and for the trapezoid pairs ``(pairs, t, phi, widths)`` of both Newton results."""
        zg, glam, gmult, sig2 = cols
        a, kappa = self._half_D, self._kappa
        beta = a + 0.5 * (gmult * glam + zg).sum(0) / sig2
        reach = beta * sig2 / (lam_max * self._span)
        n_gl = torch.zeros_like(beta)
        for q, n in reversed(self._laguerre_sizes):
            n_gl = torch.where(reach >= q, float(n), n_gl)
        mode, width = torch.log(kappa / beta), torch.full_like(beta, kappa**-0.5)
        rest = (n_gl == 0).nonzero().squeeze(-1)
        if not rest.numel():
            return mode, width, n_gl, beta, None
        t, phi, s = self._modes(tuple(c[..., rest] for c in cols))
        top = phi[1] > phi[0]
        mode = mode.index_copy(0, rest, torch.where(top, t[1], t[0]))
        width = width.index_copy(0, rest, torch.where(top, s[1], s[0]))
        return mode, width, n_gl, beta, (rest, t, phi, s)

    def _node_sets(self, cols, keep, n_gl, beta, newton, quad):
        """``[(pairs, nodes, weights)]`` for the kept pairs, one entry per node count."""
        by_size = {}
        for _, n in self._laguerre_sizes:
            chosen = (keep & (n_gl == n)).nonzero().squeeze(-1)
            if not chosen.numel():
                continue
            offsets, weights = quad.laguerre[n]
            by_size[n] = [(chosen, offsets - torch.log(beta[chosen]).unsqueeze(-1), weights.expand(chosen.numel(), -1))]
        if newton is not None:
            rest, t, phi, s = newton
            pos = keep[rest].nonzero().squeeze(-1)
            if pos.numel():
                sub = tuple(c[..., rest[pos]] for c in cols)
                window = self._window(sub, t[:, pos], phi[:, pos], s[:, pos], beta[rest[pos]], quad)
                for J, sel, nodes, weights in window:
                    by_size.setdefault(J, []).append((rest[pos[sel]], nodes, weights))
        return [tuple(_cat(parts) for parts in zip(*sets)) for sets in by_size.values()]

    @property
    def _laguerre_sizes(self):
        return self._LAGUERRE[(self._kappa >= 4.0) + (self._kappa >= 20.0)]

    def _modes(self, cols):
        """Newton from the prior's mode and from the point-mass mode: t, phi, widths, each (2, P)."""
        zg, glam, gmult, sig2 = cols
        a, n = self._half_D, self.dim
        cols = (zg.unsqueeze(1), glam.unsqueeze(1), gmult.unsqueeze(1), sig2)
        t = torch.stack([torch.zeros_like(sig2), torch.log((2 * a + n) / (2 * a + zg.sum(0) / sig2))])
        for _ in range(self._NEWTON_STEPS):
            d1, d2 = self._phi(t, *cols, order=2, value=False)
            t = t + torch.where(d2 < 0, -d1 / d2, 2.0 * torch.sign(d1)).clamp(-2.0, 2.0)
        phi, _, d2 = self._phi(t, *cols, order=2)
        return t, phi, torch.rsqrt((-d2).clamp_min(1e-8))

    def _window(self, cols, t, phi, s, beta, quad):
        """Trapezoid node sets ``[(J, pairs, nodes, weights)]`` from the two Newton results per pair."""
        zg, glam, gmult, sig2 = cols
        a, kappa = self._half_D, self._kappa
        best = phi.amax(0)
        target = best - self._TAIL
        significant = phi >= target + 1.0
        lo1 = significant[1] & (~significant[0] | (t[1] < t[0]))
        hi1 = significant[1] & (~significant[0] | (t[1] > t[0]))
        c_lo, phi_lo, s_lo = (torch.where(lo1, q[1], q[0]) for q in (t, phi, s))
        c_hi, phi_hi, s_hi = (torch.where(hi1, q[1], q[0]) for q in (t, phi, s))
        # log-gamma guesses and a rigorous right bound, solved together
        rise = 0.5 * (gmult * torch.log1p(sig2 * torch.exp(-c_hi) / glam)).sum(0)
        tau_hi, t_up, tau_lo = _solve_expm1_minus(torch.stack([
            (phi_hi - target + 1.0) * s_hi**2, (phi_hi + rise - target) / a + torch.expm1(c_hi) - c_hi,
            (phi_lo - target + 1.0) * s_lo**2]), quad.sides)
        v = sig2 * torch.exp(-c_lo)
        fall = a * torch.exp(c_lo) + 0.5 * (gmult * torch.log1p(glam / v) + zg / (glam + v)).sum(0)
        t_low = c_lo - (phi_lo - target + fall) / kappa
        trial = torch.cat([torch.minimum(c_hi + quad.trials * tau_hi, t_up),
                           torch.maximum(c_lo + quad.trials * tau_lo, t_low)])
        cols1 = (zg.unsqueeze(1), glam.unsqueeze(1), gmult.unsqueeze(1), sig2)
        phi_t, d1_t = self._phi(trial, *cols1, order=1)
        out = phi_t <= target
        first = torch.stack([torch.where(out[0], 0, torch.where(out[1], 1, 2)),
                             torch.where(out[3], 3, torch.where(out[4], 4, 5))])
        ends, phi_e, d1_e = (q.gather(0, first) for q in (trial, phi_t, d1_t))
        centre = torch.stack([c_hi, c_lo])
        for _ in range(self._REFINE):  # safeguarded Newton steps inwards: a step is kept only if it stays outside
            prop = ends - (phi_e - target) / d1_e
            inward = (torch.isfinite(prop) & ((prop - ends) * (centre - ends) > 0)
                      & ((prop - centre) * (ends - centre) > 0))
            prop = torch.where(inward, prop, ends)
            phi_p, d1_p = self._phi(prop, *cols1, order=1)
            ok = phi_p <= target
            ends, phi_e, d1_e = (torch.where(ok, p, q) for p, q in ((prop, ends), (phi_p, phi_e), (d1_p, d1_e)))
        t_hi, t_lo = ends[0], ends[1].clamp_min(-700.0)
        # step from the narrowest significant mode; geometric tail left of t_b
        narrow = torch.where(significant, s, math.inf).amin(0)
        h = _interp_step(quad.steps, -2.0 * torch.log(narrow))
        delta, eps, ell = self._GRADE
        t_b = torch.minimum(-torch.log(beta) - delta, c_lo - s_lo).clamp(t_lo, t_hi)
        n_tail = torch.ceil(ell * torch.log1p((t_b - t_lo) / (h * eps * ell)))
        need = n_tail + torch.ceil((t_hi - t_b) / h) + 1.0
        rung = torch.searchsorted(quad.ladder, need).clamp_max(len(self._LADDER) - 1)
        size = quad.ladder[rung]
        table = torch.stack([torch.minimum(n_tail, size - 2.0), t_b, h * eps * (n_tail > 0), t_hi - t_b], -1)
        sets = []
        for r, J in enumerate(self._LADDER):
            sel = (rung == r).nonzero().squeeze(-1)
            if not sel.numel():
                continue
            tail, tb, hs, body = table[sel].unsqueeze(-1).unbind(1)
            xi = torch.arange(J, dtype=t.dtype, device=t.device) - tail
            H = body / (J - 1.0 - tail)
            grow = torch.exp(xi / -ell)
            sets.append((J, sel, torch.addcmul(tb, H, xi).sub_(grow.sub(1.0).mul_(hs * ell)), grow.mul_(hs).add_(H)))
        return sets


def _eigenvalue_groups(lam: torch.Tensor):
    """``(glam, gmult, onehot, gidx)``: each component's distinct eigenvalues ``(K, M)`` (padded
    with 1), their multiplicities (0 for padding), each coordinate's group as an indicator
    ``(K, N, M)`` and an index ``(K, N)``. Used when it at least halves the coordinates; otherwise
    one group per coordinate and ``onehot = gidx = None``."""
    uniq = [torch.unique(row, return_inverse=True, return_counts=True) for row in lam]
    n_groups = max(vals.numel() for vals, _, _ in uniq)
    if 2 * n_groups > lam.shape[1]:
        return lam.clone(), torch.ones_like(lam), None, None
    glam = torch.ones(lam.shape[0], n_groups, dtype=lam.dtype)
    gmult = torch.zeros_like(glam)
    gidx = torch.zeros(lam.shape, dtype=torch.long)
    for k, (vals, inverse, counts) in enumerate(uniq):
        glam[k, :vals.numel()], gmult[k, :vals.numel()], gidx[k] = vals, counts.to(lam.dtype), inverse
    return glam, gmult, (gidx.unsqueeze(-1) == torch.arange(n_groups)).to(lam.dtype), gidx


def _expm1_minus(t: torch.Tensor) -> torch.Tensor:
    """``e^t - 1 - t`` without cancellation near 0 (at D = 1e15 the nodes sit at |t| ~ 1e-7)."""
    series = t * t * (0.5 + t * (1.0 / 6 + t * (1.0 / 24 + t * (1.0 / 120 + t / 720))))
    return torch.where(t.abs() < 1e-2, series, torch.expm1(t) - t)


def _solve_expm1_minus(r: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """The roots of ``e^s - 1 - s = r >= 0`` with the signs of ``side``, by Newton from outside
    (|s| too large), where the convexity keeps every iterate: a safe window end."""
    r = r.clamp_min(0.0)
    root = torch.sqrt(2.0 * r)
    s = torch.where(side > 0, torch.minimum(root, torch.log(2.0 * (r + 1.0))), -(root + r))
    for _ in range(2):
        e = torch.expm1(s)
        s = s - (e - s - r) / (e + (s == 0))
    return s


@functools.lru_cache(maxsize=None)
def _step_table(tol: float) -> np.ndarray:
    """Rows ``(log kappa, log h)``: the trapezoid step whose error on the log-gamma law
    ``e^(kappa (t - e^t))``, ``2 |Gamma(kappa - 2 pi i/h)| / Gamma(kappa)``, is ``tol`` (less 1 %)."""
    def log_err(log_kappa, h):
        k, w = math.exp(log_kappa), 2.0 * math.pi / h
        if k < 10.0:
            return math.log(2.0) + loggamma(k - 1j * w).real - gammaln(k)
        x = w / k  # Stirling, with its large terms cancelled by hand (kappa up to 1e18)
        return (math.log(2.0) + 0.5 * (k - 0.5) * math.log1p(x * x) - w * math.atan(x)
                + k / (12.0 * (k * k + w * w)) - 1.0 / (12.0 * k))

    grid = np.linspace(math.log(1e-3), math.log(1e18), 321)
    steps = [math.log(0.99 * brentq(lambda h: log_err(g, h) - math.log(tol), 1e-12, 3.0)) for g in grid]
    return np.stack([grid, np.asarray(steps)])


def _interp_step(table: torch.Tensor, log_kappa: torch.Tensor) -> torch.Tensor:
    grid, log_h = table
    pos = ((log_kappa - grid[0]) / (grid[1] - grid[0])).clamp(0.0, grid.numel() - 1.0)
    i = pos.floor().clamp_max(grid.numel() - 2).long()
    return torch.exp(torch.lerp(log_h[i], log_h[i + 1], pos - i))


def _laguerre_rule(kappa: float, n: int) -> np.ndarray:
    """Rows ``(log w_j, weight_j)`` so that ``∫ f(t) dt ≈ Σ_j weight_j f(log w_j - log beta)``
    is the n-node Gauss rule for the weight ``w^(kappa-1) e^-w`` in ``w = beta e^t``.

    Golub-Welsch on the Jacobi matrix of the generalized Laguerre polynomials, shifted by kappa
    and scaled by sqrt(kappa) (entries O(1) for any kappa, so kappa up to 1e15 keeps full
    precision); ``log Gamma(kappa) - kappa log w + w`` is summed in the same scaled form.
    """
    k = np.arange(n, dtype=np.float64)
    off = np.sqrt(k[1:] * (k[1:] + kappa - 1.0) / kappa)
    s, vec = np.linalg.eigh(np.diag(2.0 * k / math.sqrt(kappa)) + np.diag(off, 1) + np.diag(off, -1))
    x = s / math.sqrt(kappa)  # w = kappa (1 + x)
    log_w = math.log(kappa) + np.log1p(x)
    log_weight = 2.0 * np.log(np.abs(vec[0])) - log_gamma_density_norm(kappa) + kappa * (x - np.log1p(x))
    return np.stack([log_w, np.exp(log_weight)])


def _cat(parts, dim=0):
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def _chunk_rows(per_row: int, dtype: torch.dtype) -> int:
    """Rows per block that keep a temporary of ``per_row`` elements per row under ``_CHUNK_BYTES``."""
    return max(1, _CHUNK_BYTES // max(1, per_row * dtype.itemsize))


def _map_rows(fn, rows: int, *args):
    """``fn(*args)`` on blocks of at most ``rows`` rows (the first dimension of every arg), its
    outputs (a tensor or a tuple of them) written into full-size results: no concatenation copy,
    no host synchronisation. Equals one call wherever fn treats its rows independently."""
    n = args[0].shape[0]
    if n <= rows:
        return fn(*args)
    outs = single = None
    for i in range(0, n, rows):
        part = fn(*(a[i:i + rows] for a in args))
        single = isinstance(part, torch.Tensor)
        part = (part,) if single else part
        if outs is None:
            outs = tuple(p.new_empty((n, *p.shape[1:])) for p in part)
        for out, p in zip(outs, part):
            out[i:i + rows] = p
    return outs[0] if single else outs


def _rotate(v: torch.Tensor, vecs: torch.Tensor) -> torch.Tensor:
    """``out[b, k, m] = sum_n v[b, k, n] vecs[k, n, m]`` for v ``(B, K, N)``, as a broadcast
    product and sum over blocks of rows whose ``(rows, K, N, N)`` product stays under
    ``_CHUNK_BYTES`` (never the whole ``(B, K, N, N)`` product): unlike a batched matmul, its
    rounding does not depend on the batch size (with MKL, float32/float64 products of 5 or more
    rows differ in the last bit from those of 1 to 3 rows), so sample i's result is bit-identical
    whatever the batch it is in, and whatever the block."""
    return _map_rows(lambda u: (u.unsqueeze(-1) * vecs).sum(-2), _chunk_rows(vecs.numel(), v.dtype), v)


def exact_field(process, data) -> ExactField:
    """The exact field of toy ``data`` (:mod:`flowsolve.toy`) under ``process``.

    Closed forms for Gaussian / mixture / empirical data under the Gaussian kernel and for
    empirical data under the PFGM++ kernel; Gaussian and mixture data under PFGM++ by
    scale-mixture quadrature (see :class:`MixtureField`). The field's ``event_shape`` is the
    data's.
    """
    require_canonical(process, "exact_field")
    if isinstance(data, Empirical):
        return EmpiricalField(process, data)
    if isinstance(data, GaussianMixture):
        return MixtureField(process, data)
    raise ValueError(f"data must be a flowsolve.toy Gaussian, GaussianMixture or Empirical, got {type(data).__name__}")
