"""What the bench runs: a *method* is flowsolve's solver on a grid, or a peer library's solver
behind an adapter, asked to carry the same start points with the same budget.

Every method answers one :class:`Task` with one :class:`Run`. A peer's NFE is counted by
wrapping the flow it is given (:class:`CountingFlow`), never read from the peer's own report.

Method names: a flowsolve solver (``"heun"``), optionally on a named grid (``"heun@log_sigma"``,
``"dpmpp_2m@karras:rho=3"``, ``"unipc@dmn"``... see :func:`method`), or on a grid computed for the
problem: ``"ipndm@tuned"`` (:func:`flowsolve.tuning.tune_grid` on calibration start points that the
bench never evaluates on, cached on disk) and ``"euler@gits"`` (:func:`flowsolve.tuning.gits_grid`
on the same calibration points); a peer as ``"library.solver"``
(``"torchdiffeq.rk4"``, ``"torchsde.euler"``; ``flowsolve.bench.peers``).
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass, field

import torch

from .. import solvers as _solvers
from .._validation import check_real, unknown_choice
from ..grids import MAX_RHO, available_grids

BUDGET_KINDS = ("nfe", "rtol")


@dataclass(frozen=True)
class Task:
    """Carry ``x_init`` (float64, shape ``(n, *event_shape)``, drawn at ``process.t_max``) to
    ``process.t_min`` along ``process``'s probability-flow ODE (``kind == "ode"`` methods) or
    reverse SDE (``"sde"``) of ``field``. Budget: ``budget_kind == "nfe"``: at most ``budget``
    field evaluations per sample (fixed-step methods); ``"rtol"``: relative tolerance
    ``budget`` with ``atol = atol_factor * budget`` (adaptive methods). ``seed`` drives a
    stochastic method's noise."""

    process: object
    field: object
    x_init: torch.Tensor
    budget_kind: str
    budget: float
    seed: int = 0
    atol_factor: float = 1e-2


@dataclass
class Run:
    """What a method returned. Per sample (length n): ``x`` the end points (float64; a failed
    sample's last state), ``nfe`` field evaluations, ``n_steps`` steps taken, ``n_rejected``
    rejected steps, ``failed`` did not reach ``t_min``. ``message``: why samples failed, or
    notes ("" when none)."""

    x: torch.Tensor
    nfe: torch.Tensor
    n_steps: torch.Tensor
    n_rejected: torch.Tensor
    failed: torch.Tensor
    message: str = ""
    extras: dict = field(default_factory=dict)


class Method:
    """A solver the bench can run. Subclasses set the attributes and implement :meth:`run`.

    ``name``: the name users type; ``library``: "flowsolve" or the peer's package; ``kind``:
    "ode" or "sde"; ``adaptive``: budgets are tolerances (True) or NFE (False); ``order``: the
    nominal order (None if unknown); ``description``: one line."""

    name: str = ""
    library: str = "flowsolve"
    kind: str = "ode"
    adaptive: bool = False
    order: float | None = None
    description: str = ""

    @property
    def budget_kind(self) -> str:
        return "rtol" if self.adaptive else "nfe"

    @property
    def is_peer(self) -> bool:
        return self.library != "flowsolve"

    def unavailable(self) -> str | None:
        """Why this method cannot run at all here (its library is not installed), else None."""
        return None

    def unsupported(self, process) -> str | None:
        """Why this method cannot run on ``process`` (e.g. an SDE method on a Poisson flow, a
        scheduler that only expresses EDM), else None."""
        if self.kind == "sde" and process.kernel.name != "gaussian":
            return f"{self.name} samples a reverse SDE; {process!r} has no forward SDE"
        return None

    def min_budget(self) -> int:
        """The smallest NFE budget this fixed-step method can spend (one step)."""
        return 1

    def settings(self) -> dict:
        """What this method's results depend on beyond its ``name``, ``library`` and the
        library's version (e.g. a flowsolve solver's grid and options); ``{}`` when the name
        says it all. Part of a bench cell's content hash, so that two configurations never
        share saved results."""
        return {}

    def run(self, task: Task) -> Run:
        raise NotImplementedError

    def version(self) -> str:
        """The version of the library that runs this method ("unknown" when ``library`` is not
        an installed distribution, e.g. a user's own method)."""
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version(self.library)
        except PackageNotFoundError:
            return "unknown"

    def __repr__(self):
        return f"<method {self.name} ({self.library}, {'adaptive' if self.adaptive else 'fixed-step'} {self.kind})>"


