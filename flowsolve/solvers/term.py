"""One solve's view of a flow: every field evaluation of every solver goes through a
:class:`Term`, which counts it (per sample), passes the network's extra arguments, casts the
output to the state's dtype, and turns an exception raised by the user's field into a
:class:`FieldError` that says where it happened.

Solvers therefore never count evaluations themselves, and their loops read like the papers'
equations: ``denoised = term.denoiser(x, t)``.
"""

from __future__ import annotations

import torch

from ..fields import check_output, schedule_at
from ..flows import ProbabilityFlowODE, ReverseSDE


class FieldError(RuntimeError):
    """An exception raised by the field (the user's network, or a callable flow) during a solve.

    The message names the solver, the step and the time; ``solution`` is a
    :class:`~flowsolve.Solution` of what was computed before the failing step (each sample at the
    start of that step); ``original`` (also ``__cause__``) is the exception the field raised.
    """

    def __init__(self, original: BaseException, solver: str, t):
        super().__init__(original)
        self.original, self.solver, self.t = original, solver, t
        self.step: int | None = None
        self.solution = None

    def __str__(self) -> str:
        t = self.t
        if isinstance(t, torch.Tensor):
            t = f"per-sample times in [{float(t.min())!r}, {float(t.max())!r}]" if t.numel() else "no time"
        else:
            t = f"t={t!r}"
        step = "" if self.step is None else f" in step {self.step}"
        return (f"{type(self.original).__name__} raised by the field{step} at {t} (solver {self.solver!r}); "
                f"the work done before that step is in .solution: {self.original}")


class _Counts:
    """Per-sample evaluation counts, shared by a term and its views: whole-batch evaluations are
    counted as a Python int and added to the tensor only when the counts are read, so a step
    costs no device operation for counting; evaluations of some rows go to the tensor at once."""

    __slots__ = ("per_sample", "whole_batch")

    def __init__(self, per_sample: torch.Tensor):
        self.per_sample, self.whole_batch = per_sample, 0

    def read(self) -> torch.Tensor:
        if self.whole_batch:
            self.per_sample += self.whole_batch
            self.whole_batch = 0
        return self.per_sample


