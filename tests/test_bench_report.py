"""flowsolve.bench.report on small hand-made Results: 2 problems, 3 methods (flowsolve "heun",
the peer "torchdiffeq.rk4", the adaptive "dopri5"), NFE budgets 10/20/40, a failed cell, a
None metric and an inf."""

import csv
import importlib.util
import json
import math
import sys

import pytest

from flowsolve.bench.records import RECORD_FIELDS, Results
from flowsolve.bench.report import (MAX_WIDTH, format_table, plot_problem, plot_samples, read_json, write_all,
                                    write_csv, write_json)

needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="matplotlib not installed")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _record(problem, method, library, budget, rmse, *, budget_kind="nfe", nfe_mean=None, failed=0, status="ok",
            sw=None, ed=None, seed=0, message=""):
    nfe = float(budget if nfe_mean is None else nfe_mean)
    r = dict.fromkeys(RECORD_FIELDS)
    r.update(problem=problem, fingerprint="abc123", method=method, library=library, kind="ode",
             budget_kind=budget_kind, budget=budget, seed=seed, n=256, status=status, message=message,
             nfe_mean=nfe, nfe_max=int(nfe) + 1, steps_mean=nfe / 2, rejected_mean=0.0, failed=failed,
             rmse=rmse, max_error=None if rmse is None else 3 * rmse, rel_error=None if rmse is None else rmse / 2,
             sliced_wasserstein=sw, energy_distance=ed, wall_s=0.125, key=f"{problem}/{method}/{budget}/{seed}")
    return r


def make_results() -> Results:
    recs = []
    for p in ("gauss2d", "moons"):
        for b in (10, 20, 40):
            recs.append(_record(p, "heun", "flowsolve", b, 1.0 * b ** -2, sw=0.1 * b ** -2, ed=0.2 * b ** -2))
            v = 2.0 * b ** -4
            if p == "gauss2d" and b == 10:  # the failed cell
                recs.append(_record(p, "torchdiffeq.rk4", "torchdiffeq", b, math.inf, status="failed", failed=12,
                                    sw=math.inf, message="12 samples: step size underflow"))
            elif p == "gauss2d" and b == 20:  # the None metric
                recs.append(_record(p, "torchdiffeq.rk4", "torchdiffeq", b, None, sw=0.05))
            elif p == "moons" and b == 40:  # the inf (diverged without a reported failure)
                recs.append(_record(p, "torchdiffeq.rk4", "torchdiffeq", b, math.inf, sw=math.inf))
            else:
                recs.append(_record(p, "torchdiffeq.rk4", "torchdiffeq", b, v, sw=0.1 * v, ed=0.3 * v))
        for rtol, nfe in ((1e-3, 30.0), (1e-5, 80.0)):
            recs.append(_record(p, "dopri5", "flowsolve", rtol, 0.5 * rtol, budget_kind="rtol", nfe_mean=nfe, sw=rtol))
    orders = [{"problem": "gauss2d", "method": "heun", "metric": "rmse", "order": 2.0, "nfe_lo": 10.0,
               "nfe_hi": 40.0, "points": 3},
              {"problem": "gauss2d", "method": "torchdiffeq.rk4", "metric": "rmse", "order": 4.004,
               "nfe_lo": 20.0, "nfe_hi": 40.0, "points": 2}]
    problems = {p: {"description": f"the {p} test problem", "process": "vp", "data": p, "dim": 2,
                    "event_shape": (2,), "n": 256, "metric": "rmse", "reference": "exact flow map",
                    "reference_error": 1e-9, "distribution_floor": {"sliced_wasserstein": 1e-3,
                                                                    "energy_distance": math.inf}}
                for p in ("gauss2d", "moons")}
    return Results(records=recs, orders=orders, problems=problems,
                   environment={"torch": "2.13.0", "python": "3.11"},
                   notes=["torchode.tsit5 skipped: torchode is not installed"])


