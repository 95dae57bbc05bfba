"""What ``compile=True`` does on this machine (issue 9, target 6): compile time, and steady-state
time per step against eager, for ``fs.sample(..., compile=True)`` on a fixed grid.

Field: the small MLP denoiser of ``benchmarks/overhead.py`` (d = 2, two hidden layers of 64, SiLU,
EDM preconditioning), or its conv net at 3x32x32 (``--field conv``); EDM, float32, heun on the Karras
grid. For each batch size the first compiled solve is timed on its own (``compile s``: it includes
one solve); then compiled and eager solves alternate ``--repeats`` times and the table gives the
minimum and median per step of each and their ratio (below 1: compile is faster).

    python benchmarks/compile_speed.py [--batches 256,100000] [--steps 10] [--repeats 5]
        [--solver heun] [--field mlp] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import make_denoiser  # noqa: E402  (the same networks as the overhead benchmark)

import flowsolve as fs  # noqa: E402


def measure(batch: int, args) -> dict:
    fn, event = make_denoiser(args.field, torch.float32)
    process = fs.EDM()
    field = fs.Field.from_denoiser(process, fn, event_shape=event)
    x0 = process.prior_sample(batch, event, generator=torch.Generator().manual_seed(0), dtype=torch.float32)

    def run(compiled: bool):
        start = time.perf_counter()
        sol = fs.sample(process, field, batch, args.solver, steps=args.steps, x_init=x0, compile=compiled)
        return time.perf_counter() - start, sol.x

    with torch.no_grad():
        eager_first, eager_x = run(False)
        compile_s, compiled_x = run(True)
        eager, comp = [], []
        for _ in range(args.repeats):
            comp.append(run(True)[0])
            eager.append(run(False)[0])
    per = lambda ts, f: 1e3 * f(ts) / args.steps  # noqa: E731
    return dict(batch=batch, compile_s=compile_s, eager_min=per(eager, min), eager_med=per(eager, statistics.median),
                comp_min=per(comp, min), comp_med=per(comp, statistics.median),
                max_diff=float((compiled_x - eager_x).abs().max()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="256,100000")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--solver", default="heun")
    parser.add_argument("--field", default="mlp", choices=("mlp", "conv", "ring"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {os.cpu_count()} cpus, {args.threads} thread(s); load average "
          f"{os.getloadavg()[0]:.2f}; {args.solver}, {args.steps} steps, {args.field} field, float32")
    print(f"{'batch':>8s} {'compile s':>10s} {'eager ms/step':>14s} {'compiled ms/step':>17s} {'ratio(min)':>10s} "
          f"{'ratio(med)':>10s} {'max |diff|':>10s}")
    for batch in (int(float(b)) for b in args.batches.split(",")):
        r = measure(batch, args)
        print(f"{r['batch']:8d} {r['compile_s']:10.2f} {r['eager_min']:7.3f}/{r['eager_med']:6.3f} "
              f"{r['comp_min']:9.3f}/{r['comp_med']:7.3f} {r['comp_min'] / r['eager_min']:10.3f} "
              f"{r['comp_med'] / r['eager_med']:10.3f} {r['max_diff']:10.2e}", flush=True)
    print(f"ms/step as min/median of {args.repeats} solves; load average after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
