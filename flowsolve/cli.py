"""The ``flowsolve`` command.

``flowsolve demo`` runs the toolkit end to end and prints what it measured:
1. samples carried from each process's prior to t_min along the exact probability-flow ODE
   of Gaussian data, whose end point is known in closed form, by torchdiffeq's dopri5 (a
   peer library) and by flowsolve's dopri5, dpmpp_3m and heun: NFE, field evaluations
   requested outside [t_min, t_max], and the max error against the exact end point
   (PFGM++ has no closed form: its reference is flowsolve's dopri5 at rtol 1e-10);
2. the D -> infinity limit: the PFGM++ ODE drift against EDM's, per D.

``flowsolve solvers`` lists the registered solvers (name, category, order, NFE per step,
options); ``flowsolve --version`` prints the version; ``python -m flowsolve`` is the same
command. (The work-precision ``bench`` command comes with the benchmark harness.)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import flowsolve as fs
from flowsolve.testing.references import gaussian_flow_map


def _torchdiffeq_dopri5(flow, process, x_init, rtol, atol):
    """torchdiffeq's dopri5 on the same flow; returns the end point, NFE and the number of
    evaluations it requested outside the span (clamped into it, else the field refuses)."""
    from torchdiffeq import odeint

    nfe = outside = 0

    def rhs(t, x):
        nonlocal nfe, outside
        nfe += 1
        t = float(t)
        if not process.t_min <= t <= process.t_max:
            outside += 1
            t = min(max(t, process.t_min), process.t_max)
        return flow.drift(x, t)

    ts = torch.tensor([process.t_max, process.t_min], dtype=torch.float64)
    return odeint(rhs, x_init, ts, method="dopri5", rtol=rtol, atol=atol)[-1], nfe, outside


def demo(n: int = 2000, seed: int = 0, out=sys.stdout) -> int:
    data = fs.toy.Gaussian([1.0, -2.0], [[1.0, 0.5], [0.5, 0.75]])
    rtol, atol = 1e-6, 1e-8
    print(f"data N(mean={data.mean().tolist()}, cov={data.covariance().tolist()}); {n} samples, seed {seed}", file=out)
    print(f"prior -> data along the exact probability-flow ODE; adaptive runs at rtol={rtol}, atol={atol}", file=out)
    print(f"{'process':30s} {'solver':22s} {'NFE mean':>8s} {'NFE max':>7s} {'outside':>7s} {'max error':>10s} "
          f"{'sec':>6s}", file=out)
    processes = [("VE", fs.VE()), ("VP", fs.VP()), ("SubVP", fs.SubVP()), ("EDM", fs.EDM()),
                 ("PFGMPP(D=128)", fs.PFGMPP(D=128))]
    for name, proc in processes:
        field = fs.exact_field(proc, data)
        flow = fs.probability_flow(proc, field)
        x_init = proc.prior_std * fs.NoiseSource(seed, n, data.dim, dtype=torch.float64).kernel_noise(proc.kernel)
        if proc.kernel.name == "gaussian":
            exact, label = gaussian_flow_map(proc, data, x_init, proc.t_max, proc.t_min), ""
        else:
            exact = fs.sample(proc, field, n, "dopri5", x_init=x_init, dtype=torch.float64, rtol=1e-10, atol=1e-12).x
            label = " (vs dopri5 at 1e-10)"
        runs = [("torchdiffeq dopri5", None)]
        runs += [("dopri5", dict(rtol=rtol, atol=atol)), ("dpmpp_3m, 20 NFE", dict(nfe=20)),
                 ("heun, 40 NFE", dict(nfe=40))]
        for solver_label, opts in runs:
            start = time.perf_counter()
            if opts is None:
                x, nfe, outside = _torchdiffeq_dopri5(flow, proc, x_init, rtol, atol)
                nfe_mean, nfe_max = float(nfe), nfe
            else:
                sol = fs.sample(proc, field, n, solver_label.split(",")[0], x_init=x_init, dtype=torch.float64,
                                **opts)
                x, outside = sol.x, 0  # flowsolve never evaluates outside the span (tested)
                nfe_mean, nfe_max = float(sol.nfe.double().mean()), int(sol.nfe.max())
            err = float((x - exact).abs().max())
            print(f"{name:30s} {solver_label:22s} {nfe_mean:8.1f} {nfe_max:7d} {outside:7d} {err:10.2e} "
                  f"{time.perf_counter() - start:6.2f}{label}", file=out)
    print("\nD -> infinity: max |PFGM++ drift - EDM drift| at sigma = 1 on 256 points of the law", file=out)
    x = fs.EDM().perturb(data.sample(256, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), 1.0,
                         generator=torch.Generator().manual_seed(seed + 1))
    edm = fs.exact_field(fs.EDM(), data).velocity(x, 1.0)
    print(f"{'D':>10s} {'max error':>11s} {'error * D':>10s}", file=out)
    for D in [1e2, 1e3, 1e4, 1e5, 1e6]:
        err = float((fs.exact_field(fs.PFGMPP(D=D), data).velocity(x, 1.0) - edm).abs().max())
        print(f"{D:10.0e} {err:11.3e} {err * D:10.3f}", file=out)
    print("\nNFE: torchdiffeq counts batch evaluations (one step size for all samples); flowsolve counts per "
          "sample (one step size each).\n'outside': evaluations requested outside [t_min, t_max] "
          "(torchdiffeq's are clamped into the span).", file=out)
    return 0


def solvers(out=sys.stdout) -> int:
    """One line per registered solver: name, category, order, NFE per step, options."""
    table = fs.available_solvers()
    print(f"{'solver':18s} {'category':22s} {'order':>5s} {'NFE/step':>8s}  options", file=out)
    for name, info in table.items():
        options = ", ".join(f"{k}={v!r}" for k, v in info["options"].items()) or "-"
        print(f"{name:18s} {info['category']:22s} {info['order']:5g} {info['nfe_per_step']:8d}  {options}", file=out)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="flowsolve", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"flowsolve {fs.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("solvers", help="list the registered solvers: category, order, NFE per step, options")
    p_demo = sub.add_parser("demo", help="run the toolkit end to end and print what it measured")
    p_demo.add_argument("--n", type=int, default=2000, help="number of samples (default 2000)")
    p_demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.n < 2:
            parser.error(f"--n must be >= 2, got {args.n}")
        return demo(n=args.n, seed=args.seed)
    try:
        if args.command == "solvers":
            return solvers()
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        sys.stdout = open(os.devnull, "w")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