class Term:
    """A flow made ready for one solve of ``n`` samples.

    ``drift(x, t, rows)`` is the flow's drift; ``denoiser``/``eps``/``score``/``velocity`` are the
    field's quantities (process-aware solvers); ``diffusion(t, like)`` is the SDE's ``g(t)``
    (not a field evaluation, so not counted). ``rows`` (an index tensor) says which samples ``x``
    holds when a solver evaluates a subset (adaptive solvers): their counts go up, and tensors
    of ``extra_args`` with one entry per sample are sliced to them. ``t`` is a Python float, or a
    float64 tensor with one time per row of ``x``. ``nfe`` is the per-sample count so far.
    """

    def __init__(self, flow, nfe: torch.Tensor, solver: str, extra_args: dict | None = None, callback=None):
        self.flow = flow
        self.field = getattr(flow, "field", None)
        self.process = getattr(flow, "process", None)
        self._counts = nfe if isinstance(nfe, _Counts) else _Counts(nfe)
        self.n = self._counts.per_sample.shape[0]
        self.solver = solver
        self.extra_args = dict(extra_args or {})
        self.callback = callback
        # the step's first field evaluation (kind, x, t, value, rows), for the callback; shared with views
        self._record = {"first": None}
        # which drift path (see drift): fixed for the term's life
        canonical = self.field is not None
        self._drift_kind = ("score" if canonical and type(flow) is ReverseSDE else
                            "velocity" if canonical and type(flow) is ProbabilityFlowODE else "drift")

    @property
    def nfe(self) -> torch.Tensor:
        """Field evaluations per sample (int64, shape ``(n,)``)."""
        return self._counts.read()

    @classmethod
    def for_state(cls, flow, x: torch.Tensor, solver: str, extra_args: dict | None = None, callback=None) -> "Term":
        """A term for solving ``flow`` from the batch ``x``, with zero counts."""
        nfe = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return cls(flow, nfe, solver, extra_args, callback)

    def view(self, flow) -> "Term":
        """The same solve (counts, extra arguments) seen through another flow of the same field,
        e.g. the probability-flow ODE inside a stochastic sampler's predictor."""
        other = Term(flow, self._counts, self.solver, self.extra_args, self.callback)
        other._record = self._record
        return other

    # -- plumbing --------------------------------------------------------------------------
    def _kwargs(self, rows):
        if rows is None or not self.extra_args:
            return self.extra_args
        return {k: v[rows] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == self.n else v
                for k, v in self.extra_args.items()}

    def _evaluate(self, kind: str, fn, x: torch.Tensor, t, rows) -> torch.Tensor:
        try:
            out = fn(self._kwargs(rows))
            out = check_output(out, x, kind)
        except Exception as err:  # noqa: BLE001 -- any failure of the user's code is reported with its place
            raise FieldError(err, self.solver, t) from err
        if rows is None:  # counted once it has returned: a call that raised gave nothing
            self._counts.whole_batch += 1
        else:
            self._counts.per_sample.index_add_(0, rows, torch.ones_like(rows))
        if self.callback is not None and self._record["first"] is None and kind != "drift":
            self._record["first"] = (kind, x, t, out, rows)
        return out

    def begin_step(self):
        self._record["first"] = None

    def denoised(self):
        """The denoiser at the current step's first field evaluation (for the callback), by exact
        conversion of what was evaluated; None when the step evaluated no field quantity."""
        first = self._record["first"]
        if first is None or self.field is None:
            return None
        kind, x, t, value, rows = first
        if rows is not None:
            return None  # a subset of the batch: nothing to show for the others
        return self.field.denoised_from(kind, x, t, value)

    # -- evaluations ------------------------------------------------------------------------
    def drift(self, x: torch.Tensor, t, rows=None) -> torch.Tensor:
        """The flow's drift ``dx/dt``."""
        flow, path = self.flow, self._drift_kind
        if path == "velocity":  # a canonical probability-flow ODE: its drift is the field's velocity
            return self.velocity(x, t, rows)
        if path == "score":  # the reverse SDE of a canonical process
            return flow.drift_from_score(x, t, self.score(x, t, rows))
        return self._evaluate("drift", lambda kw: flow.drift(x, t, **kw), x, t, rows)

    def _field(self, kind, x, t, rows):
        return self._evaluate(kind, lambda kw: self.field.evaluate(kind, x, t, kw), x, t, rows)

    def denoiser(self, x, t, rows=None) -> torch.Tensor:
        """``D(x; t) = E[y | x_t = x]`` (data space)."""
        return self._field("denoiser", x, t, rows)

    def eps(self, x, t, rows=None) -> torch.Tensor:
        """Noise prediction ``(x/s - D)/sigma``."""
        return self._field("eps", x, t, rows)

    def score(self, x, t, rows=None) -> torch.Tensor:
        """``grad_x log p_t(x)`` (Gaussian kernel)."""
        return self._field("score", x, t, rows)

    def velocity(self, x, t, rows=None) -> torch.Tensor:
        """Probability-flow ODE drift ``dx/dt``."""
        return self._field("velocity", x, t, rows)

    # -- schedules of the process (process-aware solvers; floats in float64) ------------------
    def schedule(self, t: float) -> tuple[float, float]:
        """``(s(t), sigma(t))`` as Python floats, computed in float64 once per time and process
        (:func:`flowsolve.fields.schedule_at`)."""
        t = float(t)
        return schedule_at(self.process, "s", t), schedule_at(self.process, "sigma", t)

    def t_of_sigma(self, sigma: float) -> float:
        """The time at which the process has noise level ``sigma`` (inside the span)."""
        p = self.process
        return min(max(schedule_at(p, "t_of_sigma", float(sigma)), p.t_min), p.t_max)

    def diffusion(self, t, like: torch.Tensor):
        """``g(t)`` of the SDE, shaped to broadcast against ``like`` (per sample when t is a tensor;
        a Python float, computed once per time, for a Python-float t and a canonical process)."""
        if not isinstance(t, torch.Tensor) and self.field is not None and isinstance(self.flow, ReverseSDE):
            return schedule_at(self.process, "g", float(t))
        fast = getattr(self.flow, "diffusion_like", None)
        if fast is not None:
            return fast(t, like)
        g = torch.as_tensor(self.flow.diffusion(t), dtype=like.dtype, device=like.device)
        return g.reshape(g.shape[0], *([1] * (like.ndim - 1))) if g.ndim else g

