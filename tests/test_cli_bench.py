"""``flowsolve bench``, ``problems`` and ``sample``: they write what they say, and every user
error is one line on stderr with exit code 2 and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from flowsolve import cli
from flowsolve.bench.problems import builtin_problems

SMALL = """
description = "a small 2-D Gaussian under EDM (CLI test)"
[process]
kind = "EDM"
[data]
kind = "gaussian"
mean = [0.5, -0.5]
cov = [[1.0, 0.2], [0.2, 0.3]]
[start]
n = 16
[metrics]
data_samples = 64
[bench]
solvers = ["heun"]
nfe = [6, 12]
rtol = [1e-3]
"""


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text(SMALL)
    return path


def _error_line(capsys, code):
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flowsolve: error: ") and "Traceback" not in captured.err
    return lines[0]


def test_bench_on_a_file_prints_the_table_and_writes_csv_json_png(small, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FLOWSOLVE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "res"
    code = cli.main(["bench", str(small), "--solvers", "heun,dpmpp_2m,torchdiffeq.rk4,dopri5", "--nfe", "8,16",
                     "--rtol", "1e-3", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "== small" in text and "torchdiffeq.rk4" in text and "dopri5" in text and "order" in text
    assert (out / "results.csv").read_text().splitlines()[0].startswith("problem,fingerprint,method")
    data = json.loads((out / "results.json").read_text())
    assert len(data["records"]) == 3 * 2 + 1 and data["environment"]["versions"]["torch"] == torch.__version__
    assert (out / "small.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # run again: every cell is read back from out/cells
    assert cli.main(["bench", str(small), "--solvers", "heun,dpmpp_2m,torchdiffeq.rk4,dopri5", "--nfe", "8,16",
                     "--rtol", "1e-3", "--out", str(out)]) == 0
    assert "resumed 7 of 7 cells" in capsys.readouterr().out


def test_problems_lists_every_builtin_problem_on_one_line(capsys):
    assert cli.main(["problems"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = [line.split()[0] for line in lines]
    assert names == list(builtin_problems()) and len(names) >= 12


def test_sample_writes_npy_and_a_picture(small, tmp_path, capsys):
    out = tmp_path / "x.npy"
    assert cli.main(["sample", str(small), "--solver", "dpmpp_2m", "--nfe", "10", "--n", "40", "--out", str(out)]) == 0
    assert "NFE mean 10.0" in capsys.readouterr().out
    x = np.load(out)
    assert x.shape == (40, 2) and np.isfinite(x).all()
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    pt = tmp_path / "x.pt"
    assert cli.main(["sample", str(small), "--solver", "dopri5", "--rtol", "1e-4", "--out", str(pt)]) == 0
    assert torch.load(pt).shape == (16, 2)


@pytest.mark.parametrize("argv, expected", [
    (["bench", "ring8_edn"], "closest: ring8_edm"),
    (["bench", "ring8_edm", "--solvers", "huen"], "did you mean 'heun'"),
    (["bench", "ring8_edm", "--nfe", "ten"], "--nfe must be a comma-separated list of ints"),
    (["bench", "ring8_edm", "--nfe", "0"], "nfe[0]"),
    (["bench", "--workers", "0", "ring8_edm"], "workers"),
    (["sample", "ring8_edm", "--solver", "dopri5", "--nfe", "10"], "adaptive: give --rtol"),
    (["sample", "ring8_edm", "--out", "x.txt"], "--out must end in .npy or .pt"),
    (["frobnicate"], "invalid choice"),
])
def test_user_errors_are_one_line(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = _error_line(capsys, cli.main(argv))
    assert expected in line


def test_bad_toml_and_unwritable_output_are_one_line(small, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("description = 'x'\n[process\nkind = 'EDM'\n")
    line = _error_line(capsys, cli.main(["bench", str(bad)]))
    assert "bad.toml" in line and "TOML" in line
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = _error_line(capsys, cli.main(["bench", str(small), "--nfe", "6", "--out", str(blocker / "res")]))
    assert "cannot write" in line and str(blocker) in line


def test_a_peer_that_is_not_installed_is_an_error_when_named(small, capsys, monkeypatch):
    from flowsolve.bench import methods
    peer = methods.method("torchode.dopri5")
    monkeypatch.setattr(type(peer), "unavailable", lambda self: "torchode is not installed (pip install "
                        "'flowsolve[peers]')")
    line = _error_line(capsys, cli.main(["bench", str(small), "--solvers", "torchode.dopri5"]))
    assert "torchode is not installed" in line


def test_python_dash_m_bench_error_has_no_traceback():
    out = subprocess.run([sys.executable, "-m", "flowsolve", "bench", "no_such_problem"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, expected", [
    (["sample", "ring8_edm", "--solver", "dopri5", "--rtol", "5"], "--rtol must be a relative tolerance in (0, 1)"),
    (["sample", "ring8_edm", "--solver", "heun", "--nfe", "1"], "--nfe must be at least 2 (one step of heun)"),
    (["bench", "ring8_edm", "--solvers", "heun@karras:rho=-1", "--nfe", "10"], "rho of method heun@karras:rho=-1"),
    (["bench", "ring8_edm", "--solvers", "heun@log_sigma:rho=3", "--nfe", "10"], "not used by the 'log_sigma' grid"),
])
def test_bad_budgets_and_grid_options_are_one_line_before_any_work(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from flowsolve.bench import harness
    from flowsolve.bench.methods import FlowsolveMethod
    monkeypatch.setattr(FlowsolveMethod, "run", lambda *a: pytest.fail("work before the check"))
    monkeypatch.setattr(harness, "_problem_meta", lambda *a: pytest.fail("work before the check"))
    assert expected in _error_line(capsys, cli.main(argv))


def test_unwritable_sample_file_and_reference_cache_are_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    from flowsolve.bench.methods import FlowsolveMethod
    monkeypatch.setattr(FlowsolveMethod, "run", lambda *a: pytest.fail("work before the check"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = _error_line(capsys, cli.main(["sample", "ring8_edm", "--out", str(blocker / "sub" / "x.npy")]))
    assert f"{str(blocker)!r} is a file, not a directory" in line
    line = _error_line(capsys, cli.main(["bench", "ring8_edm", "--solvers", "heun", "--nfe", "10", "--cache",
                                         str(blocker / "cache"), "--out", str(tmp_path / "res")]))
    assert "reference cache" in line and "--cache" in line


def test_sample_says_when_samples_failed_and_exits_non_zero(tmp_path, capsys):
    # torchdiffeq's first-step probe lands at t < 0 on VP: every sample fails, at 2 NFE
    code = cli.main(["sample", "ring8_vp", "--solver", "torchdiffeq.dopri5", "--rtol", "1e-3", "--n", "4", "--out",
                     str(tmp_path / "x.npy")])
    captured = capsys.readouterr()
    assert code == 1 and "failed 4" in captured.out
    (line,) = captured.err.strip().splitlines()
    assert "4 of 4 samples did not reach t_min" in line and "outside" in line


def test_ctrl_c_is_one_line_and_speaks_of_resuming_only_for_bench(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_run", interrupted)
    assert cli.main(["sample", "ring8_edm"]) == 130
    assert capsys.readouterr().err == "flowsolve: interrupted\n"
    assert cli.main(["bench", "ring8_edm"]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
