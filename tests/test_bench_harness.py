"""The work-precision harness: cells are deterministic and content-hashed, sweeps resume from
saved cells and run on several processes with the same results, failures are results, and
the fitted orders are those of the methods."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math

import pytest
import torch

import flowsolve as fs
from flowsolve.bench import harness
from flowsolve.bench import methods as bench_methods
from flowsolve.bench.methods import FlowsolveMethod, Method, Run, Task
from flowsolve.bench.problems import parse_problem
from flowsolve.bench.records import Results

GAUSS_EDM = """
description = "a 2-D Gaussian under EDM (test)"
[process]
kind = "EDM"
[data]
kind = "gaussian"
mean = [1.0, -0.5]
cov = [[1.0, 0.3], [0.3, 0.5]]
[start]
n = 32
seed = 3
[metrics]
data_samples = 256
[bench]
solvers = ["euler", "heun"]
nfe = [8, 16]
rtol = [1e-4]
"""


@pytest.fixture(scope="module")
def problem():
    return parse_problem(GAUSS_EDM, name="gauss_test")


def _strip(records):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]


def test_records_hold_every_cell_with_counted_nfe_within_budget(problem, tmp_path):
    res = harness.work_precision(problem, ["euler", "heun", "dpmpp_2m", "dopri5", "torchdiffeq.euler"],
                                 nfe=[8, 16, 32], rtol=[1e-3, 1e-5], cache_dir=tmp_path)
    assert len(res.records) == 4 * 3 + 2
    for r in res.records:
        assert r["status"] == "ok" and r["failed"] == 0 and r["n"] == 32
        if r["budget_kind"] == "nfe":
            assert r["nfe_max"] <= r["budget"]
        assert r["rmse"] > 0 and r["max_error"] >= r["rmse"] and r["rel_error"] > 0
        assert r["sliced_wasserstein"] is not None and r["energy_distance"] is not None
    heun = {r["budget"]: r["rmse"] for r in res.records if r["method"] == "heun"}
    assert heun[32] < heun[16] < heun[8]
    # torchdiffeq's euler on flowsolve's grid is the same algorithm: same end points
    ours = {r["budget"]: r["rmse"] for r in res.records if r["method"] == "euler"}
    peer = {r["budget"]: r["rmse"] for r in res.records if r["method"] == "torchdiffeq.euler"}
    for b in ours:
        assert peer[b] == pytest.approx(ours[b], rel=1e-9)
    meta = res.problems["gauss_test"]
    assert meta["metric"] == "rmse" and meta["reference_error"] < 1e-10
    assert set(meta["distribution_floor"]) == {"sliced_wasserstein", "energy_distance"}
    assert res.environment["versions"]["torchdiffeq"] and res.environment["versions"]["flowsolve"]


def test_fitted_orders_are_the_methods_orders(problem, tmp_path):
    res = harness.work_precision(problem, ["euler", "heun"], nfe=[32, 64, 128], cache_dir=tmp_path)
    orders = {o["method"]: o for o in res.orders}
    assert orders["euler"]["order"] == pytest.approx(1.0, abs=0.25)
    assert orders["heun"]["order"] == pytest.approx(2.0, abs=0.3)
    assert orders["heun"]["nfe_lo"] <= orders["heun"]["nfe_hi"] and orders["heun"]["points"] == 3


def test_cells_are_deterministic_and_keyed_by_content(problem, tmp_path):
    _, cells, _, _ = harness.plan(problem, ["heun", "dopri5"], nfe=[8], rtol=[1e-4], seeds=[0, 1])
    assert len({c.key for c in cells}) == len(cells) == 4
    a = harness.run_cell(cells[0], problem, tmp_path)
    b = harness.run_cell(cells[0], problem, tmp_path)
    assert _strip([a]) == _strip([b])
    # seeds are different start points
    c = harness.run_cell(cells[1], problem, tmp_path)
    assert c["rmse"] != a["rmse"]
    # the key follows the content, not where the problem came from
    moved = dataclasses.replace(cells[0], problem="elsewhere.toml")
    assert moved.key == cells[0].key
    other = parse_problem(GAUSS_EDM.replace("n = 32", "n = 33"), name="gauss_test")
    assert harness.plan(other, ["heun"], nfe=[8])[1][0].key != cells[0].key


def test_a_sweep_resumes_from_saved_cells(problem, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = harness.work_precision(problem, ["euler", "heun"], nfe=[8, 16], out=out, cache_dir=tmp_path)
    files = sorted((out / "cells").glob("*.json"))
    assert len(files) == 4
    files[0].unlink()  # as if interrupted before the last cell was saved
    calls = []
    real = harness.run_cell
    monkeypatch.setattr(harness, "run_cell", lambda cell, *a: calls.append(cell) or real(cell, *a))
    second = harness.work_precision(problem, ["euler", "heun"], nfe=[8, 16], out=out, cache_dir=tmp_path)
    assert len(calls) == 1 and any("resumed 3 of 4" in n for n in second.notes)
    assert _strip(second.records) == _strip(first.records)
    harness.work_precision(problem, ["euler", "heun"], nfe=[8, 16], out=out, cache_dir=tmp_path, resume=False)
    assert len(calls) == 5


def test_workers_give_the_same_records(tmp_path):
    path = tmp_path / "gauss_file.toml"
    path.write_text(GAUSS_EDM.replace("n = 32", "n = 16"))
    one = harness.work_precision(str(path), ["euler", "heun"], nfe=[8, 16], cache_dir=tmp_path)
    two = harness.work_precision(str(path), ["euler", "heun"], nfe=[8, 16], cache_dir=tmp_path, workers=2)
    assert _strip(two.records) == _strip(one.records)


class _Exploding(Method):
    name, library = "explodes", "flowsolve"

    def version(self):
        return "0"

    def run(self, task):
        raise RuntimeError("the peer fell over\nsecond line")


class _Missing(Method):
    name, library = "missing.solver", "missing"

    def unavailable(self):
        return "missing is not installed (pip install 'flowsolve[peers]')"


class _HalfFails(Method):
    name, library = "halffails", "flowsolve"

    def version(self):
        return "0"

    def run(self, task):
        x = task.x_init.clone()
        n = x.shape[0]
        failed = torch.arange(n) % 2 == 0
        return Run(x=x, nfe=torch.full((n,), 3), n_steps=torch.ones(n, dtype=torch.long),
                   n_rejected=torch.zeros(n, dtype=torch.long), failed=failed, message="half of them failed")


def test_failures_are_results_and_missing_peers_are_notes(problem, tmp_path):
    res = harness.work_precision(problem, [_Exploding(), _Missing(), _HalfFails(), "heun"], nfe=[8],
                                 cache_dir=tmp_path)
    by = {r["method"]: r for r in res.records}
    assert by["explodes"]["status"] == "error" and by["explodes"]["message"] == "RuntimeError: the peer fell over"
    assert by["halffails"]["status"] == "failed" and by["halffails"]["failed"] == 16
    assert by["heun"]["status"] == "ok" and "missing.solver" not in by
    assert any("skipped missing.solver: missing is not installed" in n for n in res.notes)


def test_stochastic_and_unsupported_methods(tmp_path):
    pfgm = parse_problem(GAUSS_EDM.replace('kind = "EDM"', 'kind = "PFGMPP"\nD = 128')
                         .replace('kind = "gaussian"\nmean = [1.0, -0.5]\ncov = [[1.0, 0.3], [0.3, 0.5]]',
                                  'kind = "bimodal_1d"'), name="pfgm_test")
    res = harness.work_precision(pfgm, ["euler_maruyama", "heun"], nfe=[8], cache_dir=tmp_path)
    assert [r["method"] for r in res.records] == ["heun"]
    assert any("euler_maruyama" in n and "no forward SDE" in n for n in res.notes)
    edm = parse_problem(GAUSS_EDM, name="gauss_test")
    res = harness.work_precision(edm, ["euler_maruyama"], nfe=[16], cache_dir=tmp_path)
    (r,) = res.records
    assert r["rmse"] is None and r["sliced_wasserstein"] is not None and math.isfinite(r["sliced_wasserstein"])


def test_bad_arguments_are_refused_before_any_work(problem):
    with pytest.raises(ValueError, match="nfe"):
        harness.work_precision(problem, ["heun"], nfe=[0])
    with pytest.raises(ValueError, match="rtol"):
        harness.work_precision(problem, ["dopri5"], rtol=[2.0])
    with pytest.raises(ValueError, match="workers"):
        harness.work_precision(problem, ["heun"], nfe=[8], workers=0)
    with pytest.raises(ValueError, match="did you mean"):
        harness.work_precision(problem, ["huen"], nfe=[8])
    with pytest.raises(ValueError, match="seeds"):
        harness.work_precision(problem, ["heun"], nfe=[8], seeds=[])


def test_records_are_json(problem, tmp_path):
    res = harness.work_precision(problem, ["heun"], nfe=[8], out=tmp_path / "o", cache_dir=tmp_path)
    (f,) = (tmp_path / "o" / "cells").glob("*.json")
    assert json.loads(f.read_text())["key"] == res.records[0]["key"] == f.stem


# -- keys, resume, workers, orders, floors, failures, early refusals ------------------------------


def test_cell_keys_follow_the_metrics_settings_the_method_settings_and_the_library_versions(problem):
    (base,) = harness.plan(problem, ["heun"], nfe=[8])[1]
    # [metrics] is outside the problem's fingerprint, but the record depends on it
    more_data = parse_problem(GAUSS_EDM.replace("data_samples = 256", "data_samples = 512"), name="gauss_test")
    assert more_data.fingerprint == problem.fingerprint
    assert harness.plan(more_data, ["heun"], nfe=[8])[1][0].key != base.key
    # the same solver on another grid or with other options is another method, by name and by key
    for other in (FlowsolveMethod("heun", "log_sigma"), FlowsolveMethod("edm_stochastic", options={"S_churn": 1.0})):
        (cell,) = harness.plan(problem, [other], nfe=[8])[1]
        assert cell.key != base.key and cell.method == other.name != other.solver
        assert bench_methods.method(FlowsolveMethod("heun", "log_sigma").name).settings() == \
            FlowsolveMethod("heun", "log_sigma").settings()
    versions = dict(base.versions)
    assert {"flowsolve", "torch", "POT", "geomloss", "harness"} <= set(versions)


def test_methods_are_a_list_of_distinct_methods(problem):
    assert [c.method for c in harness.plan(problem, "heun", nfe=[8])[1]] == ["heun"]
    assert [c.method for c in harness.plan(problem, ["heun", "heun"], nfe=[8])[1]] == ["heun"]
    assert [c.method for c in harness.plan(problem, ["heun", bench_methods.method("heun")], nfe=[8])[1]] == ["heun"]
    cells = harness.plan(problem, ["heun"], nfe=[8, 8, 16], seeds=[0, 0])[1]
    assert [(c.budget, c.seed) for c in cells] == [(8.0, 0), (16.0, 0)]
    with pytest.raises(ValueError, match="methods is empty"):
        harness.plan(problem, [], nfe=[8])
    with pytest.raises(ValueError, match="two different methods are named 'heun'"):
        harness.plan(problem, ["heun", FlowsolveMethod("heun", "log_sigma", name="heun")], nfe=[8])


def test_a_resumed_cell_takes_the_name_of_the_problem_it_now_belongs_to(problem, tmp_path, monkeypatch):
    out = tmp_path / "out"
    harness.work_precision(problem, ["euler"], nfe=[8], out=out, cache_dir=tmp_path)
    renamed = parse_problem(GAUSS_EDM, name="renamed")
    monkeypatch.setattr(harness, "run_cell", lambda *a: pytest.fail("a saved cell ran again"))
    res = harness.work_precision(renamed, ["euler"], nfe=[8], out=out, cache_dir=tmp_path)
    assert [r["problem"] for r in res.records] == ["renamed"] and len(res.for_problem("renamed")) == 1


def test_only_methods_rebuilt_by_their_name_go_to_worker_processes():
    assert harness._rebuilt_by_name(bench_methods.method("heun"))
    assert harness._rebuilt_by_name(bench_methods.method("heun@karras:rho=3"))
    assert harness._rebuilt_by_name(bench_methods.method("torchdiffeq.rk4"))
    # named "heun", a worker would rebuild plain heun on the default grid
    assert not harness._rebuilt_by_name(FlowsolveMethod("heun", "log_sigma", name="heun"))
    assert not harness._rebuilt_by_name(_Exploding())


class _FakeProcess:
    def __init__(self):
        self.terminated = False

    def terminate(self):
        self.terminated = True


class _FakePool:
    made = []

    def __init__(self, workers, **kwargs):
        self.workers, self.shutdowns, self._processes = workers, [], {1: _FakeProcess(), 2: _FakeProcess()}
        _FakePool.made.append(self)

    def submit(self, fn, *args):
        return concurrent.futures.Future()

    def shutdown(self, wait=True, cancel_futures=False):
        self.shutdowns.append((wait, cancel_futures))


def test_ctrl_c_stops_the_workers_instead_of_waiting_for_their_cells(monkeypatch):
    import signal

    def interrupted(futures):
        raise KeyboardInterrupt
        yield  # noqa: unreachable -- a generator, as as_completed is

    monkeypatch.setattr(harness.concurrent.futures, "ProcessPoolExecutor", _FakePool)
    monkeypatch.setattr(harness.concurrent.futures, "as_completed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        harness._run_in_workers(["a", "b", "c"], 8, 1, None, lambda *a: None)
    (pool,) = _FakePool.made
    assert pool.workers == 3  # no more processes than cells
    assert pool.shutdowns == [(False, True)] and all(p.terminated for p in pool._processes.values())
    before = signal.getsignal(signal.SIGINT)
    threads = torch.get_num_threads()
    try:
        harness._init_worker(1)  # a worker leaves Ctrl-C to the sweep's process
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
        torch.set_num_threads(threads)


def _order_results(records, **meta):
    return Results(records=records, problems={"p": {"metric": meta.pop("metric", "rmse"), **meta}})


def _rec(budget, err, seed=0, status="ok", metric="rmse"):
    return {"problem": "p", "method": "m", "budget_kind": "nfe", "budget": float(budget), "seed": seed,
            "status": status, "nfe_mean": float(budget), metric: err}


def test_orders_use_only_budgets_where_every_seed_ran_and_the_floor_of_the_metric():
    recs = [_rec(b, b ** -2.0, s) for b in (10, 20, 40) for s in (0, 1)]
    recs[-1] = _rec(40, 1e3, seed=1, status="failed")  # the table shows 'fail' at 40: no point there
    (fit,) = harness.fit_orders(_order_results(recs))
    assert fit["points"] == 2 and fit["nfe_hi"] == 20 and fit["order"] == pytest.approx(2.0)
    # rel_error's floor is the reference's error relative to its scale (here 1e-3 / 1e-2 = 0.1)
    recs = [_rec(b, e, metric="rel_error") for b, e in ((10, 10.0), (20, 2.5), (40, 0.5))]
    (fit,) = harness.fit_orders(_order_results(recs, metric="rel_error", reference_error=1e-3, reference_rms=1e-2))
    assert fit["points"] == 2 and fit["nfe_hi"] == 20


def test_the_floors_and_the_reference_error_cover_every_seed(problem, tmp_path):
    from flowsolve.bench import metrics
    meta = harness._problem_meta(problem, [0, 1], tmp_path)
    floors = [metrics.distribution_errors(problem.reference(s).x, problem.data_sample(seed=s),
                                          problem.distribution_metrics, seed=s)[0] for s in (0, 1)]
    for k, v in meta["distribution_floor"].items():
        assert v == pytest.approx((floors[0][k] + floors[1][k]) / 2) and floors[0][k] != floors[1][k]
    assert meta["reference_error"] == max(problem.reference(s).error_estimate for s in (0, 1))


class _AllFail(Method):
    name, library = "allfail", "flowsolve"

    def version(self):
        return "0"

    def run(self, task):
        n = task.x_init.shape[0]
        return Run(x=task.x_init.clone(), nfe=torch.full((n,), 2), n_steps=torch.zeros(n, dtype=torch.long),
                   n_rejected=torch.zeros(n, dtype=torch.long), failed=torch.ones(n, dtype=torch.bool),
                   message="stopped at the start")


def test_a_cell_whose_every_sample_failed_has_no_metrics(problem, tmp_path):
    (r,) = harness.work_precision(problem, [_AllFail()], nfe=[8], cache_dir=tmp_path).records
    assert r["status"] == "failed" and r["failed"] == 32 and r["nfe_max"] == 2
    assert all(r[k] is None for k in ("rmse", "max_error", "rel_error", "sliced_wasserstein", "energy_distance"))


def test_refused_before_any_work_a_problem_without_metrics_an_unwritable_out_or_cache(problem, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="at least one metric"):  # refused by the loader itself
        parse_problem(GAUSS_EDM.replace("[metrics]\n", "[metrics]\nendpoint = []\ndistribution = []\n"),
                      name="nothing")
    monkeypatch.setattr(harness, "_problem_meta", lambda *a: pytest.fail("work before the check"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot write results"):
        harness.work_precision(problem, ["heun"], nfe=[8], out=blocker / "out")
    adaptive = parse_problem(GAUSS_EDM.replace("[start]", "[reference]\nmethod = \"adaptive\"\n[start]"), name="a")
    with pytest.raises(OSError, match="reference cache .*--cache"):
        harness.work_precision(adaptive, ["heun"], nfe=[8], cache_dir=blocker / "cache")


def test_a_cell_refuses_a_problem_whose_content_changed(problem, tmp_path):
    (cell,) = harness.plan(problem, ["heun"], nfe=[8])[1]
    other = parse_problem(GAUSS_EDM.replace("n = 32", "n = 8"), name="gauss_test")
    with pytest.raises(ValueError, match="content changed"):
        harness.run_cell(cell, other, tmp_path)


# -- FlowsolveMethod: budgets and names -----------------------------------------------------------
def _counting_field(process, law):
    exact = fs.exact_field(process, law)
    rows = []

    def denoiser(x, t):
        rows.append(x.shape[0])
        return exact.denoiser(x, t)

    return fs.Field.from_denoiser(process, denoiser, event_shape=(2,)), rows


@pytest.mark.parametrize("solver", [n for n, i in fs.available_solvers().items() if not i["adaptive"]])
def test_every_fixed_step_solver_spends_at_most_its_budget_from_its_smallest_one(solver):
    law = fs.toy.Gaussian([1.0, -0.5], [[1.0, 0.3], [0.3, 0.5]])
    m = bench_methods.method(solver)
    process = fs.VP() if m.kind == "sde" else fs.EDM()
    low = m.min_budget()
    x0 = process.prior_sample(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError):
        m.run(Task(process, fs.exact_field(process, law), x0, "nfe", low - 1)) if low > 1 else m.run(
            Task(process, fs.exact_field(process, law), x0, "nfe", 0))
    for budget in (low, low + 1, low + 3):
        field, rows = _counting_field(process, law)
        run = m.run(Task(process, field, x0, "nfe", budget, seed=1))
        assert int(run.nfe.max()) <= budget and int(run.nfe.sum()) == sum(rows)  # counted = evaluated
        assert not run.failed.any()


def test_method_names_are_checked_when_parsed():
    for name, match in [("heun@", "grid in method"), ("heun@karras:rho=-1", "rho of method"),
                        ("heun@log_sigma:rho=3", "not used by the 'log_sigma' grid"),
                        ("dopri5@karras", "adaptive and takes no grid")]:
        with pytest.raises(ValueError, match=match):
            bench_methods.method(name)
    assert bench_methods.method("edm_stochastic").min_budget() == 1  # its last step is one Euler step
    assert FlowsolveMethod("heun", grid_options={"rho": 3}).name == "heun@karras:rho=3"


def test_method_names_carry_solver_options_and_parse_back_to_themselves(problem, tmp_path):
    for name, options, grid in [("unipc[variant=bh1]", {"variant": "bh1"}, None),
                                ("unipc@log_sigma[order=3,variant='bh1']", {"order": 3, "variant": "bh1"}, "log_sigma"),
                                ("dpmpp_3m@karras:rho=3[variant='published']", {"variant": "published"}, "karras"),
                                ("unipc@tuned[order=3]", {"order": 3}, "tuned")]:
        m = bench_methods.method(name)
        assert (m.options, m.grid) == (options, grid)
        again = bench_methods.method(m.name)  # the printed name is a name the parser takes
        assert again.name == m.name and again.settings() == m.settings()
    assert FlowsolveMethod("unipc", options={"variant": "bh1"}).name == "unipc[variant='bh1']"
    for name, match in [("unipc[=1]", "key=value"), ("[order=3]", "key=value"), ("unipc[colour=1]", "unknown option"),
                        ("unipc[variant=bh9]", "method unipc.*variant must be one of"),
                        ("dopri5[rtol=-1]", "method dopri5.*rtol")]:
        with pytest.raises(ValueError, match=match):
            bench_methods.method(name)
    # the options reach the solver: the bench's cell is fs.sample with them
    res = harness.work_precision(problem, ["unipc[variant=bh1]", "unipc"], nfe=[8], cache_dir=tmp_path)
    bh1, bh2 = (r["rmse"] for r in res.records)
    assert bh1 != bh2


def test_a_metric_whose_library_is_missing_is_none_with_a_note(problem, tmp_path, monkeypatch):
    from flowsolve.bench import metrics
    real = metrics._library
    monkeypatch.setattr(metrics, "_library", lambda module: None if module == "ot" else real(module))
    res = harness.work_precision(problem, ["heun"], nfe=[8], cache_dir=tmp_path)
    (r,) = res.records
    assert r["sliced_wasserstein"] is None and r["energy_distance"] is not None
    assert any("heun: not measured: sliced Wasserstein needs POT" in n for n in res.notes)