def _block(text, problem):
    blocks = text.split("== ")
    return next(b for b in blocks if b.startswith(problem + " "))


def _row(block, section, method):
    """The cells of ``method``'s row in the table after the line starting with ``section``."""
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(section))
    for line in lines[start + 1:]:
        if not line.strip():
            break
        if line.split()[0] == method:
            return line
    raise AssertionError(f"no row {method!r} under {section!r}:\n{block}")


# ------------------------------------------------------------------------------ format_table

def test_table_marks_the_best_per_budget_and_shows_failures_orders_libraries():
    text = format_table(make_results())
    g = _block(text, "gauss2d")
    assert "the gauss2d test problem" in g and "process: vp" in g and "n: 256" in g
    assert "exact flow map (estimated error 1.00e-09)" in g and "primary metric: rmse" in g
    heun, rk4 = _row(g, "fixed-step", "heun").split(), _row(g, "fixed-step", "torchdiffeq.rk4")
    # budgets 10, 20, 40: heun is best at 10 (rk4 failed) and 20 (rk4's value is None), rk4 at 40
    assert heun[1:4] == ["1.00e-02*", "2.50e-03*", "6.25e-04"]
    assert "fail 12/256" in rk4 and " - " in rk4 and "7.81e-07*" in rk4
    assert "2.00 (10-40)" in " ".join(heun) and heun[-1] == "flowsolve"
    assert "4.00 (20-40)" in rk4 and rk4.split()[-1] == "torchdiffeq"
    m = _block(text, "moons")
    heun, rk4 = _row(m, "fixed-step", "heun").split(), _row(m, "fixed-step", "torchdiffeq.rk4").split()
    assert heun[1:4] == ["1.00e-02", "2.50e-03", "6.25e-04*"]  # rk4's inf at 40 is not best
    assert rk4[1:4] == ["2.00e-04*", "1.25e-05*", "inf"]
    assert heun[4] == "-"  # no fitted order for moons


def test_table_adaptive_distribution_notes_and_width():
    text = format_table(make_results())
    g = _block(text, "gauss2d")
    adaptive = [line for line in g.splitlines() if line.split()[:1] == ["dopri5"]]
    assert len(adaptive) == 2
    assert adaptive[0].split()[1:6] == ["1e-03", "30", "31", "5.00e-04", "1.50e-03"]
    assert "5.00e-06*" in adaptive[1] and "*" not in adaptive[0]  # smallest rmse x NFE mean
    assert "floor (the exact flow's end points against the data sample: sampling noise at this n): SW_2 1.00e-03, energy inf" \
        in " ".join(g.split())
    assert "values at or below the floor tie" in " ".join(g.split())
    # at 40, heun's 6.25e-05 and rk4's 7.81e-08 are both below the SW_2 floor 1e-3: a tie, both marked
    sw_heun = _row(g, "distribution metrics", "heun").split()
    assert sw_heun == ["heun", "SW_2", "1.00e-03*", "2.50e-04*", "6.25e-05*"]
    assert "notes:" in text and "torchode.tsit5 skipped: torchode is not installed" in text
    assert text.count("torchode.tsit5 skipped") == 1
    assert all(len(line) <= MAX_WIDTH for line in text.splitlines())
    assert "\x1b[" not in text


def test_table_color_bolds_the_best_cells_only():
    plain, colored = format_table(make_results()), format_table(make_results(), color=True)
    assert "\x1b[1m1.00e-02*\x1b[0m" in colored
    assert "\x1b[1m6.25e-04\x1b" not in colored.split("== moons")[0]
    import re
    assert re.sub(r"\x1b\[[0-9;]*m", "", colored) == plain


