"""The two entry points: :func:`solve` integrates any flow, :func:`sample` draws samples from a
process and a field (prior at ``t_max`` -> data at ``t_min``).

Both validate everything once, here, before any work -- the solver and its options, the state,
the flow against the solver's kind, the times, the randomness arguments -- and then run the
solver with a :class:`~flowsolve.solvers.term.Term` (which counts evaluations) under
``torch.no_grad()`` unless ``differentiable=True``.
"""

from __future__ import annotations

import math

import torch

from .._validation import check_bool, check_device, check_event_shape, check_float_dtype, check_int, check_real
from ..fields import Field
from ..flows import ProbabilityFlowODE, ReverseSDE, _as_field, probability_flow, reverse_sde
from ..grids import _GRIDS as _GRID_MAKERS
from ..grids import MAX_STEPS, check_times, make_grid
from ..processes import Diffusion, require_canonical
from .adaptive import PIDController
from .fixed import denoise_final as _denoise_final
from .noise import GeneratorNoise, NoiseSource
from .registry import _REGISTRY, SolverInfo, get_solver
from .saving import SaveAt
from .solution import Solution, empty_solution, finite_rows
from .term import Term

PRIOR_STREAM, SOLVER_STREAM = 0, 1


# ---------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------

def _check_state(x, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a tensor of shape (n, *event_shape), got {type(x).__name__}")
    check_float_dtype(f"{name}.dtype", x.dtype)
    check_device(f"{name}.device", x.device)
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (n, *event_shape) with at least one event dimension (for scalar "
                         f"data use shape (n, 1)), got shape {tuple(x.shape)}")
    return x


def _describe(flow) -> str:
    process = getattr(flow, "process", None)
    return f"{type(flow).__name__} of {process!r}" if process is not None else f"a {type(flow).__name__}"


def _check_flow(flow, info: SolverInfo, event_shape: tuple):
    """The flow suits the solver: drift present; an SDE for a stochastic solver and an ODE for a
    deterministic one; a canonical process and a field for process-aware solvers."""
    if not callable(getattr(flow, "drift", None)):
        raise ValueError(f"flow must have a drift(x, t) (e.g. fs.probability_flow(process, field)), got "
                         f"{type(flow).__name__}")
    is_sde = callable(getattr(flow, "diffusion", None))
    process, field = getattr(flow, "process", None), getattr(flow, "field", None)
    if info.kind == "ode" and is_sde:
        raise ValueError(f"solver {info.name!r} ({info.category}) integrates an ODE, but it was given a stochastic "
                         f"flow ({_describe(flow)}), whose noise it would ignore: pass "
                         "fs.probability_flow(process, field) for deterministic sampling, or use a stochastic solver "
                         f"({', '.join(_names('sde'))})")
    if info.kind == "sde" and not is_sde:
        if isinstance(flow, ProbabilityFlowODE) and isinstance(process, Diffusion):
            fix = "pass fs.reverse_sde(process, field) instead"
        elif process is not None and not isinstance(process, Diffusion) and field is not None:
            fix = (f"{type(process).__name__} has no forward SDE (Poisson flows are defined by their kernel), so it "
                   "has no reverse SDE either")
        else:
            fix = "pass a flow with drift(x, t) and diffusion(t) (fs.reverse_sde, or a general fs.SDE's)"
        raise ValueError(f"solver {info.name!r} ({info.category}) samples a reverse SDE, but it was given "
                         f"{_describe(flow)}, which has no noise term: {fix}; or use an ODE solver "
                         f"({', '.join(_names('ode'))})")
    if info.process_aware:
        if field is None:
            raise ValueError(f"solver {info.name!r} is process-aware: it needs a flow made by fs.probability_flow or "
                             "fs.reverse_sde from a canonical process (VE, VP, SubVP, EDM, PFGMPP, Poisson, Diffusion, "
                             f"LinearSDE) and a field; got {_describe(flow)} without a field (a general SDE or a plain "
                             "ODE has no scale/sigma to work with)")
        require_canonical(process, f"solver {info.name!r}")
        if info.kind == "sde" and getattr(process.kernel, "name", None) != "gaussian":
            raise ValueError(f"solver {info.name!r} samples a reverse SDE, which only Gaussian-kernel diffusions have; "
                             f"{process!r} has no SDE. Sample it with an ODE solver on fs.probability_flow")
    shape = getattr(field, "event_shape", None) if field is not None else None
    if shape is not None and tuple(event_shape) != tuple(shape):
        raise ValueError(f"the state has event shape {tuple(event_shape)}, but the field's is {tuple(shape)}: it must "
                         f"have shape (n, {', '.join(map(str, shape))})")


def _names(kind: str) -> list[str]:
    """A few solvers of a kind, to suggest in messages."""
    picks = {"ode": ["heun", "dpmpp_2m", "dopri5"], "sde": ["euler_maruyama", "edm_stochastic", "adaptive_sde"]}
    return [name for name in picks[kind] if name in _REGISTRY]


def _check_times(flow, ts, info: SolverInfo, steps, dt) -> torch.Tensor:
    """The grid (fixed-step) or span (adaptive) as a float64 CPU tensor."""
    t = _grid_or_span(flow, ts, info, steps, dt)
    if isinstance(flow, ReverseSDE) and not float(t[-1]) < float(t[0]):
        raise ValueError(f"a reverse SDE runs from the prior end to the data end: ts must decrease (from t_max "
                         f"towards t_min), got {float(t[0])!r} -> {float(t[-1])!r}")
    return t


def _grid_or_span(flow, ts, info: SolverInfo, steps, dt) -> torch.Tensor:
    t = check_times(ts, getattr(flow, "t_min", None), getattr(flow, "t_max", None))
    if info.adaptive:
        if steps is not None or dt is not None:
            raise ValueError(f"solver {info.name!r} is adaptive: it chooses its own steps (give rtol/atol or a "
                             "controller), not steps= or dt=")
        if t.numel() != 2:
            raise ValueError(f"solver {info.name!r} is adaptive: ts must be the span (t0, t1), got {t.numel()} times; "
                             "to record the state at intermediate times pass save_at=[...]")
        return t
    if steps is not None and dt is not None:
        raise ValueError("give steps= or dt=, not both")
    if steps is not None or dt is not None:
        if t.numel() != 2:
            raise ValueError(f"steps=/dt= divide the span (t0, t1) into equal steps; ts holds {t.numel()} times "
                             "(a full grid): pass the grid alone, or only its two ends")
        t0, t1 = float(t[0]), float(t[1])
        if dt is not None:
            dt = check_real("dt", dt, minimum=0.0, strict_min=True)
            steps = max(1, math.ceil(abs(t1 - t0) / dt - 1e-9))
            if steps > MAX_STEPS:
                raise ValueError(f"dt={dt!r} makes {steps} steps over the span; at most {MAX_STEPS} are allowed")
        steps = check_int("steps", steps, 1, MAX_STEPS)
        t = torch.linspace(t0, t1, steps + 1, dtype=torch.float64)
        t[-1] = t1
        return t
    if t.numel() == 2:
        raise ValueError(f"solver {info.name!r} is fixed-step: ts={t.tolist()} would be ONE step; pass steps=N (N equal "
                         "steps over the span) or dt=, or the whole grid ts=[t0, t1, ..., tN]")
    return t


def _split_controller(info: SolverInfo, controller, options: dict):
    """Solver options, and the controller of an adaptive solver (its fields given as options
    replace the solver's defaults)."""
    info.check_options(options)
    names = PIDController.option_names()
    fields = {k: options.pop(k) for k in list(options) if k in names and k not in info.options}
    if not info.adaptive:
        if controller is not None:
            raise ValueError(f"controller= is for adaptive solvers; {info.name!r} is {info.category}")
        return options, None
    if controller is not None:
        if not isinstance(controller, PIDController):
            raise ValueError(f"controller must be a fs.PIDController, got {type(controller).__name__}")
        if fields:
            raise ValueError(f"give the controller's settings in controller= or as options, not both (got "
                             f"controller= and {sorted(fields)})")
        return options, controller
    return options, info.default_controller.with_options(**fields)


def _check_common(extra_args, callback, differentiable):
    if extra_args is not None:
        if not isinstance(extra_args, dict) or not all(isinstance(k, str) for k in extra_args):
            raise ValueError(f"extra_args must be a dict of keyword arguments for the field, got {extra_args!r}")
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be a callable callback(i, t, x, denoised), got {type(callback).__name__}")
    return check_bool("differentiable", differentiable)


def _save_points(save_at, info: SolverInfo, ts: torch.Tensor) -> SaveAt | None:
    if save_at is None or save_at is False:
        return None
    return SaveAt(save_at, float(ts[0]), float(ts[-1]), None if info.adaptive else ts)


def _execute(flow, x: torch.Tensor, ts: torch.Tensor, info: SolverInfo, options: dict, *, save, noise,
             controller, extra_args, callback, differentiable: bool, denoise_at: float | None = None,
             owned: bool = False) -> Solution:
    """Run the solver (everything checked before). ``owned``: ``x`` was made here (the prior draw),
    so the solver may take it as it is instead of a copy that keeps the caller's tensor intact."""
    t0, t1 = float(ts[0]), float(ts[-1])
    if controller is not None:
        controller.check_resolvable(x.dtype)
    if x.shape[0] == 0:
        sol = empty_solution(x.detach().clone(), t1)
        if save is not None:
            save.start(sol.x, t0)
            sol.ts, sol.xs = save.result()
        return sol
    term = Term.for_state(flow, x, info.name, extra_args, callback)
    kwargs = dict(options)
    if info.kind == "sde":
        kwargs["noise"] = noise
    if info.adaptive:
        kwargs["controller"] = controller
    with torch.enable_grad() if differentiable else torch.no_grad():
        sol = info.fn(term, x if owned else x.clone(), ts, save=save, **kwargs)
        if denoise_at is not None:
            sol = _denoise_final(term, sol, denoise_at)
    return sol


def _noise_for(info, seed, noise, generator, x, offset=0):
    """The noise source of a stochastic solver, or a refusal of randomness arguments that an ODE
    solver would ignore."""
    if info.kind == "ode":
        given = [name for name, v in (("seed", seed), ("noise", noise), ("generator", generator)) if v is not None]
        if given:
            raise ValueError(f"{'/'.join(given)} given, but solver {info.name!r} ({info.category}) draws no noise: "
                             "remove it (or use a stochastic solver)")
        return None
    if sum(v is not None for v in (seed, noise, generator)) > 1:
        raise ValueError("give one of seed, noise or generator")
    if noise is not None:
        if not callable(getattr(noise, "randn", None)):
            raise ValueError(f"noise must be a fs.NoiseSource (or any object whose randn() draws (n, *event_shape)), "
                             f"got {type(noise).__name__}")
        if isinstance(noise, NoiseSource) and (noise.n != x.shape[0] or noise.event_shape != tuple(x.shape[1:])):
            raise ValueError(f"noise draws shape ({noise.n}, {', '.join(map(str, noise.event_shape))}) but x has shape "
                             f"{tuple(x.shape)}")
        return _StateNoise(noise, x)
    if generator is not None:
        return GeneratorNoise(generator, x.shape[0], x.shape[1:], dtype=x.dtype, device=x.device)
    seed = 0 if seed is None else check_int("seed", seed, 0)
    return NoiseSource(seed, x.shape[0], x.shape[1:], dtype=x.dtype, device=x.device, offset=offset,
                       stream=SOLVER_STREAM)


class _StateNoise:
    """A user's noise source, its draws checked for the state's shape and cast to its dtype and
    device (a float32 source must not promote a float16 solve, nor a CPU one a CUDA solve)."""

    def __init__(self, noise, x: torch.Tensor):
        self.noise, self.shape, self.dtype, self.device = noise, tuple(x.shape), x.dtype, x.device

    def randn(self) -> torch.Tensor:
        z = self.noise.randn()
        if not isinstance(z, torch.Tensor) or tuple(z.shape) != self.shape:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"noise.randn() must draw the state's shape {self.shape}, got {got}")
        return z.to(dtype=self.dtype, device=self.device)


