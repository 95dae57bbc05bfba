"""Tuned time grids: step locations chosen for one process, field, solver and NFE budget.

* :func:`tune_grid` optimises the step locations of any fixed-step ODE solver of the registry
  against a tight reference on calibration start points, and measures the result on held-out
  start points. The grid is parametrised in ``lambda = -log sigma`` (DPM-Solver's half-logSNR,
  Lu et al. 2022) by the cumulative softmax of free logits,

      lambda_i = lambda_0 + (lambda_K - lambda_0) * sum_{j < i} softmax(z)_j,   z_0 = 0,

  so every candidate is strictly increasing in lambda (decreasing in sigma), starts at
  ``sigma_max`` and ends at ``sigma_min`` exactly, and the K - 1 free logits range over all
  such grids. The objective is ``log RMSE`` of the endpoints of ``fs.sample(..., grid="explicit",
  ts=...)`` against an adaptive dopri5 solve in float64 (``rtol = atol = 1e-9``), so the tuned grid
  is scored by exactly the call a user makes. flowsolve's solvers read their grid as Python
  floats, so the solve is not differentiable in the step locations; the optimiser is derivative
  free (scipy's Powell, or Nelder-Mead), which works for every fixed-step ODE solver, started from
  the best few of several published grids (log_sigma, karras, kl_optimal, GITS, DMN), with a bound
  on the number of objective evaluations. Results are cached on disk by a fingerprint of
  everything they depend on.
* :func:`gits_grid` is GITS (Chen et al. 2024, "On the Trajectory Regularity of ODE-based
  Diffusion Sampling", Sec. 4 and Alg. 1): dynamic programming over a fine teacher trajectory
  for the sub-grid minimising the accumulated one-step (Euler) error.

The DMN grid (Xue et al. 2024) is a named grid, ``grid="dmn"`` (:mod:`flowsolve.grids`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import tempfile
import time

import numpy as np
import torch

from ._validation import check_int, check_real, unknown_choice
from .grids import make_grid
from .processes.base import require_canonical

__all__ = ["TunedGrid", "tune_grid", "gits_grid", "gits_dynamic_programming", "grid_from_logits",
           "logits_from_grid", "tuned_cache_dir", "CALIBRATION_SEED", "HELDOUT_SEED", "TUNING_VERSION"]

#: Prior seeds of the calibration and held-out start points: far from the small seeds the bench
#: evaluates on (``Problem.x_init(seed)`` uses ``start_seed + seed``), so a tuned grid is never
#: scored on the points it was tuned on.
CALIBRATION_SEED = 1_000_003
HELDOUT_SEED = 1_000_033
#: Version of the tuning procedure; part of every fingerprint, so bumping it invalidates the cache.
TUNING_VERSION = 2
WARM_STARTS = ("log_sigma", "karras", "kl_optimal", "gits", "dmn")
METHODS = ("powell", "nelder-mead")
#: Objective value of a candidate whose solve fails or collapses (log RMSE; any real error is below).
FAILED_OBJECTIVE = 50.0
#: Logits are kept in [-LOGIT_BOUND, LOGIT_BOUND]: a softmax weight below exp(-2 * 30) of another
#: is a step that collapses in float64 anyway.
LOGIT_BOUND = 30.0


@dataclasses.dataclass(frozen=True)
class TunedGrid:
    """A grid tuned by :func:`tune_grid`.

    ``ts``: float64 times from ``t_max`` to ``t_min`` (``steps + 1`` of them); ``solver``,
    ``options``, ``nfe`` (the budget) and ``steps`` (what the budget buys); ``warm_start``: the
    grid the winning optimisation started from; ``calibration_rmse`` / ``heldout_rmse``: endpoint
    RMSE of the tuned grid on the calibration and held-out start points; ``warm_start_calibration_rmse``
    / ``warm_start_heldout_rmse``: the same for the warm start (the gain is their ratio);
    ``warm_start_errors``: calibration RMSE of every warm start tried; ``objective_evaluations``:
    solves spent by the optimiser; ``field_evaluations``: field evaluations per calibration sample
    spent by those solves; ``reference_field_evaluations``: mean field evaluations per sample of
    the two references; ``seconds``: wall time of the tuning (of the original run when loaded
    from the cache); ``fingerprint``: the sha256 key of the cache (None when uncached);
    ``cached``: loaded from the disk cache; ``kept_warm_start``: the optimised grid was worse than
    its warm start on the held-out points (it over-fitted the calibration points), so ``ts`` is the
    warm start's grid and ``calibration_rmse``/``heldout_rmse`` are its errors; ``process``: the
    repr of the process it was tuned for (so that a caller can refuse it on another)."""

    ts: torch.Tensor
    solver: str
    options: dict
    nfe: int
    steps: int
    warm_start: str
    calibration_rmse: float
    heldout_rmse: float
    warm_start_calibration_rmse: float
    warm_start_heldout_rmse: float
    warm_start_errors: dict
    objective_evaluations: int
    field_evaluations: int
    reference_field_evaluations: float
    seconds: float
    settings: dict
    fingerprint: str | None = None
    cached: bool = False
    kept_warm_start: bool = False
    process: str = ""

    @property
    def heldout_gain(self) -> float:
        """Held-out RMSE of the warm start over that of the tuned grid (> 1: the tuning helped)."""
        return self.warm_start_heldout_rmse / self.heldout_rmse

    @property
    def generalisation_gap(self) -> float:
        """Held-out RMSE over calibration RMSE of the tuned grid (1: no over-fitting)."""
        return self.heldout_rmse / self.calibration_rmse

    def sample_kwargs(self) -> dict:
        """Keyword arguments that make ``fs.sample`` use this grid:
        ``fs.sample(process, field, n, **tg.sample_kwargs())`` (its solver, its options and ``grid=tg``)."""
        return {"solver": self.solver, "grid": self, **self.options}

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["ts"] = [float(t) for t in self.ts]
        data.pop("cached")
        return data

    @classmethod
    def from_json(cls, data: dict, cached: bool = False) -> "TunedGrid":
        data = dict(data)
        data["ts"] = torch.tensor(data["ts"], dtype=torch.float64)
        return cls(**data, cached=cached)

    def __repr__(self):
        return (f"TunedGrid({self.solver}, nfe={self.nfe}, steps={self.steps}, warm_start={self.warm_start!r}, "
                f"calibration_rmse={self.calibration_rmse:.3g}, heldout_rmse={self.heldout_rmse:.3g} "
                f"(warm start {self.warm_start_heldout_rmse:.3g}), {self.seconds:.1f} s)")


# -- the parametrisation ------------------------------------------------------------------------
def _lambda_span(process) -> tuple[float, float]:
    return -math.log(process.sigma_max), -math.log(process.sigma_min)


def grid_from_logits(process, logits) -> torch.Tensor:
    """The grid (float64 times, ``t_max`` -> ``t_min``) whose ``lambda = -log sigma`` increments are
    ``softmax([0, *logits])`` times the span: ``len(logits) + 1`` steps, strictly monotone in exact
    arithmetic, with the exact end times."""
    z = np.concatenate([[0.0], np.clip(np.asarray(logits, dtype=np.float64), -LOGIT_BOUND, LOGIT_BOUND)])
    weights = np.exp(z - z.max())
    fractions = np.concatenate([[0.0], np.cumsum(weights / weights.sum())])
    lam0, lam1 = _lambda_span(process)
    sigma = torch.from_numpy(np.exp(-(lam0 + (lam1 - lam0) * fractions)))
    t = process.t_of_sigma(sigma).to(torch.float64)
    t[0], t[-1] = process.t_max, process.t_min
    return t


def logits_from_grid(process, ts) -> np.ndarray:
    """The logits of :func:`grid_from_logits` that give the grid ``ts`` (its inverse)."""
    sigma = process.sigma(torch.as_tensor(ts, dtype=torch.float64)).to(torch.float64).numpy()
    increments = np.diff(-np.log(sigma))
    if not (increments > 0).all():
        raise ValueError("ts must be strictly decreasing in sigma")
    z = np.log(increments)
    return np.clip(z[1:] - z[0], -LOGIT_BOUND, LOGIT_BOUND)


# -- fingerprints and the cache -----------------------------------------------------------------
def tuned_cache_dir() -> pathlib.Path:
    """``<references cache>/tuned_grids``: ``$FLOWSOLVE_CACHE/tuned_grids`` if the variable is set,
    else ``~/.cache/flowsolve/references/tuned_grids``."""
    from .bench.references import default_cache_dir
    return default_cache_dir() / "tuned_grids"


def field_key(field) -> str | None:
    """A content key of ``field`` when flowsolve can compute one (an exact field of a toy law:
    its repr and the bits of the law's parameters), else None (a user's network)."""
    from .bench.references import inputs_digest
    from .toy.exact import ExactField
    if not isinstance(field, ExactField):
        return None
    return f"{field!r}|{inputs_digest(torch.zeros(0), field.data)}"


def _fingerprint(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _load(path: pathlib.Path, fingerprint: str) -> TunedGrid | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("fingerprint") != fingerprint:
            return None
        return TunedGrid.from_json(data, cached=True)
    except Exception:  # noqa: BLE001 -- missing, truncated or foreign file: tune again
        return None


def _save(path: pathlib.Path, tuned: TunedGrid) -> None:
    # written whole under a temporary name, then renamed: a concurrent reader never sees half a file
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(tuned.to_json(), file, indent=1)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# -- start points and references ----------------------------------------------------------------
def _event_shape(field, event_shape):
    from .fields import check_event_shape
    if event_shape is not None:
        return check_event_shape("event_shape", event_shape)
    shape = getattr(field, "event_shape", None)
    if shape is None:
        raise ValueError("event_shape is needed: the field does not declare the shape of one sample")
    return tuple(shape)


def prior_points(process, event_shape, n: int, seed: int) -> torch.Tensor:
    """``n`` float64 prior draws at ``t_max`` of seed ``seed``, drawn as ``fs.sample(..., seed=seed)``
    and ``Problem.x_init`` draw them (one noise stream per sample)."""
    from .solvers.api import draw_prior
    return draw_prior(process, n, tuple(event_shape), torch.float64, None, seed)


def _reference(process, field, x0, rtol, key, cache_dir):
    """Adaptive dopri5 reference of ``x0`` (float64), cached like the bench's references when the
    field has a key."""
    from .bench import references as refs
    if key is None:
        return refs.adaptive_reference(process, field, x0, "dopri5", rtol, rtol)
    fingerprint = _fingerprint({"kind": "tuning reference", "version": refs.REFERENCE_VERSION,
                                "process": repr(process), "field": key, "rtol": rtol})
    path = refs.cache_path(cache_dir, fingerprint, 0)
    path = path.with_name(f"{fingerprint}-n{x0.shape[0]}.pt")
    inputs = refs.inputs_digest(x0, getattr(field, "data", None) or _NoLaw)
    cached = refs.load_cached(path, fingerprint, 0, tuple(x0.shape), inputs)
    if cached is not None:
        return cached
    reference = refs.adaptive_reference(process, field, x0, "dopri5", rtol, rtol)
    refs.save_cached(path, fingerprint, 0, reference, inputs)
    return reference


class _NoLaw:
    pass


def _rmse(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float(((x.to(torch.float64) - reference) ** 2).mean().sqrt())


# -- the tuner ----------------------------------------------------------------------------------
def _fixed_step_ode(solver: str, options: dict):
    from .solvers.registry import get_solver
    info = get_solver(solver)
    if info.adaptive or info.kind != "ode":
        raise ValueError(f"solver must be a fixed-step ODE solver (a grid is tuned for it), got {solver!r} "
                         f"({info.category})")
    info.check_options(options)
    return info


def _steps_for(info, nfe: int, options: dict, name: str = "nfe") -> int:
    steps = info.max_steps_within(nfe, options)
    if steps < 1:
        raise ValueError(f"{name}={nfe} buys no step of solver {info.name!r} "
                         f"({info.nfe_per_step_for(options)} evaluations per step): give at least "
                         f"{info.nfe_per_step_for(options)}")
    return steps


def tune_grid(process, field, solver: str, nfe: int, *, options: dict | None = None, n_calibration: int = 256,
              n_heldout: int = 256, calibration_seed: int = CALIBRATION_SEED, heldout_seed: int = HELDOUT_SEED,
              warm_starts=WARM_STARTS, restarts: int = 2, max_evaluations: int = 600, method: str = "powell",
              reference_rtol: float = 1e-9, event_shape=None, cache: bool = True, cache_dir=None,
              cache_key: str | None = None, verbose: bool = False) -> TunedGrid:
    """Step locations of ``solver`` (a fixed-step ODE solver, with ``options``) for ``nfe`` field
    evaluations on ``process``'s probability-flow ODE of ``field``, minimising endpoint RMSE.

    The grid has exactly the steps that ``nfe`` buys (``SolverInfo.max_steps_within``); it is
    parametrised by :func:`grid_from_logits` (cumulative softmax of logits over ``lambda =
    -log sigma``, ends fixed). Objective: ``log RMSE`` of the endpoints of ``fs.sample(process,
    field, n_calibration, solver, grid="explicit", ts=grid, x_init=x_cal, dtype=float64)``
    against an adaptive dopri5 reference at ``rtol = atol = reference_rtol``, where ``x_cal`` are
    ``n_calibration`` prior draws of ``calibration_seed``. Every grid of ``warm_starts``
    (``"log_sigma"``, ``"karras"``, ``"kl_optimal"``, ``"gits"``: :func:`gits_grid` on the
    calibration points, ``"dmn"``) is scored; the ``restarts`` best start scipy's ``method``
    (``"powell"`` or ``"nelder-mead"``), sharing ``max_evaluations`` objective evaluations (the
    warm starts' included). The winner is scored on ``n_heldout`` prior draws of
    ``heldout_seed`` next to its warm start, so the generalisation gap is measured, not assumed.

    ``n_calibration = n_heldout = 256`` by default: with 64, the RMSE on the sharp 8-mode ring is
    set by a few start points near the boundaries between modes, and a grid tuned on 64 points scored
    1.5e-3 held out but 2.0e-3 on the bench's 256 (UniPC, 10 NFE); tuned on 256: 1.6e-3 and 1.6e-3.

    Cached on disk (``cache_dir``, default :func:`tuned_cache_dir`) by a fingerprint of the
    process, the field (:func:`field_key`: exact toy fields; otherwise ``cache_key=``, a string
    you choose that names your network and its weights; with neither the tuning runs uncached),
    the solver, options, nfe and every tuning setting. ``cache=False`` always tunes and writes
    nothing.

    Use it as ``fs.sample(process, field, n, solver=tg.solver, grid=tg, nfe=tg.nfe)`` (which refuses
    another solver, other options, another process or a budget that buys other steps).
    """
    from scipy import optimize

    import flowsolve as fs

    require_canonical(process, "tune_grid")
    if not isinstance(solver, str):
        raise ValueError(f"solver must be a solver name, got {solver!r}")
    options = dict(options or {})
    info = _fixed_step_ode(solver, options)
    nfe = check_int("nfe", nfe, 1)
    steps = _steps_for(info, nfe, options)
    if steps < 2:
        raise ValueError(f"nfe={nfe} buys one step of solver {info.name!r}: a grid of one step has no time to tune "
                         f"(give at least {2 * info.nfe_per_step_for(options)})")
    n_calibration = check_int("n_calibration", n_calibration, 1)
    n_heldout = check_int("n_heldout", n_heldout, 1)
    calibration_seed = check_int("calibration_seed", calibration_seed, 0)
    heldout_seed = check_int("heldout_seed", heldout_seed, 0)
    if heldout_seed == calibration_seed:
        raise ValueError(f"heldout_seed must differ from calibration_seed (both {heldout_seed}): held-out points "
                         "measure the generalisation gap")
    if isinstance(warm_starts, str):
        warm_starts = (warm_starts,)
    warm_starts = tuple(warm_starts)
    if not warm_starts:
        raise ValueError(f"warm_starts must name at least one of {list(WARM_STARTS)}")
    for name in warm_starts:
        if name not in WARM_STARTS:
            raise unknown_choice("warm_starts", name, list(WARM_STARTS))
    restarts = check_int("restarts", restarts, 1, len(warm_starts))
    max_evaluations = check_int("max_evaluations", max_evaluations, len(warm_starts))
    if method not in METHODS:
        raise unknown_choice("method", method, list(METHODS))
    reference_rtol = check_real("reference_rtol", reference_rtol, 1e-14, 1e-3)
    event_shape = _event_shape(field, event_shape)
    if cache_key is not None and not isinstance(cache_key, str):
        raise ValueError(f"cache_key must be a string or None, got {cache_key!r}")

    settings = {"n_calibration": n_calibration, "n_heldout": n_heldout, "calibration_seed": calibration_seed,
                "heldout_seed": heldout_seed, "warm_starts": list(warm_starts), "restarts": restarts,
                "max_evaluations": max_evaluations, "method": method, "reference_rtol": reference_rtol,
                "event_shape": list(event_shape)}
    key = cache_key if cache_key is not None else field_key(field)
    fingerprint = path = None
    root = pathlib.Path(cache_dir) if cache_dir is not None else tuned_cache_dir()
    x_cal = prior_points(process, event_shape, n_calibration, calibration_seed)
    x_held = prior_points(process, event_shape, n_heldout, heldout_seed)
    if cache and key is not None:
        # the start points' bits too: a change of the prior's noise generator is a change of the tuning
        points = hashlib.sha256(x_cal.numpy().tobytes() + x_held.numpy().tobytes()).hexdigest()
        fingerprint = _fingerprint({"version": TUNING_VERSION, "flowsolve": fs.__version__, "process": repr(process),
                                    "field": key, "solver": solver, "options": options, "nfe": nfe,
                                    "steps": steps, "settings": settings, "points": points})
        path = root / f"{fingerprint}.json"
        found = _load(path, fingerprint)
        if found is not None:
            return found

    start = time.perf_counter()
    ref_dir = root / "references"
    ref_key = key if cache and key is not None else None
    ref_cal = _reference(process, field, x_cal, reference_rtol, ref_key, ref_dir)
    ref_held = _reference(process, field, x_held, reference_rtol, ref_key, ref_dir)

    spent = {"solves": 0, "nfe": 0}

    def error(ts, x0, reference):
        sol = fs.sample(process, field, x0.shape[0], solver, grid="explicit", ts=ts, x_init=x0,
                        dtype=torch.float64, **options)
        spent["solves"] += 1
        spent["nfe"] += int(sol.nfe.max())
        if bool(sol.failed.any()) or not bool(torch.isfinite(sol.x).all()):
            return math.inf
        return _rmse(sol.x, reference.x)

    def objective(logits):
        try:
            ts = grid_from_logits(process, logits)
            rmse = error(ts, x_cal, ref_cal)
        except ValueError:  # a candidate that collapses in float64 (two equal times)
            return FAILED_OBJECTIVE
        return math.log(rmse) if 0 < rmse < math.inf else FAILED_OBJECTIVE

    starts = {}
    for name in warm_starts:
        if name == "gits":
            ts = gits_grid(process, field, nfe, solver, options=options, x_init=x_cal)
        else:
            ts = make_grid(process, name, steps)
        z = logits_from_grid(process, ts)
        starts[name] = (z, objective(z))
    ranked = sorted(starts, key=lambda name: starts[name][1])
    best_name, best_z, best_value = ranked[0], starts[ranked[0]][0], starts[ranked[0]][1]
    scipy_method = {"powell": "Powell", "nelder-mead": "Nelder-Mead"}[method]

    def minimise(z, budget):
        opts = {"maxfev": budget, "xtol": 1e-4, "ftol": 1e-6} if method == "powell" else \
            {"maxfev": budget, "xatol": 1e-4, "fatol": 1e-6, "adaptive": True}
        before = spent["solves"]
        result = optimize.minimize(objective, z, method=scipy_method, options=opts)
        return np.asarray(result.x), float(result.fun), spent["solves"] - before

    # each of the `restarts` best warm starts gets an equal share of a quarter of the budget (a first
    # look at its basin); the rest goes to the best point so far, restarted (a fresh direction set or
    # simplex) while that still gains 1%: long runs gain more than many short ones
    if steps > 1:
        for i, name in enumerate(ranked[:restarts]):
            share = (max_evaluations // 4 - spent["solves"]) // (restarts - i)
            if share < 2:
                break
            z, value, used = minimise(starts[name][0], share)
            if verbose:
                print(f"tune_grid {solver} nfe={nfe}: from {name} {math.exp(starts[name][1]):.3g} -> "
                      f"{math.exp(value):.3g} in {used} solves")
            if value < best_value:
                best_name, best_z, best_value = name, z, value
        while max_evaluations - spent["solves"] >= 2:
            z, value, used = minimise(best_z, max_evaluations - spent["solves"])
            if verbose:
                print(f"tune_grid {solver} nfe={nfe}: restarted {math.exp(best_value):.3g} -> {math.exp(value):.3g} "
                      f"in {used} solves")
            gained = value < best_value - math.log(1.01)
            if value < best_value:
                best_z, best_value = z, value
            if not gained:
                break
    ts = grid_from_logits(process, best_z)
    warm_ts = grid_from_logits(process, starts[best_name][0])
    calibration_rmse = math.exp(best_value) if best_value < FAILED_OBJECTIVE else math.inf
    heldout_rmse, warm_heldout = error(ts, x_held, ref_held), error(warm_ts, x_held, ref_held)
    warm_calibration = math.exp(starts[best_name][1]) if starts[best_name][1] < FAILED_OBJECTIVE else math.inf
    # an optimised grid that does worse than its start on points it never saw has over-fitted the
    # calibration points (few points, many sharp modes): the warm start is the better answer
    kept_warm_start = not heldout_rmse <= warm_heldout
    if kept_warm_start:
        ts, calibration_rmse, heldout_rmse = warm_ts, warm_calibration, warm_heldout
    tuned = TunedGrid(
        ts=ts, solver=solver, options=options, nfe=nfe, steps=steps, warm_start=best_name,
        calibration_rmse=calibration_rmse, heldout_rmse=heldout_rmse,
        warm_start_calibration_rmse=warm_calibration, warm_start_heldout_rmse=warm_heldout,
        kept_warm_start=kept_warm_start, process=repr(process),
        warm_start_errors={name: math.exp(value) for name, (_, value) in starts.items()},
        objective_evaluations=spent["solves"], field_evaluations=spent["nfe"],
        reference_field_evaluations=0.5 * ((ref_cal.nfe_mean or 0.0) + (ref_held.nfe_mean or 0.0)),
        seconds=time.perf_counter() - start, settings=settings, fingerprint=fingerprint)
    if path is not None:
        _save(path, tuned)
    return tuned


# -- GITS ---------------------------------------------------------------------------------------
def gits_dynamic_programming(cost, steps: int, coeff: float = 1.15) -> list[int]:
    """GITS' dynamic programme (Chen et al. 2024, Alg. 1; ``dp`` in zju-pi/diff-sampler's
    gits-main/gits_utils.py): indices ``0 = i_0 < i_1 < ... < i_steps = M - 1`` of the teacher
    grid minimising

        cost[i_0, i_1] + coeff * (cost[i_1, i_2] + coeff * (cost[i_2, i_3] + ...)),

    i.e. ``V[j, k] = min_{i > j} cost[j, i] + coeff * V[i, k - 1]`` with ``V[j, 1] = cost[j, M - 1]``.
    ``cost`` is an ``(M, M)`` array whose entry ``[i, j]`` (``i < j``) is the error of one step from
    teacher time ``i`` to ``j``. Ties go to the smallest index, as in the published code."""
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1] or cost.shape[0] < 2:
        raise ValueError(f"cost must be a square (M, M) array with M >= 2, got shape {cost.shape}")
    m = cost.shape[0]
    steps = check_int("steps", steps, 1, m - 1)
    coeff = check_real("coeff", coeff, 0.0, math.inf, strict_min=True)
    value = np.full((m, steps + 1), np.inf)
    value[: m - 1, 1] = cost[: m - 1, m - 1]
    choice = np.full((m, steps + 1), -1, dtype=np.int64)
    choice[: m - 1, 1] = m - 1
    for k in range(2, steps + 1):
        for j in range(m - 1):
            candidates = cost[j, j + 1: m - 1] + coeff * value[j + 1: m - 1, k - 1]
            if candidates.size and np.isfinite(candidates).any():
                best = int(np.argmin(candidates))
                value[j, k], choice[j, k] = candidates[best], j + 1 + best
    path, j = [0], 0
    for k in range(steps, 0, -1):
        j = int(choice[j, k])
        path.append(j)
    return path


def gits_grid(process, field, nfe: int, solver: str = "euler", *, options: dict | None = None, x_init=None,
              n: int = 256, seed: int = CALIBRATION_SEED, teacher_solver: str = "ipndm", teacher_steps: int = 60,
              teacher_grid: str = "karras", coeff: float = 1.15, metric: str = "l2",
              event_shape=None) -> torch.Tensor:
    """GITS' grid (Chen et al. 2024, Sec. 4, Alg. 1) for ``nfe`` evaluations of ``solver``: float64
    times ``t_max`` -> ``t_min``, a subset of the teacher grid.

    A teacher (``teacher_solver`` on ``teacher_grid`` with ``teacher_steps`` steps: the published
    defaults, iPNDM on Karras rho = 7 with 61 time points) carries ``x_init`` (default ``n`` prior
    draws of ``seed``) along the probability-flow ODE. In the canonical variables ``y = x / s``
    (where every process is EDM's ``dy/dsigma = (y - D(y; sigma)) / sigma``) the cost of a step from
    teacher time ``i`` to ``j`` is the batch-mean ``metric`` norm (``"l2"`` or ``"l1"``) of the
    Euler step's miss, ``|| y_i + (sigma_j - sigma_i) d_i - y_j ||`` with ``d_i`` the teacher's
    slope at ``i``; :func:`gits_dynamic_programming` with ``coeff`` (published 1.15) picks the
    steps that ``nfe`` buys for ``solver``. (The published default metric is "dev", a deviation
    measure for image trajectories; the l1/l2 metrics are its other options.)"""
    import flowsolve as fs

    require_canonical(process, "gits_grid")
    options = dict(options or {})
    info = _fixed_step_ode(solver, options)
    nfe = check_int("nfe", nfe, 1)
    steps = _steps_for(info, nfe, options)
    teacher_steps = check_int("teacher_steps", teacher_steps, 1)
    if steps > teacher_steps:
        raise ValueError(f"teacher_steps={teacher_steps} must be at least the {steps} steps that nfe={nfe} buys")
    if metric not in ("l1", "l2"):
        raise unknown_choice("metric", metric, ["l1", "l2"])
    if x_init is None:
        x_init = prior_points(process, _event_shape(field, event_shape), check_int("n", n, 1),
                              check_int("seed", seed, 0))
    x_init = x_init.to(torch.float64)
    teacher_ts = make_grid(process, teacher_grid, teacher_steps)
    sol = fs.sample(process, field, x_init.shape[0], teacher_solver, grid="explicit", ts=teacher_ts, x_init=x_init,
                    dtype=torch.float64, save_at=True)
    xs = sol.xs if sol.xs.shape[0] == teacher_ts.numel() else sol.xs.transpose(0, 1)  # (M, n, *event)
    scale = process.scale(teacher_ts).to(torch.float64)
    sigma = process.sigma(teacher_ts).to(torch.float64)
    m = teacher_ts.numel()
    shape = (m,) + (1,) * (xs.ndim - 1)
    ys = xs / scale.reshape(shape)
    slopes = torch.stack([(ys[i] - field.denoiser(xs[i], float(teacher_ts[i])).to(torch.float64)) / sigma[i]
                          for i in range(m - 1)])
    cost = np.full((m, m), np.inf)
    for i in range(m - 1):
        step = ys[i] + (sigma[i + 1:] - sigma[i]).reshape((-1,) + (1,) * (xs.ndim - 1)) * slopes[i]
        miss = (step - ys[i + 1:]).flatten(2)
        norms = miss.abs().sum(-1) if metric == "l1" else miss.norm(dim=-1)
        cost[i, i + 1:] = norms.mean(dim=1).numpy()
    path = gits_dynamic_programming(cost, steps, coeff)
    return teacher_ts[path].clone()
