"""The work-precision harness: every (problem, method, budget, seed) cell run from the same
start points, measured against the problem's reference and data law.

A cell is an independent, deterministic task. Its result is a JSON file named by the
content hash of what it depends on (the problem's fingerprint and its metrics settings, the
method's name and configuration, the budget, the seed, ``atol_factor``, and the versions of
flowsolve, torch, the method's library and the metrics' libraries), so a sweep runs on several
processes (``workers=``), resumes from the files an interrupted sweep left in ``out``, and
can be spread over a cluster by anything that runs :func:`run_cell` on :func:`plan` 's cells.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import pathlib
import platform
import signal
import sys
import time
from collections import defaultdict

import torch

from .._validation import check_int, check_positive
from .methods import Method, Task, method as resolve_method
from .records import DISTRIBUTION_METRICS, ENDPOINT_METRICS, Results

# Bumped when what a cell measures changes, so saved cells of an older harness are not reused.
# 2: the key holds the metrics settings, the method's configuration, torch's and the metric
# libraries' versions; a cell whose every sample failed has no metrics. 3: per-sample noise comes
# from the counter-based Philox streams, so every start point and stochastic cell changed.
HARNESS_VERSION = 3


@dataclasses.dataclass(frozen=True)
class Cell:
    """One unit of work: ``method`` on ``problem`` (a builtin name or a file path, so that a
    worker process can load it) with one budget and one seed. ``metrics``: the problem's
    metrics settings (which metrics, how many data samples: the fingerprint leaves them out, the
    record depends on them); ``settings``: the method's
    :meth:`~flowsolve.bench.methods.Method.settings` as canonical JSON."""

    problem: str
    fingerprint: str
    method: str
    budget_kind: str
    budget: float
    seed: int
    atol_factor: float
    versions: tuple
    metrics: tuple = ()
    settings: str = "{}"

    @property
    def key(self) -> str:
        """The content hash: everything the result depends on (the problem by its fingerprint,
        not by where its file lies)."""
        content = {k: v for k, v in dataclasses.asdict(self).items() if k != "problem"}
        blob = json.dumps(content, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _problem(spec):
    from .problems import Problem, load_problem
    return spec if isinstance(spec, Problem) else load_problem(spec)


def _problems(problems) -> list:
    if problems is None:
        raise ValueError("problems must be a problem, a builtin name, a .toml path, or a list of them, got None")
    if isinstance(problems, (str, os.PathLike)) or not hasattr(problems, "__iter__"):
        problems = [problems]
    out = [_problem(p) for p in problems]
    if not out:
        raise ValueError("problems is empty: name at least one (flowsolve problems lists them)")
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise ValueError(f"problems must have distinct names, got {names}")
    return out


def _method_list(methods) -> list | None:
    """``methods`` as a list of distinct names or Method objects (one name or object is a list of one)."""
    if methods is None:
        return None
    methods = [methods] if isinstance(methods, (str, Method)) else list(methods)
    if all(isinstance(m, (str, Method)) for m in methods):  # else method() says what is wrong
        methods = list(dict.fromkeys(methods))
    if not methods:
        raise ValueError("methods is empty: name at least one (flowsolve solvers lists flowsolve's; peers are "
                         "library.solver), or None for each problem's own")
    return methods


def _metrics_key(problem) -> tuple:
    """What a record's metrics depend on beyond the fingerprint (which leaves [metrics] out) and
    the versions: the problem's metrics settings and the metrics' own parameters."""
    from .metrics import SLICED_PROJECTIONS
    return (("endpoint", tuple(problem.endpoint_metrics)), ("distribution", tuple(problem.distribution_metrics)),
            ("data_samples", int(problem.data_samples)), ("sliced_projections", SLICED_PROJECTIONS))


def _distribution_versions() -> tuple:
    """The metric libraries' versions ("missing" when not installed: the record then lacks that
    metric, and must be measured again once the library is there)."""
    from importlib import metadata
    out = []
    for dist in ("POT", "geomloss"):
        try:
            out.append((dist, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            out.append((dist, "missing"))
    return tuple(out)


def _budgets(name: str, values, kind: str) -> tuple:
    if values is None:
        return None
    values = [values] if isinstance(values, (int, float)) else list(values)
    if not values:
        raise ValueError(f"{name} is empty: give at least one budget")
    if kind == "nfe":
        return tuple(dict.fromkeys(check_int(f"{name}[{i}]", v, 1) for i, v in enumerate(values)))
    out = tuple(check_positive(f"{name}[{i}]", v) for i, v in enumerate(values))
    for i, v in enumerate(out):
        if v >= 1:
            raise ValueError(f"{name}[{i}] must be a relative tolerance in (0, 1), got {v!r}")
    return tuple(dict.fromkeys(out))  # a budget given twice is one cell, not two records of it


_IN_MEMORY = "<memory>:"


def _problem_ref(problem) -> str:
    """How a worker finds the problem again: its file's path (builtins are files too); a problem
    parsed from a string has none and runs in the sweep's own process."""
    source = getattr(problem, "source", None)
    if source and pathlib.Path(str(source)).is_file():
        return str(pathlib.Path(str(source)).resolve())
    return _IN_MEMORY + problem.name