def test_table_skipped_and_error_cells_and_their_reasons():
    res = make_results()
    res.records += [_record("moons", "euler", "flowsolve", b, None, status="skipped", message="not on PFGM")
                    for b in (10, 20, 40)]
    res.records.append(_record("moons", "torchdiffeq.euler", "torchdiffeq", 10, None, status="error",
                               message="RuntimeError: boom"))
    m = _block(format_table(res), "moons")
    assert _row(m, "fixed-step", "euler").split()[1:4] == ["skip", "skip", "skip"]
    assert _row(m, "fixed-step", "torchdiffeq.euler").split()[1] == "error"
    assert "euler (10, 20, 40): skipped: not on PFGM" in m
    assert "torchdiffeq.euler (10): error: RuntimeError: boom" in m
    assert "torchdiffeq.rk4 (10): failed: 12 samples: step size underflow" in _block(format_table(res), "gauss2d")


def test_table_splits_wide_tables():
    res = make_results()
    extra = [_record("gauss2d", "heun", "flowsolve", b, 1.0 / b) for b in range(50, 1000, 50)]
    res.records += extra
    text = format_table(res)
    assert all(len(line) <= MAX_WIDTH for line in text.splitlines())
    assert sum(line.split()[:1] == ["heun"] for line in _block(text, "gauss2d").splitlines()) >= 3


# ------------------------------------------------------------------------------ CSV and JSON

def test_csv_has_the_record_fields_in_order(tmp_path):
    res = make_results()
    res.records[0]["extra_key"] = "ignored"
    path = write_csv(res, tmp_path / "r.csv")
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == RECORD_FIELDS
    assert len(rows) == 1 + len(res.records)
    first = dict(zip(rows[0], rows[1]))
    assert first["method"] == "heun" and float(first["rmse"]) == 0.01 and first["energy_distance"] == "0.002"
    failed = dict(zip(rows[0], rows[2]))
    assert failed["status"] == "failed" and failed["failed"] == "12" and failed["rmse"] == "inf"
    assert failed["energy_distance"] == ""  # None


def test_json_round_trip_keeps_inf_and_is_strict(tmp_path):
    res = make_results()
    res.records[1]["rel_error"] = -math.inf
    res.records[1]["message"] = "inf"  # a string field keeps its string
    path = write_json(res, tmp_path / "r.json")

    def refuse(name):
        raise AssertionError(f"non-strict JSON constant {name}")
    doc = json.loads(path.read_text(), parse_constant=refuse)
    assert set(doc) == {"records", "orders", "problems", "environment", "notes"}
    assert doc["records"][1]["rmse"] == "inf" and doc["records"][1]["rel_error"] == "-inf"
    back = read_json(path)
    assert back == res
    assert back.records[1]["rmse"] == math.inf and back.records[1]["message"] == "inf"
    assert back.problems["gauss2d"]["distribution_floor"]["energy_distance"] == math.inf
    assert back.problems["gauss2d"]["event_shape"] == (2,)
    res.records[0]["rmse"] = math.nan
    write_json(res, path)
    assert math.isnan(read_json(path).records[0]["rmse"])


# ------------------------------------------------------------------------------ plots and write_all

@needs_matplotlib
def test_plot_problem_writes_a_png_without_pyplot(tmp_path):
    had_pyplot = "matplotlib.pyplot" in sys.modules
    path = plot_problem(make_results(), "gauss2d", tmp_path / "g.png")
    data = (tmp_path / "g.png").read_bytes()
    assert path == str(tmp_path / "g.png") and len(data) > 1000 and data.startswith(PNG_SIGNATURE)
    assert had_pyplot or "matplotlib.pyplot" not in sys.modules
    with pytest.raises(ValueError, match="no problem"):
        plot_problem(make_results(), "nope", tmp_path / "n.png")