# ---------------------------------------------------------------------------------------
# compile=True
# ---------------------------------------------------------------------------------------

def _check_compile(compile, info: SolverInfo) -> bool:
    compile = check_bool("compile", compile)
    if compile and info.adaptive:
        raise ValueError(f"compile=True is for fixed-step solvers; {info.name!r} is adaptive: its steps act on "
                         "changing subsets of the batch (a new shape at almost every attempt, hence a recompilation "
                         "each time). Use a fixed-step solver, or compile=False")
    return compile


class _CompiledNetwork:
    """``torch.compile(fn, dynamic=False)`` with the fallback: if the compiled call raises (no C++
    compiler for inductor, an operation dynamo cannot trace, ...), a warning says so once and this
    and every later call run ``fn`` eagerly; an error of ``fn`` itself is then raised by the eager
    call, as without compile."""

    def __init__(self, fn):
        self.fn, self.compiled, self.failed = fn, torch.compile(fn, dynamic=False), None
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, *args, **kwargs):
        if self.failed is None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 -- any failure of compilation falls back to eager
                import warnings
                self.failed = err
                warnings.warn(f"compile=True: torch.compile of the field's network failed ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); running it eagerly",
                              RuntimeWarning, stacklevel=2)
        return self.fn(*args, **kwargs)


