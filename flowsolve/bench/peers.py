"""Peer libraries' solvers behind the bench's :class:`~flowsolve.bench.methods.Method` interface.

``PEERS`` maps ``"library.solver"`` to a method. Every adapter carries ``task.x_init`` (float64)
from ``t_max`` to ``t_min`` with the peer's own stepping, evaluates the field only through a
:class:`~flowsolve.bench.methods.CountingFlow` (so the NFE is what the bench saw, never the
peer's report), runs without autograd and returns a float64 :class:`Run` on x's device.

* ``torchdiffeq.*`` (probability-flow ODE; a core dependency). Fixed-step ``euler``,
  ``midpoint``, ``rk4`` step exactly on flowsolve's default grid ``fs.make_grid(process,
  "karras", steps)`` (given as torchdiffeq's ``grid_constructor``, so only the end point is
  stored); ``steps`` is the most whose evaluations fit the NFE budget. torchdiffeq's ``rk4`` is
  Kutta's 3/8 rule (``rk4_alt_step_func``), not the classical RK4. Adaptive ``dopri5``,
  ``bosh3``, ``adaptive_heun``, ``dopri8``: ``rtol = budget``, ``atol = atol_factor * budget``,
  one step size and one RMS error norm for the whole batch, so every sample's NFE is the
  batch's call count; accepted and rejected steps are counted by torchdiffeq's
  ``callback_accept_step``/``callback_reject_step``. torchdiffeq's adaptive solvers step
  *past* the last output time and interpolate back (rtqichen/torchdiffeq#78), which would
  evaluate the field below ``t_min`` on every problem; we pass its documented option
  ``step_t=[t_min]`` so that the steps end on ``t_min``. Its first-step heuristic (Hairer's, an
  Euler probe at ``t0 + h0`` with ``h0 = 0.01 ||y0|| / ||f0||``) is *not* bounded by the span:
  on a VP schedule with centred data the probe lands at t << 0; the field refuses it and the
  run fails with a message saying so (we never clamp a peer's times).
* ``torchsde.*`` (reverse SDE, Gaussian-kernel processes; a core dependency): ``euler``,
  ``milstein``, ``srk``, ``reversible_heun``, in a time change under which flowsolve's Karras
  grid is uniform (see :class:`KarrasTimeSDE`), so that torchsde's fixed ``dt`` lands on the
  same grid as flowsolve's fixed-step samplers. Noise: one ``torchsde.BrownianInterval`` per
  run, seeded by ``task.seed`` (same task, same output; sample i depends on the batch size).
* ``torchode.*`` (optional ``peers`` extra): ``dopri5``, ``tsit5`` with torchode's per-sample
  step-size control (``IntegralController``). Each call evaluates every row (finished samples
  included), so every sample's NFE is the call count; per-sample steps and accepted steps come
  from torchode's stats (``n_steps``, ``n_accepted``).
* ``diffusers.*`` (optional ``peers`` extra): the schedulers that can be driven on an arbitrary
  decreasing sigma grid, run on the process's Karras grid in the scale-free form of every
  process (see :class:`_DiffusersMethod`): ``euler``, ``heun``, ``dpmsolver++2m``,
  ``dpmsolver++3m``, ``unipc`` (bh2), ``unipc_bh1``, ``edm_dpmsolver++2m``.

Left out, and why:

* torchdiffeq's ``implicit_adams``/``explicit_adams``/``fehlberg2``/``heun3``/``scipy_solver``:
  not asked for; the four adaptive RK pairs and three fixed RK methods cover its families.
* torchsde's ``midpoint``/``heun``/``euler_heun`` (Stratonovich) and its own adaptive stepping
  (step doubling): the four methods above represent it; ``adaptive=True`` would not step on
  the grid.
* diffusers ``EDMEulerScheduler``: the same algorithm as ``EulerDiscreteScheduler`` (Euler in
  sigma on ``x/s``), also rounding the state to float32 in every step, and its ``set_timesteps``
  only makes its own Karras grid (``sigmas=`` there is the ramp, not sigmas), ending with a
  zero-length step (``final_sigmas_type="sigma_min"``) or a step to sigma = 0; nothing new to
  measure. ``DPMSolverSinglestepScheduler``, ``DEISMultistepScheduler``, ``LMSDiscreteScheduler``,
  ``KDPM2DiscreteScheduler``, ancestral/SDE schedulers: not asked for (the last are stochastic
  with their own noise draws, which the bench cannot seed per task without reaching into them).
"""

