"""The work-precision harness: cells are deterministic and content-hashed, sweeps resume from
saved cells and run on several processes with the same results, failures are results, and
the fitted orders are those of the methods."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flowsolve.bench import harness
from flowsolve.bench.methods import Method, Run
from flowsolve.bench.problems import parse_problem

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
    moved = harness.Cell("elsewhere.toml", *[getattr(cells[0], f) for f in
                                            ("fingerprint", "method", "budget_kind", "budget", "seed",
                                             "atol_factor", "versions")])
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
