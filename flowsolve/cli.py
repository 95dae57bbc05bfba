"""The ``flowsolve`` command.

``flowsolve demo`` runs the foundation end to end and prints what it measured:
1. for each process, samples drawn from its prior and carried to t_min along the exact
   probability-flow ODE (integrated by torchdiffeq's dopri5, a peer library) against the
   data law's mean and covariance;
2. the D -> infinity limit: the PFGM++ ODE drift against EDM's, per D.
(The work-precision ``bench`` command comes with the solvers.)
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

import flowsolve as fs


def _transport(process, data, n, seed):
    """Prior -> data along the exact PF-ODE with torchdiffeq; returns samples and NFE."""
    from torchdiffeq import odeint

    field = fs.exact_field(process, data)
    flow = fs.probability_flow(process, field)
    gen = torch.Generator().manual_seed(seed)
    x_init = process.prior_sample(n, data.dim, generator=gen, dtype=torch.float64)
    nfe = outside = 0

    def rhs(t, x):
        # torchdiffeq's first-step heuristic probes times beyond the span (DESIGN §3); the
        # field is undefined there, so clamp into the span and count how often it happened.
        nonlocal nfe, outside
        nfe += 1
        t = float(t)
        if not process.t_min <= t <= process.t_max:
            outside += 1
            t = min(max(t, process.t_min), process.t_max)
        return flow.drift(x, t)

    ts = torch.tensor([process.t_max, process.t_min], dtype=torch.float64)
    out = odeint(rhs, x_init, ts, method="dopri5", rtol=1e-6, atol=1e-8)[-1]
    return out, nfe, outside


def demo(n: int = 4000, seed: int = 0, out=sys.stdout) -> int:
    torch.set_default_dtype(torch.float64)
    data = fs.toy.Gaussian([1.0, -2.0], [[1.0, 0.5], [0.5, 0.75]])
    mean, cov = data.mean(), data.covariance()
    print(f"data: N(mean={mean.tolist()}, cov={cov.tolist()}); {n} samples, seed {seed}", file=out)
    print("prior -> data along the exact probability-flow ODE (torchdiffeq dopri5, rtol 1e-6)", file=out)
    print(f"{'process':44s} {'NFE':>5s} {'outside':>7s} {'|mean err|':>11s} {'|cov err|':>10s} {'MC s.e.':>8s} "
          f"{'sec':>6s}", file=out)
    processes = [fs.VE(), fs.VP(), fs.SubVP(), fs.EDM(), fs.PFGMPP(D=128), fs.PFGMPP(D=2048)]
    worst = 0.0
    for proc in processes:
        start = time.perf_counter()
        x, nfe, outside = _transport(proc, data, n, seed)
        mean_err = float((x.mean(0) - mean).abs().max())
        cov_err = float((torch.cov(x.T) - cov).abs().max())
        se = math.sqrt(float(cov.diagonal().max()) / n)
        worst = max(worst, mean_err / se)
        print(f"{repr(proc):44s} {nfe:5d} {outside:7d} {mean_err:11.2e} {cov_err:10.2e} {se:8.1e} "
              f"{time.perf_counter() - start:6.2f}", file=out)
    print("\nD -> infinity: max |PFGM++ drift - EDM drift| at sigma = 1 on 256 points of the law", file=out)
    x = fs.EDM().perturb(data.sample(256, generator=torch.Generator().manual_seed(seed)), 1.0,
                         generator=torch.Generator().manual_seed(seed + 1))
    edm = fs.exact_field(fs.EDM(), data).velocity(x, 1.0)
    print(f"{'D':>10s} {'max error':>11s} {'error * D':>10s}", file=out)
    for D in [1e2, 1e3, 1e4, 1e5, 1e6]:
        err = float((fs.exact_field(fs.PFGMPP(D=D), data).velocity(x, 1.0) - edm).abs().max())
        print(f"{D:10.0e} {err:11.3e} {err * D:10.3f}", file=out)
    print("\n'outside': field evaluations torchdiffeq requested outside [t_min, t_max] (clamped)."
          f"\nworst mean error in Monte-Carlo standard errors: {worst:.2f}", file=out)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="flowsolve", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run the foundation end to end and print what it measured")
    p_demo.add_argument("--n", type=int, default=4000, help="number of samples (default 4000)")
    p_demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.n < 2:
            parser.error(f"--n must be >= 2, got {args.n}")
        return demo(n=args.n, seed=args.seed)
    return 2


if __name__ == "__main__":
    sys.exit(main())
