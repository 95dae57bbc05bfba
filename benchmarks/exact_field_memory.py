"""Peak memory and time of the exact Gaussian-kernel fields (``flowsolve.toy.exact``).

Cases (each in a fresh subprocess, so that ``ru_maxrss`` is the peak of that case alone):

* ``ring``: ``fs.sample(fs.EDM(), fs.exact_field(fs.EDM(), fs.toy.ring()), 1e6, "euler",
  steps=20, dtype=torch.float32)``: 8 isotropic modes, d = 2.
* ``image``: the same sampler on a 3x32x32 8-component diagonal mixture (means ~ N(0, 1), stds
  uniform in [0.1, 0.5], seed 0), n = 1e4.
* ``full64``: ``fs.exact_field(fs.EDM(), fs.toy.random_mixture(64, 4)).denoiser`` on 256 float64
  points (full covariances: the rotations into each component's eigenbasis), sigma = 0.5; the
  time is the median of ``--calls`` calls.
* ``reference64``: the bench's reference for ``mixture64d_edm`` (128 samples of the same 64-D
  law, two dopri5 solves at rtol 1e-10 / 1e-9, about 850 NFE per sample each), computed into an
  empty cache: the "7-90 s" of the issue.
* ``ring-floor`` / ``image-floor``: the sampler alone, with a denoiser that returns zeros
  (``fs.Field.from_denoiser``): the state and the stages that any field costs.

Columns: peak RSS of the process; ``extra``, the peak less the RSS just before the timed work
(imports, the law, the field and the points are already in); ``extra`` over the state's bytes
(n * d * itemsize); and seconds. Peak RSS comes from ``resource.getrusage`` (torch's allocations
are invisible to tracemalloc).

``--against REV`` also runs every case with ``flowsolve/toy/exact.py`` as of git revision REV
(loaded by path as ``flowsolve.toy._exact_rev``, the rest of the package as checked out), to
compare before/after in one run; ``--exact PATH`` does the same for a file.

    python benchmarks/exact_field_memory.py [--cases ring,image,full64,ring-floor,image-floor]
        [--against REV | --exact PATH] [--calls 20] [--threads N] [--chunk-mib 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ("ring", "image", "full64", "reference64", "ring-floor", "image-floor")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _exact_module(path: str | None):
    if path is None:
        import flowsolve.toy.exact as module
        return module
    import importlib.util

    import flowsolve.toy  # noqa: F401  (the package the relative imports resolve in)
    spec = importlib.util.spec_from_file_location("flowsolve.toy._exact_rev", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _image_law():
    import torch

    import flowsolve as fs
    g = torch.Generator().manual_seed(0)
    k, shape = 8, (3, 32, 32)
    n = 3 * 32 * 32
    means = torch.randn(k, n, generator=g, dtype=torch.float64)
    stds = 0.1 + 0.4 * torch.rand(k, n, generator=g, dtype=torch.float64)
    return fs.toy.GaussianMixture(means, stds, event_shape=shape)


def run_case(case: str, exact_path: str | None, calls: int, threads: int | None, chunk_mib: float | None) -> dict:
    import torch

    import flowsolve as fs
    if threads:
        torch.set_num_threads(threads)
    exact = _exact_module(exact_path)
    if chunk_mib is not None:
        exact._CHUNK_BYTES = int(chunk_mib * 2**20)
    process = fs.EDM()
    if case in ("ring", "image", "ring-floor", "image-floor"):
        law = fs.toy.ring() if case.startswith("ring") else _image_law()
        n = 1_000_000 if case.startswith("ring") else 10_000
        if case.endswith("floor"):
            field = fs.Field.from_denoiser(process, lambda x, t: torch.zeros_like(x), event_shape=law.event_shape)
        else:
            field = exact.exact_field(process, law)
        state = n * law.dim * 4
        before = _rss_mib()
        start = time.perf_counter()
        sol = fs.sample(process, field, n, "euler", steps=20, dtype=torch.float32)
        seconds = time.perf_counter() - start
        assert sol.x.shape == (n, *law.event_shape) and bool(torch.isfinite(sol.x).all())
    elif case == "full64":
        law = fs.toy.random_mixture(64, 4)
        field = exact.exact_field(process, law)
        x = process.perturb(law.sample(256, generator=torch.Generator().manual_seed(1), dtype=torch.float64), 0.5,
                            generator=torch.Generator().manual_seed(2))
        state = x.numel() * x.element_size()
        before = _rss_mib()
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            field.denoiser(x, 0.5)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
    elif case == "reference64":
        from flowsolve.bench.problems import load_problem
        from flowsolve.bench.references import compute_reference
        problem = load_problem("mixture64d_edm")
        problem._field = exact.exact_field(problem.process, problem.data)  # the version under test
        state = problem.n * problem.dim * 8
        before = _rss_mib()
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            compute_reference(problem, 0, cache_dir=cache)
            seconds = time.perf_counter() - start
    else:
        raise ValueError(f"unknown case {case!r}; known: {', '.join(CASES)}")
    peak = _rss_mib()
    return dict(case=case, peak_mib=peak, extra_mib=peak - before, state_mib=state / 2**20, seconds=seconds)


def in_subprocess(case: str, exact_path: str | None, calls: int, threads: int | None,
                  chunk_mib: float | None) -> dict:
    argv = [sys.executable, __file__, "--child", case, "--calls", str(calls)]
    argv += ["--exact", exact_path] if exact_path else []
    argv += ["--threads", str(threads)] if threads else []
    argv += ["--chunk-mib", str(chunk_mib)] if chunk_mib is not None else []
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"case {case} failed ({done.returncode}):\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--against", metavar="REV", help="also run flowsolve/toy/exact.py as of this git revision")
    parser.add_argument("--exact", metavar="PATH", help="also run this copy of exact.py (with --child: only it)")
    parser.add_argument("--calls", type=int, default=20, help="denoiser calls timed in full64 (median)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--chunk-mib", type=float, help="set exact._CHUNK_BYTES (MiB) of the current version")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.exact, args.calls, args.threads, args.chunk_mib)))
        return 0
    versions = [("current", None)]
    tmp = None
    if args.against:
        source = subprocess.run(["git", "show", f"{args.against}:flowsolve/toy/exact.py"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
        tmp = tempfile.NamedTemporaryFile("w", suffix="_exact.py", delete=False)
        tmp.write(source)
        tmp.close()
        versions.insert(0, (args.against, tmp.name))
    elif args.exact:
        versions.insert(0, (os.path.basename(args.exact), os.path.abspath(args.exact)))
    import torch
    print(f"torch {torch.__version__}, {os.cpu_count()} cpus, threads {args.threads or torch.get_num_threads()}")
    print(f"{'case':12s} {'version':>12s} {'peak MiB':>9s} {'extra MiB':>10s} {'state MiB':>10s} "
          f"{'extra/state':>12s} {'seconds':>9s}")
    try:
        for case in args.cases.split(","):
            for label, path in versions if not case.endswith("floor") else versions[-1:]:
                r = in_subprocess(case, path, args.calls, args.threads, None if path else args.chunk_mib)
                print(f"{case:12s} {label if not case.endswith('floor') else '-':>12s} {r['peak_mib']:9.0f} "
                      f"{r['extra_mib']:10.0f} {r['state_mib']:10.2f} {r['extra_mib'] / r['state_mib']:12.1f} "
                      f"{r['seconds']:9.3f}", flush=True)
    finally:
        if tmp is not None:
            os.unlink(tmp.name)
    print("extra: peak RSS less the RSS before the timed work; full64 seconds: median per denoiser call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
