"""Host synchronisations: a fixed-step solve reads nothing back from the device per step, an
adaptive one once per iteration (which samples step next). Counted on CPU by patching every
tensor-to-Python conversion and ``nonzero`` (boolean indexing goes through it): on a GPU each
of them waits for the device.

On CPU a device tensor cannot be told from a host one, so the count leaves out 0-dim float64
tensors: the schedule scalars the solvers compute on the host in float64 from Python floats
(``s(t)``, ``sigma(t)`` per step), which never wait for a device. Per-sample quantities have
shape ``(n,)`` and are counted."""

from __future__ import annotations

import contextlib

import pytest
import torch

import flowsolve as fs

_CONVERSIONS = ("item", "__float__", "__bool__", "__int__", "__index__", "tolist", "numpy", "cpu", "nonzero")


@contextlib.contextmanager
def counted():
    """Count the conversions (and ``nonzero`` calls) of every tensor but the 0-dim float64 host
    scalars of the schedules."""
    counts = {"n": 0}
    saved = {name: getattr(torch.Tensor, name) for name in _CONVERSIONS}

    def wrap(original):
        def conversion(self, *args, **kwargs):
            if not (self.dtype == torch.float64 and self.dim() == 0):
                counts["n"] += 1
            return original(self, *args, **kwargs)
        return conversion

    for name, original in saved.items():
        setattr(torch.Tensor, name, wrap(original))
    try:
        yield counts
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


def _network_field(process):
    # a network, not an exact field: the field itself reads nothing back
    return fs.Field.from_denoiser(process, lambda x, sigma: x / (1 + sigma.view(-1, 1) ** 2), event_shape=(2,))


FIXED = [name for name, info in fs.available_solvers().items() if not info["adaptive"]]


def _syncs_at_6_and_12_steps(run) -> list[int]:
    """Conversions of a solve at 6 and at 12 steps, each counted on its second run: fs.sample keeps
    the grids it made, so a first run's checks of a new grid (host work, once) would land on
    whichever step count an earlier test had not used yet."""
    syncs = []
    for steps in (6, 12):
        run(steps)
        with counted() as c:
            run(steps)
        syncs.append(c["n"])
    return syncs


@pytest.mark.parametrize("solver", FIXED)
def test_fixed_step_solvers_read_nothing_back_per_step(solver):
    process = fs.VP() if fs.available_solvers()[solver]["process_aware"] else fs.EDM()
    field = _network_field(process)
    syncs = _syncs_at_6_and_12_steps(lambda steps: fs.sample(process, field, 16, solver, steps=steps, seed=0))
    assert syncs[0] == syncs[1], f"{solver}: {syncs[0]} conversions at 6 steps, {syncs[1]} at 12"


@pytest.fixture(scope="module")
def linear_sde():
    """A VP-like process given by its SDE: SciPy interpolates its schedules on the host, and used
    to copy the times there at every evaluation. Made once (its construction integrates f and g)."""
    beta = lambda t: 0.1 + 19.9 * t  # noqa: E731
    return fs.LinearSDE(lambda t: -0.5 * beta(t), lambda t: torch.sqrt(beta(t)), t_min=1e-3, t_max=1.0)


@pytest.mark.parametrize("solver", ["heun", "dpmpp_2m", "euler_maruyama"])
def test_linear_sde_schedules_read_nothing_back_per_step(solver, linear_sde):
    process = linear_sde
    field = _network_field(process)
    syncs = _syncs_at_6_and_12_steps(lambda steps: fs.sample(process, field, 16, solver, steps=steps, seed=0))
    assert syncs[0] == syncs[1], f"{solver}: {syncs[0]} conversions at 6 steps, {syncs[1]} at 12"


@pytest.mark.parametrize("solver", [name for name, info in fs.available_solvers().items() if info["adaptive"]])
def test_adaptive_solvers_read_back_once_per_iteration(solver):
    process = fs.EDM()
    field = _network_field(process)
    seen = []
    tight = 1e-3 if fs.available_solvers()[solver]["kind"] == "sde" else 1e-5  # the SDE's steps shrink fast
    for rtol in (1e-2, tight):
        iterations = []
        with counted() as c:
            fs.sample(process, field, 16, solver, rtol=rtol, atol=rtol, seed=0,
                      callback=lambda i, t, x, d: iterations.append(i))
        seen.append((c["n"], len(iterations)))
    (s_loose, i_loose), (s_tight, i_tight) = seen
    assert i_tight > i_loose + 5
    assert s_tight - s_loose <= i_tight - i_loose, seen