def test_plot_problem_without_matplotlib_returns_none_with_a_note(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    res = make_results()
    assert plot_problem(res, "gauss2d", tmp_path / "g.png") is None
    assert plot_problem(res, "moons", tmp_path / "m.png") is None
    assert res.notes.count("plots need matplotlib (pip install 'flowsolve[bench]')") == 1
    assert not (tmp_path / "g.png").exists()


@needs_matplotlib
def test_write_all_writes_everything(tmp_path):
    out = tmp_path / "deep" / "bench"
    paths = write_all(make_results(), out)
    assert [p.name for p in paths] == ["results.csv", "results.json", "gauss2d.png", "moons.png"]
    assert all(p.parent == out and p.stat().st_size > 0 for p in paths)
    assert (out / "moons.png").read_bytes().startswith(PNG_SIGNATURE)
    assert read_json(out / "results.json") == make_results()


def test_write_all_without_plots(tmp_path):
    paths = write_all(make_results(), tmp_path, plots=False)
    assert [p.name for p in paths] == ["results.csv", "results.json"]
    assert not list(tmp_path.glob("*.png"))


@needs_matplotlib
def test_plot_samples_1d_and_2d(tmp_path):
    import torch

    class Problem:
        name = "ring"

        def data_sample(self, m=None, seed=0):
            return torch.randn(200, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    x = torch.randn(100, 2, dtype=torch.float64)
    x[0, 0] = math.nan
    out = plot_samples(x, Problem(), tmp_path / "s2.png", title="ring: heun, nfe 20")
    assert out == str(tmp_path / "s2.png") and (tmp_path / "s2.png").read_bytes().startswith(PNG_SIGNATURE)
    assert plot_samples(x[:, 0], "line", tmp_path / "s1.png") == str(tmp_path / "s1.png")
    with pytest.raises(ValueError, match="1-D or 2-D"):
        plot_samples(torch.zeros(5, 3), "cube", tmp_path / "s3.png")


def test_write_all_unwritable_dir_is_a_one_line_oserror(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # no plotting needed here
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError) as info:
        write_all(make_results(), blocker / "out")
    message = str(info.value)
    assert str(blocker / "out") in message and "\n" not in message


def test_distribution_values_at_or_below_the_floor_tie_for_best():
    # at 10 NFE: a is below the floor (sampling noise, not skill), b at it, c above: a and b tie
    recs = [_record("p", m, "flowsolve", 10, None, sw=v) for m, v in (("a", 0.40), ("b", 0.43), ("c", 0.44))]
    recs += [_record("p", m, "flowsolve", 20, None, sw=v) for m, v in (("a", 0.50), ("b", 0.45), ("c", 0.44))]
    res = Results(records=recs, problems={"p": {"metric": "rmse", "distribution_floor": {"sliced_wasserstein": 0.43}}})
    block = _block(format_table(res), "p")
    rows = {m: _row(block, "distribution metrics", m).split()[2:] for m in "abc"}
    assert rows == {"a": ["4.00e-01*", "5.00e-01"], "b": ["4.30e-01*", "4.50e-01"], "c": ["4.40e-01", "4.40e-01*"]}


def test_endpoint_errors_below_the_reference_error_tie_for_best():
    # at 10 NFE both are below the reference's estimated error 1e-6: neither is more accurate than the
    # reference can tell; at 20, 3e-6 is above it and beats 5e-6
    recs = [_record("p", "a", "flowsolve", 10, 1e-8), _record("p", "b", "flowsolve", 10, 5e-7),
            _record("p", "a", "flowsolve", 20, 5e-6), _record("p", "b", "flowsolve", 20, 3e-6)]
    recs += [_record("p", "c", "flowsolve", r, 1e-8, budget_kind="rtol", nfe_mean=n)
             for r, n in ((1e-3, 40), (1e-5, 90))]
    res = Results(records=recs, problems={"p": {"metric": "rmse", "reference_error": 1e-6}})
    block = _block(format_table(res), "p")
    assert _row(block, "fixed-step", "a").split()[1:3] == ["1.00e-08*", "5.00e-06"]
    assert _row(block, "fixed-step", "b").split()[1:3] == ["5.00e-07*", "3.00e-06*"]
    # adaptive: both tolerances are at the reference's error; the cheaper one is best
    adaptive = [line for line in block.splitlines() if line.split()[:1] == ["c"]]
    assert "*" in adaptive[0] and "*" not in adaptive[1]