from __future__ import annotations

import importlib
import math
import warnings
from importlib import metadata

import torch

from ..solvers.solution import finite_rows
from .methods import CountingFlow, Method, Run, Task, failed_run

#: Most steps an adaptive peer may take (flowsolve's adaptive solvers' default ``max_steps``).
MAX_STEPS = 10_000
#: Karras rho: flowsolve's default grid (``fs.make_grid(process, "karras", steps)``).
KARRAS_RHO = 7.0

_CORE_HINT = "a core dependency of flowsolve: pip install {module}"
_PEERS_HINT = "pip install 'flowsolve[peers]'"


# --------------------------------------------------------------------------------------------
# shared plumbing
# --------------------------------------------------------------------------------------------
def _import(module: str):
    """Import ``module`` when a method runs (never at import time of this file)."""
    return importlib.import_module(module)


def _karras_times(process, steps: int) -> torch.Tensor:
    """flowsolve's default fixed-step grid: ``steps + 1`` times, t_max -> t_min."""
    import flowsolve as fs
    return fs.make_grid(process, "karras", steps)


class _PeerMethod(Method):
    """What every adapter shares: lazy import, availability, version, task checks, the counted
    flow, and turning a peer's exception into a failed run."""

    module = ""           # the import name
    core = False          # a core dependency of flowsolve (else the optional ``peers`` extra)
    nfe_overhead = 0      # evaluations a fixed-step run costs beyond its steps
    nfe_per_step = 1      # evaluations per step of a fixed-step run

    def unavailable(self) -> str | None:
        try:
            _import(self.module)
        except ImportError:
            hint = _CORE_HINT.format(module=self.module) if self.core else _PEERS_HINT
            return f"{self.module} is not installed ({hint})"
        return None

    def version(self) -> str:
        try:
            return metadata.version(self.library)
        except metadata.PackageNotFoundError:
            return "not installed"

    # -- fixed-step budgets ------------------------------------------------------------------
    def min_budget(self) -> int:
        return self.nfe_overhead + self.nfe_per_step

    def steps_for(self, budget) -> int:
        """The most steps whose counted evaluations fit ``budget``."""
        return (int(budget) - self.nfe_overhead) // self.nfe_per_step

    # -- running -----------------------------------------------------------------------------
    def _flow(self, task: Task):
        import flowsolve as fs
        return (fs.reverse_sde if self.kind == "sde" else fs.probability_flow)(task.process, task.field)

    def _check(self, task: Task) -> None:
        if not isinstance(task, Task):
            raise ValueError(f"{self.name}: run takes a flowsolve.bench.methods.Task, got {type(task).__name__}")
        if task.budget_kind != self.budget_kind:
            raise ValueError(f"{self.name} is {'adaptive' if self.adaptive else 'fixed-step'}: its budget is "
                             f"{self.budget_kind!r}, got a task with budget_kind={task.budget_kind!r}")
        reason = self.unavailable() or self.unsupported(task.process)
        if reason:
            raise ValueError(f"{self.name} cannot run: {reason}")
        if not self.adaptive and int(task.budget) < self.min_budget():
            raise ValueError(f"nfe={task.budget} is below one step of {self.name} ({self.min_budget()} NFE)")
        if self.adaptive and not (task.budget > 0):
            raise ValueError(f"{self.name}: rtol must be > 0, got {task.budget}")

    def run(self, task: Task) -> Run:
        self._check(task)
        x0 = task.x_init.detach().to(torch.float64)
        counting = CountingFlow(self._flow(task), x0.shape[0], device=x0.device)
        try:
            with torch.no_grad():
                run = self._solve(task, x0, counting)
        except Exception as err:  # the peer stopped for the whole batch: report what it did
            return failed_run(x0, counting.nfe, self._failure(err, counting, task.process))
        return run

    def _solve(self, task: Task, x0: torch.Tensor, counting: CountingFlow) -> Run:
        raise NotImplementedError

    def _failure(self, err: Exception, counting: CountingFlow, process) -> str:
        if counting.first_outside is not None:
            return (f"{self.name} evaluated the field at t={counting.first_outside:.6g} outside "
                    f"[{process.t_min!r}, {process.t_max!r}]")
        text = str(err).strip().splitlines()
        return f"{self.name} stopped: {type(err).__name__}: {text[0] if text else ''}".rstrip(": ")

    def _result(self, x: torch.Tensor, x0: torch.Tensor, counting: CountingFlow, n_steps, n_rejected,
                failed=None, message: str = "", notes=()) -> Run:
        """The Run: float64 on x0's device, int64 per-sample counts; a non-finite row failed."""
        n, dev = x0.shape[0], x0.device
        x = x.reshape(x0.shape).to(device=dev, dtype=torch.float64)

        def per_sample(v):
            v = torch.as_tensor(v, dtype=torch.long)
            return (v.expand(n) if v.ndim == 0 else v).to(dev).clone()

        bad = ~finite_rows(x)
        failed = bad if failed is None else (torch.as_tensor(failed, dtype=torch.bool).to(dev) | bad)
        parts = [message] if message else []
        if bool(bad.any()):
            parts.append(f"{int(bad.sum())} sample(s) ended non-finite")
        return Run(x=x, nfe=counting.nfe.clone(), n_steps=per_sample(n_steps), n_rejected=per_sample(n_rejected),
                   failed=failed, message="; ".join(parts), extras={"notes": list(notes)})