def plan(problems, methods=None, *, nfe=None, rtol=None, seeds=(0,), atol_factor: float = 1e-2):
    """``(problems, cells, notes, methods)``: the problems, the cells of a sweep, the notes on
    methods that will not run, and the methods by name (a user's own :class:`Method` object
    is in no registry, so the sweep hands it to :func:`run_cell` itself).

    Per problem, ``methods`` default to the problem's ``[bench] solvers``, ``nfe``/``rtol`` to its
    budgets. A method whose library is missing or which cannot run the problem's process is
    left out with a note. Fixed-step budgets below a method's smallest step are left out too."""
    problems = _problems(problems)
    methods = _method_list(methods)
    nfe, rtol = _budgets("nfe", nfe, "nfe"), _budgets("rtol", rtol, "rtol")
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    seeds = list(dict.fromkeys(check_int(f"seeds[{i}]", s, 0) for i, s in enumerate(seeds)))
    atol_factor = check_positive("atol_factor", atol_factor)
    cells, notes = [], []
    resolved: dict[str, Method] = {}
    from .. import __version__
    common_versions = (("flowsolve", __version__), ("torch", torch.__version__), *_distribution_versions())
    for problem in problems:
        names = list(problem.solvers if methods is None else methods)
        planned = set()
        for name in names:
            m = resolve_method(name)
            known = resolved.setdefault(m.name, m)
            if known is not m and (type(known) is not type(m) or known.settings() != m.settings()):
                raise ValueError(f"two different methods are named {m.name!r}: give each its own name (their "
                                 "results would be saved and shown as one)")
            m = known
            if m.name in planned:  # "heun" and method("heun"): one method, its cells once
                continue
            planned.add(m.name)
            reason = m.unavailable() or m.unsupported(problem.process)
            if reason:
                notes.append(f"{problem.name}: skipped {m.name}: {reason}")
                continue
            budgets = (rtol or problem.rtol) if m.adaptive else (nfe or problem.nfe)
            kind = m.budget_kind
            if not m.adaptive:
                low = [b for b in budgets if b < m.min_budget()]
                if low:
                    notes.append(f"{problem.name}: {m.name} needs at least {m.min_budget()} NFE; skipped NFE {low}")
                budgets = [b for b in budgets if b >= m.min_budget()]
            versions = (*common_versions, (m.library, m.version()), ("harness", HARNESS_VERSION))
            settings = json.dumps(m.settings(), sort_keys=True, default=str)
            for budget in budgets:
                for seed in seeds:
                    cells.append(Cell(_problem_ref(problem), problem.fingerprint, m.name, kind,
                                      float(budget), seed, atol_factor, versions, _metrics_key(problem), settings))
    return problems, cells, notes, resolved


