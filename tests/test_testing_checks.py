"""The public pieces of flowsolve.testing outside the property suite: CheckResult, the assert_*
twins, argument validation, the Jacobian of the sampling map, and importing without hypothesis."""

import math
import subprocess
import sys

import pytest
import torch

import flowsolve as fs
import flowsolve.testing as ft

EMPIRICAL = fs.toy.Empirical([[1.0, 0.0], [-1.0, 0.5], [0.2, 2.0]])
X = torch.tensor([[0.4, -0.2], [3.0, 1.0]], dtype=torch.float64)
GAUSS_1D = fs.toy.Gaussian([0.5], [[0.8]])


def test_check_result_truth_text_and_assert():
    ok = ft.CheckResult("demo", 0.1, 1.0, True, "fine")
    bad = ft.CheckResult("demo", 2.0, 1.0, False, "too big")
    assert ok and not bad
    assert (ok.verdict, bad.verdict) == ("pass", "fail")
    assert str(bad) == "demo: FAIL: too big"
    assert ok.assert_passed() is ok
    with pytest.raises(AssertionError, match="demo: FAIL: too big"):
        bad.assert_passed()


def _sign_dropped(x, sigma, D):
    return -fs.exact_field(fs.PFGMPP(D=D), EMPIRICAL).poisson_field(x, sigma)


class _WrongEps(fs.Field):
    """A field whose eps is off by a factor 2 (a planted conversion bug)."""

    def __init__(self):
        super().__init__(fs.EDM(), (2,))
        self.exact = fs.exact_field(fs.EDM(), EMPIRICAL)

    def _evaluate(self, kind, x, t64, kwargs):
        value = self.exact.evaluate(kind, x, t64)
        return 2.0 * value if kind == "eps" else value


# (assert twin, arguments that pass, arguments that fail)
TWINS = {
    "d_limit": (ft.assert_d_limit, (EMPIRICAL, X, 0.7), dict(poisson_field=_sign_dropped)),
    "solver_order": (ft.assert_solver_order, ("heun",), dict(order=3.0)),
    "flow_map": (ft.assert_flow_map, (fs.EDM(), GAUSS_1D, 80.0, 0.002), dict(solver="heun", steps=4, tolerance=1e-8)),
    "score_autograd": (ft.assert_score_autograd, (fs.exact_field(fs.VP(), EMPIRICAL), X, 0.3),
                       dict(log_prob=lambda x, t: fs.exact_field(fs.VE(), EMPIRICAL).log_prob(x, t))),
    "perturb_marginal": (ft.assert_perturb_marginal, (fs.VP(), GAUSS_1D, 0.5),
                         dict(perturb=lambda y, t, generator: 1.5 * fs.VP().perturb(y, t, generator=generator))),
}


@pytest.mark.parametrize("name", sorted(TWINS))
def test_assert_twins_raise_with_the_explanation_and_return_the_result(name):
    twin, args, failing = TWINS[name]
    result = twin(*args)
    assert isinstance(result, ft.CheckResult) and result.passed
    assert twin.__name__ == "assert_" + name
    with pytest.raises(AssertionError, match=f"^{name}: FAIL: "):
        twin(*args, **failing)


def test_every_check_has_its_twin():
    checks = {n.removeprefix("check_") for n in ft.__all__ if n.startswith("check_")}
    twins = {n.removeprefix("assert_") for n in ft.__all__ if n.startswith("assert_")}
    assert checks == twins and len(checks) == 13


def test_field_conversions_catch_a_wrong_eps():
    result = ft.check_field_conversions(_WrongEps(), X, 0.7)
    assert not result and "eps" in result.explanation


def test_poisson_monte_carlo_refuses_a_verdict_on_too_few_effective_draws():
    law = fs.toy.GaussianMixture([[1.0, 0.0], [-1.0, 0.5]], [0.3, 0.5])
    result = ft.check_poisson_field_monte_carlo(fs.PFGMPP(D=4.0), law, X, 0.05, n=2000)
    assert not result and "raise n or sigma" in result.explanation


def test_sampling_map_jacobian_matches_finite_differences():
    """Autograd through the solve against central differences of the same solve."""
    process, law = fs.EDM(), fs.toy.GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], [0.4, 0.6])
    field = fs.exact_field(process, law)
    z = torch.tensor([[0.3, -0.2], [-1.0, 0.8]], dtype=torch.float64)
    norms = ft.sampling_map_jacobian_norms(process, field, z, steps=16)
    flow = fs.probability_flow(process, field)
    grid = fs.make_grid(process, "karras", 16)

    def g(zz):
        return fs.solve(flow, process.prior_std * zz, grid, "heun").x

    h = 1e-6
    for i in range(2):
        cols = [(g(z[i:i + 1] + h * e) - g(z[i:i + 1] - h * e))[0] / (2 * h) for e in torch.eye(2, dtype=torch.float64)]
        jac = torch.stack(cols, 1)
        assert math.isclose(float(torch.linalg.matrix_norm(jac, ord=2)), float(norms[i]), rel_tol=1e-6)


def test_lipschitz_bound_of_a_gaussian_is_its_largest_std():
    """For N(m, C) under EDM at sigma_min, every projection is Gaussian, so the bound is the
    largest std over the projections tried: at most sqrt(lambda_max + sigma_min^2)."""
    law = fs.toy.Gaussian([0.0, 1.0], [[1.0, 0.0], [0.0, 0.25]])
    bound, direction, _ = ft.lipschitz_lower_bound(fs.EDM(), law)
    assert math.isclose(bound, math.sqrt(1.0 + 0.002**2), rel_tol=1e-9)
    assert abs(abs(direction[0]) - 1.0) < 1e-12


