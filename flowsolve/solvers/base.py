"""What every solver shares: the ``Solution``, the solver registry, per-sample noise streams,
and an NFE-counting view of a flow.

A solver is a function ``fn(flow, x, ts, *, noise, save_at, **options) -> Solution`` where
``ts`` is a 1-D float64 grid (fixed-step) or a pair ``(t0, t1)`` (adaptive). It is
registered with :func:`register_solver` and looked up by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .._validation import check_int

SUCCESS, MAX_STEPS, NONFINITE, UNDERFLOW = "success", "max_steps", "nonfinite", "underflow"


@dataclass
class Solution:
    """Result of :func:`flowsolve.solve` / :func:`flowsolve.sample`.

    ``x`` final state (the last finite one on a fault); ``t`` final time per sample;
    ``nfe``, ``n_steps``, ``n_accepted``, ``n_rejected`` per-sample counts (int64 tensors);
    ``status`` one of "success", "max_steps", "nonfinite", "underflow", with ``message``
    saying where (time and step); ``ts``/``xs`` the saved trajectory when ``save_at`` was given.
    """

    x: torch.Tensor
    t: torch.Tensor
    nfe: torch.Tensor
    n_steps: torch.Tensor
    n_accepted: torch.Tensor
    n_rejected: torch.Tensor
    status: str = SUCCESS
    message: str = ""
    ts: torch.Tensor | None = None
    xs: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return self.status == SUCCESS

    def __repr__(self) -> str:
        nfe = self.nfe.float()
        return (f"Solution(status={self.status!r}, n={self.x.shape[0]}, nfe mean {float(nfe.mean()):.1f} "
                f"max {int(self.nfe.max()) if self.nfe.numel() else 0}, steps {int(self.n_steps.max()) if self.n_steps.numel() else 0}"
                f"{', ' + self.message if self.message else ''})")


@dataclass(frozen=True)
class SolverInfo:
    name: str
    fn: Callable
    kind: str  # "ode" or "sde"
    order: float
    nfe_per_step: int
    adaptive: bool = False
    process_aware: bool = False
    description: str = ""
    cost: Callable | None = None  # options -> NFE per step, when the options change it
    steps_for_budget: Callable | None = None  # (nfe, options) -> steps, when the cost is not per-step uniform

    def nfe_per_step_for(self, options: dict) -> int:
        """NFE per step with these solver options (``nfe_per_step`` unless ``cost`` says otherwise)."""
        return int(self.cost(options)) if self.cost is not None else self.nfe_per_step

    def max_steps_within(self, nfe: int, options: dict) -> int:
        """The most steps whose evaluations fit in ``nfe``."""
        if self.steps_for_budget is not None:
            return int(self.steps_for_budget(nfe, options))
        return nfe // self.nfe_per_step_for(options)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "order": self.order, "nfe_per_step": self.nfe_per_step,
                "adaptive": self.adaptive, "process_aware": self.process_aware, "description": self.description}


_REGISTRY: dict[str, SolverInfo] = {}


def register_solver(name: str, fn: Callable, *, kind: str, order: float, nfe_per_step: int, adaptive: bool = False,
                    process_aware: bool = False, description: str = "", overwrite: bool = False,
                    cost: Callable | None = None, steps_for_budget: Callable | None = None) -> SolverInfo:
    """Make ``fn`` available as ``solver=name`` in :func:`solve` and :func:`sample`.

    ``nfe_per_step`` is the cost with default options; ``cost(options) -> int`` gives it for
    other options (e.g. more corrector steps), so ``sample(nfe=...)`` stays within budget;
    ``steps_for_budget(nfe, options) -> steps`` when steps do not all cost the same (e.g. a
    cheaper last step)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a solver named {name!r} is already registered (pass overwrite=True to replace it)")
    if kind not in ("ode", "sde"):
        raise ValueError(f"kind must be 'ode' or 'sde', got {kind!r}")
    nfe_per_step = check_int("nfe_per_step", nfe_per_step, 1)
    if cost is not None and not callable(cost):
        raise ValueError(f"cost must be a callable options -> NFE per step, got {type(cost).__name__}")
    info = SolverInfo(name, fn, kind, float(order), int(nfe_per_step), bool(adaptive), bool(process_aware), description,
                      cost, steps_for_budget)
    _REGISTRY[name] = info
    return info