_WORKER_PROBLEMS: dict = {}


def _worker_problem(ref: str, given=None):
    if given is not None and _problem_ref(given) == ref:
        return given
    if ref not in _WORKER_PROBLEMS:
        _WORKER_PROBLEMS[ref] = _problem(ref)
    return _WORKER_PROBLEMS[ref]


def _run_in_workers(cells, workers, threads, cache_dir, finished):
    """Run ``cells`` in spawned processes, ``finished(cell, record)`` as each completes."""
    context = multiprocessing.get_context("spawn")
    # no more processes than cells: each costs a Python with torch (seconds, hundreds of MB)
    pool = concurrent.futures.ProcessPoolExecutor(min(workers, len(cells)), mp_context=context,
                                                  initializer=_init_worker, initargs=(threads,))
    try:
        futures = {pool.submit(run_cell, cell, None, cache_dir): cell for cell in cells}
        for future in concurrent.futures.as_completed(futures):
            finished(futures[future], future.result())
    except BaseException:
        # Ctrl-C or a failed cell: stop the workers instead of waiting for the cells they hold
        # (their results would not be saved); the saved ones are kept for a resume.
        # ProcessPoolExecutor has no public way to stop its processes before Python 3.14.
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        raise
    pool.shutdown(wait=True)


def _rebuilt_by_name(m: Method) -> bool:
    """Whether ``method(m.name)`` is ``m`` again (so a worker process can rebuild it from its
    name): not so for a user's own Method object, nor for a FlowsolveMethod given a registered
    name but another grid or options."""
    try:
        again = resolve_method(m.name)
    except ValueError:
        return False
    return again is m or (type(again) is type(m) and again.settings() == m.settings())


def _nan_to_none(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def run_cell(cell: Cell, problem=None, cache_dir=None, method: Method | None = None) -> dict:
    """Run one cell and return its record (:data:`~flowsolve.bench.records.RECORD_FIELDS`).

    Deterministic: the start points are the problem's ``x_init(seed)``, a stochastic method's
    noise comes from ``seed``. The wall time covers the solve only. An exception of the method
    becomes status "error" with its one-line message; it does not stop the sweep."""
    from . import metrics
    problem = _worker_problem(cell.problem, problem)
    if problem.fingerprint != cell.fingerprint:  # its file changed since the sweep was planned
        raise ValueError(f"problem {problem.name} ({problem.source}) is not the one this cell was planned on "
                         "(its content changed): plan the sweep again")
    m = method if method is not None else resolve_method(cell.method)
    x0 = problem.x_init(cell.seed)
    record = {"problem": problem.name, "fingerprint": problem.fingerprint, "method": m.name, "library": m.library,
              "kind": m.kind, "budget_kind": cell.budget_kind, "budget": cell.budget, "seed": cell.seed,
              "n": int(x0.shape[0]), "key": cell.key, "message": ""}
    for k in ("nfe_mean", "nfe_max", "steps_mean", "rejected_mean", "failed", "wall_s", *ENDPOINT_METRICS,
              *DISTRIBUTION_METRICS):
        record[k] = None
    task = Task(problem.process, problem.field, x0, cell.budget_kind,
                int(cell.budget) if cell.budget_kind == "nfe" else cell.budget, cell.seed, cell.atol_factor)
    # imports the method's library (and builds the field) before the clock starts: the first
    # cell of a method in each process must not pay for them
    reason = m.unavailable()
    if reason:
        record.update(status="skipped", message=reason)
        return record
    _ = problem.field
    start = time.perf_counter()
    try:
        with torch.no_grad():
            run = m.run(task)
    except Exception as err:  # noqa: BLE001 -- a peer's failure is a result, not a crash of the sweep
        record.update(status="error", message=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                      wall_s=time.perf_counter() - start)
        return record
    record["wall_s"] = time.perf_counter() - start
    x = run.x.detach().to("cpu", torch.float64)
    failed = int(run.failed.sum())
    record.update(nfe_mean=float(run.nfe.double().mean()), nfe_max=int(run.nfe.max()),
                  steps_mean=float(run.n_steps.double().mean()), rejected_mean=float(run.n_rejected.double().mean()),
                  failed=failed, status="failed" if failed else "ok", message=run.message or "",
                  notes=list(run.extras.get("notes", ())))
    if failed == x.shape[0]:
        # no sample reached t_min: the end points are where each stopped (a peer that stopped for the
        # whole batch returns the start points), so an error "of the method" would measure nothing
        return {k: _nan_to_none(v) for k, v in record.items()}
    if m.kind == "ode" and problem.endpoint_metrics:
        ref = problem.reference(cell.seed, cache_dir=cache_dir)
        errors = metrics.endpoint_errors(x, ref.x)
        record.update({k: errors[k] for k in problem.endpoint_metrics})
    if problem.distribution_metrics:
        values, missing = metrics.distribution_errors(x, problem.data_sample(seed=cell.seed),
                                                      problem.distribution_metrics, seed=cell.seed)
        record.update(values)
        record["notes"] += [f"not measured: {reason}" for reason in missing]
    return {k: _nan_to_none(v) for k, v in record.items()}


def _init_worker(threads: int):
    torch.set_num_threads(threads)
    # Ctrl-C reaches the whole process group: the sweep's process decides (it stops the workers),
    # the workers neither print tracebacks nor go on with the cells already queued to them
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _load_saved(path: pathlib.Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a half-written or foreign file: run the cell again


def _save(path: pathlib.Path, record: dict):
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, default=str))
    os.replace(tmp, path)  # atomic: an interrupted sweep never leaves half a result


