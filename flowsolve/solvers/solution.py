"""The result of a solve, and how per-sample faults are summarised in it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SUCCESS = "success"
# Per-sample fault codes (``Solution.fault``); 0 means the sample reached the end.
FAULT_KINDS = ("none", "nonfinite", "underflow", "max_steps", "interrupted")
NONE, NONFINITE, UNDERFLOW, MAX_STEPS, INTERRUPTED = range(len(FAULT_KINDS))

_WHAT = {
    NONFINITE: "non-finite field or state",
    UNDERFLOW: "step size underflow",
    MAX_STEPS: "max_steps reached",
    INTERRUPTED: "interrupted by the field's exception",
}


@dataclass
class Solution:
    """Result of :func:`flowsolve.solve` / :func:`flowsolve.sample`.

    Per sample (tensors of length n, on the state's device):

    - ``x``: final state; for a failed sample, its last finite state;
    - ``t``: time reached (float64): the end of the span, or where the sample stopped;
    - ``nfe``, ``n_steps``, ``n_accepted``, ``n_rejected``: field evaluations and steps (int64);
    - ``failed``: True where the sample did not reach the end; ``fault`` says why, as an index
      into ``FAULT_KINDS`` ("none", "nonfinite", "underflow", "max_steps", and "interrupted" in the
      partial solution of a :class:`~flowsolve.FieldError`).

    For the batch: ``status`` is "success" when no sample failed, else the fault of the first
    failed sample; ``message`` says how many failed, of which kind, and where (step and time);
    ``ts``/``xs`` hold the saved trajectory when ``save_at`` was given (a time no sample reached is
    NaN); ``extras`` holds solver-specific records (e.g. ``grid``, ``orders``).
    """

    x: torch.Tensor
    t: torch.Tensor
    nfe: torch.Tensor
    n_steps: torch.Tensor
    n_accepted: torch.Tensor
    n_rejected: torch.Tensor
    failed: torch.Tensor
    fault: torch.Tensor
    status: str = SUCCESS
    message: str = ""
    ts: torch.Tensor | None = None
    xs: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return self.status == SUCCESS

    def __repr__(self) -> str:
        n = self.x.shape[0]
        nfe = f"nfe mean {float(self.nfe.double().mean()):.1f} max {int(self.nfe.max())}" if n else "nfe -"
        return (f"Solution(status={self.status!r}, n={n}, {nfe}, failed {int(self.failed.sum())}"
                f"{', ' + self.message if self.message else ''})")


def summarise(fault: torch.Tensor, fault_step: torch.Tensor | None = None, t: torch.Tensor | None = None,
              what: dict | None = None) -> tuple[str, str]:
    """``(status, message)`` from per-sample fault codes: one host synchronisation, at the end.

    The message counts the failed samples per kind and, for the first sample of each kind, gives
    its step (``fault_step``) and time (``t``); ``what`` overrides the description of a kind."""
    what = {**_WHAT, **(what or {})}
    codes = fault.cpu()
    failed = (codes != NONE).nonzero().flatten().tolist()
    if not failed:
        return SUCCESS, ""
    parts = []
    for kind in (NONFINITE, UNDERFLOW, MAX_STEPS, INTERRUPTED):
        rows = (codes == kind).nonzero().flatten()
        if rows.numel() == 0:
            continue
        i = int(rows[0])
        at = []
        if fault_step is not None:
            at.append(f"step {int(fault_step[i])}")
        if t is not None:
            at.append(f"t={float(t[i])!r}")
        parts.append(f"{what[kind]} in {rows.numel()} sample(s), first sample {i}"
                     f"{' at ' + ', '.join(at) if at else ''}")
    n = codes.numel()
    head = (f"all {n} sample(s) failed" if len(failed) == n else
            f"{len(failed)} of {n} sample(s) failed, the others ran to the end")
    message = head + ": " + "; ".join(parts)
    return FAULT_KINDS[int(codes[failed[0]])], message


def empty_solution(x: torch.Tensor, t_end: float) -> Solution:
    """The result of a solve of an empty batch."""
    zeros = torch.zeros(0, dtype=torch.long, device=x.device)
    return Solution(x=x, t=torch.full((0,), t_end, dtype=torch.float64, device=x.device), nfe=zeros,
                    n_steps=zeros.clone(), n_accepted=zeros.clone(), n_rejected=zeros.clone(),
                    failed=torch.zeros(0, dtype=torch.bool, device=x.device), fault=zeros.clone())


def finite_rows(v: torch.Tensor) -> torch.Tensor:
    """Per sample: is every entry of ``v`` (shape ``(n, ...)``) finite? Shape ``(n,)``, no sync."""
    return torch.isfinite(v.flatten(1) if v.ndim > 1 else v.unsqueeze(1)).all(-1)


def per_sample(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mask`` of shape ``(n,)`` viewed as ``(n, 1, ..., 1)`` to broadcast against ``like``."""
    return mask.reshape(mask.shape[0], *([1] * (like.ndim - 1)))


def interrupted(sol: Solution, t_end: float) -> Solution:
    """The partial solution of a solve that the field's exception stopped: the samples that had
    neither failed nor reached ``t_end`` are marked "interrupted", and so is the status."""
    unfinished = (sol.fault == NONE) & (sol.t != t_end)
    sol.fault = torch.where(unfinished, INTERRUPTED, sol.fault)
    sol.failed = sol.fault != NONE
    sol.status = FAULT_KINDS[INTERRUPTED]
    sol.message = "interrupted by an exception of the field; " + summarise(sol.fault, sol.n_steps, sol.t)[1]
    return sol
