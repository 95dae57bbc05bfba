"""The ``flowsolve`` command.

``flowsolve bench`` measures error against NFE: with no arguments, on the embedded default
suite; else on the named problems (``flowsolve problems`` lists them) or problem files. It
prints the table and writes CSV, JSON and one PNG per problem (``--out``, default
``./flowsolve-results``). ``flowsolve sample PROBLEM`` draws samples of a problem with one
solver and saves them (.npy or .pt), with a scatter or histogram PNG for 1-D and 2-D data.

``flowsolve demo`` is a fast tour of the toolkit, printing what it measured:
1. samples carried from each process's prior to t_min along the exact probability-flow ODE
   of Gaussian data, whose end point is known in closed form, by torchdiffeq's dopri5 (a
   peer library) and by flowsolve's dopri5, dpmpp_3m and heun: NFE, field evaluations
   requested outside [t_min, t_max], and the max error against the exact end point
   (PFGM++ has no closed form: its reference is flowsolve's dopri5 at rtol 1e-10);
2. the D -> infinity limit: the PFGM++ ODE drift against EDM's, per D.

``flowsolve solvers`` lists the registered solvers (name, category, order, NFE per step,
options); ``flowsolve --version`` prints the version; ``python -m flowsolve`` is the same
command. Every user error is one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import flowsolve as fs
from flowsolve.testing.references import gaussian_flow_map


def _torchdiffeq_dopri5(flow, process, x_init, rtol, atol):
    """torchdiffeq's dopri5 on the same flow; returns the end point, NFE and the number of
    evaluations it requested outside the span (clamped into it, else the field refuses)."""
    from torchdiffeq import odeint

    nfe = outside = 0

    def rhs(t, x):
        nonlocal nfe, outside
        nfe += 1
        t = float(t)
        if not process.t_min <= t <= process.t_max:
            outside += 1
            t = min(max(t, process.t_min), process.t_max)
        return flow.drift(x, t)

    ts = torch.tensor([process.t_max, process.t_min], dtype=torch.float64)
    return odeint(rhs, x_init, ts, method="dopri5", rtol=rtol, atol=atol)[-1], nfe, outside


def demo(n: int = 2000, seed: int = 0, out=None) -> int:
    out = out or sys.stdout  # looked up per call: a default bound at import outlives a swapped stdout
    data = fs.toy.Gaussian([1.0, -2.0], [[1.0, 0.5], [0.5, 0.75]])
    rtol, atol = 1e-6, 1e-8
    print(f"data N(mean={data.mean().tolist()}, cov={data.covariance().tolist()}); {n} samples, seed {seed}", file=out)
    print(f"prior -> data along the exact probability-flow ODE; adaptive runs at rtol={rtol}, atol={atol}", file=out)
    print(f"{'process':30s} {'solver':22s} {'NFE mean':>8s} {'NFE max':>7s} {'outside':>7s} {'max error':>10s} "
          f"{'sec':>6s}", file=out)
    processes = [("VE", fs.VE()), ("VP", fs.VP()), ("SubVP", fs.SubVP()), ("EDM", fs.EDM()),
                 ("PFGMPP(D=128)", fs.PFGMPP(D=128))]
    for name, proc in processes:
        field = fs.exact_field(proc, data)
        flow = fs.probability_flow(proc, field)
        x_init = proc.prior_std * fs.NoiseSource(seed, n, data.dim, dtype=torch.float64).kernel_noise(proc.kernel)
        if proc.kernel.name == "gaussian":
            exact, label = gaussian_flow_map(proc, data, x_init, proc.t_max, proc.t_min), ""
        else:
            exact = fs.sample(proc, field, n, "dopri5", x_init=x_init, dtype=torch.float64, rtol=1e-10, atol=1e-12).x
            label = " (vs dopri5 at 1e-10)"
        runs = [("torchdiffeq dopri5", None)]
        runs += [("dopri5", dict(rtol=rtol, atol=atol)), ("dpmpp_3m, 20 NFE", dict(nfe=20)),
                 ("heun, 40 NFE", dict(nfe=40))]
        for solver_label, opts in runs:
            start = time.perf_counter()
            if opts is None:
                x, nfe, outside = _torchdiffeq_dopri5(flow, proc, x_init, rtol, atol)
                nfe_mean, nfe_max = float(nfe), nfe
            else:
                sol = fs.sample(proc, field, n, solver_label.split(",")[0], x_init=x_init, dtype=torch.float64,
                                **opts)
                x, outside = sol.x, 0  # flowsolve never evaluates outside the span (tested)
                nfe_mean, nfe_max = float(sol.nfe.double().mean()), int(sol.nfe.max())
            err = float((x - exact).abs().max())
            print(f"{name:30s} {solver_label:22s} {nfe_mean:8.1f} {nfe_max:7d} {outside:7d} {err:10.2e} "
                  f"{time.perf_counter() - start:6.2f}{label}", file=out)
    print("\nD -> infinity: max |PFGM++ drift - EDM drift| at sigma = 1 on 256 points of the law", file=out)
    x = fs.EDM().perturb(data.sample(256, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), 1.0,
                         generator=torch.Generator().manual_seed(seed + 1))
    edm = fs.exact_field(fs.EDM(), data).velocity(x, 1.0)
    print(f"{'D':>10s} {'max error':>11s} {'error * D':>10s}", file=out)
    for D in [1e2, 1e3, 1e4, 1e5, 1e6]:
        err = float((fs.exact_field(fs.PFGMPP(D=D), data).velocity(x, 1.0) - edm).abs().max())
        print(f"{D:10.0e} {err:11.3e} {err * D:10.3f}", file=out)
    print("\nNFE: torchdiffeq counts batch evaluations (one step size for all samples); flowsolve counts per "
          "sample (one step size each).\n'outside': evaluations requested outside [t_min, t_max] "
          "(torchdiffeq's are clamped into the span).", file=out)
    return 0


def solvers(out=None) -> int:
    """One line per registered solver: name, category, order, NFE per step, options."""
    out = out or sys.stdout
    table = fs.available_solvers()
    print(f"{'solver':18s} {'category':22s} {'order':>5s} {'NFE/step':>8s}  options", file=out)
    for name, info in table.items():
        options = ", ".join(f"{k}={v!r}" for k, v in info["options"].items()) or "-"
        print(f"{name:18s} {info['category']:22s} {info['order']:5g} {info['nfe_per_step']:8d}  {options}", file=out)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line on stderr (no usage block)."""

    def error(self, message):
        raise _UserError(f"{message} (see {self.prog} --help)")