def compiled_field(field: Field) -> Field:
    """The field with its network compiled: a copy of ``field`` whose callable (``fn`` of a field
    made by ``fs.Field.from_*``, else its ``_denoise``) is ``torch.compile(..., dynamic=False)``.

    What is compiled is the network, called with the state and a tensor of times: the times are
    data, not constants, so one compilation serves every step of a grid (compiling the solver's
    step, whose times are Python floats, would recompile at every step). The copy is kept on the
    field, so later solves with the same field reuse its compiled code; a new batch shape or dtype
    compiles once more. Fields whose ``_evaluate`` is their own (the exact fields of
    ``flowsolve.toy``) are compiled whole. Falls back to eager execution, with a warning, if
    compilation fails."""
    cached = field.__dict__.get("_cache_compiled")
    if cached is not None:
        return cached
    import copy
    twin = copy.copy(field)
    twin.__dict__.pop("_cache_compiled", None)
    if hasattr(field, "fn") and getattr(field, "kind", None) is not None:
        twin.fn = _CompiledNetwork(field.fn)
    elif type(field)._evaluate is Field._evaluate:
        twin._denoise = _CompiledNetwork(field._denoise)
    else:
        twin._evaluate = _CompiledNetwork(field._evaluate)
    field.__dict__["_cache_compiled"] = twin
    return twin


