"""Randomness of a solve: per-sample noise streams, and a per-sample Brownian path that stays
consistent when an adaptive SDE solver rejects a step.

Every draw is made for *all* samples, every time, in a fixed order, whatever the samples' states:
sample i's k-th draw is therefore the same whatever the batch size or the other samples.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._validation import check_event_shape, check_int


class NoiseSource:
    """Independent Gaussian streams per sample.

    Sample ``offset + i`` draws from a generator seeded by ``(seed, stream, block)`` with
    ``block = (offset + i) // BLOCK``: its noise is the same whatever the batch size, the other
    samples or how the batch is split (pass ``offset`` for a later part of a split batch;
    ``stream`` separates independent uses of one seed, e.g. the prior draw and the solver's noise).
    Draws are made on the CPU in float64, then cast and moved once, so they are also the same on
    every device. ``event_shape`` is one sample's shape (an int for vectors).
    """

    BLOCK = 64

    def __init__(self, seed: int, n: int, event_shape, dtype=torch.float32, device=None, offset: int = 0,
                 stream: int = 0):
        seed, offset = check_int("seed", seed, 0), check_int("offset", offset, 0)
        self.n, self.event_shape = check_int("n", n, 0), check_event_shape("event_shape", event_shape)
        self.dtype, self.device = dtype, device
        idx = np.arange(offset, offset + self.n)
        blocks = idx // self.BLOCK
        self._gens = []
        for b in np.unique(blocks):
            state = np.random.SeedSequence([seed, int(stream), int(b)]).generate_state(2, dtype=np.uint32)
            self._gens.append(torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1])))
        first_block = {int(b): j for j, b in enumerate(np.unique(blocks))}
        self._rows = torch.as_tensor([first_block[int(b)] * self.BLOCK + int(i % self.BLOCK)
                                      for b, i in zip(blocks, idx)], dtype=torch.long)

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    def _gather(self, draw) -> torch.Tensor:
        """``draw(generator, rows, device)`` per block (one block of rows each, on the CPU), gathered
        to the batch's rows."""
        if self.n == 0:
            return draw(torch.Generator(), 0, "cpu")
        return torch.cat([draw(g, self.BLOCK, "cpu") for g in self._gens], dim=0)[self._rows]

    def _deliver(self, out: torch.Tensor, dtype) -> torch.Tensor:
        """Cast (where the draw is: the same rounding on every device), then move; a CPU draw bound
        for an accelerator goes through pinned memory without blocking the host."""
        out = out.to(dtype)
        device = torch.device(self.device) if self.device is not None else out.device
        if out.device.type == "cpu" and device.type != "cpu":
            return out.pin_memory().to(device, non_blocking=True)
        return out.to(device)

    def randn(self) -> torch.Tensor:
        """The next standard-normal draw of every sample, shape ``(n, *event_shape)``."""
        out = self._gather(lambda g, m, dev: torch.randn(m, *self.event_shape, generator=g, dtype=torch.float64,
                                                         device=dev))
        return self._deliver(out, self.dtype)

    def gamma(self, concentration: float) -> torch.Tensor:
        """The next ``Gamma(concentration, 1)`` draw of every sample, shape ``(n,)``, float64."""
        out = self._gather(lambda g, m, dev: torch._standard_gamma(
            torch.full((m,), float(concentration), dtype=torch.float64, device=dev), generator=g))
        return self._deliver(out, torch.float64)

    def kernel_noise(self, kernel, dtype=torch.float64) -> torch.Tensor:
        """A draw of the process kernel's unit noise ``n`` for every sample, by the kernel's own
        sampler, shape ``(n, *event_shape)``, in ``dtype`` (float64 by default: scale it, then cast)."""
        out = self._gather(lambda g, m, dev: kernel.sample((m, *self.event_shape), generator=g, dtype=torch.float64,
                                                           device=dev))
        return self._deliver(out, dtype)


class GeneratorNoise(NoiseSource):
    """Draws from one ``torch.Generator`` for the whole batch (``generator=`` in
    :func:`~flowsolve.solve`/:func:`~flowsolve.sample`), on the generator's own device (a CUDA
    generator draws on the GPU): reproducible for a fixed batch, but sample i's noise then
    depends on the batch size, unlike :class:`NoiseSource` streams."""

    def __init__(self, generator: torch.Generator, n: int, event_shape, dtype=torch.float32, device=None):
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator, self.n, self.event_shape = generator, check_int("n", n, 0), check_event_shape("event_shape", event_shape)
        self.dtype, self.device = dtype, device

    def _gather(self, draw) -> torch.Tensor:
        return draw(self.generator, self.n, self.generator.device)


class BrownianMemory:
    """One Brownian path per sample, consistent across rejected steps (Rackauckas & Nie 2017,
    "Adaptive methods for stochastic differential equations via natural embeddings and rejection
    sampling with memory").

    A sample at time ``t`` asks for the increment ``W(t_next) - W(t)``. Points of its path beyond
    ``t`` that earlier, rejected attempts have fixed are kept (time and increment from the previous
    kept point); the new increment sums the kept increments up to ``t_next`` and, if ``t_next`` is
    not a kept point, draws the rest from the Brownian bridge between the kept points around it
    (``W(s) | W(0) = 0, W(L) = w  ~  N(s w / L, s (L - s) / L)``), or freshly beyond the last one.
    Each attempt uses exactly one standard-normal draw ``z`` per sample (used or not), so the path
    of sample i depends on its own stream only. After the attempt, :meth:`commit` moves accepted
    samples to ``t_next`` (dropping the points they passed) and keeps ``t_next`` as a point of the
    path of rejected ones. The path is therefore a Brownian motion whatever the step sizes, and a
    rejection neither redraws nor selects the noise.

    Times are float64; increments are in the state's dtype. ``direction`` is +1 or -1 (the sign of
    ``t_end - t_start``); "beyond" means further along it.
    """

    def __init__(self, n: int, event_shape: tuple, direction: float, dtype, device, capacity: int = 4):
        self.direction = float(direction)
        self.times = torch.full((n, capacity), math.nan, dtype=torch.float64, device=device)
        self.incs = torch.zeros((n, capacity, *event_shape), dtype=dtype, device=device)
        self.count = torch.zeros(n, dtype=torch.long, device=device)
        self._pending = None

    def _grow(self):
        self.times = torch.cat([self.times, torch.full_like(self.times, math.nan)], dim=1)
        self.incs = torch.cat([self.incs, torch.zeros_like(self.incs)], dim=1)

    def increment(self, rows: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``W(t_next) - W(t)`` for the samples ``rows`` (at times ``t``), using the draws ``z``."""
        times, incs, count = self.times[rows], self.incs[rows], self.count[rows]
        k = times.shape[1]
        slot = torch.arange(k, device=times.device)
        kept = slot < count.unsqueeze(1)
        dist = (times - t.unsqueeze(1)) * self.direction  # > 0 for kept points
        h = (t_next - t) * self.direction
        passed = kept & (dist <= h.unsqueeze(1))  # a prefix: kept points are in path order
        n_passed = passed.sum(1)
        view = (-1, k) + (1,) * (incs.ndim - 2)
        summed = (incs * passed.reshape(view).to(incs.dtype)).sum(1)
        before = (n_passed - 1).clamp(min=0)
        d_before = torch.where(n_passed > 0, dist.gather(1, before.unsqueeze(1)).squeeze(1), torch.zeros_like(h))
        exact = (n_passed > 0) & (d_before == h)
        inside = (n_passed < count) & ~exact  # t_next falls between two kept points (or t and the first)
        after = n_passed.clamp(max=k - 1)
        d_after = dist.gather(1, after.unsqueeze(1)).squeeze(1)
        w_after = incs[torch.arange(len(rows), device=incs.device), after]
        gap = torch.where(inside, d_after - d_before, torch.ones_like(h))
        frac = torch.where(inside, (h - d_before) / gap, torch.zeros_like(h))
        bridge_mean = _rows_times(frac, w_after)
        bridge_std = torch.sqrt((frac * (1.0 - frac) * gap).clamp(min=0.0))
        fresh_std = torch.sqrt((h - d_before).clamp(min=0.0))
        std = torch.where(inside, bridge_std, torch.where(exact, torch.zeros_like(h), fresh_std))
        piece = torch.where(_per_row(inside, z), bridge_mean, torch.zeros_like(z)) + _rows_times(std, z)
        self._pending = (rows, t_next, n_passed, exact, inside, piece)
        return summed + piece

    def commit(self, accepted: torch.Tensor):
        """Keep the last :meth:`increment` call's attempt: ``accepted`` (per row of that call) moves
        those samples to ``t_next``; the others keep ``t_next`` as a point of their path."""
        rows, t_next, n_passed, exact, inside, piece = self._pending
        self._pending = None
        if bool((~accepted & ~exact).any()) and int(self.count[rows].max()) + 1 > self.times.shape[1]:
            self._grow()
        times, incs, count = self.times[rows], self.incs[rows], self.count[rows]
        k = times.shape[1]
        slot = torch.arange(k, device=times.device).unsqueeze(0)
        r = torch.arange(len(rows), device=times.device).unsqueeze(1)
        # accepted: drop the points passed; the point after t_next keeps only the increment beyond it
        src = (slot + n_passed.unsqueeze(1)).clamp(max=k - 1)
        acc_times = torch.where(slot < (count - n_passed).unsqueeze(1), times[r, src], math.nan)
        acc_incs = incs[r, src]
        acc_incs[:, 0] = torch.where(_per_row(inside, piece), acc_incs[:, 0] - piece, acc_incs[:, 0])
        # rejected: insert t_next after the points passed (unless it is one of them)
        insert = (~exact).unsqueeze(1)
        at = n_passed.unsqueeze(1)
        src_r = torch.where(insert & (slot > at), slot - 1, slot).clamp(max=k - 1)
        rej_times = torch.where(insert & (slot == at), t_next.unsqueeze(1), times[r, src_r])
        rej_incs = incs[r, src_r]
        new_slot = insert & (slot == at)
        rej_incs = torch.where(_per_slot(new_slot, rej_incs), piece.unsqueeze(1), rej_incs)
        shrunk = insert & (slot == at + 1) & inside.unsqueeze(1)
        rej_incs = torch.where(_per_slot(shrunk, rej_incs), rej_incs - piece.unsqueeze(1), rej_incs)
        rej_count = count + (~exact).long()
        rej_times = torch.where(slot < rej_count.unsqueeze(1), rej_times, math.nan)
        keep = accepted.unsqueeze(1)
        self.times[rows] = torch.where(keep, acc_times, rej_times)
        self.incs[rows] = torch.where(_per_slot(keep.expand(-1, k), acc_incs), acc_incs, rej_incs)
        self.count[rows] = torch.where(accepted, count - n_passed, rej_count)


def _per_row(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(mask.shape[0], *([1] * (like.ndim - 1)))


def _per_slot(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(*mask.shape, *([1] * (like.ndim - 2)))


def _rows_times(scale: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``scale[i] * v[i]`` per row (scale float64, v in its own dtype)."""
    return _per_row(scale.to(v.dtype), v) * v