class CountingFlow:
    """``flow`` with its evaluations counted: per sample, every call of ``drift`` adds one to
    each row it evaluates (``nfe``, int64, length n); ``calls`` counts batch calls. Calls with a
    ``t`` outside ``[t_min, t_max]`` are counted in ``outside`` and the first such time is kept in
    ``first_outside`` (for the failure message); the time is passed on unchanged, and the field
    refuses it."""

    def __init__(self, flow, n: int, device=None):
        self.flow = flow
        self.process = flow.process
        self.t_min, self.t_max = flow.process.t_min, flow.process.t_max
        self.nfe = torch.zeros(n, dtype=torch.long, device=device)
        self.calls = 0
        self.outside = 0
        self.first_outside = None

    def drift(self, x, t, rows=None, **kwargs):
        """``rows`` (optional index or mask) says which samples ``x`` holds when a peer
        evaluates only some of them; by default all n."""
        self.calls += 1
        tt = torch.as_tensor(t, dtype=torch.float64).detach()
        slack = 1e-12 * max(1.0, abs(self.t_max))
        bad = (tt < self.t_min - slack) | (tt > self.t_max + slack)
        if bool(bad.any()):
            self.outside += 1
            if self.first_outside is None:
                self.first_outside = float(tt.reshape(-1)[bad.reshape(-1)][0])
        if rows is None:
            self.nfe += 1
        else:
            self.nfe[rows] += 1
        return self.flow.drift(x, t, **kwargs)

    def diffusion(self, t):
        return self.flow.diffusion(t)

    def __getattr__(self, name):  # everything else (diffusion_like, drift_from_score...) as the flow's
        return getattr(self.flow, name)


def failed_run(x: torch.Tensor, nfe: torch.Tensor, message: str) -> Run:
    """The Run of a method that stopped for the whole batch (a peer's exception): every sample
    failed where it started, with the evaluations already spent."""
    n = x.shape[0]
    zeros = torch.zeros(n, dtype=torch.long, device=x.device)
    return Run(x=x.clone(), nfe=nfe.clone(), n_steps=zeros, n_rejected=zeros.clone(),
               failed=torch.ones(n, dtype=torch.bool, device=x.device), message=message)


class FlowsolveMethod(Method):
    """flowsolve's solver ``solver`` through :func:`flowsolve.sample`, on ``grid`` (fixed-step:
    the solver's default grid when None; ``grid_options`` e.g. ``{"rho": 3}``), with solver
    ``options``. ``name`` defaults to what :func:`method` parses back to the same method
    (``"heun"``, ``"heun@karras:rho=3"``); with ``options`` it is ``"heun[option=value,...]"``,
    so that two configurations never show (or save) their results under one name."""

    library = "flowsolve"

    def __init__(self, solver: str, grid: str | None = None, grid_options: dict | None = None,
                 options: dict | None = None, name: str | None = None):
        info = _solvers.registry.get_solver(solver)
        label = name or (solver if grid is None else f"{solver}@{grid}")
        if info.adaptive and (grid is not None or grid_options):
            raise ValueError(f"method {label}: {solver!r} is adaptive and takes no grid")
        self.solver, self.info = solver, info
        self.grid, self.grid_options, self.options = grid, dict(grid_options or {}), dict(options or {})
        info.check_options(self.options)
        if self.options:
            _check_option_values(info, self.options, label)
        # checked here, not when the first cell runs: a bad rho is the user's mistake, not a result
        for key, value in self.grid_options.items():
            if key != "rho" or (grid or info.default_grid) != "karras":
                raise ValueError(f"method {label}: grid option {key!r} is not used by the "
                                 f"{grid or info.default_grid!r} grid (only 'karras' takes rho)")
            self.grid_options[key] = check_real(f"rho of method {label}", value, 0.0, MAX_RHO, strict_min=True)
        if name is None:
            name = solver if grid is None and not self.grid_options else f"{solver}@{grid or info.default_grid}" + \
                "".join(f":{k}={v:g}" for k, v in sorted(self.grid_options.items()))
            if self.options:
                name += _options_label(self.options)
        self.name = name
        self.kind, self.adaptive, self.order = info.kind, info.adaptive, info.order
        self.description = info.description

    def version(self) -> str:
        from .. import __version__
        return __version__

    def settings(self) -> dict:
        return {"solver": self.solver, "grid": self.grid, "grid_options": self.grid_options, "options": self.options}

    def min_budget(self) -> int:
        """The smallest NFE with which the solver takes one step (not always ``nfe_per_step``:
        edm_stochastic's last step is an Euler step, so one evaluation buys one step)."""
        budget = 1
        while self.info.max_steps_within(budget, self.options) < 1:
            budget += 1
        return budget

    def run(self, task: Task) -> Run:
        import flowsolve as fs
        x0 = task.x_init
        common = dict(x_init=x0, dtype=x0.dtype, **self.options)
        if task.budget_kind == "rtol":
            sol = fs.sample(task.process, task.field, x0.shape[0], self.solver, rtol=task.budget,
                            atol=task.atol_factor * task.budget, **common,
                            **({"seed": task.seed} if self.kind == "sde" else {}))
        else:
            grid_kw = {} if self.grid is None else {"grid": self.grid}
            if "rho" in self.grid_options:
                grid_kw["rho"] = self.grid_options["rho"]
            sol = fs.sample(task.process, task.field, x0.shape[0], self.solver, nfe=int(task.budget), **grid_kw,
                            **common, **({"seed": task.seed} if self.kind == "sde" else {}))
        return Run(x=sol.x, nfe=sol.nfe, n_steps=sol.n_steps, n_rejected=sol.n_rejected, failed=sol.failed,
                   message=sol.message)


