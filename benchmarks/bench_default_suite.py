"""Wall time of ``flowsolve bench`` on its default suite, cold and warm.

Cold: a fresh reference cache and a fresh output directory, so the adaptive references are
computed and every cell runs. Warm: the same command again, so references come from the cache
and every cell is read back from ``out/cells``. Each run is the real command in a fresh
process (``python -m flowsolve bench``), interpreter start-up and imports included; with
``--no-resume`` the warm run reruns every cell (references still cached). The issue's target is
under 60 s cold on a 2-core CPU.

    python benchmarks/bench_default_suite.py [--repeats 1] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def timed(argv, env) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flowsolve", "bench", *argv], env=env, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"flowsolve bench {' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="cold/warm pairs to time (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="--workers of the bench (default 1)")
    args = parser.parse_args()
    print(f"{'run':>4s} {'cold s':>8s} {'warm s':>8s} {'rerun s':>8s}   (cpus: {os.cpu_count()}, workers: "
          f"{args.workers})")
    for k in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "FLOWSOLVE_CACHE": os.path.join(tmp, "cache")}
            common = ["--out", os.path.join(tmp, "out"), "--workers", str(args.workers)]
            cold = timed(common, env)
            warm = timed(common, env)
            rerun = timed(common + ["--no-resume"], env)
        print(f"{k:4d} {cold:8.1f} {warm:8.1f} {rerun:8.1f}")
    print("cold: references computed, every cell run; warm: every cell read back; rerun: cells run again, "
          "references cached")
    return 0


if __name__ == "__main__":
    sys.exit(main())