class _UserError(Exception):
    """A mistake of the user's: printed as one line, exit code 2."""


def _csv_list(kind, name):
    def parse(text):
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{name} needs a comma-separated list, got {text!r}")
        try:
            return [kind(item) for item in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a comma-separated list of {kind.__name__}s, "
                                             f"got {text!r}") from None
    return parse


def bench(problems=None, solvers=None, nfe=None, rtol=None, seeds=(0,), workers=1, out="flowsolve-results",
          resume=True, plot=True, cache=None, stream=None) -> int:
    """Run the sweep, print the table, write CSV/JSON/PNG into ``out``."""
    stream = stream or sys.stdout
    from flowsolve.bench import report
    from flowsolve.bench.harness import DEFAULT_SUITE, work_precision
    from flowsolve.bench.methods import method
    for name in solvers or ():  # named on the command line: a missing peer is an error, not a skip
        reason = method(name).unavailable()
        if reason:
            raise _UserError(f"method {name!r} cannot run: {reason}")
    if not problems:
        problems = DEFAULT_SUITE["problems"]
        solvers = solvers or DEFAULT_SUITE["methods"]
        nfe = nfe or DEFAULT_SUITE["nfe"]
        rtol = rtol or DEFAULT_SUITE["rtol"]
    start = time.perf_counter()
    results = work_precision(problems, solvers, nfe=nfe, rtol=rtol, seeds=seeds, workers=workers, out=out,
                             cache_dir=cache, resume=resume)
    print(report.format_table(results, color=stream.isatty() if hasattr(stream, "isatty") else False), file=stream)
    written = report.write_all(results, out, plots=plot)
    print(f"\n{len(results.records)} cells in {time.perf_counter() - start:.1f} s; wrote "
          f"{', '.join(str(p) for p in written)}", file=stream)
    return 0


