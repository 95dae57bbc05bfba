"""Flows as objects of other libraries, so that their solvers run on flowsolve's processes.

``to_torchsde(process, field)`` is the reverse-time SDE as a ``torchsde`` SDE object.
"""

from __future__ import annotations

import math

import torch

from .flows import reverse_sde

SDE_TYPES = ("ito", "stratonovich")


class TorchsdeReverseSDE(torch.nn.Module):
    """The reverse SDE ``dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dW̄`` of a diffusion, run
    from ``t_max`` down to ``t_min``, in torchsde's form.

    torchsde integrates forward in time on flat states ``(batch, d)``, so this object works in
    the time ``s = -t`` (``ts = -t``, increasing when t decreases) on flattened states:

        dy = -drift(y, -s) ds + g(-s) dB_s,

    with diagonal noise ``g(-s) * ones``. The noise is additive (g does not depend on the
    state), so the Itô and Stratonovich forms are the same SDE: ``sde_type="stratonovich"``
    admits torchsde's Stratonovich solvers (``reversible_heun``, ``midpoint``) without changing
    the law. ``nfe`` counts field evaluations (drift calls), per call, not per sample.

    Use :meth:`times` for the ``ts`` to pass and :meth:`unflatten` on the result::

        sde = fs.to_torchsde(process, field, event_shape=(2,))
        ys = torchsde.sdeint(sde, x0.flatten(1), sde.times(t_grid), method="euler", dt=1e-3)
        x = sde.unflatten(ys[-1])
    """

    noise_type = "diagonal"

    def __init__(self, flow, event_shape: tuple[int, ...], sde_type: str):
        super().__init__()
        self.flow = flow
        self.event_shape = tuple(event_shape)
        self.sde_type = sde_type
        self.nfe = 0

    @staticmethod
    def times(t) -> torch.Tensor:
        """torchsde's times ``s = -t`` for flowsolve times ``t`` (a decreasing grid from t_max to
        t_min, or a span ``(t_max, t_min)``), float64."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if t.ndim != 1 or t.numel() < 2 or not bool((t[1:] < t[:-1]).all()):
            raise ValueError(f"t must be a strictly decreasing 1-D sequence of times (t_max -> t_min), got {t.tolist()}")
        return -t

    def unflatten(self, y: torch.Tensor) -> torch.Tensor:
        """A flat state ``(..., d)`` back to ``(..., *event_shape)``."""
        return y.reshape(*y.shape[:-1], *self.event_shape)

    def _x_t(self, s, y):
        return self.unflatten(y), -float(s)

    def f(self, s, y: torch.Tensor) -> torch.Tensor:
        x, t = self._x_t(s, y)
        self.nfe += 1
        return -self.flow.drift(x, t).reshape(y.shape)

    def g(self, s, y: torch.Tensor) -> torch.Tensor:
        _, t = self._x_t(s, y)
        return self.flow.diffusion_like(t, y).expand_as(y)


def to_torchsde(process, field=None, *, score=None, event_shape=None, sde_type: str = "ito") -> TorchsdeReverseSDE:
    """The reverse SDE of ``process`` driven by ``field`` (or ``score=``) as a torchsde SDE object
    (see :class:`TorchsdeReverseSDE` for the time convention ``s = -t``).

    ``event_shape`` is the shape of one sample (default: the field's); torchsde sees flattened
    states. ``sde_type`` is "ito" (torchsde's euler, milstein, srk) or "stratonovich"
    (reversible_heun, midpoint, heun): the same SDE here, since the noise is additive.
    """
    if sde_type not in SDE_TYPES:
        raise ValueError(f"sde_type must be one of {SDE_TYPES}, got {sde_type!r}")
    flow = reverse_sde(process, field, score=score)
    shape = event_shape if event_shape is not None else getattr(flow.field, "event_shape", None)
    if shape is None:
        raise ValueError("event_shape is required: the field does not know the shape of one sample")
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if not shape or any(not isinstance(d, int) or d < 1 for d in shape) or math.prod(shape) < 1:
        raise ValueError(f"event_shape must be a tuple of positive ints, got {shape!r}")
    return TorchsdeReverseSDE(flow, shape, sde_type)