def _compiled_flow(flow, info: SolverInfo):
    """``flow`` with its field compiled (:func:`compiled_field`)."""
    field = getattr(flow, "field", None)
    if field is None or type(flow) not in (ProbabilityFlowODE, ReverseSDE):
        raise ValueError(f"compile=True compiles the field's network, and {_describe(flow)} has none: make the flow "
                         "with fs.probability_flow(process, field) or fs.reverse_sde(process, field), or pass "
                         "compile=False")
    return type(flow)(flow.process, compiled_field(field), getattr(flow, "_score", None))


# ---------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------

def solve(flow, x: torch.Tensor, ts, solver: str = "heun", *, steps: int | None = None, dt: float | None = None,
          seed: int | None = None, noise: NoiseSource | None = None, generator: torch.Generator | None = None,
          save_at=None, extra_args: dict | None = None, callback=None, differentiable: bool = False,
          controller: PIDController | None = None, compile: bool = False, **options) -> Solution:
    """Integrate ``flow`` (anything with ``drift(x, t)``, plus ``diffusion(t)`` for an SDE) from
    ``ts[0]`` to ``ts[-1]``, for a batch ``x`` of shape ``(n, *event_shape)``.

    Times: a fixed-step solver steps exactly on the grid ``ts``, or on ``steps=N`` equal steps
    (or steps of at most ``dt=``) over the span ``ts = (t0, t1)``; a bare two-point span is refused
    (it would be one step). An adaptive solver takes the span ``(t0, t1)`` and ``rtol``/``atol``
    (shortcuts for fields of its :class:`~flowsolve.PIDController`), or ``controller=``. Time may
    run backwards.

    Randomness (stochastic solvers only): per-sample streams of ``seed`` (default 0), or ``noise=``
    (a :class:`~flowsolve.NoiseSource`), or one ``generator=`` for the whole batch.

    ``extra_args`` go to the field at every evaluation (class labels, ...; a tensor whose first
    dimension is n is taken as one row per sample and sliced with the batch when a solver
    evaluates some samples only; anything else is passed unchanged); ``callback(i, t, x, denoised)`` runs after each step;
    ``save_at`` (True or times) records the trajectory in ``Solution.ts``/``xs``. The solve builds
    no autograd graph unless ``differentiable=True``. ``drift`` receives t as a Python float, or
    as a float64 tensor of shape ``(n,)`` when samples sit at different times (adaptive solvers).
    Options are the solver's own (``fs.available_solvers()[solver]["options"]``).

    ``compile=True`` (fixed-step solvers only) runs the field's network through ``torch.compile``
    (see :func:`compiled_field`); the solver's loop stays eager around it.
    """
    info = get_solver(solver)
    x = _check_state(x)
    _check_flow(flow, info, tuple(x.shape[1:]))
    ts = _check_times(flow, ts, info, steps, dt)
    options, controller = _split_controller(info, controller, dict(options))
    differentiable = _check_common(extra_args, callback, differentiable)
    flow = _compiled_flow(flow, info) if _check_compile(compile, info) else flow
    source = _noise_for(info, seed, noise, generator, x)
    save = _save_points(save_at, info, ts)
    return _execute(flow, x, ts, info, options, save=save, noise=source, controller=controller,
                    extra_args=extra_args, callback=callback, differentiable=differentiable)


