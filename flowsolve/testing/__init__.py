"""Verify the math of a process, a field or a sampler before spending GPU days on it.

- Property checks (``check_*``, each with an ``assert_*`` twin) return a :class:`CheckResult`:
  the measured figure, the tolerance, the verdict and a one-line explanation. They need only
  torch, numpy and scipy.
- Exact references (:mod:`flowsolve.testing.references`): marginals, the probability-flow map
  in closed form (Gaussian data) or as the 1-D optimal-transport map (any 1-D law), KL to the
  prior, and the optimal-transport Lipschitz bound.
- Hypothesis strategies (``processes``, ``toy_laws``, ``times``, ``grids``, ``solvers``,
  ``batches``; :mod:`flowsolve.testing.strategies`) need ``hypothesis``
  (``pip install "flowsolve[testing]"``); a pytest plugin lives in
  :mod:`flowsolve.testing.pytest`.

See docs/verification.md.
"""

import importlib

from . import references
from ._result import CheckResult
from .properties import (SUPERCONVERGENT, assert_d_limit, assert_d_limit_trajectory, assert_field_conversions,
                         assert_flow_map, assert_lipschitz_bound, assert_marginal_pushforward, assert_perturb_marginal,
                         assert_poisson_field_monte_carlo, assert_prior_convergence, assert_sampler_law,
                         assert_score_autograd, assert_sde_ode_same_law, assert_solver_order, check_d_limit,
                         check_d_limit_trajectory, check_field_conversions, check_flow_map, check_lipschitz_bound,
                         check_marginal_pushforward, check_perturb_marginal, check_poisson_field_monte_carlo,
                         check_prior_convergence, check_sampler_law, check_score_autograd, check_sde_ode_same_law,
                         check_solver_order, lipschitz_lower_bound, marginal_moments, observed_orders, prior_kl,
                         sampling_map_jacobian_norms)

_STRATEGIES = ("processes", "toy_laws", "times", "grids", "solvers", "batches")


def __getattr__(name):
    # The strategies need hypothesis, an optional dependency: import it only when asked for.
    if name in _STRATEGIES or name in ("strategies", "schedules"):
        try:
            module = importlib.import_module(f"{__name__}.{'schedules' if name == 'schedules' else 'strategies'}")
        except ModuleNotFoundError as err:
            if err.name != "hypothesis":
                raise
            raise ImportError(f"flowsolve.testing.{name} needs hypothesis: pip install 'flowsolve[testing]'") from err
        return module if name in ("strategies", "schedules") else getattr(module, name)
    raise AttributeError(f"module 'flowsolve.testing' has no attribute {name!r}")


__all__ = [
    "CheckResult", "references", "SUPERCONVERGENT",
    "check_d_limit", "check_d_limit_trajectory", "check_prior_convergence", "check_perturb_marginal",
    "check_flow_map", "check_marginal_pushforward", "check_sde_ode_same_law", "check_sampler_law",
    "check_score_autograd", "check_field_conversions", "check_poisson_field_monte_carlo", "check_solver_order",
    "check_lipschitz_bound",
    "assert_d_limit", "assert_d_limit_trajectory", "assert_prior_convergence", "assert_perturb_marginal",
    "assert_flow_map", "assert_marginal_pushforward", "assert_sde_ode_same_law", "assert_sampler_law",
    "assert_score_autograd", "assert_field_conversions", "assert_poisson_field_monte_carlo", "assert_solver_order",
    "assert_lipschitz_bound",
    "prior_kl", "marginal_moments", "observed_orders", "lipschitz_lower_bound", "sampling_map_jacobian_norms",
    *_STRATEGIES,
]