# --------------------------------------------------------------------------------------------
# torchdiffeq
# --------------------------------------------------------------------------------------------
class _TorchdiffeqFunc:
    """``func(t, y)`` for torchdiffeq, through the counted flow; counts accepted and rejected
    steps from torchdiffeq's callbacks (it calls them with our own time t)."""

    def __init__(self, counting: CountingFlow):
        self.counting = counting
        self.accepted = 0
        self.rejected = 0

    def __call__(self, t, y):
        return self.counting.drift(y, t)

    def callback_accept_step(self, t0, y0, dt):
        self.accepted += 1

    def callback_reject_step(self, t0, y0, dt):
        self.rejected += 1


class TorchdiffeqFixed(_PeerMethod):
    """torchdiffeq's fixed-step solver ``solver`` on flowsolve's default grid (Karras, rho 7):
    torchdiffeq steps exactly on the grid it is given (``grid_constructor``)."""

    library = module = "torchdiffeq"
    core = True
    kind, adaptive = "ode", False

    def __init__(self, solver: str, stages: int, order: float, description: str):
        self.solver, self.nfe_per_step, self.order = solver, stages, order
        self.name = f"torchdiffeq.{solver}"
        self.description = description

    def _solve(self, task, x0, counting):
        torchdiffeq = _import("torchdiffeq")
        steps = self.steps_for(task.budget)
        grid = _karras_times(task.process, steps).to(x0.device)
        func = lambda t, y: counting.drift(y, t)  # noqa: E731 -- no callbacks: fixed-grid solvers take none
        out = torchdiffeq.odeint(func, x0, grid[[0, -1]], method=self.solver,
                                 options={"grid_constructor": lambda f, y0, t: grid})
        return self._result(out[-1], x0, counting, n_steps=steps, n_rejected=0,
                            notes=[f"karras grid (rho {KARRAS_RHO:g}), {self.nfe_per_step} NFE per step"])


class TorchdiffeqAdaptive(_PeerMethod):
    """torchdiffeq's adaptive Runge-Kutta pair ``solver``; ``rtol = budget``, ``atol =
    atol_factor * budget``, ``step_t = [t_min]`` (end on t_min instead of stepping past it),
    ``max_num_steps = MAX_STEPS``. One step size for the whole batch."""

    library = module = "torchdiffeq"
    core = True
    kind, adaptive = "ode", True

    def __init__(self, solver: str, order: float, description: str):
        self.solver, self.order = solver, order
        self.name = f"torchdiffeq.{solver}"
        self.description = description

    def _solve(self, task, x0, counting):
        torchdiffeq = _import("torchdiffeq")
        p = task.process
        span = torch.tensor([p.t_max, p.t_min], dtype=torch.float64, device=x0.device)
        func = _TorchdiffeqFunc(counting)
        out = torchdiffeq.odeint(func, x0, span, method=self.solver, rtol=float(task.budget),
                                 atol=float(task.atol_factor * task.budget),
                                 options={"step_t": span[1:].clone(), "max_num_steps": MAX_STEPS})
        return self._result(out[-1], x0, counting, n_steps=func.accepted, n_rejected=func.rejected,
                            notes=["one step size and one RMS error norm for the whole batch; every sample's NFE "
                                   "is the batch's call count",
                                   "steps and rejections from torchdiffeq's accept/reject callbacks"])