def sample(process, field, n: int, solver: str = "heun", *, steps: int | None = None, nfe: int | None = None,
           grid=None, ts=None, rho: float | None = None, shape=None, seed: int | None = None,
           offset: int | None = None, generator: torch.Generator | None = None, x_init: torch.Tensor | None = None,
           dtype=None, device=None, denoise_final: bool = False, save_at=None, extra_args: dict | None = None,
           callback=None, differentiable: bool = False, controller: PIDController | None = None,
           compile: bool = False, **options) -> Solution:
    """Draw ``n`` samples: prior at ``t_max`` -> data at ``t_min``.

    Budget: a fixed-step solver takes exactly one of ``steps`` or ``nfe`` (with ``nfe`` the step
    count is the largest whose evaluations fit, the final denoising included) on the time grid
    ``grid`` (default: the solver's ``default_grid``, "karras" except for annealed_langevin's
    geometric "log_sigma" levels; ``fs.available_grids()``; ``rho=`` for karras;
    ``grid="explicit"`` with ``ts=``; or a :class:`~flowsolve.TunedGrid` from :func:`~flowsolve.tune_grid`,
    with the solver, options and process it was tuned for, ``nfe`` optional); an adaptive solver takes ``rtol``/``atol`` or ``controller=`` instead, and no grid.

    Shape: each sample has shape ``shape`` (e.g. ``(3, 32, 32)``), else the field's own
    ``event_shape``, else ``x_init``'s. ``x_init`` gives the prior points instead of drawing them.
    ``denoise_final`` ends with the step to sigma = 0, i.e. returns ``D(x; t_min)`` (one more
    evaluation, fault-checked per sample like the others).

    Randomness: sample ``offset + i`` (offset default 0) has its own streams of ``seed`` (default 0)
    for the prior and the solver's noise; ``generator=`` draws both from one generator instead
    (then sample i depends on the batch). An ODE solver with ``x_init`` draws nothing, so
    ``seed``/``offset``/``generator`` are refused there. ``compile=True`` compiles the field's
    network with ``torch.compile`` (fixed-step solvers; :func:`compiled_field`). The rest is as in
    :func:`solve`.
    """
    require_canonical(process, "sample")
    info = get_solver(solver)
    if "noise" in options:
        raise ValueError("noise= is for fs.solve; fs.sample draws the prior and the solver's noise from per-sample "
                         "streams of seed= (and offset=), or from one generator=")
    field = _as_field(process, field)
    n = check_int("n", n, 0)
    denoise_final = check_bool("denoise_final", denoise_final)
    differentiable = _check_common(extra_args, callback, differentiable)
    compile = _check_compile(compile, info)
    options, controller = _split_controller(info, controller, dict(options))
    # the state: shape, dtype, device
    if x_init is not None:
        x_init = _check_state(x_init, "x_init")
        if x_init.shape[0] != n:
            raise ValueError(f"x_init must hold n={n} points, got {x_init.shape[0]}")
    event = _event_shape(shape, field, x_init)
    dtype = check_float_dtype("dtype", dtype if dtype is not None else (x_init.dtype if x_init is not None
                                                                          else torch.float32))
    device = check_device("device", device if device is not None else (x_init.device if x_init is not None
                                                                        else None))
    # randomness
    draws_prior = x_init is None
    if not draws_prior and info.kind == "ode":
        given = [k for k, v in (("seed", seed), ("offset", offset), ("generator", generator)) if v is not None]
        if given:
            raise ValueError(f"{'/'.join(given)} given, but nothing is drawn: x_init= fixes the prior and solver "
                             f"{info.name!r} ({info.category}) draws no noise")
    if seed is not None and generator is not None:
        raise ValueError("give seed (per-sample streams) or generator (one for the batch), not both")
    if offset is not None and generator is not None:
        raise ValueError("offset= selects per-sample streams of seed; it has no meaning with generator=")
    seed = 0 if seed is None else check_int("seed", seed, 0)
    offset = 0 if offset is None else check_int("offset", offset, 0)
    # times
    times = _sample_times(process, info, options, grid, steps, nfe, ts, rho, denoise_final, draws_prior)
    save = _save_points(save_at, info, times)
    # flow
    if info.kind == "sde":
        if not isinstance(process, Diffusion):
            raise ValueError(f"solver {info.name!r} ({info.category}) samples a reverse SDE, but {process!r} has no "
                             "forward SDE (Poisson flows are defined by their kernel): use an ODE solver "
                             f"({', '.join(_names('ode'))})")
        flow = reverse_sde(process, field)
    else:
        flow = probability_flow(process, field)
    _check_flow(flow, info, event)
    if compile:
        flow = _compiled_flow(flow, info)
    # the prior
    owned = x_init is None
    if x_init is None:
        x_init = draw_prior(process, n, event, dtype, device, seed, offset, generator)
        overflow = int((~finite_rows(x_init)).sum())
    else:
        overflow = 0
        x_init = x_init.to(dtype=dtype, device=device)
    noise = (_noise_for(info, None if generator is not None else seed, None, generator, x_init, offset)
             if info.kind == "sde" else None)
    sol = _execute(flow, x_init, times, info, options, save=save, noise=noise, controller=controller,
                   extra_args=extra_args, callback=callback, differentiable=differentiable,
                   denoise_at=float(times[-1]) if denoise_final else None, owned=owned)
    sol.extras["grid"] = times
    if overflow:  # a heavy-tailed prior (PFGM) in a narrow dtype: say why those samples failed at once
        sol.message += (f"; the prior draw of {overflow} sample(s) does not fit {dtype} (|x| > "
                        f"{torch.finfo(dtype).max:.4g}): use a wider dtype or a smaller sigma_max")
    return sol


