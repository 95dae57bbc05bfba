"""Where a solve records its trajectory: one object for the fixed-grid and the adaptive loop."""

from __future__ import annotations

import torch


class SaveAt:
    """The times at which a solve records the state.

    ``save_at=True`` saves at every time of a fixed grid; a sequence of times saves there (for a
    fixed-step solver they must be grid times; an adaptive solver shortens a step to land on each
    exactly). Times are kept in the direction of integration; each sample fills its own column of
    ``xs`` as it passes them, and a time it never reaches stays NaN.
    """

    def __init__(self, save_at, t0: float, t1: float, grid: torch.Tensor | None = None):
        if save_at is True:
            if grid is None:
                raise ValueError("save_at=True saves at every grid time, which only fixed-step solvers have: "
                                 "give adaptive solvers a sequence of times, save_at=[t, ...]")
            self.times = grid.clone()
        else:
            given = save_at.detach() if isinstance(save_at, torch.Tensor) else save_at
            if (isinstance(given, (str, bytes, bool)) or not hasattr(given, "__len__")
                    or (isinstance(given, torch.Tensor) and (given.ndim != 1 or not given.is_floating_point()))):
                raise ValueError(f"save_at must be True or a 1-D sequence of times, got {save_at!r}")
            try:
                want = torch.as_tensor(given, dtype=torch.float64).detach().cpu()
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"save_at must be True or a 1-D sequence of times, got {save_at!r}") from None
            if want.ndim != 1:
                raise ValueError(f"save_at must be True or a 1-D sequence of times, got shape {tuple(want.shape)}")
            if not bool(torch.isfinite(want).all()):
                raise ValueError("save_at times must be finite")
            lo, hi = min(t0, t1), max(t0, t1)
            if bool(((want < lo) | (want > hi)).any()):
                raise ValueError(f"save_at times must lie in the span [{lo!r}, {hi!r}], got {want.tolist()!r}")
            # a time within rounding of an end is that end (a step cannot land between them)
            tol = 64 * torch.finfo(torch.float64).eps * max(abs(t0), abs(t1), hi - lo)
            want = torch.where((want - t1).abs() <= tol, t1, torch.where((want - t0).abs() <= tol, t0, want))
            if want.unique().numel() != want.numel():
                raise ValueError(f"save_at times must be distinct (after rounding to the span's ends), "
                                 f"got {want.tolist()!r}")
            self.times = want.sort(descending=t1 < t0).values
            if grid is not None:
                hits = (grid.unsqueeze(0) - self.times.unsqueeze(1)).abs() <= 1e-12 * self.times.abs().clamp(min=1.0).unsqueeze(1)
                missing = ~hits.any(1)
                if bool(missing.any()):
                    raise ValueError(f"save_at time {float(self.times[missing][0])!r} is not on the grid: fixed-step "
                                     "solvers save at grid times (pass save_at=True for all of them)")
                self.times = grid[hits.float().argmax(1)]
        self.grid_index = None if grid is None else [int((grid == v).nonzero()[0]) for v in self.times.tolist()]
        self.xs = None
        self._ptr = None

    def start(self, x: torch.Tensor, t0: float):
        """Allocate the record (NaN: a time no sample reaches stays NaN) and save ``t0`` if asked."""
        self.xs = torch.full((len(self.times), *x.shape), float("nan"), dtype=x.dtype, device=x.device)
        self._ptr = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        self._device_times = self.times.to(x.device)
        if len(self.times) and float(self.times[0]) == t0:
            self.xs[0] = x
            self._ptr += 1

    # -- fixed grid: every sample is at grid index i ------------------------------------------
    def at_grid_index(self, i: int, x: torch.Tensor, failed: torch.Tensor):
        """Every sample is at grid index i; a failed sample never got there (NaN)."""
        if self.grid_index is not None and i in self.grid_index:
            stopped = failed.reshape(-1, *([1] * (x.ndim - 1)))
            self.xs[self.grid_index.index(i)] = torch.where(stopped, torch.full_like(x, float("nan")), x)

    # -- adaptive: samples land on the times one by one --------------------------------------
    def next_times(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The next save time of each sample in ``rows``, and whether it has one left."""
        ptr = self._ptr[rows]
        has = ptr < len(self.times)
        if not len(self.times):
            return torch.zeros(len(rows), dtype=torch.float64, device=rows.device), has
        return self._device_times[ptr.clamp(max=len(self.times) - 1)], has

    def record(self, rows: torch.Tensor, t: torch.Tensor, x: torch.Tensor):
        """Samples ``rows`` have just moved to times ``t`` with states ``x``: save those on their next time."""
        if not len(self.times):
            return
        target, has = self.next_times(rows)
        hit = has & (t == target)
        ptr = self._ptr[rows]
        cols = rows[hit]
        self.xs[ptr[hit], cols] = x[hit]
        self._ptr[cols] += 1

    def result(self):
        return self.times.clone(), self.xs

