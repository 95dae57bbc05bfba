"""Why sharp mixtures are hard at low NFE: the sampling map's Lipschitz constant grows as the
modes sharpen, and a solver at a fixed budget cannot follow it.

A symmetric two-mode 1-D mixture at +-1, stds from 0.5 down to 0.01, under EDM. For each:
log10 Lip(T_OT), the seed's lower bound (T_OT = F_nu^-1 o Phi, nu the marginal at sigma_min);
log10 of the largest Jacobian norm of heun's sampling map z -> solve(80 z) by autograd (128
Karras steps, around the bound's steepest point; in 1-D the exact map attains the bound); and
for heun and dpmpp_2m at 10 and 20 NFE (Karras grid), over n prior draws, the percentage of
samples that land off the data (more than 4 mode stds from both modes). The exact map sends
(nearly) none there; a map that is not steep enough spreads samples between the modes.

    python benchmarks/lipschitz_sharpness.py [--stds 0.5 0.2 0.1 0.05 0.02 0.01] [--n 4096]
"""

from __future__ import annotations

import argparse
import math

import torch

import flowsolve as fs
import flowsolve.testing as ft
from flowsolve.testing import references


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stds", type=float, nargs="+", default=[0.5, 0.2, 0.1, 0.05, 0.02, 0.01])
    parser.add_argument("--n", type=int, default=4096, help="prior draws per solver and budget")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    process = fs.EDM()
    budgets = [10, 20]
    solvers = ["heun", "dpmpp_2m"]
    print("log10 Lip of the exact map (bound) and of heun's map; % of samples off the data per solver@NFE")
    print(f"{'std':>6s} {'log10 bound':>11s} {'log10 heun':>10s} {'exact':>6s} "
          + " ".join(f"{s + '@' + str(b):>12s}" for s in solvers for b in budgets))
    for std in args.stds:
        law = fs.toy.GaussianMixture([[-1.0], [1.0]], [std, std])
        field = fs.exact_field(process, law)
        marginal = references.marginal_1d(process, law, process.t_min)
        log_bound, z_star = references.ot_lipschitz_1d(marginal, log=True)
        z = torch.linspace(z_star - 0.05, z_star + 0.05, 41, dtype=torch.float64)[:, None]
        measured = float(ft.sampling_map_jacobian_norms(process, field, z, solver="heun", steps=128).max())
        x_init = process.prior_sample(args.n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        exact = torch.as_tensor(references.flow_map_1d(process, law, x_init[:, 0].numpy(), process.t_max,
                                                       process.t_min))[:, None]

        def off_data(x):
            return 100.0 * float((((x.abs() - 1.0).abs() > 4 * std)).double().mean())

        shares = [off_data(fs.sample(process, field, args.n, solver, nfe=nfe, x_init=x_init).x)
                  for solver in solvers for nfe in budgets]
        print(f"{std:6.3f} {log_bound / math.log(10):11.1f} {math.log10(measured):10.1f} {off_data(exact):5.2f}% "
              + " ".join(f"{p:11.2f}%" for p in shares))


if __name__ == "__main__":
    main()