#: Grids computed per problem and budget, not named grids of ``fs.available_grids()``.
COMPUTED_GRIDS = ("tuned", "gits")


class ComputedGridMethod(FlowsolveMethod):
    """flowsolve's fixed-step ODE solver ``solver`` on a grid computed for the task's process,
    field and NFE budget: ``"tuned"`` (:func:`flowsolve.tuning.tune_grid` with ``tuning`` as its
    keyword arguments; start points of ``CALIBRATION_SEED`` and ``HELDOUT_SEED``, never the bench's)
    or ``"gits"`` (:func:`flowsolve.tuning.gits_grid` on the calibration start points). The tuning
    runs inside the first cell that needs it (its time is in that cell's wall time) and is cached
    on disk, so later cells and later runs read it. ``Run.extras`` holds what the tuning cost and
    its calibration and held-out errors."""

    def __init__(self, solver: str, grid: str, options: dict | None = None, tuning: dict | None = None,
                 name: str | None = None):
        if grid not in COMPUTED_GRIDS:
            raise unknown_choice("computed grid", grid, list(COMPUTED_GRIDS))
        info = _solvers.registry.get_solver(solver)
        if info.adaptive or info.kind != "ode":
            raise ValueError(f"method {solver}@{grid}: a {grid} grid is computed for fixed-step ODE solvers; "
                             f"{solver!r} is {info.category}")
        super().__init__(solver, None, None, options, name=name or f"{solver}@{grid}")
        self.grid = grid
        self.tuning = dict(tuning or {})

    def settings(self) -> dict:
        return {**super().settings(), "grid": self.grid, "tuning": self.tuning}

    def grid_for(self, task: Task):
        """The grid's times for ``task`` (and the TunedGrid for ``"tuned"``, else None)."""
        from .. import tuning
        if self.grid == "tuned":
            tuned = tuning.tune_grid(task.process, task.field, self.solver, int(task.budget), options=self.options,
                                     **self.tuning)
            return tuned.ts, tuned
        return tuning.gits_grid(task.process, task.field, int(task.budget), self.solver, options=self.options,
                                **self.tuning), None

    def run(self, task: Task) -> Run:
        import flowsolve as fs
        if task.budget_kind != "nfe":
            raise ValueError(f"method {self.name} is fixed-step: its budget is an NFE, not {task.budget_kind}")
        ts, tuned = self.grid_for(task)
        x0 = task.x_init
        sol = fs.sample(task.process, task.field, x0.shape[0], self.solver, grid="explicit", ts=ts, x_init=x0,
                        dtype=x0.dtype, **self.options)
        extras = {} if tuned is None else {
            "tuning_seconds": tuned.seconds, "tuning_cached": tuned.cached, "warm_start": tuned.warm_start,
            "calibration_rmse": tuned.calibration_rmse, "heldout_rmse": tuned.heldout_rmse,
            "warm_start_heldout_rmse": tuned.warm_start_heldout_rmse,
            "objective_evaluations": tuned.objective_evaluations}
        return Run(x=sol.x, nfe=sol.nfe, n_steps=sol.n_steps, n_rejected=sol.n_rejected, failed=sol.failed,
                   message=sol.message, extras=extras)


