"""The bench's references (flowsolve.bench.references): exact maps checked against independent
adaptive solves, honest error estimates, and the disk cache."""

from __future__ import annotations

import math

import pytest
import torch

import flowsolve as fs
from flowsolve.bench import references as br
from flowsolve.bench.problems import load_problem, parse_problem
from flowsolve.bench.references import Reference


def _adaptive(problem, x0, rtol=1e-10):
    sol = fs.sample(problem.process, problem.field, x0.shape[0], "dopri5", x_init=x0, dtype=torch.float64,
                    rtol=rtol, atol=rtol)
    assert not bool(sol.failed.any()), sol.message
    return sol.x


# -- exact maps against an independent derivation -----------------------------------------------
@pytest.mark.parametrize("name, method, tol", [
    ("gauss2d_vp", br.GAUSSIAN_MAP, 1e-7),
    ("gauss4d_subvp", br.GAUSSIAN_MAP, 1e-7),
    ("gauss2d_edm", br.GAUSSIAN_MAP, 1e-7),
    ("bimodal1d_edm", br.QUANTILE_MAP, 1e-6),
    ("modes5_1d_pfgmpp_d128", br.QUANTILE_MAP, 1e-6),
])
def test_exact_reference_agrees_with_a_tight_adaptive_solve(name, method, tol):
    """The closed-form / quantile map and flowsolve's dopri5 at rtol 1e-10 on the exact field
    (an independent route: the ODE, not the marginals) end at the same points."""
    problem = load_problem(name)
    assert problem.reference_method == "exact"
    x0 = problem.x_init()[:4]
    exact = br.exact_reference(problem.process, problem.data, x0)
    assert exact.method == method and exact.nfe_mean is None and not exact.cached
    assert exact.x.dtype == torch.float64 and exact.x.shape == x0.shape
    assert 0.0 < exact.error_estimate < 1e-11
    assert float((exact.x - _adaptive(problem, x0)).abs().max()) < tol


def test_problem_reference_is_exact_and_not_cached(tmp_path):
    problem = load_problem("gauss2d_edm")
    reference = problem.reference(cache_dir=tmp_path)
    assert isinstance(reference, Reference) and not reference.cached and reference.seconds >= 0
    assert reference.x.shape == (problem.n, *problem.event_shape)
    assert list(tmp_path.iterdir()) == []  # exact references cost milliseconds: never written
    seeded = problem.reference(seed=1, cache_dir=tmp_path)
    assert not torch.equal(seeded.x, reference.x)


def test_quantile_map_under_a_heavy_tailed_kernel():
    """PFGM (D = 1) on 1-D points: the Cauchy prior reaches far out, and the map still lands near
    the data (the kernel at sigma_min = 0.002 is Cauchy too: P(|x - y| > 0.05) ~ 2.5%) with a
    finite error estimate."""
    problem = parse_problem('description = "d"\n[process]\nkind = "Poisson"\n[data]\nkind = "empirical"\n'
                            'points = [[-1.0], [0.5], [2.0]]\n[start]\nn = 64\n')
    reference = problem.reference()
    assert reference.method == br.QUANTILE_MAP and math.isfinite(reference.error_estimate)
    assert float(problem.x_init().abs().max()) > 1e3
    nearest = (reference.x - torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)).abs().min(dim=1).values
    assert bool(torch.isfinite(reference.x).all()) and float((nearest < 0.05).double().mean()) > 0.9


# -- adaptive references -------------------------------------------------------------------------
ADAPTIVE = '''description = "a 1-D mixture, forced adaptive, at loose tolerances (fast)"
[process]
kind = "EDM"
[data]
kind = "mixture"
means = [[-1.0], [1.5]]
stds = 0.3
[start]
n = 8
[reference]
method = "adaptive"
rtol = 1e-7
atol = 1e-7
'''


