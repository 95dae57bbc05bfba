"""dpmpp_3m against its neighbours at few steps: why the exact 3M drops order below 15 steps.

Mean endpoint error (Euclidean, over samples) against dopri5 at rtol = atol = 1e-10 from the same
prior points, float64, Karras grid (rho = 7), for NFE 5..30:

- 3M exact: ``dpmpp_3m`` (the exact second-difference weight; lower orders on the last two steps
  below 15 steps);
- 3M exact, old rule: the same with the reference codes' threshold (below 10 steps only) -- at
  10..14 steps that is ``lower_order_final=False``;
- 3M published: ``variant="published"`` (LuChengTHU/dpm-solver's update and rule);
- 2M: ``dpmpp_2m``; UniPC: ``unipc``.

Below the table: err(10)/err(9) per column (above 1: the error rises from 9 to 10 steps) and the
geometric mean over NFE 5..30 of each column's error divided by 3M exact's.

    python benchmarks/dpmpp_3m_final_steps.py [--process EDM|VP|PFGMPP] [--data mixture|ring|mixture16]
                                              [--grid karras|log_sigma] [--n 1000]
"""

from __future__ import annotations

import argparse
import math

import torch

import flowsolve as fs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--process", choices=["EDM", "VP", "PFGMPP"], default="EDM")
    parser.add_argument("--data", choices=["mixture", "ring", "mixture16"], default="mixture")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--grid", default="karras")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    process = {"EDM": fs.EDM, "VP": fs.VP, "PFGMPP": lambda: fs.PFGMPP(D=128)}[args.process]()
    data = {"mixture": lambda: fs.toy.random_mixture(2, 4), "ring": fs.toy.ring,
            "mixture16": lambda: fs.toy.random_mixture(16, 8, seed=1)}[args.data]()
    field = fs.exact_field(process, data)
    x0 = process.prior_sample(args.n, data.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = fs.sample(process, field, args.n, "dopri5", x_init=x0, rtol=1e-10, atol=1e-10).x
    runs = {"3M exact": ("dpmpp_3m", {}), "3M old rule": ("dpmpp_3m", "old"),
            "3M published": ("dpmpp_3m", {"variant": "published"}), "2M": ("dpmpp_2m", {}), "UniPC": ("unipc", {})}
    print(f"{args.process}, {args.data}, {args.grid} grid, n = {args.n}: mean endpoint error against dopri5 at 1e-10")
    print(f"{'NFE':>4s} " + " ".join(f"{name:>13s}" for name in runs))
    table = {}
    for nfe in range(5, 31):
        row = []
        for solver, options in runs.values():
            if options == "old":
                options = {} if nfe < 10 else {"lower_order_final": False}
            x = fs.sample(process, field, args.n, solver, nfe=nfe, grid=args.grid, x_init=x0, **options).x
            row.append(float((x - ref).norm(dim=1).mean()))
        table[nfe] = row
        print(f"{nfe:4d} " + " ".join(f"{v:13.3f}" for v in row))
    print(f"{'10/9':>4s} " + " ".join(f"{a / b:13.2f}" for a, b in zip(table[10], table[9])))
    geo = [math.exp(sum(math.log(row[k] / row[0]) for row in table.values()) / len(table)) for k in range(len(runs))]
    print(f"{'/3M':>4s} " + " ".join(f"{v:13.2f}" for v in geo) + "   (geometric mean over NFE 5..30 of error / 3M exact's)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