def problems(stream=None) -> int:
    """One line per builtin problem."""
    stream = stream or sys.stdout
    from flowsolve.bench.problems import builtin_problems, load_problem
    for name in builtin_problems():
        print(str(load_problem(name)), file=stream)
    return 0


def sample(problem, solver, nfe=None, rtol=None, n=None, seed=0, out="samples.npy", stream=None) -> int:
    """Samples of ``problem`` by ``solver`` saved to ``out`` (.npy or .pt); a PNG beside it for 1-D/2-D data."""
    stream = stream or sys.stdout
    import pathlib

    from flowsolve.bench.methods import Task, method
    from flowsolve.bench.problems import load_problem
    from flowsolve.bench.report import plot_samples
    prob = load_problem(problem)
    m = method(solver)
    reason = m.unavailable() or m.unsupported(prob.process)
    if reason:
        raise _UserError(f"cannot run {m.name} on {prob.name}: {reason}")
    if m.adaptive and nfe is not None:
        raise _UserError(f"{m.name} is adaptive: give --rtol, not --nfe")
    if not m.adaptive and rtol is not None:
        raise _UserError(f"{m.name} is fixed-step: give --nfe, not --rtol")
    budget = (rtol if rtol is not None else 1e-5) if m.adaptive else (nfe if nfe is not None else 20)
    # the same ranges as flowsolve bench's, checked before any work
    if m.adaptive and not 0 < budget < 1:
        raise _UserError(f"--rtol must be a relative tolerance in (0, 1), got {budget!r}")
    if not m.adaptive and budget < m.min_budget():
        raise _UserError(f"--nfe must be at least {m.min_budget()} (one step of {m.name}), got {budget}")
    path = pathlib.Path(out)
    if path.suffix not in (".npy", ".pt"):
        raise _UserError(f"--out must end in .npy or .pt, got {out!r}")
    _writable_file(path, "--out")
    x0 = prob.x_init(seed, n)
    start = time.perf_counter()
    run = m.run(Task(prob.process, prob.field, x0, m.budget_kind, budget, seed))
    seconds = time.perf_counter() - start
    x = run.x.detach().cpu()
    try:
        if path.suffix == ".npy":
            import numpy as np
            np.save(path, x.numpy())
        else:
            torch.save(x, path)
    except OSError as err:
        raise _UserError(f"cannot write {out!r}: {err.strerror or err}") from None
    picture = plot_samples(x, prob, path.with_suffix(".png"), title=f"{prob.name}: {m.name}, "
                           f"{m.budget_kind} {budget:g}") if prob.dim <= 2 else None
    failed = int(run.failed.sum())
    print(f"{prob.name}: {x.shape[0]} samples by {m.name} ({m.budget_kind} {budget:g}): NFE mean "
          f"{float(run.nfe.double().mean()):.1f}, max {int(run.nfe.max())}, failed {failed}, "
          f"{seconds:.2f} s -> {path}{' and ' + str(picture) if picture else ''}", file=stream)
    if failed:  # the file holds where the failed samples stopped: say so, and exit non-zero
        reason = " ".join((run.message or "no reason given").split())
        print(f"flowsolve: {failed} of {x.shape[0]} samples did not reach t_min (saved where they stopped): "
              f"{reason}", file=sys.stderr)
        return 1
    return 0


