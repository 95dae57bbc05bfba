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

__all__ = ["run_fixed_grid", "march", "freeze", "denoise_final", "SigmaGrid"]


class SigmaGrid:
    """A grid ``ts`` seen in ``(t, s(t), sigma(t))``, float64 Python floats, computed once per grid
    for the solvers whose coefficients are functions of the schedule."""

    def __init__(self, term, ts: torch.Tensor):
        p = term.process
        self.t = ts.tolist()
        self.s = p._scale(ts).tolist()
        self.sigma = p._sigma(ts).tolist()
        self.n_steps = len(self.t) - 1


def freeze(failed: torch.Tensor, x_old: torch.Tensor, x_new: torch.Tensor) -> torch.Tensor:
    """``x_new``, except that failed samples keep ``x_old``."""
    return torch.where(per_sample(failed, x_new), x_old, x_new)


class _Faults:
    """Per-sample fault records, on the device: ``ok`` (not failed yet) and ``done``, the steps
    each sample completed while finite, which for a failed sample is the step it failed in.
    Two small updates per step (``ok &= finite``, ``done += ok``); the fault codes are made at the
    end (a fixed grid has one kind of fault: non-finite)."""

    def __init__(self, x: torch.Tensor):
        self.ok = finite_rows(x)  # a non-finite initial state fails at once, in step 0
        self.done = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)

    @property
    def failed(self) -> torch.Tensor:
        return ~self.ok

    def after_step(self, x: torch.Tensor, x_new: torch.Tensor) -> torch.Tensor:
        """The state after a step: ``x_new``, with the samples that are (or just turned)
        non-finite frozen at ``x``."""
        ok = self.ok = self.ok & finite_rows(x_new)  # not in place: an autograd graph may hold the last mask
        self.done += ok
        keep = per_sample(ok, x_new)
        if torch.is_grad_enabled() or x_new is x or not x_new.is_contiguous():
            return torch.where(keep, x_new, x)
        # in place: the step's output is the loop's to keep, and one state fewer is alive
        return torch.where(keep, x_new, x, out=x_new)


def run_fixed_grid(term: Term, x: torch.Tensor, ts: torch.Tensor, step: Callable, save: SaveAt | None = None,
                   extras: dict | None = None) -> Solution:
    """Step along ``ts`` (float64, any direction): ``x <- step(i, x, t_i, t_{i+1})``.

    After each step a sample with a non-finite entry is frozen at its previous state and marked
    failed at that step. ``term.callback(i, t_i, x_i, denoised)`` runs after each step when
    given. An exception raised by the field becomes a :class:`FieldError` carrying the step,
    the time and the partial solution.

    A step reads nothing back from the device and branches on no tensor value: the times are
    Python floats (``ts`` is read once), the fault records are updated on the device, and the
    state keeps its shape, so the loop can be captured in a CUDA graph or compiled.
    """
    grid = ts.tolist()
    faults = _Faults(x)
    if save is not None:
        save.start(x, grid[0])
    x = march(term, x, grid, faults, step, save, extras)
    return _solution(term, x, grid, faults, save, extras)


def march(term: Term, x: torch.Tensor, grid: list, faults: _Faults, step: Callable, save: SaveAt | None = None,
          extras: dict | None = None) -> torch.Tensor:
    """The steps of :func:`run_fixed_grid` along the Python floats ``grid``, updating ``faults``;
    returns the final state. Without ``save`` or a callback it launches device work only: no
    host synchronisation, no branch on a tensor's value, static shapes, so a CUDA graph can
    capture it whole (``benchmarks/gpu_checks.py`` does)."""
    n_steps = len(grid) - 1
    callback = term.callback
    for i in range(n_steps):
        t0, t1 = grid[i], grid[i + 1]
        if callback is not None:
            term.begin_step()
        try:
            x_new = step(i, x, t0, t1)
        except FieldError as err:
            err.step = i
            err.solution = interrupted(_solution(term, x, grid, faults, save, extras), grid[-1])
            raise
        if callback is not None:  # sees the state before the step, so it runs before the freeze
            callback(i, t0, x, term.denoised())
        x = faults.after_step(x, x_new)
        del x_new
        if save is not None:
            save.at_grid_index(i + 1, x, faults.failed)
    return x


def _solution(term, x, grid, faults: _Faults, save, extras) -> Solution:
    """The Solution of the steps taken so far (``faults.done`` per sample; failed samples stopped
    earlier)."""
    times = torch.tensor(grid, dtype=torch.float64, device=x.device)
    failed = faults.failed
    n_steps = faults.done  # the samples still running counted every step
    code = torch.where(failed, NONFINITE, NONE)
    status, message = summarise(code, n_steps, times[n_steps])
    ts, xs = save.result() if save is not None else (None, None)
    # a fixed grid accepts every step and rejects none: n_accepted is n_steps, and the zeros are one
    # number broadcast (per-sample int64 records cost as much as a 2-D state each)
    rejected = torch.zeros((), dtype=n_steps.dtype, device=n_steps.device).expand(n_steps.shape[0])
    return Solution(x=x, t=times[n_steps], nfe=term.nfe, n_steps=n_steps, n_accepted=n_steps, n_rejected=rejected,
                    failed=failed, fault=code, status=status, message=message, ts=ts, xs=xs,
                    extras=dict(extras or {}))


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
