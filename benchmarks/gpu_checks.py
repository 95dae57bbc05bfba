"""Checks of the fixed-grid loop on a CUDA device (issue 9, targets 3 and 6), as one short script:

1. host synchronisations: ``fs.sample`` with a fixed-step solver under
   ``torch.cuda.set_sync_debug_mode("warn")`` at 6 and at 12 steps, counting the warnings (the
   same count at both: none per step; the constant handful is the start and the summary at the
   end), then the loop alone (:func:`flowsolve.solvers.fixed.march`) under ``"error"``: any
   synchronisation inside it raises;
2. CUDA-graph capture: one fixed-grid sample's loop captured in a ``torch.cuda.CUDAGraph``,
   replayed from the same start, and compared with the eager solve (equal bits expected: the
   same kernels on the same inputs);
3. time per step of eager ``fs.sample``, ``fs.sample(..., compile=True)`` and the graph's replay,
   at batch 256 and 100k, with the MLP denoiser of ``benchmarks/overhead.py`` (float32).

On a machine without CUDA it prints why and exits 0.

    python benchmarks/gpu_checks.py [--solvers euler,heun,dpmpp_2m] [--steps 10] [--repeats 5] [--no-compile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _setup(solver: str, batch: int, steps: int, dev):
    import flowsolve as fs
    from overhead import make_denoiser
    fn, event = make_denoiser("mlp", torch.float32)
    fn = fn.to(dev)
    process = fs.EDM()
    field = fs.Field.from_denoiser(process, fn, event_shape=event)
    x0 = process.prior_sample(batch, event, generator=torch.Generator().manual_seed(0), dtype=torch.float32).to(dev)
    return fs, process, field, x0


def count_syncs(solver: str, steps: int, dev) -> list[int]:
    fs, process, field, x0 = _setup(solver, 256, steps, dev)
    counts = []
    for n_steps in (steps, 2 * steps):
        fs.sample(process, field, 256, solver, steps=n_steps, x_init=x0)  # warm-up: schedule memo, kernels
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fs.sample(process, field, 256, solver, steps=n_steps, x_init=x0)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in seen))
    return counts


def _loop_parts(fs, process, field, solver: str, x0, steps: int):
    """The pieces ``fs.sample`` hands to ``run_fixed_grid``: the term, the grid and the step."""
    from flowsolve.solvers import fixed
    from flowsolve.solvers.registry import get_solver
    from flowsolve.solvers.term import Term
    info = get_solver(solver)
    flow = fs.probability_flow(process, field)
    grid = fs.make_grid(process, info.default_grid, steps)
    term = Term.for_state(flow, x0, solver)
    steps_seen = {}

    def grab(term_, x, ts, step, save=None, extras=None):  # run_fixed_grid's arguments, for the capture
        steps_seen["step"] = step
        return original(term_, x, ts, step, save, extras)

    original = fixed.run_fixed_grid
    module = sys.modules[info.fn.__module__]
    module.run_fixed_grid = grab
    try:
        with torch.no_grad():
            info.fn(term, x0.clone(), grid)
    finally:
        module.run_fixed_grid = original
    return term, grid.tolist(), steps_seen["step"], fixed


def loop_without_syncs(solver: str, steps: int, dev) -> None:
    fs, process, field, x0 = _setup(solver, 256, steps, dev)
    term, grid, step, fixed = _loop_parts(fs, process, field, solver, x0, steps)
    x = x0.clone()
    faults = fixed._Faults(x)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            fixed.march(term, x, grid, faults, step)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def capture(solver: str, batch: int, steps: int, dev):
    """Capture one fixed-grid loop in a CUDA graph; return (graph, static input, static output,
    eager result)."""
    fs, process, field, x0 = _setup(solver, batch, steps, dev)
    with torch.no_grad():
        eager = fs.sample(process, field, batch, solver, steps=steps, x_init=x0).x
        term, grid, step, fixed = _loop_parts(fs, process, field, solver, x0, steps)
        static_x = x0.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graphs asks
            for _ in range(2):
                fixed.march(term, static_x.clone(), grid, fixed._Faults(static_x), step)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            faults = fixed._Faults(static_x)
            static_out = fixed.march(term, static_x, grid, faults, step)
    return graph, static_x, static_out, eager, (fs, process, field, x0)


def _per_step(fn, steps: int, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - start) / steps)
    return min(times), statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--solvers", default="euler,heun,dpmpp_2m")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="256,100000")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile=True timings")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device here (torch.cuda.is_available() is False): nothing to check; run this script on a "
              "machine with a GPU")
        return 0
    dev = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(dev)}")
    ok = True
    for solver in args.solvers.split(","):
        counts = count_syncs(solver, args.steps, dev)
        same = counts[0] == counts[1]
        ok &= same
        try:
            loop_without_syncs(solver, args.steps, dev)
            loop = "none in the loop"
        except RuntimeError as err:
            ok, loop = False, f"loop synchronises: {str(err).splitlines()[0]}"
        print(f"{solver}: host syncs per fs.sample {counts[0]} at {args.steps} steps, {counts[1]} at "
              f"{2 * args.steps} ({'none per step' if same else 'PER STEP'}); {loop}", flush=True)
    print(f"{'solver':10s} {'batch':>7s} {'graph==eager':>12s} {'eager ms/step':>14s} {'compiled':>10s} "
          f"{'graph':>10s}")
    for solver in args.solvers.split(","):
        for batch in (int(float(b)) for b in args.batches.split(",")):
            try:
                graph, static_x, static_out, eager, (fs, process, field, x0) = capture(solver, batch, args.steps, dev)
            except Exception as err:  # noqa: BLE001 -- report and go on with the next case
                ok = False
                print(f"{solver:10s} {batch:7d} capture failed: {type(err).__name__}: {str(err).splitlines()[0]}")
                continue
            static_x.copy_(x0)
            graph.replay()
            torch.cuda.synchronize()
            equal = torch.equal(static_out, eager)
            diff = float((static_out - eager).abs().max())
            ok &= diff <= 1e-5 * float(eager.abs().max())  # equal bits expected; cuBLAS may pick another kernel
            with torch.no_grad():
                e = _per_step(lambda: fs.sample(process, field, batch, solver, steps=args.steps, x_init=x0),
                              args.steps, args.repeats)
                c = (float("nan"), float("nan"))
                if not args.no_compile:
                    fs.sample(process, field, batch, solver, steps=args.steps, x_init=x0, compile=True)  # compile
                    c = _per_step(lambda: fs.sample(process, field, batch, solver, steps=args.steps, x_init=x0,
                                                    compile=True), args.steps, args.repeats)
                g = _per_step(graph.replay, args.steps, args.repeats)
            same = f"{equal} {diff:.1e}"
            print(f"{solver:10s} {batch:7d} {same:>12s} {e[0]:7.3f}/{e[1]:6.3f} {c[0]:6.3f}/{c[1]:6.3f} "
                  f"{g[0]:6.3f}/{g[1]:6.3f}", flush=True)
    print("ms/step as min/median of", args.repeats, "runs;", "all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
