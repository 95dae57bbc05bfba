"""Tuned grids (``fs.tune_grid``), GITS (``fs.gits_grid``) and the bench's computed-grid methods.

Independent checks: the GITS dynamic programme against brute force over every sub-grid and against
the published ``dp`` of zju-pi/diff-sampler (gits-main/gits_utils.py, run on the same cost matrix in
a scratch folder); tuned grids by their invariants (monotone, in span, exact ends, exactly the
steps the NFE buys) and by a measured gain over their warm start on held-out start points.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import flowsolve as fs
from flowsolve import tuning
from flowsolve.bench import methods

PROCESS = fs.EDM()
FIELD = fs.exact_field(PROCESS, fs.toy.ring(n_modes=4, radius=2.0, std=0.2))
SMALL = dict(n_calibration=12, n_heldout=24, warm_starts=("log_sigma", "karras"), restarts=1, max_evaluations=40,
             reference_rtol=1e-7)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """heun with 8 evaluations (4 steps), tuned from the better of log_sigma and karras."""
    cache = tmp_path_factory.mktemp("tuned")
    return cache, fs.tune_grid(PROCESS, FIELD, "heun", 8, cache_dir=cache, **SMALL)


def test_logits_parametrise_monotone_grids_with_exact_ends():
    rng = np.random.default_rng(0)
    for steps in (1, 2, 7):
        logits = rng.normal(scale=3.0, size=steps - 1)
        ts = tuning.grid_from_logits(PROCESS, logits)
        assert ts.dtype == torch.float64 and ts.numel() == steps + 1
        assert ts[0] == PROCESS.t_max and ts[-1] == PROCESS.t_min
        assert bool((ts[1:] < ts[:-1]).all())
        np.testing.assert_allclose(tuning.logits_from_grid(PROCESS, ts), logits, atol=1e-9)
    # zero logits: equal steps in lambda = -log sigma, i.e. the log_sigma grid
    np.testing.assert_allclose(tuning.grid_from_logits(PROCESS, np.zeros(5)).numpy(),
                               fs.make_grid(PROCESS, "log_sigma", 6).numpy(), rtol=1e-12, atol=0)


def test_tuned_grid_is_in_span_with_the_steps_the_budget_buys_and_beats_its_warm_start(tuned):
    _, tg = tuned
    info = fs.solvers.registry.get_solver("heun")
    assert tg.steps == info.max_steps_within(8, {}) == 4 and tg.ts.numel() == 5
    assert tg.ts[0] == PROCESS.t_max and tg.ts[-1] == PROCESS.t_min and bool((tg.ts[1:] < tg.ts[:-1]).all())
    assert tg.warm_start in ("log_sigma", "karras") and tg.process == repr(PROCESS)
    assert tg.calibration_rmse <= min(tg.warm_start_errors.values())
    # measured on held-out start points, not the calibration ones
    assert tg.heldout_rmse < 0.8 * tg.warm_start_heldout_rmse, tg
    assert 0 < tg.objective_evaluations <= SMALL["max_evaluations"] + 2
    assert tg.field_evaluations == 8 * tg.objective_evaluations
    # the grid is what fs.sample then uses, at exactly the budget
    sol = fs.sample(PROCESS, FIELD, 3, **tg.sample_kwargs(), seed=0)
    assert bool((sol.nfe == 8).all())


@pytest.mark.parametrize("kwargs, match", [
    (dict(solver="euler"), "tuned for solver 'heun'"),
    (dict(nfe=10), r"nfe=10 buys 5 steps .* tuned for nfe=8"),
    (dict(nfe=8, denoise_final=True), "final denoising"),
    (dict(steps=4), "holds its own 4 steps"),
])
def test_sample_refuses_a_tuned_grid_used_for_something_else(tuned, kwargs, match):
    _, tg = tuned
    args = {"solver": "heun", "process": PROCESS, **kwargs}
    with pytest.raises(ValueError, match=match):
        fs.sample(args.pop("process"), FIELD, 3, grid=tg, seed=0, **args)


def test_sample_refuses_a_tuned_grid_on_another_process(tuned):
    _, tg = tuned
    other = fs.EDM(sigma_max=40.0)
    with pytest.raises(ValueError, match="tuned for process EDM"):
        fs.sample(other, fs.exact_field(other, fs.toy.ring(n_modes=4, radius=2.0, std=0.2)), 3, "heun", grid=tg)


def test_sample_refuses_a_grid_that_is_neither_a_name_nor_a_tuned_grid():
    with pytest.raises(ValueError, match="grid must be a grid name .* or a TunedGrid"):
        fs.sample(PROCESS, FIELD, 3, "heun", grid=[80.0, 1.0, 0.002], seed=0)


def test_the_cache_returns_the_same_grid_without_work(tuned, monkeypatch):
    cache, tg = tuned

    def refuse(*args, **kwargs):
        raise AssertionError("the cached tuning solved again")
    monkeypatch.setattr(fs, "sample", refuse)
    again = fs.tune_grid(PROCESS, FIELD, "heun", 8, cache_dir=cache, **SMALL)
    assert again.cached and again.fingerprint == tg.fingerprint
    assert torch.equal(again.ts, tg.ts) and again.heldout_rmse == tg.heldout_rmse
    # another setting is another fingerprint
    assert tuning.field_key(FIELD) != tuning.field_key(fs.exact_field(PROCESS, fs.toy.ring(n_modes=4, std=0.3)))


def test_a_field_without_a_key_runs_uncached(tmp_path):
    net = fs.Field.from_denoiser(PROCESS, lambda x, sigma: torch.zeros_like(x), event_shape=(2,))
    tg = fs.tune_grid(PROCESS, net, "euler", 2, cache_dir=tmp_path, n_calibration=4, n_heldout=4,
                      warm_starts=("log_sigma",), restarts=1, max_evaluations=3)
    assert tg.fingerprint is None and not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(solver="dopri5"), "fixed-step ODE"),
    (dict(solver="euler_maruyama"), "fixed-step ODE"),
    (dict(solver="heun", nfe=1), "nfe=1 buys no step"),
    (dict(solver="heun", nfe=3), "buys one step"),
    (dict(nfe=0), "nfe"),
    (dict(warm_starts=("uniformish",)), "warm_starts"),
    (dict(warm_starts=()), "warm_starts"),
    (dict(method="bfgs"), "method"),
    (dict(heldout_seed=tuning.CALIBRATION_SEED), "heldout_seed must differ"),
    (dict(max_evaluations=2), "max_evaluations"),
    (dict(options={"rho": 3}), "unknown option"),
    (dict(n_calibration=0), "n_calibration"),
])
def test_bad_input_is_refused_before_any_work(kwargs, match, monkeypatch):
    monkeypatch.setattr(fs, "sample", lambda *a, **k: pytest.fail("work was done"))
    args = dict(solver="euler", nfe=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fs.tune_grid(PROCESS, FIELD, args.pop("solver"), args.pop("nfe"), cache=False, **args)


# -- GITS -----------------------------------------------------------------------------------------
def _brute_force(cost, steps, coeff):
    m = cost.shape[0]
    best, best_path = math.inf, None
    for inner in itertools.combinations(range(1, m - 1), steps - 1):
        path = (0, *inner, m - 1)
        total = sum(coeff**k * cost[a, b] for k, (a, b) in enumerate(zip(path[:-1], path[1:])))
        if total < best:
            best, best_path = total, list(path)
    return best_path


def test_gits_dynamic_programming_matches_brute_force_and_the_published_dp():
    rng = np.random.default_rng(3)
    for m, steps in [(6, 1), (7, 3), (9, 4), (10, 8)]:
        cost = np.triu(rng.uniform(0.1, 2.0, size=(m, m)), 1)
        assert tuning.gits_dynamic_programming(cost, steps, 1.15) == _brute_force(cost, steps, 1.15)
    # the published dp(cost_mat, num_steps=4, num_steps_tea=9, coeff=1.15), run on this matrix
    cost = np.triu(np.random.default_rng(7).uniform(0.1, 2.0, size=(9, 9)), 1)
    assert tuning.gits_dynamic_programming(cost, 3, 1.15) == [0, 3, 5, 8]
    with pytest.raises(ValueError, match="steps"):
        tuning.gits_dynamic_programming(cost, 9)


def test_gits_grid_is_a_subgrid_of_the_teacher_with_the_budgets_steps():
    ts = fs.gits_grid(PROCESS, FIELD, 6, "heun", n=8, teacher_steps=12)
    teacher = fs.make_grid(PROCESS, "karras", 12)
    assert ts.numel() == 4 and all(bool((teacher == t).any()) for t in ts)
    assert ts[0] == PROCESS.t_max and ts[-1] == PROCESS.t_min and bool((ts[1:] < ts[:-1]).all())
    with pytest.raises(ValueError, match="teacher_steps"):
        fs.gits_grid(PROCESS, FIELD, 20, "euler", n=4, teacher_steps=12)
    with pytest.raises(ValueError, match="metric"):
        fs.gits_grid(PROCESS, FIELD, 4, "euler", n=4, metric="dev")


# -- the bench ------------------------------------------------------------------------------------
def test_bench_names_computed_grids():
    m = methods.method("ipndm@tuned")
    assert isinstance(m, methods.ComputedGridMethod) and m.name == "ipndm@tuned"
    assert m.settings()["grid"] == "tuned" and methods.method("euler@gits").grid == "gits"
    assert methods.method("unipc@dmn").grid == "dmn"
    with pytest.raises(ValueError, match="fixed-step ODE"):
        methods.method("dopri5@tuned")
    with pytest.raises(ValueError, match="tuned"):
        methods.method("euler@tunde")


def test_bench_tuned_method_runs_on_a_task_with_its_cached_grid(tuned):
    cache, tg = tuned
    m = methods.ComputedGridMethod("heun", "tuned", tuning=dict(SMALL, cache_dir=cache))
    x0 = tuning.prior_points(PROCESS, (2,), 5, seed=0)
    run = m.run(methods.Task(PROCESS, FIELD, x0, "nfe", 8))
    assert bool((run.nfe == 8).all()) and not bool(run.failed.any())
    assert run.extras["tuning_cached"] and run.extras["heldout_rmse"] == tg.heldout_rmse
