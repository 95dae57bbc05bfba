"""The ``flowsolve`` command runs and reports what it measured."""

import io
import re

import pytest
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
    with pytest.raises(SystemExit):
        cli.main(["demo", "--n", "1"])
    assert "--n must be >= 2" in capsys.readouterr().err