# --------------------------------------------------------------------------------------------
# torchsde
# --------------------------------------------------------------------------------------------
class KarrasTimeSDE(torch.nn.Module):
    """The reverse SDE of ``counting``'s flow in torchsde's form, in a time ``u`` in which
    flowsolve's Karras grid is uniform: ``u in [0, steps]``, ``u = k`` at grid point k.

    With ``sigma(u) = (sigma_max^(1/rho) + (u/steps)(sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
    and ``t(u) = process.t_of_sigma(sigma(u))`` (decreasing), the reverse SDE
    ``dx = drift(x, t) dt + g(t) dW̄`` (t decreasing) becomes the forward-in-u Itô SDE

        dx = drift(x, t(u)) t'(u) du + g(t(u)) sqrt(|t'(u)|) dW_u,

    the same law (the standard time change of an Itô SDE: over du the noise variance is
    ``g^2 |t'(u)| du = g^2 |dt|``). The noise is additive (g does not depend on x), so the Itô
    and Stratonovich readings are the same SDE, and no correction term appears. With
    ``dt = 1`` torchsde's steps land exactly on the integers (exact in float64), i.e. on the
    grid ``fs.make_grid(process, "karras", steps)``, whose times are used there verbatim.
    ``t'(u) = sigma'(u) / (dsigma/dt)(t(u))``. A one-step scheme still differs from the same
    scheme run in t on that grid: torchsde's Euler step from grid point k moves the state by
    ``drift * t'(k) * 1`` (the derivative at the left end), not by ``drift * (t_{k+1} - t_k)`` as
    flowsolve's ``euler_maruyama`` does; both are first order and use the same points.

    States are flat ``(n, d)``. ``noise_type`` "diagonal" gives ``g`` as ``(n, d)``; "additive"
    gives only ``g_prod`` (``g * v``), so torchsde's SRK uses its additive-noise scheme SRA1
    (3 drift evaluations per step) rather than SRID2 (10: it re-evaluates earlier stages).
    """

    def __init__(self, counting: CountingFlow, grid: torch.Tensor, event_shape, noise_type: str, sde_type: str,
                 rho: float = KARRAS_RHO):
        super().__init__()
        self.counting, self.process = counting, counting.process
        self.grid = grid.tolist()
        self.steps = len(self.grid) - 1
        self.event_shape = tuple(event_shape)
        self.noise_type, self.sde_type = noise_type, sde_type
        self.rho = rho
        self.hi = self.process.sigma_max ** (1.0 / rho)
        self.lo = self.process.sigma_min ** (1.0 / rho)
        self._cache = {}
        if noise_type == "diagonal":
            self.g = self._g
        else:
            self.g_prod = self._g_prod

    def time(self, u) -> tuple[float, float]:
        """``t(u)`` and ``t'(u)``."""
        u = float(u)
        hit = self._cache.get(u)
        if hit is not None:
            return hit
        k = round(u)
        base = self.hi + (u / self.steps) * (self.lo - self.hi)
        if abs(u - k) <= 1e-12 * max(1, self.steps) and 0 <= k <= self.steps:
            t = self.grid[k]  # on the grid: flowsolve's own times
        else:
            sigma = min(max(base**self.rho, self.process.sigma_min), self.process.sigma_max)
            t = float(self.process.t_of_sigma(sigma))
        dsigma_du = self.rho * base ** (self.rho - 1.0) * (self.lo - self.hi) / self.steps
        dt_du = dsigma_du / float(self.process.sigma_derivative(t))
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[u] = (t, dt_du)
        return t, dt_du

    def f(self, u, y):
        t, dt_du = self.time(u)
        x = y.reshape(y.shape[0], *self.event_shape)
        return self.counting.drift(x, t).reshape(y.shape) * dt_du

    def _gval(self, u, y):
        t, dt_du = self.time(u)
        return self.counting.flow.diffusion_like(t, y) * math.sqrt(abs(dt_du))

    def _g(self, u, y):
        return self._gval(u, y).expand_as(y)

    def _g_prod(self, u, y, v):
        return self._gval(u, y) * v