def get_solver(name: str) -> SolverInfo:
    if name not in _REGISTRY:
        raise ValueError(f"solver must be one of {sorted(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]


def available_solvers() -> dict[str, dict]:
    """Solver name -> info (kind, order, nfe_per_step, adaptive, process_aware, description)."""
    return {name: info.as_dict() for name, info in sorted(_REGISTRY.items())}


class NoiseSource:
    """Independent Gaussian streams per sample: sample ``offset + i`` draws from a generator
    seeded by ``(seed, block)`` with ``block = (offset + i) // BLOCK``, so its noise is the same
    whatever the batch size, the other samples or how the batch is split (pass ``offset`` for
    a later part of a split batch; ``stream`` separates independent uses of one seed, e.g.
    the prior draw and the solver's noise). Draws are made on the CPU in float64 and then cast and
    moved, so they are also the same on every device.
    """

    BLOCK = 64

    def __init__(self, seed: int, n: int, dim: int, dtype=torch.float32, device=None, offset: int = 0,
                 stream: int = 0):
        seed, offset = check_int("seed", seed, 0), check_int("offset", offset, 0)
        self.n, self.dim, self.dtype, self.device = int(n), int(dim), dtype, device
        idx = np.arange(int(offset), int(offset) + self.n)
        blocks = idx // self.BLOCK
        self._blocks = np.unique(blocks)
        self._gens = []
        for b in self._blocks:
            state = np.random.SeedSequence([int(seed), int(stream), int(b)]).generate_state(2, dtype=np.uint32)
            self._gens.append(torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1])))
        pos = {int(b): j for j, b in enumerate(self._blocks)}
        self._rows = torch.as_tensor([pos[int(b)] * self.BLOCK + int(i % self.BLOCK) for b, i in zip(blocks, idx)],
                                     dtype=torch.long)

    def _gather(self, draws: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(draws, dim=0)[self._rows]

    def randn(self, dim: int | None = None) -> torch.Tensor:
        """The next standard-normal draw of every sample, shape ``(n, dim)``."""
        dim = self.dim if dim is None else int(dim)
        out = self._gather([torch.randn(self.BLOCK, dim, generator=g, dtype=torch.float64) for g in self._gens])
        return out.to(dtype=self.dtype, device=self.device)

    def gamma(self, concentration: float) -> torch.Tensor:
        """The next ``Gamma(concentration, 1)`` draw of every sample, shape ``(n,)``, float64."""
        alpha = torch.full((self.BLOCK,), float(concentration), dtype=torch.float64)
        out = self._gather([torch._standard_gamma(alpha, generator=g) for g in self._gens])
        return out.to(device=self.device)

    def kernel_noise(self, kernel) -> torch.Tensor:
        """A draw of the process kernel's unit noise ``n`` for every sample, shape ``(n, dim)``."""
        g = self.randn().to(torch.float64)
        if getattr(kernel, "name", "gaussian") == "gaussian":
            return g.to(self.dtype)
        u = self.gamma(0.5 * kernel.D).to(g.device) / (0.5 * kernel.D)
        return (g / torch.sqrt(u).unsqueeze(-1)).to(self.dtype)


class GeneratorNoise(NoiseSource):
    """Draws from one ``torch.Generator`` for the whole batch (``generator=`` in
    :func:`solve`/:func:`sample`): reproducible for a fixed batch, but sample i's noise then
    depends on the batch size, unlike :class:`NoiseSource` streams."""

    def __init__(self, generator: torch.Generator, n: int, dim: int, dtype=torch.float32, device=None):
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator, self.n, self.dim, self.dtype, self.device = generator, int(n), int(dim), dtype, device

    def randn(self, dim: int | None = None) -> torch.Tensor:
        dim = self.dim if dim is None else int(dim)
        out = torch.randn(self.n, dim, generator=self.generator, dtype=torch.float64, device=self.generator.device)
        return out.to(dtype=self.dtype, device=self.device)

    def gamma(self, concentration: float) -> torch.Tensor:
        alpha = torch.full((self.n,), float(concentration), dtype=torch.float64, device=self.generator.device)
        return torch._standard_gamma(alpha, generator=self.generator).to(device=self.device)


class CountingFlow:
    """Wraps a flow, counting field evaluations per sample (``nfe``), and raising nothing
    itself: solvers check finiteness and report where it failed."""

    def __init__(self, flow, n: int, device=None):
        self.flow = flow
        self.nfe = torch.zeros(n, dtype=torch.long, device=device)

    def drift(self, x, t, active: torch.Tensor | None = None):
        if active is None:
            self.nfe += 1
        else:
            self.nfe[active] += 1
        return self.flow.drift(x, t)


def as_time(t, x: torch.Tensor):
    """A Python float or a per-sample float64 tensor (schedules are evaluated in float64,
    so times are never rounded to x's dtype)."""
    if isinstance(t, torch.Tensor):
        return t.to(dtype=torch.float64, device=x.device)
    return float(t)


def save_indices(save_at, ts) -> list[int] | None:
    """Grid indices to save at: all for ``save_at=True``, the given grid times otherwise."""
    if save_at is None or save_at is False:
        return None
    if save_at is True:
        return list(range(len(ts)))
    want = torch.as_tensor(save_at, dtype=torch.float64).reshape(-1)
    idx = []
    for t in want.tolist():
        hits = (ts - t).abs() <= 1e-12 * max(1.0, abs(t))
        if not bool(hits.any()):
            raise ValueError(f"save_at time {t!r} is not on the grid ts; fixed-step solvers save at grid points")
        idx.append(int(hits.nonzero()[0]))
    return idx


def run_fixed_grid(x: torch.Tensor, ts: torch.Tensor, save_at, nfe: torch.Tensor, step, extras=None) -> Solution:
    """The fixed-grid loop every fixed-step solver shares: ``x <- step(i, x, t_i, t_{i+1})``,
    a finiteness check after each step (on a fault: the last finite state, status
    "nonfinite" and the step), and saving at grid indices. ``nfe`` is the per-sample count
    the step function increments."""
    keep = save_indices(save_at, ts)
    saved = [x] if keep is not None and 0 in keep else []
    n = x.shape[0]
    status, message, t_reached, steps_done = SUCCESS, "", float(ts[-1]), 0
    for i in range(len(ts) - 1):
        t0, t1 = float(ts[i]), float(ts[i + 1])
        x_new = step(i, x, t0, t1)
        if not bool(torch.isfinite(x_new).all()):
            status, t_reached = NONFINITE, t0
            message = f"non-finite field or state in step {i} from t={t0!r} to t={t1!r}"
            break
        x = x_new
        steps_done += 1
        if keep is not None and (i + 1) in keep:
            saved.append(x)
    steps = torch.full((n,), steps_done, dtype=torch.long, device=x.device)
    return Solution(x=x, t=torch.full((n,), t_reached, dtype=torch.float64, device=x.device), nfe=nfe,
                    n_steps=steps, n_accepted=steps.clone(), n_rejected=torch.zeros_like(steps), status=status,
                    message=message, ts=ts[keep] if keep is not None else None,
                    xs=torch.stack(saved) if keep is not None and saved else None, extras=dict(extras or {}))