def _progress(total: int, enabled):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="cell", desc="flowsolve bench", file=sys.stderr, leave=False)


def _environment(methods) -> dict:
    import numpy
    from .. import __version__
    libraries = {"flowsolve": __version__, "torch": torch.__version__, "numpy": numpy.__version__}
    for m in methods:
        if m.is_peer:
            libraries[m.library] = m.version()
    return {"versions": libraries, "python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "system": platform.platform(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _problem_meta(problem, seeds, cache_dir) -> dict:
    """What the problem is, its reference and its floors, over the seeds as the records are: the
    reference's estimated error is the largest of the seeds' (with its RMS, the scale of
    ``rel_error``); the distribution floor is the mean over seeds, as the table's values are."""
    from . import metrics
    meta = dict(problem.summary())
    primary = "rmse" if "rmse" in problem.endpoint_metrics else (
        problem.endpoint_metrics[0] if problem.endpoint_metrics else problem.distribution_metrics[0])
    meta["metric"] = primary
    refs = [problem.reference(seed, cache_dir=cache_dir) for seed in seeds]
    ref = refs[0]
    errors = [r.error_estimate for r in refs]
    meta.update(reference=ref.method, reference_error=None if None in errors else max(errors),
                reference_rms=min(float(r.x.double().square().mean().sqrt()) for r in refs),
                reference_seconds=sum(r.seconds for r in refs), reference_cached=all(r.cached for r in refs),
                reference_nfe_mean=ref.nfe_mean)
    if problem.distribution_metrics:
        # the exact flow carries prior draws to exact data draws: its distance to the data sample
        # is the sampling noise no method can go below at this n
        floors = [metrics.distribution_errors(r.x, problem.data_sample(seed=seed), problem.distribution_metrics,
                                              seed=seed)[0] for seed, r in zip(seeds, refs)]
        meta["distribution_floor"] = {k: math.fsum(f[k] for f in floors) / len(floors) for k in floors[0]}
    return meta


def fit_orders(results: Results) -> list:
    """Observed order per (problem, fixed-step method) on the problem's primary metric, from the
    errors averaged over seeds at each budget (see :func:`flowsolve.bench.metrics.fit_order`)."""
    from .metrics import fit_order
    orders = []
    groups = defaultdict(list)
    for r in results.records:
        if r["budget_kind"] == "nfe":
            groups[(r["problem"], r["method"])].append(r)
    for (name, method_name), records in groups.items():
        meta = results.problems.get(name, {})
        metric = meta.get("metric", "rmse")
        by_budget = defaultdict(list)
        for r in records:
            by_budget[r["budget"]].append(r)
        # a budget counts only when every seed ran without a failure, as the table shows it
        by_budget = {b: rs for b, rs in by_budget.items()
                     if all(r["status"] == "ok" and r.get(metric) is not None for r in rs)}
        if not by_budget:
            continue
        nfe = [sum(r["nfe_mean"] for r in rs) / len(rs) for _, rs in sorted(by_budget.items())]
        err = [sum(r[metric] for r in rs) / len(rs) for _, rs in sorted(by_budget.items())]
        if metric in ENDPOINT_METRICS:
            floor = meta.get("reference_error") or 0.0
            if metric == "rel_error":  # the reference's error relative to its own scale
                floor = floor / meta["reference_rms"] if meta.get("reference_rms") else 0.0
        else:
            floor = (meta.get("distribution_floor") or {}).get(metric, 0.0)
        fit = fit_order(nfe, err, floor=floor)
        if fit is not None:
            orders.append({"problem": name, "method": method_name, "metric": metric, **fit})
    return orders


def work_precision(problems, methods=None, *, nfe=None, rtol=None, seeds=(0,), workers: int = 1, threads: int = 1,
                   out=None, cache_dir=None, resume: bool = True, progress=None,
                   atol_factor: float = 1e-2) -> Results:
    """Error against NFE: every method at every budget from the same start points.

    ``problems``: a :class:`~flowsolve.bench.problems.Problem`, a builtin name
    (``flowsolve problems``), a ``.toml`` path, or a list of them. ``methods``: names of
    :func:`~flowsolve.bench.methods.method` (flowsolve solvers, ``"solver@grid"``, peers
    ``"library.solver"``); default the problem's ``[bench] solvers``. ``nfe``: budgets of the
    fixed-step methods, ``rtol``: tolerances of the adaptive ones (``atol = atol_factor * rtol``);
    defaults from the problem. ``seeds``: start-point sets (each with its own reference).

    ``workers > 1`` runs cells in that many processes. Each cell runs with ``threads`` torch
    threads (default 1, restored afterwards): the bench's problems are small batches, on which
    a thread pool gains nothing and costs much when the cores are busy (workers, other jobs:
    1.6x per field call beside one busy process on 2 cores, up to 100x per small op under
    heavier load; ``benchmarks/bench_cell_costs.py``), and one thread per cell makes wall
    times comparable and lets workers scale. With ``out``,
    each cell's record is saved as ``out/cells/<key>.json`` and, with ``resume=True``, a cell
    already saved there is read back instead of run. ``cache_dir``: where adaptive references
    are cached (default ``$FLOWSOLVE_CACHE`` or ``~/.cache/flowsolve/references``).
    ``progress``: a progress bar on stderr (tqdm; default: when stderr is a terminal).

    Returns :class:`~flowsolve.bench.records.Results` (records, fitted orders, problems,
    environment, notes); :mod:`flowsolve.bench.report` prints and plots it.
    """
    workers = check_int("workers", workers, 1)
    threads = check_int("threads", threads, 1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _sweep(problems, methods, nfe, rtol, seeds, workers, threads, out, cache_dir, resume, progress,
                      atol_factor)
    finally:
        torch.set_num_threads(before)


def _sweep(problems, methods, nfe, rtol, seeds, workers, threads, out, cache_dir, resume, progress, atol_factor):
    problems, cells, notes, by_name = plan(problems, methods, nfe=nfe, rtol=rtol, seeds=seeds,
                                           atol_factor=atol_factor)
    seeds = sorted({c.seed for c in cells}) or ([seeds] if isinstance(seeds, int) else list(seeds))
    results = Results(notes=list(notes))
    by_ref = {_problem_ref(p): p for p in problems}
    # where results and references go is checked before any work: a typo must not cost a sweep
    cell_dir = None
    if out is not None:
        cell_dir = pathlib.Path(out) / "cells"
        try:
            cell_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(f"cannot write results to {str(out)!r}: {err.strerror or err}") from None
    if any(p.reference_method == "adaptive" for p in problems):
        from .references import default_cache_dir
        cache = pathlib.Path(default_cache_dir() if cache_dir is None else cache_dir)
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(f"cannot write the reference cache {str(cache)!r} (cache_dir, flowsolve bench --cache or "
                          f"$FLOWSOLVE_CACHE): {err.strerror or err}") from None
    # references first, in this process: each is computed (or read from the cache) once, and
    # the cells then find adaptive ones in the cache whatever process runs them
    for problem in problems:
        results.problems[problem.name] = _problem_meta(problem, seeds, cache_dir)
    records: dict[str, dict] = {}
    todo = []
    for cell in cells:
        saved = _load_saved(cell_dir / f"{cell.key}.json") if (cell_dir is not None and resume) else None
        if saved is not None and saved.get("key") == cell.key:
            # the key leaves out where the problem lies and what it is called: the same content
            # saved under another name is this problem's result
            saved["problem"] = by_ref[cell.problem].name
            records[cell.key] = saved
        else:
            todo.append(cell)
    if len(todo) < len(cells):
        results.notes.append(f"resumed {len(cells) - len(todo)} of {len(cells)} cells from {cell_dir}")
    bar = _progress(len(todo), progress)

    def finished(cell, record):
        records[cell.key] = record
        if cell_dir is not None:
            _save(cell_dir / f"{cell.key}.json", record)
        if bar is not None:
            bar.update(1)

    try:
        if workers == 1 or len(todo) <= 1:
            for cell in todo:
                finished(cell, run_cell(cell, by_ref.get(cell.problem), cache_dir, by_name[cell.method]))
        else:
            # a problem parsed from a string, or a method that its name does not rebuild (a user's
            # Method object), cannot be found again by a worker process: those cells run here
            rebuilt = {name: _rebuilt_by_name(m) for name, m in by_name.items()}
            local = [c for c in todo if c.problem.startswith(_IN_MEMORY) or not rebuilt[c.method]]
            for cell in local:
                finished(cell, run_cell(cell, by_ref.get(cell.problem), cache_dir, by_name[cell.method]))
            local_ids = {id(c) for c in local}
            rest = [c for c in todo if id(c) not in local_ids]
            if rest:
                _run_in_workers(rest, workers, threads, cache_dir, finished)
    finally:
        if bar is not None:
            bar.close()
    results.records = [records[c.key] for c in cells if c.key in records]
    for r in results.records:  # a peer's remarks on how it ran (e.g. rounding to float32), once per method
        for note in r.get("notes") or ():
            line = f"{r['problem']}: {r['method']}: {note}"
            if line not in results.notes:
                results.notes.append(line)
    results.orders = fit_orders(results)
    results.environment = _environment([by_name[n] for n in dict.fromkeys(c.method for c in cells)])
    return results



# What `flowsolve bench` runs with no arguments: exact references (a Gaussian, a sharp 1-D
# bimodal law), a sharp 2-D ring under EDM and under PFGM++, the main solvers and the torchdiffeq
# peers; under a minute on a 2-core CPU (the references are computed once, then cached).
DEFAULT_SUITE = {
    "problems": ["gauss2d_edm", "bimodal1d_edm", "ring8_edm", "ring8_pfgmpp_d128"],
    "methods": ["euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "dopri5", "torchdiffeq.euler", "torchdiffeq.rk4",
                "torchdiffeq.dopri5"],
    "nfe": [10, 20, 40, 80],
    "rtol": [1e-3, 1e-4, 1e-5],
}