class TorchsdeMethod(_PeerMethod):
    """torchsde's ``sdeint`` with ``method=solver`` and ``dt = 1`` on :class:`KarrasTimeSDE`
    (so its steps are flowsolve's Karras grid), noise from a ``BrownianInterval`` seeded by
    ``task.seed``. ``sdeint`` evaluates the drift once before integrating (its shape check): that
    evaluation is counted, as every other (``nfe_overhead``)."""

    library = module = "torchsde"
    core = True
    kind, adaptive = "sde", False

    def __init__(self, solver: str, order: float, nfe_per_step: int, nfe_overhead: int, noise_type: str,
                 sde_type: str, description: str, levy_area: str = "none", options: dict | None = None):
        self.solver, self.order = solver, order
        self.nfe_per_step, self.nfe_overhead = nfe_per_step, nfe_overhead
        self.noise_type, self.sde_type, self.levy_area = noise_type, sde_type, levy_area
        self.options = dict(options or {})
        self.name = f"torchsde.{solver}"
        self.description = description

    def _solve(self, task, x0, counting):
        torchsde = _import("torchsde")
        n, event = x0.shape[0], tuple(x0.shape[1:])
        steps = self.steps_for(task.budget)
        grid = _karras_times(task.process, steps)
        sde = KarrasTimeSDE(counting, grid, event, self.noise_type, self.sde_type)
        y0 = x0.reshape(n, -1)
        us = torch.tensor([0.0, float(steps)], dtype=torch.float64, device=x0.device)
        bm = torchsde.BrownianInterval(t0=0.0, t1=float(steps), size=tuple(y0.shape), dtype=torch.float64,
                                       device=x0.device, entropy=int(task.seed),
                                       levy_area_approximation=self.levy_area)
        # sdeint's shape check draws from the global generator (g_prod path): leave the caller's alone
        devices = [x0.device.index or 0] if x0.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            ys = torchsde.sdeint(sde, y0, us, bm=bm, method=self.solver, dt=1.0, adaptive=False,
                                 options=dict(self.options))
        return self._result(ys[-1], x0, counting, n_steps=steps, n_rejected=0,
                            notes=[f"karras grid (rho {KARRAS_RHO:g}) as torchsde's uniform dt=1 in a time change; "
                                   f"{self.nfe_per_step} NFE per step + {self.nfe_overhead} "
                                   "(sdeint's shape check" + (" and the first drift" if self.nfe_overhead > 1 else "")
                                   + ")", "one BrownianInterval for the batch (seeded by task.seed)"])


# --------------------------------------------------------------------------------------------
# torchode
# --------------------------------------------------------------------------------------------
class TorchodeMethod(_PeerMethod):
    """torchode's ``step_method`` (per-sample adaptive steps) with ``IntegralController(rtol=budget,
    atol=atol_factor*budget)`` and ``AutoDiffAdjoint(max_steps=MAX_STEPS)``, from ``t_start =
    t_max`` to ``t_end = t_min`` (torchode takes t_start > t_end directly)."""

    library = module = "torchode"
    kind, adaptive = "ode", True

    def __init__(self, solver: str, cls_name: str, order: float, description: str):
        self.solver, self.cls_name, self.order = solver, cls_name, order
        self.name = f"torchode.{solver}"
        self.description = description

    def _solve(self, task, x0, counting):
        to = _import("torchode")
        n, event, p = x0.shape[0], tuple(x0.shape[1:]), task.process

        def f(t, y):
            return counting.drift(y.reshape(n, *event), t).reshape(n, -1)

        term = to.ODETerm(f)
        step_method = getattr(to, self.cls_name)(term=term)
        controller = to.IntegralController(atol=float(task.atol_factor * task.budget), rtol=float(task.budget),
                                           term=term)
        solver = to.AutoDiffAdjoint(step_method, controller, max_steps=MAX_STEPS)
        full = lambda v: torch.full((n,), v, dtype=torch.float64, device=x0.device)  # noqa: E731
        problem = to.InitialValueProblem(y0=x0.reshape(n, -1), t_start=full(p.t_max), t_end=full(p.t_min))
        sol = solver.solve(problem)
        status = sol.status.to(x0.device)
        n_steps, n_accepted = sol.stats["n_steps"], sol.stats["n_accepted"]
        failed = status != 0
        message = ""
        if bool(failed.any()):
            names = {int(c): to.status_codes.Status(int(c)).name for c in status[failed].unique().tolist()}
            message = "torchode stopped: " + ", ".join(
                f"{int((status == c).sum())} sample(s) {name}" for c, name in sorted(names.items()))
        # a sample that stopped early (status != 0) gets torchode's interpolant at t_end: marked failed
        return self._result(sol.ys[:, -1], x0, counting, n_steps=n_accepted, n_rejected=n_steps - n_accepted,
                            failed=failed, message=message,
                            notes=["per-sample step control; each call evaluates every row, so every sample's "
                                   "NFE is the call count", "steps and rejections from torchode's per-sample stats"])


