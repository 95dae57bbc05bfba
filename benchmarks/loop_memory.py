"""Peak memory of the sampler alone (issue 9, target 5): ``fs.sample`` with a denoiser that returns
zeros, so what is measured is the prior draw, the solver loop and its temporaries, not a field.

Cases: ``SOLVER@SIZE`` with SIZE ``ring`` (n = 1e6 samples of d = 2) or ``image`` (n = 1e4 samples
of 3x32x32), float32, 10 steps on the default grid (the peak does not grow with the steps: nothing
is kept per step). Each case runs in a fresh subprocess, so ``ru_maxrss`` is that case's own peak;
``extra`` is the peak less the RSS just before ``fs.sample`` (imports, the field and the process are
in, and a solve of 8 samples has run, so that the code pages of the kernels it uses, counted in RSS
when first touched, are in too), given in MiB and over the state's bytes (n * d * 4). The zero
denoiser itself allocates one state per call (its output), which any field costs. By default the
children run with glibc's ``MALLOC_MMAP_THRESHOLD_`` at 64 KiB, so that every tensor larger than
that is its own mapping and the peak RSS is the peak of the live tensors; glibc's dynamic threshold
otherwise serves freed state-sized blocks from the heap, whose fragmentation adds a few states that
vary from run to run. The Solution's per-sample records (nfe, n_steps, t, fault: 8 bytes each per
sample) cost as much as a d = 2 float32 state each, so the ring's ratio carries about four states of
them.

``--against REV`` also runs every case with the whole ``flowsolve`` package as of git revision REV
(extracted to a temporary folder and put first on the child's path), side by side.

    python benchmarks/loop_memory.py [--cases euler@ring,heun@ring,dpmpp_2m@ring,euler@image,...]
        [--against REV] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"ring": (1_000_000, (2,)), "image": (10_000, (3, 32, 32))}
DEFAULT = ",".join(f"{s}@{size}" for size in SIZES for s in ("euler", "heun", "dpmpp_2m"))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_case(case: str, steps: int) -> dict:
    import torch

    import flowsolve as fs
    torch.set_num_threads(1)
    solver, size = case.split("@")
    n, event = SIZES[size]
    process = fs.EDM()
    field = fs.Field.from_denoiser(process, lambda x, t: torch.zeros_like(x), event_shape=event)
    state = n * int(torch.tensor(event).prod()) * 4
    # a small solve first: the code pages of the kernels used (tens of MiB of libtorch) count in RSS
    # when first touched, and they are not the sampler's memory
    fs.sample(process, field, 8, solver, steps=steps, dtype=torch.float32)
    before = _rss_mib()
    start = time.perf_counter()
    sol = fs.sample(process, field, n, solver, steps=steps, dtype=torch.float32)
    seconds = time.perf_counter() - start
    assert sol.x.shape == (n, *event) and bool(torch.isfinite(sol.x).all())
    peak = _rss_mib()
    return dict(case=case, extra_mib=peak - before, state_mib=state / 2**20, seconds=seconds)


def in_subprocess(case: str, steps: int, package_root: str, mmap_threshold: int) -> dict:
    env = dict(os.environ, PYTHONPATH=package_root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    done = subprocess.run([sys.executable, __file__, "--child", case, "--steps", str(steps)], capture_output=True,
                          text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        sys.exit(f"case {case} failed ({done.returncode}):\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=DEFAULT, help="SOLVER@SIZE, comma-separated; sizes: ring, image")
    parser.add_argument("--against", metavar="REV", help="also run the flowsolve package as of this git revision")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--malloc-mmap-threshold", type=int, default=65536,
                        help="glibc's MALLOC_MMAP_THRESHOLD_ in the children (default 64 KiB: every large "
                             "tensor is its own mapping, so RSS follows the live tensors rather than heap "
                             "fragmentation); 0 leaves glibc's dynamic default")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.steps)))
        return 0
    versions = [("current", str(ROOT))]
    tmp = None
    if args.against:
        tmp = tempfile.TemporaryDirectory()
        archive = subprocess.run(["git", "archive", args.against, "flowsolve"], cwd=ROOT, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp.name], input=archive, check=True)
        versions.insert(0, (args.against, tmp.name))
    print(f"{os.cpu_count()} cpus, 1 thread; load average {os.getloadavg()[0]:.2f}; {args.steps} steps, float32, "
          f"zero denoiser; MALLOC_MMAP_THRESHOLD_={args.malloc_mmap_threshold or 'glibc default'}")
    print(f"{'case':16s} {'version':>10s} {'extra MiB':>10s} {'state MiB':>10s} {'extra/state':>12s} {'seconds':>8s}")
    try:
        for case in args.cases.split(","):
            for label, root in versions:
                r = in_subprocess(case, args.steps, root, args.malloc_mmap_threshold)
                print(f"{case:16s} {label:>10s} {r['extra_mib']:10.1f} {r['state_mib']:10.2f} "
                      f"{r['extra_mib'] / r['state_mib']:12.2f} {r['seconds']:8.2f}", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print("extra: peak RSS less the RSS before fs.sample; the zero denoiser's output (one state per call) included")
    return 0


if __name__ == "__main__":
    sys.exit(main())