def test_adaptive_error_estimate_bounds_the_true_error():
    """The tight-minus-loose estimate covers the adaptive reference's error against the exact map."""
    problem = parse_problem(ADAPTIVE)
    x0 = problem.x_init()
    reference = br.adaptive_reference(problem.process, problem.field, x0, "dopri5", 1e-7, 1e-7)
    exact = br.exact_reference(problem.process, problem.data, x0)
    true_error = float((reference.x - exact.x).abs().max())
    assert true_error <= reference.error_estimate < 1e-3
    assert reference.method == "dopri5, rtol=1e-07, atol=1e-07, float64" and reference.nfe_mean > 10
    chunked = br.adaptive_reference(problem.process, problem.field, x0, "dopri5", 1e-7, 1e-7, chunk=3)
    assert torch.equal(chunked.x, reference.x)  # per-sample steps: chunks change the speed only


def test_a_failed_reference_solve_is_an_error():
    problem = parse_problem(ADAPTIVE)
    broken = fs.Field.from_denoiser(problem.process, lambda x, sigma: x * math.nan, event_shape=(1,))
    with pytest.raises(RuntimeError, match="reference solve"):
        br.adaptive_reference(problem.process, broken, problem.x_init())


def test_adaptive_reference_cache_round_trip(tmp_path):
    problem = parse_problem(ADAPTIVE)
    path = br.cache_path(tmp_path, problem.fingerprint, 0)
    assert path.name == f"{problem.fingerprint}-seed0.pt"
    first = br.compute_reference(problem, 0, tmp_path)
    assert not first.cached and path.is_file() and first.nfe_mean is not None
    second = br.compute_reference(problem, 0, tmp_path)
    assert second.cached and torch.equal(second.x, first.x)
    assert (second.method, second.error_estimate, second.nfe_mean) == (first.method, first.error_estimate,
                                                                        first.nfe_mean)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary files left

    path.write_bytes(b"not a torch file")  # corrupted: recomputed and rewritten
    again = br.compute_reference(problem, 0, tmp_path)
    assert not again.cached and torch.equal(again.x, first.x)
    assert br.compute_reference(problem, 0, tmp_path).cached

    foreign = Reference(x=torch.zeros(problem.n, 1, dtype=torch.float64), method="m", error_estimate=0.0,
                        nfe_mean=1.0, seconds=0.0)
    for fingerprint, shape_ok in (("0" * 64, True), (problem.fingerprint, False)):
        stored = foreign if shape_ok else Reference(torch.zeros(3, 1, dtype=torch.float64), "m", 0.0, 1.0, 0.0)
        br.save_cached(path, fingerprint, 0, stored)
        recomputed = br.compute_reference(problem, 0, tmp_path)
        assert not recomputed.cached and torch.equal(recomputed.x, first.x)
    br.save_cached(path, problem.fingerprint, 0, foreign, inputs="another start")  # same key, other inputs
    assert not br.compute_reference(problem, 0, tmp_path).cached

    other_seed = br.compute_reference(problem, 1, tmp_path)
    assert not other_seed.cached and br.cache_path(tmp_path, problem.fingerprint, 1).is_file()
    # Problem.reference keeps what it computed: a sweep asks for it in every cell
    memo = problem.reference(cache_dir=tmp_path)
    assert problem.reference(cache_dir=tmp_path) is memo and torch.equal(memo.x, first.x)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FLOWSOLVE_CACHE", str(tmp_path / "refs"))
    assert br.default_cache_dir() == tmp_path / "refs"
    problem = parse_problem(ADAPTIVE)
    assert not problem.reference().cached
    assert br.cache_path(tmp_path / "refs", problem.fingerprint, 0).is_file()
    monkeypatch.delenv("FLOWSOLVE_CACHE")
    assert br.default_cache_dir().parts[-3:] == (".cache", "flowsolve", "references")


def test_chunk_size_bounds_full_covariance_temporaries():
    assert br.chunk_size(fs.toy.ring(), 256) == 256
    assert br.chunk_size(fs.toy.random_mixture(64, 4), 256) == br.CHUNK_NUMBERS // (4 * 64**2)
    assert br.chunk_size(fs.toy.random_mixture(256, 4), 256) == 16  # at least 16 samples a chunk
