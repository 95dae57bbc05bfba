"""The two entry points: :func:`solve` integrates any flow, :func:`sample` draws samples
from a process and a field (prior at ``t_max`` -> data at ``t_min``)."""

from __future__ import annotations

import torch

from .._validation import check_int
from ..flows import _as_field, probability_flow, reverse_sde
from ..grids import make_grid
from ..processes.diffusions import Diffusion
from ..processes.sde import require_canonical
from .base import GeneratorNoise, NoiseSource, Solution, get_solver

PRIOR_STREAM, SOLVER_STREAM = 0, 1


def _check_state(x, name="x"):
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of shape (n, dim), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")


def _check_times(flow, ts, adaptive: bool) -> torch.Tensor:
    t = torch.as_tensor(ts, dtype=torch.float64).detach().cpu().reshape(-1)
    if adaptive and t.numel() != 2:
        raise ValueError(f"adaptive solvers take ts=(t0, t1), got {t.numel()} times")
    if t.numel() < 2:
        raise ValueError(f"ts must hold at least 2 times, got {t.numel()}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("ts must be finite")
    d = t[1:] - t[:-1]
    if not (bool((d < 0).all()) or bool((d > 0).all())):
        raise ValueError("ts must be strictly monotone (increasing or decreasing)")
    lo, hi = getattr(flow, "t_min", None), getattr(flow, "t_max", None)
    if lo is not None and hi is not None:
        slack = 1e-9 * max(abs(lo), abs(hi))
        if float(t.min()) < lo - slack or float(t.max()) > hi + slack:
            raise ValueError(f"ts must lie in the flow's span [{lo!r}, {hi!r}], got [{float(t.min())!r}, {float(t.max())!r}]")
    return t


def solve(flow, x: torch.Tensor, ts, solver: str = "heun", *, seed: int = 0, noise: NoiseSource | None = None,
          generator: torch.Generator | None = None, save_at=None, **options) -> Solution:
    """Integrate ``flow`` (anything with ``drift(x, t)``, plus ``diffusion(t)`` for an SDE)
    from ``ts[0]`` to ``ts[-1]``.

    ``ts`` is a 1-D grid for fixed-step solvers (they step exactly on it) or ``(t0, t1)``
    for adaptive ones (options ``rtol``, ``atol``, ``max_steps``, ``shared_step``). Time may
    run backwards. SDE solvers draw from per-sample streams of ``seed``, or from ``noise=`` (a
    :class:`NoiseSource`) or one ``generator=`` for the whole batch.
    ``drift`` receives t as a Python float, or as a float64 tensor of shape ``(n,)`` when
    samples sit at different times (adaptive solvers).
    """
    info = get_solver(solver)
    _check_state(x)
    ts = _check_times(flow, ts, info.adaptive)
    if info.process_aware and getattr(flow, "field", None) is None:
        raise ValueError(f"solver {solver!r} is process-aware: it needs a flow made by fs.probability_flow or "
                         "fs.reverse_sde from a canonical process (VE, VP, SubVP, EDM, PFGMPP, Poisson, Diffusion, "
                         "LinearSDE) and a field; a general SDE or a plain ODE has no scale/sigma to work with")
    if info.kind == "sde":
        if not callable(getattr(flow, "diffusion", None)):
            process = getattr(flow, "process", None)
            what = f"{type(process).__name__} has no forward SDE" if process is not None else "flow has no diffusion(t)"
            raise ValueError(f"solver {solver!r} integrates a reverse SDE, but {what}: use fs.reverse_sde on a "
                             "diffusion (VE, VP, SubVP, EDM, Diffusion, LinearSDE) or a general fs.SDE, or an ODE solver")
        if info.process_aware:
            require_canonical(flow.process, f"solver {solver!r}")
        if noise is not None and generator is not None:
            raise ValueError("give noise or generator, not both")
        if generator is not None:
            noise = GeneratorNoise(generator, x.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
        elif noise is None:
            noise = NoiseSource(seed, x.shape[0], x.shape[1], dtype=x.dtype, device=x.device, stream=SOLVER_STREAM)
        options["noise"] = noise
    if save_at is not None:
        options["save_at"] = save_at
    return info.fn(flow, x.clone(), ts, **options)


def sample(process, field, n: int, solver: str = "heun", *, steps: int | None = None, nfe: int | None = None,
           grid: str = "karras", seed: int = 0, x_init: torch.Tensor | None = None, dtype=None,
           device=None, denoise_final: bool = False, offset: int = 0, ts=None, rho: float | None = None,
           generator: torch.Generator | None = None, **options) -> Solution:
    """Draw ``n`` samples: prior at ``t_max`` -> data at ``t_min``.

    Exactly one of ``steps`` or ``nfe`` fixes the budget of a fixed-step solver (with ``nfe``
    the step count is the largest whose evaluations fit, the final denoising included);
    adaptive solvers take ``rtol``/``atol`` instead. ``grid`` names a time grid
    (``fs.available_grids()``; ``grid="explicit"`` with ``ts=``). ``x_init`` reuses given
    prior points. ``denoise_final`` ends with the step to sigma = 0, i.e. returns
    ``D(x; t_min)`` (one more evaluation). Sample ``offset + i`` has its own noise streams;
    ``generator=`` draws prior and noise from one generator instead (batch-dependent).
    """
    require_canonical(process, "sample")
    info = get_solver(solver)
    field = _as_field(process, field)
    n = check_int("n", n, 1)
    if x_init is not None:
        _check_state(x_init, "x_init")
    if dtype is None:  # x_init's dtype, else float32
        dtype = x_init.dtype if x_init is not None else torch.float32
    if ts is not None and grid != "explicit":
        raise ValueError(f"ts= is for grid='explicit'; grid={grid!r} makes its own times")
    if rho is not None and grid != "karras":
        raise ValueError(f"rho= is for grid='karras', got grid={grid!r}")
    dim = field.dim if x_init is None else x_init.shape[-1]
    if dim is None:
        raise ValueError("the field does not know the data dimension: pass x_init")
    extra = 1 if denoise_final else 0
    if info.adaptive:
        if steps is not None or nfe is not None:
            raise ValueError(f"solver {solver!r} is adaptive: give rtol/atol (and max_steps), not steps or nfe")
        times = (process.t_max, process.t_min)
    elif grid == "explicit":
        if steps is not None or nfe is not None:
            raise ValueError("grid='explicit' takes its steps from ts=; do not pass steps or nfe")
        times = make_grid(process, grid, ts=ts)
        if not bool((times[1:] < times[:-1]).all()):
            raise ValueError("ts must decrease: sample runs from the prior (t_max) to the data (t_min)")
    else:
        if (steps is None) == (nfe is None):
            raise ValueError("give exactly one of steps or nfe")
        if nfe is not None:
            nfe = check_int("nfe", nfe, 1)
            per_step = info.nfe_per_step_for(options)
            steps = info.max_steps_within(nfe - extra, options)
            if steps < 1:
                raise ValueError(f"nfe={nfe} is below one step of {solver!r} ({per_step} NFE per step"
                                 f"{' + 1 for the final denoising' if extra else ''})")
        times = make_grid(process, grid, steps, **({} if rho is None else {"rho": rho}))
    if x_init is None:
        prior = (GeneratorNoise(generator, n, dim, dtype=dtype, device=device) if generator is not None else
                 NoiseSource(seed, n, dim, dtype=dtype, device=device, offset=offset, stream=PRIOR_STREAM))
        x_init = process.prior_std * prior.kernel_noise(process.kernel)
    else:
        if field.dim is not None and x_init.shape[1] != field.dim:
            raise ValueError(f"x_init must have last dimension {field.dim} (the data dimension), "
                             f"got shape {tuple(x_init.shape)}")
        if x_init.shape[0] != n:
            raise ValueError(f"x_init must hold n={n} points, got {x_init.shape[0]}")
        x_init = x_init.to(dtype=dtype, device=device if device is not None else x_init.device)
    if info.kind == "sde" and isinstance(process, Diffusion):
        flow = reverse_sde(process, field)
    else:  # an SDE solver on PFGM++ is refused by solve() with the reason
        flow = probability_flow(process, field)
    noise = None
    if info.kind == "sde" and generator is None:
        noise = NoiseSource(seed, n, dim, dtype=x_init.dtype, device=x_init.device, offset=offset, stream=SOLVER_STREAM)
    sol = solve(flow, x_init, times, solver, noise=noise, generator=generator if info.kind == "sde" else None,
                **options)
    if denoise_final and sol.success:
        sol.x = field.denoiser(sol.x, process.t_min)
        sol.nfe = sol.nfe + 1
    sol.extras["grid"] = times
    return sol
