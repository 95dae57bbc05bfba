"""Speed and accuracy of the exact PFGM++ field of Gaussian-mixture data (the scale-mixture
quadrature of ``flowsolve.toy.exact.MixtureField``).

Speed: for a 2-D 8-mode ring (``fs.toy.ring()``) and ``fs.toy.random_mixture(2, 4)``, sigma in
{0.002, 0.1, 1, 80} and D in {1, 8, 128, 2048}, ``--points`` points drawn from the PFGM++
perturbation kernel at sigma. Per case: the median over ``--repeats`` calls of ``denoiser`` for
the Gaussian-kernel field (``fs.exact_field(fs.EDM(), law)``), the PFGM++ field and the
implementation before the fix (``OldMixtureField`` below, a verbatim copy, timed side by side in
the same run); the ratio PFGM++/Gaussian; and the largest relative error of the denoiser and of
log p, new and old, against the brute-force Simpson rule of tests/reference.py on ``--check`` of
the points (relative: ``|d - ref|_inf / max(1, |ref|_inf)``, ``|lp - ref| / max(1, |lp_ref|)``).

Accuracy (``--issue``): the issue's heavy-shoulder cases, Gaussian data ``N(0, diag(v))`` with v
evenly spaced in [0.0025, 1] in 64 and 256 dimensions, ``--issue-points`` points 2 to 3 from the
mean in random directions, sigma in [0.005, 0.01], D = 0.5 and 1, new and old against two
independent dense references (the Simpson rule of tests/reference.py on t in [-30, 10], and the
trapezoid rule of tests/test_pfgmpp_quadrature.py), which are also compared with each other.

    python benchmarks/pfgmpp_field_speed.py [--points 1000] [--repeats 7] [--check 6] [--no-old] [--issue]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import brentq

import flowsolve as fs
from flowsolve.processes.kernels import log_gamma_density_norm
from flowsolve.toy.exact import _LOG_2PI, ExactField, _rotate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference import student_t_mixture_posterior  # noqa: E402

LAWS = {"ring": fs.toy.ring, "mixture": lambda: fs.toy.random_mixture(2, 4)}
SIGMAS = (0.002, 0.1, 1.0, 80.0)
DS = (1.0, 8.0, 128.0, 2048.0)


# -- the implementation before the fix, verbatim (renamed), for side-by-side timing --------------
class OldMixtureField(ExactField):
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
        offsets = torch.as_tensor(self._offsets, dtype=dtype, device=device) if self.is_poisson else None
        return d.means.to(device, dtype), d.eigvals.to(device, dtype), vecs, torch.log(d.weights).to(device, dtype), offsets

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
        means, lam, vecs, logw, offsets = params
        diff = xhat.unsqueeze(-2) - means  # (..., K, N)
        z = diff if vecs is None else _rotate(diff, vecs)
        sig2 = (sig**2).unsqueeze(-1)  # (..., 1, 1)
        if self.is_poisson:
            v, log_node = self._scale_mixture_nodes(z, lam, sig2, offsets)  # (..., K, J)
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

    def _scale_mixture_nodes(self, z, lam, sig2, offsets):
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


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def errors(field, law, x, sigma, refs):
    """Largest relative errors of the denoiser and of log p over the points of ``refs``."""
    den, log_p = field.denoiser(x, sigma), field.log_prob(x, sigma)
    e_den = max(float((den[i] - torch.as_tensor(d)).abs().max()) / max(1.0, float(np.abs(d).max()))
                for i, (_, d) in refs)
    e_lp = max(abs(float(log_p[i]) - lp) / max(1.0, abs(lp)) for i, (lp, _) in refs)
    return e_den, e_lp


def speed(args):
    print(f"denoiser on {args.points} points (median of {args.repeats} calls; old: of {args.old_repeats}); "
          f"errors against tests/reference.py on {args.check} points")
    print(f"{'law':8s} {'sigma':>6s} {'D':>5s} {'gauss ms':>9s} {'pfgm ms':>8s} {'ratio':>6s} {'old ms':>8s} "
          f"{'speed-up':>8s} {'den err':>8s} {'logp err':>8s} {'old den':>8s} {'old logp':>8s}")
    ratios = []
    for name, make in LAWS.items():
        law = make()
        gauss = fs.exact_field(fs.EDM(), law)
        for sigma in SIGMAS:
            for D in DS:
                process = fs.PFGMPP(D=D)
                gen = torch.Generator().manual_seed(0)
                x = process.perturb(law.sample(args.points, generator=gen, dtype=torch.float64), sigma, generator=gen)
                new = fs.exact_field(process, law)
                new.denoiser(x, sigma), gauss.denoiser(x, sigma)  # caches
                t_gauss = median_time(lambda: gauss.denoiser(x, sigma), args.repeats)
                t_new = median_time(lambda: new.denoiser(x, sigma), args.repeats)
                ratios.append(t_new / t_gauss)
                picks = np.linspace(0, args.points - 1, args.check).astype(int)
                refs = [(int(i), student_t_mixture_posterior(x[i].numpy(), law.means, law.covs, law.weights, sigma, D))
                        for i in picks]
                e_new = errors(new, law, x, sigma, refs)
                row = (f"{name:8s} {sigma:6g} {D:5g} {1e3 * t_gauss:9.2f} {1e3 * t_new:8.2f} {t_new / t_gauss:5.1f}x ")
                if args.old:
                    old = OldMixtureField(process, law)
                    t_old = median_time(lambda: old.denoiser(x, sigma), args.old_repeats)
                    e_old = errors(old, law, x, sigma, refs)
                    row += f"{1e3 * t_old:8.1f} {t_old / t_new:7.0f}x "
                    old_errors = f"{e_old[0]:8.1e} {e_old[1]:8.1e}"
                else:  # not measured: say so, rather than print NaN as if it had been
                    row += f"{'-':>8s} {'-':>8s} "
                    old_errors = f"{'-':>8s} {'-':>8s}"
                print(row + f"{e_new[0]:8.1e} {e_new[1]:8.1e} {old_errors}", flush=True)
    print(f"PFGM++/Gaussian time ratio: median {statistics.median(ratios):.1f}x, max {max(ratios):.1f}x")


def issue(args):
    from test_pfgmpp_quadrature import dense_posterior

    print(f"\nheavy-shoulder cases of the issue, {args.issue_points} points each (2 to 3 from the mean in random "
          "directions, sigma uniform in [0.005, 0.01]): largest relative error, denoiser / log p")
    print(f"{'N':>4s} {'D':>4s}  {'new vs Simpson':>17s}  {'new vs trapezoid':>17s}  {'old vs Simpson':>17s}  "
          f"{'Simpson vs trapezoid':>20s}")
    for dim, D in [(64, 0.5), (256, 1.0), (256, 0.5)]:
        variances = torch.linspace(0.0025, 1.0, dim, dtype=torch.float64)
        law = fs.toy.Gaussian(torch.zeros(dim, dtype=torch.float64), variances)
        process = fs.PFGMPP(D=D)
        fields = {"new": fs.exact_field(process, law), "old": OldMixtureField(process, law)}
        worst = {k: [0.0, 0.0] for k in ("new_s", "new_t", "old_s", "refs")}
        rng = np.random.default_rng(dim)
        for _ in range(args.issue_points):
            d = rng.standard_normal(dim)
            x = rng.uniform(2.0, 3.0) * d / np.linalg.norm(d)
            sigma = rng.uniform(0.005, 0.01)
            xt = torch.as_tensor(x)[None]
            simpson = student_t_mixture_posterior(x, law.means, law.covs, law.weights, sigma, D, t_lo=-30.0, t_hi=10.0,
                                                  n=40_001)
            trapezoid = dense_posterior(x, law, sigma, D)[:2]
            got = {k: (float(f.log_prob(xt, sigma)[0]), f.denoiser(xt, sigma)[0].numpy()) for k, f in fields.items()}
            for key, (a, b) in {"new_s": (got["new"], simpson), "new_t": (got["new"], trapezoid),
                                "old_s": (got["old"], simpson), "refs": (simpson, trapezoid)}.items():
                worst[key][0] = max(worst[key][0], np.abs(a[1] - b[1]).max() / max(1.0, np.abs(b[1]).max()))
                worst[key][1] = max(worst[key][1], abs(a[0] - b[0]) / max(1.0, abs(b[0])))
        print(f"{dim:4d} {D:4g}  " + "  ".join(f"{w[0]:8.1e}/{w[1]:8.1e}" for w in worst.values()), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--old-repeats", type=int, default=3)
    parser.add_argument("--check", type=int, default=6, help="points checked against the brute force per case")
    parser.add_argument("--no-old", dest="old", action="store_false", help="skip the pre-fix implementation")
    parser.add_argument("--issue", action="store_true", help="also run the issue's heavy-shoulder accuracy cases")
    parser.add_argument("--issue-points", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    speed(args)
    if args.issue:
        issue(args)


if __name__ == "__main__":
    main()