#: Elements per block of the prior draw: its temporaries (float64, and the noise generator's own, about
#: 50 bytes per element at d = 2) stay a few MiB whatever n.
PRIOR_BLOCK_ELEMENTS = 1 << 16


def draw_prior(process, n: int, event: tuple, dtype, device, seed: int, offset: int = 0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` prior points ``s(t_max) sigma(t_max) n_kernel``, drawn and scaled in float64 and cast
    once to ``dtype``. The per-sample streams are drawn in row blocks of ``PRIOR_BLOCK_ELEMENTS``
    elements straight into the result (sample ``offset + i`` has its own streams, so the blocks give
    the same numbers as one draw); one ``generator=`` draws the batch at once (its numbers depend
    on the batch). The one prior draw of flowsolve: ``fs.sample``, the bench's start points and the
    tuner's calibration points all come from here."""
    if generator is not None:
        prior = GeneratorNoise(generator, n, event, device=device)
        return (process.prior_std * prior.kernel_noise(process.kernel)).to(dtype)
    out = torch.empty((n, *event), dtype=dtype, device=device)
    rows = max(1, PRIOR_BLOCK_ELEMENTS // max(1, math.prod(event)))
    for start in range(0, n, rows):
        m = min(rows, n - start)
        z = NoiseSource(seed, m, event, device=device, offset=offset + start, stream=PRIOR_STREAM)
        out[start:start + m] = z.kernel_noise(process.kernel).mul_(process.prior_std)
    return out


def _event_shape(shape, field: Field, x_init):
    """One sample's shape: ``shape=``, else the field's, else x_init's; any two given must agree."""
    if shape is not None:
        shape = check_event_shape("shape", shape)
        if not shape:
            raise ValueError("shape must have at least one dimension (for scalar data use shape=(1,))")
    known = None if field.event_shape is None else tuple(field.event_shape)
    given = None if x_init is None else tuple(x_init.shape[1:])
    if shape is not None and known is not None and shape != known:
        raise ValueError(f"shape={shape} does not match the field's event_shape {known}")
    if given is not None and known is not None and given != known:
        raise ValueError(f"x_init has event shape {given}, but the field's is {known}: x_init must have shape "
                         f"(n, {', '.join(map(str, known))})")
    if shape is not None and given is not None and shape != given:
        raise ValueError(f"shape={shape} does not match x_init's event shape {given}")
    shape = shape or known or given
    if shape is None:
        raise ValueError("the field does not know the shape of a sample: pass shape=(...) (e.g. shape=(3, 32, 32)), "
                         "or x_init, or make the field with event_shape=")
    return shape


def _sample_times(process, info: SolverInfo, options, grid, steps, nfe, ts, rho, denoise_final,
                  draws_prior: bool) -> torch.Tensor:
    extra = 1 if denoise_final else 0
    if info.adaptive:
        given = [k for k, v in (("grid", grid), ("steps", steps), ("nfe", nfe), ("ts", ts), ("rho", rho))
                 if v is not None]
        if given:
            raise ValueError(f"solver {info.name!r} is adaptive: it chooses its own steps from its tolerances, so "
                             f"{'/'.join(given)} would be ignored; give rtol/atol or controller= instead")
        return torch.tensor([process.t_max, process.t_min], dtype=torch.float64)
    grid = info.default_grid if grid is None else grid
    if not isinstance(grid, str):
        return _tuned_grid_times(process, info, options, grid, steps, nfe, ts, rho, extra)
    if grid == "explicit":
        if steps is not None or nfe is not None:
            raise ValueError("grid='explicit' takes its steps from ts=; do not pass steps or nfe")
        times = make_grid(process, grid, ts=ts)
        if not bool((times[1:] < times[:-1]).all()):
            raise ValueError("ts must decrease: sample runs from the prior (t_max) to the data (t_min)")
        if times.numel() == 2:
            raise ValueError(f"grid='explicit' with ts={times.tolist()} would be ONE step of solver {info.name!r}: "
                             "give the whole grid, or steps=N with a named grid")
        if draws_prior and float(times[0]) != process.t_max:
            raise ValueError(f"ts must start at t_max={process.t_max!r}, where the prior is drawn, got "
                             f"{float(times[0])!r}: start the grid there, or give x_init= for the start you mean")
        return times
    if ts is not None:
        raise ValueError(f"ts= is for grid='explicit'; grid={grid!r} makes its own times")
    if (steps is None) == (nfe is None):
        raise ValueError(f"solver {info.name!r} is fixed-step: give exactly one of steps or nfe")
    if nfe is not None:
        nfe = check_int("nfe", nfe, 1, MAX_STEPS)
        steps = info.max_steps_within(nfe - extra, options)
        if steps < 1:
            raise ValueError(f"nfe={nfe} is below one step of {info.name!r} ({info.nfe_per_step_for(options)} NFE per "
                             f"step{' + 1 for the final denoising' if extra else ''})")
    return _named_grid(process, grid, steps, rho)


def _tuned_grid_times(process, info: SolverInfo, options, grid, steps, nfe, ts, rho, extra: int) -> torch.Tensor:
    """The times of a :class:`~flowsolve.TunedGrid`, refused where they would not mean what it was
    tuned for: another solver, other options, another process, or a budget that buys other steps."""
    from ..tuning import TunedGrid  # tuning builds on the solvers: imported when a tuned grid is used

    if not isinstance(grid, TunedGrid):
        raise ValueError(f"grid must be a grid name ({', '.join(_GRID_MAKERS)}) or a TunedGrid from fs.tune_grid, "
                         f"got {type(grid).__name__}")
    given = [k for k, v in (("ts", ts), ("steps", steps), ("rho", rho)) if v is not None]
    if given:
        raise ValueError(f"a TunedGrid holds its own {grid.steps} steps: do not pass {'/'.join(given)}")
    if info.name != grid.solver:
        raise ValueError(f"grid was tuned for solver {grid.solver!r}, not {info.name!r}: pass solver={grid.solver!r}")
    wanted, got = {**info.options, **grid.options}, {**info.options, **options}
    if got != wanted:
        differ = {k: wanted[k] for k in wanted if got.get(k) != wanted[k]}
        raise ValueError(f"grid was tuned for {grid.solver!r} with options {grid.options}; these differ: "
                         + ", ".join(f"{k}={got.get(k)!r} (tuned with {v!r})" for k, v in differ.items()))
    if repr(process) != grid.process:
        raise ValueError(f"grid was tuned for process {grid.process}, not {process!r}")
    if nfe is not None:
        nfe = check_int("nfe", nfe, 1, MAX_STEPS)
        if info.max_steps_within(nfe - extra, options) != grid.steps:
            raise ValueError(f"nfe={nfe} buys {info.max_steps_within(nfe - extra, options)} steps of {info.name!r}"
                             f"{' (one evaluation goes to the final denoising)' if extra else ''}, but the grid "
                             f"was tuned for nfe={grid.nfe} ({grid.steps} steps)")
    return make_grid(process, "explicit", ts=grid.ts)


#: Named grids already made, by (process, grid, steps, rho): a grid costs about as much to make as
#: a few steps of a small batch cost to take, and a sampler is called with the same one again and
#: again. Processes are values (equal parameters, equal key); kept small.
_MADE_GRIDS: dict = {}


def _named_grid(process, grid: str, steps: int, rho) -> torch.Tensor:
    key = (process, grid, steps, rho, _GRID_MAKERS.get(grid) if isinstance(grid, str) else None)
    try:
        times = _MADE_GRIDS.get(key)
    except TypeError:  # a process holding something unhashable: make the grid each time
        return make_grid(process, grid, steps, **({} if rho is None else {"rho": rho}))
    if times is None:
        times = make_grid(process, grid, steps, **({} if rho is None else {"rho": rho}))
        if len(_MADE_GRIDS) >= 256:
            _MADE_GRIDS.clear()
        _MADE_GRIDS[key] = times
    return times.clone()  # the caller's own (it lands in Solution.extras["grid"])