def _peer_table() -> dict:
    from .peers import PEERS  # noqa: PLC0415 -- peers import their libraries lazily
    return PEERS


def method_names(include_peers: bool = True) -> list[str]:
    """Every name :func:`method` accepts (grid suffixes aside)."""
    names = sorted(_solvers.available_solvers())
    return names + (sorted(_peer_table()) if include_peers else [])


def method(name) -> Method:
    """The method called ``name`` (a :class:`Method` passes through).

    ``"solver"`` or ``"solver@grid"`` (a flowsolve solver on a grid of ``fs.available_grids()``,
    with options after colons: ``"heun@karras:rho=3"``; or on a grid computed for the problem,
    ``"ipndm@tuned"``, ``"euler@gits"``: :class:`ComputedGridMethod`), with solver options in brackets
    after either (``"unipc[variant=bh1]"``, ``"unipc@tuned[order=3]"``); ``"library.solver"`` for a peer
    (``flowsolve.bench.peers.PEERS``). An unknown name is refused with the closest names."""
    if isinstance(name, Method):
        return name
    if not isinstance(name, str) or not name:
        raise ValueError(f"a method is a name such as 'heun', 'heun@log_sigma' or 'torchdiffeq.rk4', got {name!r}")
    if "." in name.split("@")[0]:
        peers = _peer_table()
        if name not in peers:
            raise unknown_choice("method", name, sorted(peers))
        return peers[name]
    name, options = _split_options(name)
    solver, at, grid_part = name.partition("@")
    known = _solvers.available_solvers()
    if solver not in known:
        close = difflib.get_close_matches(solver, list(known) + list(_peer_table()), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown method {name!r}: not a flowsolve solver (flowsolve solvers) nor a peer "
                         f"(library.solver){hint}")
    if not at:  # "heun" (while "heun@" names an empty grid, refused below)
        return FlowsolveMethod(solver, options=options)
    grid, *opts = grid_part.split(":")
    if grid in COMPUTED_GRIDS and not opts:
        return ComputedGridMethod(solver, grid, options, name=name + _options_label(options))
    if grid not in available_grids() or grid == "explicit":
        raise unknown_choice(f"grid in method {name!r}", grid,
                             [g for g in available_grids() if g != "explicit"] + list(COMPUTED_GRIDS))
    grid_options = {}
    for opt in opts:
        key, eq, value = opt.partition("=")
        if not eq or key != "rho":
            raise ValueError(f"method {name!r}: grid options are written ':rho=VALUE', got {opt!r}")
        try:
            grid_options[key] = float(value)
        except ValueError:
            raise ValueError(f"method {name!r}: rho must be a number, got {value!r}") from None
    return FlowsolveMethod(solver, grid, grid_options, options, name=None if options else name)


def _check_option_values(info, options: dict, label: str) -> None:
    """Refuse option values the solver refuses (``variant="bh9"``) when the method is named, not in
    its first cell: the solver itself is the judge, on one sample of a zero denoiser, three steps."""
    from .. import EDM, Field, sample
    process = EDM()
    zero = Field.from_denoiser(process, lambda x, sigma: torch.zeros_like(x), event_shape=(1,))
    budget = {} if info.adaptive else {"steps": 3}
    try:
        sample(process, zero, 1, info.name, seed=0, dtype=torch.float64, **budget, **options)
    except ValueError as err:
        raise ValueError(f"method {label}: {err}") from None


def _options_label(options: dict) -> str:
    """``"[key=value,...]"`` (values as Python literals), or "" without options."""
    return "[" + ",".join(f"{k}={v!r}" for k, v in sorted(options.items())) + "]" if options else ""


def _split_options(name: str) -> tuple[str, dict]:
    """``"unipc@karras[variant='bh1',order=3]"`` -> ``("unipc@karras", {"variant": "bh1", "order": 3})``.
    Values are Python literals (``3``, ``1e-3``, ``True``, ``'bh1'``); a bare word is a string."""
    if not name.endswith("]"):
        return name, {}
    head, bracket, body = name[:-1].partition("[")
    if not bracket or not head:
        raise ValueError(f"method {name!r}: solver options are written 'solver[key=value,...]'")
    options = {}
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip().isidentifier():
            raise ValueError(f"method {name!r}: solver options are written 'solver[key=value,...]', got {item!r}")
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()
    return head, options