# --------------------------------------------------------------------------------------------
# diffusers
# --------------------------------------------------------------------------------------------
class _DiffusersMethod(_PeerMethod):
    """A diffusers scheduler driven on the process's Karras sigma grid, for ANY process.

    Every process is ``x_t = s(t) (y + sigma(t) n)``, and its probability-flow ODE in
    ``(x̂ = x/s, sigma)`` is ``dx̂/dsigma = (x̂ - D(x̂; sigma))/sigma`` with ``D`` the field's
    denoiser (PFGM++ included). The schedulers work in that form: in ``x̂`` ("VE" convention:
    Euler, Heun, EDM-DPM-Solver) or in ``x̂/sqrt(1 + sigma^2)`` ("VP" convention: DPM-Solver,
    UniPC, whose ``alpha = 1/sqrt(1 + sigma^2)``, ``lambda = -log sigma``), and take ``D`` as a
    "sample" prediction (EDM-DPM-Solver only takes EDM's preconditioned output
    ``c_skip x̂ + c_out F``; we give it ``F = (D - c_skip x̂)/c_out``).

    The grid is ``fs.make_grid(process, "karras", N)`` (flowsolve's fixed-step default),
    ``sigma_i = process.sigma(t_i)``; ``D`` at grid point i is evaluated at ``(s_i x̂, t_i)``
    through the counted flow (its velocity, turned back into ``D`` exactly by
    ``field.denoised_from``). The run starts from ``x_init / s(t_max)`` and ends at sigma_min:
    the end is multiplied by ``s(t_min)``. The scheduler is set up with its public
    ``set_timesteps``; then its ``sigmas`` are replaced by this float64 grid, ending at
    ``sigma_min`` (diffusers stores sigmas in float32 and ends its own grids with a step to
    sigma = 0, i.e. a final denoising, which flowsolve's fixed-step solvers do not take), and
    ``set_begin_index(0)``. ``final_sigmas_type="sigma_min"`` so that the last step keeps its order
    where diffusers' own rule allows (DPM-Solver: lower order at the end below 15 steps; UniPC:
    always). Where a scheduler's ``step`` rounds the state to float32 (Euler, DPM-Solver
    multistep), that rounding is diffusers' own: those methods' errors level off near 1e-7
    relative.
    """

    library = module = "diffusers"
    kind, adaptive = "ode", False
    convention = "ve"          # "ve": the state is x̂; "vp": x̂ / sqrt(1 + sigma^2)
    float32_state = False

    def unsupported(self, process) -> str | None:
        from ..processes import Process
        if not isinstance(process, Process):
            return f"{self.name} needs a canonical process (scale and sigma schedules); {process!r} is not one"
        return None

    def _scheduler(self, steps: int, process):
        raise NotImplementedError

    def _sigma_table(self, sigmas: torch.Tensor) -> torch.Tensor:
        """The scheduler's ``sigmas`` for our grid ``sigma_0 > ... > sigma_N`` (float64)."""
        return sigmas

    def _eval_index(self, call: int) -> int:
        """The grid point of the model evaluation of scheduler call ``call``."""
        return call

    def _calls(self, steps: int) -> int:
        return steps * self.nfe_per_step

    def _model_output(self, sched, D, sample, sigma):
        return D

    def _solve(self, task, x0, counting):
        _import("diffusers")
        process, dev = task.process, x0.device
        steps = self.steps_for(task.budget)
        t = _karras_times(process, steps)
        s64, sig64 = process.scale(t), process.sigma(t)
        s, sig = s64.tolist(), sig64.tolist()
        with warnings.catch_warnings():  # diffusers' numpy-2 DeprecationWarnings on its own training tables
            warnings.simplefilter("ignore", DeprecationWarning)
            sched = self._scheduler(steps, process)
        table = self._sigma_table(sig64)
        if tuple(sched.sigmas.shape) != tuple(table.shape):  # a diffusers whose layout we do not know
            raise RuntimeError(f"diffusers {type(sched).__name__} made {tuple(sched.sigmas.shape)} sigmas for "
                               f"{steps} steps, expected {tuple(table.shape)}")
        sched.sigmas = table.clone()
        sched.set_begin_index(0)
        field = counting.flow.field

        def state_factor(i):  # sample = xhat * factor
            return 1.0 / math.sqrt(1.0 + sig[i] ** 2) if self.convention == "vp" else 1.0

        xhat = x0 / s[0]
        sample = xhat * state_factor(0)
        timesteps = sched.timesteps
        for call in range(self._calls(steps)):
            j = self._eval_index(call)
            x = s[j] * (sample / state_factor(j))
            v = counting.drift(x, t[j].item())
            D = field.denoised_from("velocity", x, t[j].item(), v)
            out = self._model_output(sched, D, sample, sig[j])
            ts = timesteps[min(call, len(timesteps) - 1)]
            sample = sched.step(out, ts, sample).prev_sample.to(torch.float64)
        x_end = s[-1] * (sample / state_factor(steps))
        notes = [f"karras grid (rho {KARRAS_RHO:g}) in sigma, ending at sigma_min (no step to 0)"]
        if self.float32_state:
            notes.append("diffusers rounds the state to float32 in every step (its step() upcasts to float32)")
        return self._result(x_end.to(dev), x0, counting, n_steps=steps, n_rejected=0, notes=notes)


