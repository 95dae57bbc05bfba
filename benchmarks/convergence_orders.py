"""Measured convergence order of every fixed-step ODE solver, per process.

Gaussian data has a closed-form probability-flow map (in x/s each eigen-coordinate of
x/s - mu scales with sqrt(lambda + sigma^2)), so for VE, VP, SubVP and EDM the error is
against the exact end point. PFGM++ (D=8) has no closed form for Gaussian data; its
reference is flowsolve's dopri5 at rtol = atol = 1e-11. Order = log2(err(N) / err(2N)),
float64, max abs error over 16 samples, integrating from t_max to t_min.

    python benchmarks/convergence_orders.py [--steps 16 32 64] [--grid log_sigma] [--no-pfgmpp]
"""

from __future__ import annotations

import argparse
import math

import torch

import flowsolve as fs
from flowsolve.testing.references import gaussian_flow_map


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--grid", default="log_sigma", help="grid name (fs.available_grids())")
    parser.add_argument("--no-pfgmpp", action="store_true", help="skip PFGM++ (its exact field is slower)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = fs.toy.Gaussian([1.0, -2.0], [[1.0, 0.5], [0.5, 0.75]])
    processes = [("VE", fs.VE()), ("VP", fs.VP()), ("SubVP", fs.SubVP()), ("EDM", fs.EDM())]
    if not args.no_pfgmpp:
        processes.append(("PFGMPP(D=8)", fs.PFGMPP(D=8.0)))
    solvers = {name: info for name, info in fs.available_solvers().items() if info["kind"] == "ode" and not info["adaptive"]}
    pairs = [f"{a}->{b}" for a, b in zip(args.steps, args.steps[1:])]
    print(f"grid {args.grid!r}; order = log2(err(N)/err(2N)) for N in {args.steps}")
    print(f"{'process':13s} {'solver':13s} {'theory':>6s} " + " ".join(f"{p:>9s}" for p in pairs)
          + f" {'err at N=' + str(args.steps[-1]):>14s}")
    for pname, proc in processes:
        field = fs.exact_field(proc, data)
        flow = fs.probability_flow(proc, field)
        x_init = proc.prior_std * fs.NoiseSource(0, 16, 2, dtype=torch.float64).kernel_noise(proc.kernel)
        if proc.kernel.name == "gaussian":
            ref = gaussian_flow_map(proc, data, x_init, proc.t_max, proc.t_min)
        else:
            ref = fs.solve(flow, x_init, (proc.t_max, proc.t_min), "dopri5", rtol=1e-11, atol=1e-11).x
        for sname, info in solvers.items():
            errs = []
            for n in args.steps:
                ts = fs.make_grid(proc, args.grid, n)
                errs.append(float((fs.solve(flow, x_init, ts, sname).x - ref).abs().max()))
            orders = [math.log2(a / b) if a > 0 and b > 0 else float("nan") for a, b in zip(errs, errs[1:])]
            print(f"{pname:13s} {sname:13s} {info['order']:6.0f} " + " ".join(f"{o:9.2f}" for o in orders)
                  + f" {errs[-1]:14.2e}")


if __name__ == "__main__":
    main()
