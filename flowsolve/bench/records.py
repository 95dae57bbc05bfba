"""The bench's results as data: one record per (problem, method, budget, seed) cell, the
fitted orders, what each problem is, and the environment that measured them."""

from __future__ import annotations

from dataclasses import dataclass, field

# One cell's record (a dict with these keys; floats are None where a metric does not apply,
# e.g. endpoint errors of a stochastic method, or a metric whose library is not installed).
RECORD_FIELDS = (
    "problem",        # problem name
    "fingerprint",    # content hash of the problem (what the numbers depend on)
    "method",         # method name as typed: "heun", "heun@log_sigma", "torchdiffeq.rk4"
    "library",        # "flowsolve" or the peer's package
    "kind",           # "ode" or "sde"
    "budget_kind",    # "nfe" (fixed-step) or "rtol" (adaptive)
    "budget",         # the NFE budget or the relative tolerance
    "seed",           # start-point set (and noise) seed
    "n",              # number of samples
    "status",         # "ok", "failed" (some samples failed), "skipped" (see message), "error"
    "message",        # why samples failed / why skipped; "" otherwise
    "nfe_mean", "nfe_max",           # field evaluations per sample, counted by the bench
    "steps_mean", "rejected_mean",   # steps taken / rejected per sample
    "failed",                        # samples that did not reach t_min (when all did not: no metrics)
    "rmse",           # sqrt(mean over samples and coordinates of (x - x_ref)^2)
    "max_error",      # max over samples and coordinates of |x - x_ref|
    "rel_error",      # rmse / sqrt(mean of x_ref^2)
    "sliced_wasserstein",  # SW_2 between the end points and a sample of the data law
    "energy_distance",     # energy distance between the end points and a sample of the data law
    "wall_s",         # seconds for the solve (not the metrics)
    "key",            # the cell's content hash (its result file is cells/<key>.json)
)

ENDPOINT_METRICS = ("rmse", "max_error", "rel_error")
DISTRIBUTION_METRICS = ("sliced_wasserstein", "energy_distance")


@dataclass
class Results:
    """Everything a sweep measured.

    ``records``: list of dicts with :data:`RECORD_FIELDS`. ``orders``: list of dicts
    ``{"problem", "method", "metric", "order", "nfe_lo", "nfe_hi", "points"}``: the slope of
    log(error) against log(NFE mean), negated, fitted over the fixed-step budgets from
    ``nfe_lo`` to ``nfe_hi`` (``points`` budgets; errors and NFE averaged over seeds) where the
    method failed at no seed and the error stands above 10 times the reference's own error.
    ``problems``: name -> dict describing the problem
    (``description``, ``process``, ``data``, ``dim``, ``event_shape``, ``n``, ``metric`` (the
    primary metric: "rmse", or a distribution metric where no endpoint reference applies),
    ``reference`` (how it was computed), ``reference_error`` (its estimated max error, the
    largest over the seeds), ``reference_rms`` (the RMS of its end points, the scale of
    ``rel_error``; the smallest over the seeds), ``distribution_floor`` (each distribution metric
    between the reference's end points and the data sample, averaged over the seeds as the table
    is: the exact flow carries the prior draws to draws of the data law, so this is the
    sampling noise at this n, which no sampler can go below)). ``environment``: versions of flowsolve,
    torch, python and every peer library used, the machine, the time. ``notes``: lines for
    the reader (methods skipped and why).
    """

    records: list = field(default_factory=list)
    orders: list = field(default_factory=list)
    problems: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def for_problem(self, name: str) -> list:
        return [r for r in self.records if r["problem"] == name]
