"""The ``flowsolve`` command runs and reports what it measured."""

import io
import re

import torch

from flowsolve import cli


def test_demo_reports_every_process_and_solver():
    out = io.StringIO()
    before = torch.get_default_dtype()
    assert cli.demo(n=40, seed=1, out=out) == 0
    assert torch.get_default_dtype() == before  # the demo leaves torch's global state alone
    text = out.getvalue()
    rows = [line for line in text.splitlines() if re.match(r"^(VE|VP|SubVP|EDM|PFGMPP)", line)]
    assert len(rows) == 5 * 4
    for line in rows:
        m = re.search(r"(\S+)\s+(\d+)\s+(\d+)\s+(\S+)\s+(\S+)( \(vs .*\))?$", line)
        nfe_mean, nfe_max, outside, error = float(m[1]), int(m[2]), int(m[3]), float(m[4])
        assert 0.0 <= error < 1.0 and 0 < nfe_mean <= nfe_max
        if "torchdiffeq" not in line:
            assert outside == 0  # flowsolve requests nothing outside the span
        if "20 NFE" in line:
            assert nfe_max == 20
    assert "error * D" in text


def test_main_rejects_bad_sample_count(capsys):
    assert cli.main(["demo", "--n", "1"]) == 2
    assert capsys.readouterr().err == "flowsolve: error: --n must be >= 2, got 1\n"



def test_solvers_lists_every_registered_solver_with_its_order_and_cost():
    import flowsolve as fs

    out = io.StringIO()
    assert cli.solvers(out=out) == 0
    lines = out.getvalue().splitlines()[1:]
    table = fs.available_solvers()
    assert [line.split()[0] for line in lines] == list(table)
    heun = next(line for line in lines if line.startswith("heun "))
    assert "fixed-step ODE" in heun and re.search(r"\b2\s+2\b", heun)


def test_version_and_python_dash_m():
    import subprocess
    import sys

    import flowsolve as fs

    out = subprocess.run([sys.executable, "-m", "flowsolve", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"flowsolve {fs.__version__}"
    out = subprocess.run([sys.executable, "-m", "flowsolve", "nonsense"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "invalid choice" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