class DiffusersEuler(_DiffusersMethod):
    """``EulerDiscreteScheduler`` (k-diffusion's Euler in sigma on x̂), prediction "sample";
    its ``set_timesteps(sigmas=...)`` takes the grid directly (ending at sigma_min, no step to 0)."""

    name, order, nfe_per_step = "diffusers.euler", 1.0, 1
    description = "diffusers EulerDiscreteScheduler: Euler in sigma on x/s (k-diffusion sample_euler); float32 state"
    float32_state = True

    def _scheduler(self, steps, process):
        from diffusers import EulerDiscreteScheduler
        sched = EulerDiscreteScheduler(prediction_type="sample")
        sched.set_timesteps(sigmas=process.sigma(_karras_times(process, steps)).tolist())
        sched.is_scale_input_called = True  # our model takes x̂ unscaled: no scale_model_input
        return sched


class DiffusersHeun(_DiffusersMethod):
    """``HeunDiscreteScheduler``, prediction "sample": every step is a full Heun step (2 calls
    of ``step``: Euler predictor to sigma_{i+1}, then the trapezoid corrector), so N steps cost
    2N evaluations; diffusers' own grids end with a lone Euler step to sigma = 0, which we replace
    by a Heun step to sigma_min. Its sigma layout is ``[s0, s1, s1, s2, s2, ..., s_N]``."""

    name, order, nfe_per_step = "diffusers.heun", 2.0, 2
    description = "diffusers HeunDiscreteScheduler: Heun in sigma on x/s (EDM Algorithm 1), ending at sigma_min"

    def _scheduler(self, steps, process):
        from diffusers import HeunDiscreteScheduler
        sched = HeunDiscreteScheduler(prediction_type="sample")
        sched.set_timesteps(num_inference_steps=steps)
        return sched

    def _sigma_table(self, sigmas):
        return torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])

    def _eval_index(self, call):
        return (call + 1) // 2


class _DiffusersMultistep(_DiffusersMethod):
    convention = "vp"
    nfe_per_step = 1
    config: dict = {}
    cls_name = ""

    def _scheduler(self, steps, process):
        import diffusers
        sched = getattr(diffusers, self.cls_name)(prediction_type="sample", final_sigmas_type="sigma_min",
                                                  **self.config)
        sched.set_timesteps(num_inference_steps=steps)
        return sched


class DiffusersDPMSolver(_DiffusersMultistep):
    """``DPMSolverMultistepScheduler`` with ``algorithm_type="dpmsolver++"`` (data prediction),
    midpoint second-order rule, ``lower_order_final=True`` (diffusers: first order at the end
    below 15 steps)."""

    cls_name = "DPMSolverMultistepScheduler"
    float32_state = True

    def __init__(self, order: int):
        self.solver_order = order
        self.name = f"diffusers.dpmsolver++{order}m"
        self.order = float(order)
        self.config = {"algorithm_type": "dpmsolver++", "solver_order": order, "solver_type": "midpoint",
                       "lower_order_final": True}
        self.description = (f"diffusers DPMSolverMultistepScheduler: DPM-Solver++({order}M), data prediction, "
                            "float32 state")


class DiffusersUniPC(_DiffusersMultistep):
    """``UniPCMultistepScheduler``: UniP-2 predictor + UniC corrector (``solver_type`` bh2 or
    bh1), data prediction, 1 evaluation per step (the evaluation at the predicted point serves the
    corrector; no corrector after the last step); diffusers' ``lower_order_final`` makes the last
    step first order."""

    cls_name = "UniPCMultistepScheduler"

    def __init__(self, variant: str):
        self.name = "diffusers.unipc" if variant == "bh2" else f"diffusers.unipc_{variant}"
        self.order = 3.0
        self.config = {"solver_order": 2, "solver_type": variant, "predict_x0": True, "lower_order_final": True}
        self.description = f"diffusers UniPCMultistepScheduler: UniPC-{variant}, order 2 predictor + corrector"


