"""Cost of flowsolve's per-sample noise against ``torch.randn`` of the same shape and dtype on the
same device (issue 9, target 4: <= 1.5x), and what the noise adds to fixed-step stochastic solvers
(target 3: <= 1.10x the bare field evaluations at batch 256, <= 1.02x at batch 100k).

Part 1, noise: for each size ``N x D`` and dtype, three methods timed back to back, ``--repeats``
times in a rotating order: ``NoiseSource.randn()`` with the default counter-based scheme
(``philox``), with the previous per-block CPU generators (``blocks``), and ``torch.randn``. A
source is fresh for each timing and makes ``--draws`` successive draws (a draw of D = 2 normals
uses half of a Philox block and the next draw the other half, so single draws would flatter or
penalise it); times are per draw. Printed: min and median ms per draw, the ratio of the minima to
randn's, the median of the paired ratios, and whether <= 1.5x is met.

Part 2, stochastic solvers: ``euler_maruyama`` and ``edm_stochastic`` (EDM, Karras grid) with a
small MLP denoiser (benchmarks/overhead.py's ``mlp``: 2 hidden layers of 64, d = 2) through
``fs.solve`` with each noise scheme, against a loop of the same number of bare denoiser
calls on the same batch (no noise, no update): ratio = solver / bare, interleaved, min and median.

    python benchmarks/noise_speed.py [--sizes 1000000x2,10000x3072] [--dtypes float32,float64]
        [--repeats 5] [--draws 4] [--batches 256,100000] [--steps 20] [--threads N] [--device cpu]
        [--skip-solvers]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

import flowsolve as fs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import make_denoiser  # noqa: E402  (the same small MLP denoiser as the overhead table)

TARGET_NOISE = 1.5
TARGET_SOLVER = {256: 1.10}  # batch >= 100k: 1.02


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def noise_methods(n, d, dtype, device, draws):
    def source(scheme):
        def run():
            src = fs.NoiseSource(0, n, d, dtype=dtype, device=device, scheme=scheme)
            for _ in range(draws):
                src.randn()
        return run

    def randn():
        for _ in range(draws):
            torch.randn(n, d, dtype=dtype, device=device)
    return {"philox": source("philox"), "blocks": source("blocks"), "torch.randn": randn}


def measure_noise(args, device):
    print(f"\n== noise: ms per draw (min / median of {args.repeats}), {args.draws} draws per timing ==")
    print(f"{'size':>14} {'dtype':>8} {'method':>12} {'min ms':>9} {'med ms':>9} {'x randn':>8} {'med x':>7}  target")
    for size in args.sizes.split(","):
        n, d = (int(float(v)) for v in size.split("x"))
        for dtype_name in args.dtypes.split(","):
            dtype = getattr(torch, dtype_name)
            methods = noise_methods(n, d, dtype, device, args.draws)
            for run in methods.values():  # warm up
                run()
            times = {name: [] for name in methods}
            order = list(methods)
            for r in range(args.repeats):
                for name in order[r % len(order):] + order[:r % len(order)]:
                    times[name].append(_timed(methods[name], device) / args.draws)
            base = times["torch.randn"]
            for name, ts in times.items():
                ratio = min(ts) / min(base)
                paired = statistics.median(t / b for t, b in zip(ts, base))
                verdict = "" if name == "torch.randn" else ("met" if ratio <= TARGET_NOISE else "NOT met")
                print(f"{size:>14} {dtype_name:>8} {name:>12} {1e3 * min(ts):9.3f} {1e3 * statistics.median(ts):9.3f} "
                      f"{ratio:8.2f} {paired:7.2f}  {verdict}", flush=True)


def measure_solvers(args, device):
    print(f"\n== stochastic solvers / bare denoiser calls (min / median of paired ratios, {args.repeats} repeats) ==")
    print(f"{'batch':>8} {'solver':>15} {'noise':>7} {'calls':>6} {'solver ms':>10} {'bare ms':>9} {'ratio':>6} "
          f"{'med':>6}  target")
    process = fs.EDM()
    net, event = make_denoiser("mlp", torch.float32)
    net = net.to(device)
    field = fs.Field.from_denoiser(process, net, event_shape=event)
    flow = fs.reverse_sde(process, field)
    ts = fs.make_grid(process, "karras", args.steps)
    for batch in (int(float(b)) for b in args.batches.split(",")):
        x0 = process.prior_sample(batch, event, generator=torch.Generator().manual_seed(1)).to(device)
        sigma = torch.ones(batch, device=device)
        runs = {}
        for solver in ("euler_maruyama", "edm_stochastic"):
            calls = fs.solve(flow, x0, ts, solver, noise=fs.NoiseSource(0, batch, event, device=device)).nfe.max()
            calls = int(calls)

            def bare(calls=calls):
                for _ in range(calls):
                    net(x0, sigma)
            for scheme in ("philox", "blocks"):
                def run(solver=solver, scheme=scheme):
                    fs.solve(flow, x0, ts, solver, noise=fs.NoiseSource(0, batch, event, device=device, scheme=scheme))
                runs[(solver, scheme)] = (run, bare, calls)
        with torch.no_grad():
            for run, bare, _ in runs.values():
                run(), bare()
            times = {key: ([], []) for key in runs}
            order = list(runs)
            for r in range(args.repeats):
                for key in order[r % len(order):] + order[:r % len(order)]:
                    run, bare, _ = runs[key]
                    times[key][0].append(_timed(run, device))
                    times[key][1].append(_timed(bare, device))
        target = TARGET_SOLVER.get(batch, 1.02 if batch >= 100_000 else None)
        for (solver, scheme), (st, bt) in times.items():
            ratio = min(st) / min(bt)
            paired = statistics.median(s / b for s, b in zip(st, bt))
            verdict = "" if target is None else (f"<= {target}: " + ("met" if ratio <= target else "NOT met"))
            print(f"{batch:>8} {solver:>15} {scheme:>7} {runs[(solver, scheme)][2]:>6} {1e3 * min(st):10.2f} "
                  f"{1e3 * min(bt):9.2f} {ratio:6.2f} {paired:6.2f}  {verdict}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000x2,10000x3072")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--batches", default="256,100000")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-solvers", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} cpus, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start")
    measure_noise(args, device)
    if not args.skip_solvers:
        measure_solvers(args, device)
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    print(f"\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end")


if __name__ == "__main__":
    main()
