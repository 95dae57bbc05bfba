"""What one bench cell costs besides its solve, and why the harness runs cells on one thread.

Prints, median over ``--repeats`` runs:
1. a small elementwise op (``torch.log`` on 4096 float64 numbers) and one exact ring-field
   denoiser call on 256 points, with torch's default thread count and with one thread (the
   bench's ``threads=1``): the pool gains nothing on these sizes and costs much when the
   cores are busy (run it beside a busy process to see);
2. sliced Wasserstein (POT, 256 end points against 2048 data points) at 128 directions (the
   bench's ``SLICED_PROJECTIONS``) and at 256, and the energy distance (geomloss);
3. an exact 1-D reference (``modes5_1d_pfgmpp_d128``, the quantile map), which
   ``Problem.reference`` computes once and then keeps for every cell.

    python benchmarks/bench_cell_costs.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm up (imports, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    import flowsolve as fs
    from flowsolve.bench import metrics
    from flowsolve.bench.problems import load_problem
    from flowsolve.bench.references import compute_reference

    small = torch.rand(4096, dtype=torch.float64) + 1
    field = fs.exact_field(fs.EDM(), fs.toy.ring())
    points = 3 * torch.randn(256, 2, dtype=torch.float64)
    default_threads = torch.get_num_threads()
    print(f"{'what':58s} {'threads':>7s} {'median':>12s}")
    for threads in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        for label, fn in (("torch.log, 4096 float64", lambda: torch.log(small)),
                          ("exact ring denoiser, 256 points", lambda: field.denoiser(points, 1.0))):
            print(f"{label:58s} {threads:7d} {median_seconds(fn, args.repeats) * 1e6:9.1f} us")
    torch.set_num_threads(1)
    x = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.randn(2048, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for k in (metrics.SLICED_PROJECTIONS, 256):
        seconds = median_seconds(lambda: metrics.sliced_wasserstein(x, y, n_projections=k), args.repeats)
        print(f"{f'sliced Wasserstein, {k} directions, 256 vs 2048':58s} {1:7d} {seconds * 1e3:9.1f} ms")
    seconds = median_seconds(lambda: metrics.energy_distance(x, y), args.repeats)
    print(f"{'energy distance, 256 vs 2048':58s} {1:7d} {seconds * 1e3:9.1f} ms")
    problem = load_problem("modes5_1d_pfgmpp_d128")
    seconds = median_seconds(lambda: compute_reference(problem, 0, None), max(3, args.repeats // 5))
    print(f"{'exact 1-D reference (modes5_1d_pfgmpp_d128), computed':58s} {1:7d} {seconds * 1e3:9.1f} ms")
    problem.reference(0)
    seconds = median_seconds(lambda: problem.reference(0), args.repeats)
    print(f"{'the same, kept by Problem.reference':58s} {1:7d} {seconds * 1e6:9.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