class DiffusersEDMDPMSolver(_DiffusersMultistep):
    """``EDMDPMSolverMultistepScheduler``: DPM-Solver++(2M) in EDM's form (state x̂, alpha = 1),
    whose model output goes through EDM's preconditioning ``D = c_skip x̂ + c_out F``; we pass
    ``F = (D - c_skip x̂) / c_out`` (sigma_data 0.5, "epsilon" convention). It keeps the state's
    dtype (float64 here)."""

    cls_name = "EDMDPMSolverMultistepScheduler"
    convention = "ve"
    name, order = "diffusers.edm_dpmsolver++2m", 2.0
    description = "diffusers EDMDPMSolverMultistepScheduler: DPM-Solver++(2M) in EDM form, float64 state"

    def _scheduler(self, steps, process):
        from diffusers import EDMDPMSolverMultistepScheduler
        sched = EDMDPMSolverMultistepScheduler(sigma_min=process.sigma_min, sigma_max=process.sigma_max,
                                               algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                               lower_order_final=True, final_sigmas_type="sigma_min",
                                               prediction_type="epsilon")
        sched.set_timesteps(num_inference_steps=steps)
        return sched

    def _model_output(self, sched, D, sample, sigma):
        sd = sched.config.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / math.sqrt(sigma**2 + sd**2)
        return (D - c_skip * sample) / c_out


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------
def _peers() -> dict:
    methods = [
        TorchdiffeqFixed("euler", 1, 1.0, "torchdiffeq euler on the karras grid"),
        TorchdiffeqFixed("midpoint", 2, 2.0, "torchdiffeq explicit midpoint on the karras grid"),
        TorchdiffeqFixed("rk4", 4, 4.0, "torchdiffeq rk4 (Kutta's 3/8 rule) on the karras grid"),
        TorchdiffeqAdaptive("dopri5", 5.0, "torchdiffeq Dormand-Prince 5(4), one step size for the batch"),
        TorchdiffeqAdaptive("bosh3", 3.0, "torchdiffeq Bogacki-Shampine 3(2), one step size for the batch"),
        TorchdiffeqAdaptive("adaptive_heun", 2.0, "torchdiffeq Heun-Euler 2(1), one step size for the batch"),
        TorchdiffeqAdaptive("dopri8", 8.0, "torchdiffeq Dormand-Prince 8(7), one step size for the batch"),
        TorchsdeMethod("euler", 1.0, 1, 1, "diagonal", "ito",
                       "torchsde Euler-Maruyama on the karras grid (time-changed), weak order 1"),
        TorchsdeMethod("milstein", 1.0, 1, 1, "diagonal", "ito",
                       "torchsde Milstein (derivative-free) on the karras grid; additive noise: = Euler-Maruyama",
                       options={"grad_free": True}),
        TorchsdeMethod("srk", 1.5, 3, 1, "additive", "ito",
                       "torchsde SRK for additive noise (Rossler's SRA1, strong order 1.5) on the karras grid",
                       levy_area="space-time"),
        TorchsdeMethod("reversible_heun", 1.0, 1, 2, "diagonal", "stratonovich",
                       "torchsde reversible Heun (Stratonovich = Ito here) on the karras grid, 1 NFE per step"),
        TorchodeMethod("dopri5", "Dopri5", 5.0, "torchode Dormand-Prince 5(4), per-sample step control"),
        TorchodeMethod("tsit5", "Tsit5", 5.0, "torchode Tsitouras 5(4), per-sample step control"),
        DiffusersEuler(),
        DiffusersHeun(),
        DiffusersDPMSolver(2),
        DiffusersDPMSolver(3),
        DiffusersUniPC("bh2"),
        DiffusersUniPC("bh1"),
        DiffusersEDMDPMSolver(),
    ]
    return {m.name: m for m in methods}


#: Every peer method by name ("library.solver").
PEERS: dict[str, Method] = _peers()

__all__ = ["PEERS", "KarrasTimeSDE", "TorchdiffeqFixed", "TorchdiffeqAdaptive", "TorchsdeMethod", "TorchodeMethod",
           "MAX_STEPS"]