def _writable_file(path, option: str) -> None:
    """Refuse (one line) an output file whose folder cannot be made, before any work."""
    import pathlib
    path = pathlib.Path(path)
    if path.is_dir():
        raise _UserError(f"{option} {str(path)!r} is a directory; give a file name")
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise _UserError(f"cannot write {option} {str(path)!r}: {str(blocker)!r} is a file, not a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _UserError(f"cannot write {option} {str(path)!r}: {err.strerror or err}") from None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flowsolve", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"flowsolve {fs.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("bench", help="error against NFE on problems, flowsolve and peers side by side")
    p.add_argument("problems", nargs="*", metavar="PROBLEM_OR_FILE",
                   help="builtin problem names (flowsolve problems) or .toml files; none: the default suite")
    p.add_argument("--solvers", type=_csv_list(str, "--solvers"), help="comma-separated methods: flowsolve solvers "
                   "(heun, heun@log_sigma, ...) and peers (torchdiffeq.rk4, ...); default: each problem's own")
    p.add_argument("--nfe", type=_csv_list(int, "--nfe"), help="NFE budgets of fixed-step methods, e.g. 10,20,40")
    p.add_argument("--rtol", type=_csv_list(float, "--rtol"), help="tolerances of adaptive methods, e.g. 1e-3,1e-5")
    p.add_argument("--seeds", type=_csv_list(int, "--seeds"), default=[0], help="start-point seeds (default 0)")
    p.add_argument("--workers", type=int, default=1, help="processes running cells (default 1)")
    p.add_argument("--out", default="flowsolve-results", help="output directory (default ./flowsolve-results)")
    p.add_argument("--cache", default=None, help="reference cache (default $FLOWSOLVE_CACHE or "
                   "~/.cache/flowsolve/references)")
    p.add_argument("--no-resume", action="store_true", help="run every cell again instead of reading saved ones")
    p.add_argument("--no-plot", action="store_true", help="write CSV and JSON only")
    sub.add_parser("problems", help="list the builtin problems, one line each")
    sub.add_parser("solvers", help="list the registered solvers: category, order, NFE per step, options")
    p = sub.add_parser("sample", help="draw samples of a problem with one solver and save them")
    p.add_argument("problem", metavar="PROBLEM_OR_FILE")
    p.add_argument("--solver", default="heun", help="method name (default heun)")
    p.add_argument("--nfe", type=int, help="NFE budget (fixed-step; default 20)")
    p.add_argument("--rtol", type=float, help="tolerance (adaptive; default 1e-5)")
    p.add_argument("--n", type=int, help="number of samples (default: the problem's)")
    p.add_argument("--seed", type=int, default=0, help="start-point seed (default 0)")
    p.add_argument("--out", default="samples.npy", help="output file, .npy or .pt (default samples.npy)")
    p = sub.add_parser("demo", help="a fast tour: exact flows of every process, torchdiffeq and flowsolve")
    p.add_argument("--n", type=int, default=2000, help="number of samples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def _run(args) -> int:
    if args.command == "bench":
        return bench(args.problems, args.solvers, args.nfe, args.rtol, args.seeds, args.workers, args.out,
                     not args.no_resume, not args.no_plot, args.cache)
    if args.command == "problems":
        return problems()
    if args.command == "solvers":
        return solvers()
    if args.command == "sample":
        if args.n is not None and args.n < 1:
            raise _UserError(f"--n must be >= 1, got {args.n}")
        return sample(args.problem, args.solver, args.nfe, args.rtol, args.n, args.seed, args.out)
    if args.n < 2:
        raise _UserError(f"--n must be >= 2, got {args.n}")
    return demo(n=args.n, seed=args.seed)


def main(argv=None) -> int:
    command = None
    try:
        args = _parser().parse_args(argv)
        command = args.command
        return _run(args)
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        hint = " (saved cells are kept; run the same command again to resume)" if command == "bench" else ""
        print(f"flowsolve: interrupted{hint}", file=sys.stderr)
        return 130
    except (_UserError, ValueError, OSError, ImportError, RuntimeError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"flowsolve: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