@pytest.mark.parametrize("call, match", [
    (lambda: ft.check_d_limit(EMPIRICAL, X, 0.7, Ds=(1e3,)), "Ds must be"),
    (lambda: ft.check_d_limit(EMPIRICAL, X, -1.0), "sigma must be"),
    (lambda: ft.check_flow_map(fs.EDM(), GAUSS_1D, 1.0, 1.0), "t and s must differ"),
    (lambda: ft.check_flow_map(fs.EDM(), GAUSS_1D, 100.0, 1.0), r"t must lie in \[t_min, t_max\]"),
    (lambda: ft.check_flow_map(fs.EDM(), fs.toy.GaussianMixture([[0.0, 0.0], [1.0, 1.0]], [0.5, 0.5]), 1.0, 0.5),
     "exact probability-flow map is known"),
    (lambda: ft.check_poisson_field_monte_carlo(fs.EDM(), EMPIRICAL, X, 0.5), "PFGM\\+\\+ kernel"),
    (lambda: ft.check_lipschitz_bound(fs.PFGMPP(D=4.0), GAUSS_1D), "Student-t tails"),
    (lambda: ft.check_solver_order("dopri5"), "fixed-step ODE solver"),
    (lambda: ft.check_solver_order("heun", steps=(32,)), "steps must be"),
    (lambda: ft.check_prior_convergence([fs.VE()], GAUSS_1D), "at least two processes"),
    (lambda: ft.marginal_moments(fs.PFGMPP(D=2.0), GAUSS_1D, 1.0), "D <= 2"),
])
def test_bad_arguments_are_refused_by_name(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_checks_import_without_hypothesis_and_strategies_say_what_to_install():
    code = ("import sys; sys.modules['hypothesis'] = None\n"
            "import flowsolve.testing as ft\n"
            "assert ft.check_d_limit\n"
            "try:\n    ft.processes\nexcept ImportError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'flowsolve[testing]'" in out.stdout


def test_fs_testing_is_reachable_from_the_package():
    assert fs.testing is ft
    assert ft.strategies.processes is ft.processes


class _NanVelocity(_WrongEps):
    def _evaluate(self, kind, x, t64, kwargs):
        value = self.exact.evaluate(kind, x, t64)
        return torch.full_like(value, float("nan")) if kind == "velocity" else value


def test_non_finite_values_fail_rather_than_hide():
    """NaN must never pass: non-finite samples in a KS check, a NaN quantity among the field
    conversions, a NaN error at one D of the D-limit."""

    def nan_rows(y, t, generator):
        x = fs.VP().perturb(y, t, generator=generator)
        x[:3] = float("nan")
        return x

    assert not ft.check_perturb_marginal(fs.VP(), GAUSS_1D, 0.5, perturb=nan_rows)
    assert not ft.check_field_conversions(_NanVelocity(), X, 0.7)

    def nan_at_one_D(x, sigma, D):
        value = fs.exact_field(fs.PFGMPP(D=D), EMPIRICAL).poisson_field(x, sigma)
        return value * float("nan") if D == 1e4 else value

    assert not ft.check_d_limit(EMPIRICAL, X, 0.7, poisson_field=nan_at_one_D)


def test_relative_errors_survive_a_zero_field():
    """At a mode the score is 0 and at a centre of symmetry the Poisson field is 0: the checks
    compare against the size of the formula's terms, not the (zero) value."""
    law = fs.toy.Gaussian([0.5, -1.0], [[1.0, 0.0], [0.0, 0.5]])
    mode = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    assert ft.check_score_autograd(fs.exact_field(fs.EDM(), law), mode, 1.0)
    symmetric = fs.toy.Empirical([[1.0, 0.0], [-1.0, 0.0]])
    centre = torch.zeros(1, 2, dtype=torch.float64)
    assert ft.check_poisson_field_monte_carlo(fs.PFGMPP(D=4.0), symmetric, centre, 0.7)


def test_a_users_log_prob_is_used_for_gaussian_data_too():
    law = fs.toy.Gaussian([1.0], [[0.5]])
    wrong = ft.prior_kl(fs.VE(), law, log_prob=lambda x, t: torch.full(x.shape[:1], 123.0, dtype=torch.float64))
    assert wrong[0] > 100.0
    assert not ft.check_prior_convergence([fs.VE(sigma_max=s) for s in (10.0, 50.0)], law,
                                          log_prob=lambda x, t: torch.full(x.shape[:1], 123.0, dtype=torch.float64))


@pytest.mark.parametrize("call, match", [
    (lambda: ft.check_perturb_marginal(fs.VP(), GAUSS_1D, 0.5, alpha=0.0), r"alpha must be a finite real number in \(0, 1\)"),
    (lambda: ft.check_perturb_marginal(fs.VP(), GAUSS_1D, 0.5, n=0), r"n must be an integer in \[2, inf\)"),
    (lambda: ft.check_lipschitz_bound(fs.EDM(), GAUSS_1D, rtol=1.0), r"rtol must be a finite real number in \[0, 1\)"),
    (lambda: ft.check_d_limit(EMPIRICAL, X, 0.7, tolerance=math.inf), "tolerance must be a finite real number > 0"),
    (lambda: ft.check_solver_order("heun", grids=()), "grids must name at least one grid"),
    (lambda: ft.check_sampler_law(fs.VP(), GAUSS_1D, "euler_maruyama", steps=10, nfe=10), "steps or nfe"),
    (lambda: ft.check_prior_convergence([fs.VE(sigma_max=50.0), fs.VE(sigma_max=10.0)], GAUSS_1D),
     "strictly growing sigma"),
    (lambda: ft.check_marginal_pushforward(fs.EDM(), GAUSS_1D, 1.0, 1.0), "s must differ from t"),
])
def test_arguments_that_would_make_a_check_vacuous_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()
