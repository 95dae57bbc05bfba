"""The loop every fixed-step solver shares (Runge-Kutta, exponential integrators, stochastic
samplers): ``x_{i+1} = step(i, x_i, t_i, t_{i+1})`` along a grid.

Faults are isolated per sample without a host synchronisation inside the loop: a sample whose
state (or field) turns non-finite is frozen at its last finite state and marked, the others run
on; masks stay on the device and are read once, at the end.
"""

from __future__ import annotations

from typing import Callable

import torch

from .saving import SaveAt
from .solution import NONE, NONFINITE, Solution, finite_rows, interrupted, per_sample, summarise
from .term import FieldError, Term


def freeze(failed: torch.Tensor, x_old: torch.Tensor, x_new: torch.Tensor) -> torch.Tensor:
    """``x_new``, except that failed samples keep ``x_old``."""
    return torch.where(per_sample(failed, x_new), x_old, x_new)


class _Faults:
    """Per-sample fault records, on the device."""

    def __init__(self, x: torch.Tensor):
        n, dev = x.shape[0], x.device
        self.failed = ~finite_rows(x)  # a non-finite initial state fails at once
        self.step = torch.zeros(n, dtype=torch.long, device=dev)
        self.code = torch.where(self.failed, NONFINITE, NONE)

    def mark(self, bad: torch.Tensor, step: int):
        new = bad & ~self.failed
        self.step = torch.where(new, step, self.step)
        self.code = torch.where(new, NONFINITE, self.code)
        self.failed = self.failed | new


def run_fixed_grid(term: Term, x: torch.Tensor, ts: torch.Tensor, step: Callable, save: SaveAt | None = None,
                   extras: dict | None = None) -> Solution:
    """Step along ``ts`` (float64, any direction): ``x <- step(i, x, t_i, t_{i+1})``.

    After each step a sample with a non-finite entry is frozen at its previous state and marked
    failed at that step. ``term.callback(i, t_i, x_i, denoised)`` runs after each step when
    given. An exception raised by the field becomes a :class:`FieldError` carrying the step,
    the time and the partial solution.
    """
    grid = ts.tolist()
    faults = _Faults(x)
    if save is not None:
        save.start(x, grid[0])
    n_steps = len(grid) - 1
    for i in range(n_steps):
        t0, t1 = grid[i], grid[i + 1]
        term.begin_step()
        try:
            x_new = step(i, x, t0, t1)
        except FieldError as err:
            err.step = i
            err.solution = interrupted(_solution(term, x, grid, faults, i, save, extras), grid[-1])
            raise
        faults.mark(~finite_rows(x_new), i)
        if term.callback is not None:
            term.callback(i, t0, x, term.denoised())
        x = freeze(faults.failed, x, x_new)
        if save is not None:
            save.at_grid_index(i + 1, x, faults.failed)
    return _solution(term, x, grid, faults, n_steps, save, extras)


def _solution(term, x, grid, faults: _Faults, steps_done: int, save, extras) -> Solution:
    """The Solution after ``steps_done`` steps of everybody (failed samples stopped earlier)."""
    times = torch.tensor(grid, dtype=torch.float64, device=x.device)
    done = torch.full_like(faults.step, steps_done)
    n_steps = torch.where(faults.failed, faults.step, done)
    status, message = summarise(faults.code, n_steps, times[n_steps])
    ts, xs = save.result() if save is not None else (None, None)
    return Solution(x=x, t=times[n_steps], nfe=term.nfe, n_steps=n_steps, n_accepted=n_steps.clone(),
                    n_rejected=torch.zeros_like(n_steps), failed=faults.failed, fault=faults.code,
                    status=status, message=message, ts=ts, xs=xs, extras=dict(extras or {}))


def denoise_final(term: Term, sol: Solution, t: float) -> Solution:
    """End with ``D(x; t)`` (the step to sigma = 0), one more evaluation per sample, through the
    same per-sample fault check: a sample whose final denoising is non-finite keeps its state
    and is marked failed."""
    term.begin_step()
    step = int(sol.n_steps.max()) if sol.n_steps.numel() else 0
    try:
        den = term.denoiser(sol.x, t)
    except FieldError as err:
        err.step, err.solution = step, interrupted(sol, float("nan"))  # nobody got its final denoising
        raise
    bad = ~finite_rows(den) & ~sol.failed
    sol.x = freeze(sol.failed | bad, sol.x, den)
    sol.fault = torch.where(bad, NONFINITE, sol.fault)
    sol.failed = sol.failed | bad
    sol.nfe = term.nfe
    if bool(bad.any()):
        extra = summarise(torch.where(bad, NONFINITE, NONE), what={NONFINITE: "non-finite final denoising"})[1]
        sol.status = sol.status if not sol.success else "nonfinite"
        sol.message = "; ".join(m for m in (sol.message, extra) if m)
    return sol
