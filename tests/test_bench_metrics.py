"""flowsolve.bench.metrics against independent computations: numpy formulas, sorted samples
(W_2 in 1-D), scipy.stats.energy_distance, a direct torch.cdist formula, synthetic orders."""

import importlib.util
import math
import sys
import warnings

import numpy as np
import pytest
import scipy.stats
import torch

from flowsolve.bench import metrics
from flowsolve.bench.metrics import (distribution_errors, endpoint_errors, energy_distance, fit_order,
                                     sliced_wasserstein)

needs_pot = pytest.mark.skipif(importlib.util.find_spec("ot") is None, reason="POT not installed")
needs_geomloss = pytest.mark.skipif(importlib.util.find_spec("geomloss") is None, reason="geomloss not installed")


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# ------------------------------------------------------------------------------ endpoint errors

def test_endpoint_errors_match_numpy_in_float64():
    ref = _randn(50, 2, 3, seed=1)
    x = (ref + 1e-3 * _randn(50, 2, 3, seed=2)).to(torch.float32)
    out = endpoint_errors(x, ref)
    d = x.numpy().astype(np.float64) - ref.numpy()
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean(d ** 2)), rel=1e-13)
    assert out["max_error"] == pytest.approx(np.max(np.abs(d)), rel=1e-15)
    assert out["rel_error"] == pytest.approx(np.sqrt(np.mean(d ** 2)) / np.sqrt(np.mean(ref.numpy() ** 2)), rel=1e-13)
    assert all(isinstance(v, float) for v in out.values())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_endpoint_errors_non_finite_x_is_inf(bad):
    ref = _randn(8, 2)
    x = ref.clone()
    x[3, 1] = bad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = endpoint_errors(x, ref)
    assert out == {"rmse": math.inf, "max_error": math.inf, "rel_error": math.inf}


def test_endpoint_errors_refuses_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        endpoint_errors(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="reference"):
        endpoint_errors(torch.zeros(4, 2), torch.full((4, 2), math.nan))
    assert endpoint_errors(torch.ones(4, 2), torch.zeros(4, 2))["rel_error"] is None


# ------------------------------------------------------------------------------ sliced Wasserstein

@needs_pot
def test_sliced_wasserstein_in_1d_is_w2_of_sorted_samples():
    x, y = _randn(400, 1, seed=3), 0.7 * _randn(400, 1, seed=4) + 0.4
    w2 = np.sqrt(np.mean((np.sort(x.numpy()[:, 0]) - np.sort(y.numpy()[:, 0])) ** 2))
    assert sliced_wasserstein(x, y, n_projections=16) == pytest.approx(w2, rel=1e-12, abs=1e-14)
    # event shape () is one coordinate per sample
    assert sliced_wasserstein(x[:, 0], y[:, 0], n_projections=16) == pytest.approx(w2, rel=1e-12)


@needs_pot
def test_sliced_wasserstein_matches_projections_drawn_independently():
    # POT draws the directions as RandomState(seed).randn(d, n_projections), normalised per column
    x, y = _randn(200, 2, 2, seed=5), 1.3 * _randn(200, 2, 2, seed=6)
    dirs = np.random.RandomState(7).randn(4, 32)
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    px, py = np.sort(x.reshape(200, 4).numpy() @ dirs, axis=0), np.sort(y.reshape(200, 4).numpy() @ dirs, axis=0)
    expected = np.sqrt(np.mean((px - py) ** 2))
    assert sliced_wasserstein(x, y, n_projections=32, seed=7) == pytest.approx(expected, rel=1e-12)


@needs_pot
def test_sliced_wasserstein_scales_is_deterministic_and_leaves_numpy_state_alone():
    x, y = _randn(150, 3, seed=8), _randn(120, 3, seed=9) + 0.2
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = sliced_wasserstein(x, y, seed=1)
    assert np.array_equal(np.random.get_state()[1], before)
    assert sliced_wasserstein(x, y, seed=1) == a
    assert sliced_wasserstein(x, y, seed=2) != a
    assert sliced_wasserstein(2.5 * x, 2.5 * y, seed=1) == pytest.approx(2.5 * a, rel=1e-12)
    assert sliced_wasserstein(x, x) == 0.0


# ------------------------------------------------------------------------------ energy distance

@needs_geomloss
def test_energy_distance_1d_matches_scipy():
    x, y = _randn(300, 1, seed=10), 0.8 * _randn(170, 1, seed=11) + 0.3
    expected = scipy.stats.energy_distance(x.numpy()[:, 0], y.numpy()[:, 0])
    assert energy_distance(x, y) == pytest.approx(expected, rel=1e-11)


def _cdist_energy(x, y):
    def mean_dist(a, b):
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").mean()
    x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
    return math.sqrt(float(2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y)))


@needs_geomloss
@pytest.mark.parametrize("scale", [1.0, 1e-4, 1e3])
def test_energy_distance_3d_matches_cdist_formula_at_any_scale(scale):
    x = scale * _randn(120, 3, seed=12)
    y = scale * (1.2 * _randn(90, 3, seed=13) + 0.1)
    assert energy_distance(x, y) == pytest.approx(_cdist_energy(x, y), rel=1e-10)
    assert energy_distance(x.to(torch.float32), y) == pytest.approx(_cdist_energy(x.float().double(), y), rel=1e-10)


@needs_geomloss
def test_geomloss_energy_is_half_the_squared_energy_distance():
    """The normalisation energy_distance relies on: SamplesLoss("energy") = D^2 / 2 (its stock
    kernel clamps squared distances at 1e-8, hence the loose tolerance at scale 1)."""
    from geomloss import SamplesLoss
    x, y = _randn(100, 2, seed=14), _randn(80, 2, seed=15) + 0.5
    loss = float(SamplesLoss("energy", backend="tensorized")(x, y))
    assert 2 * loss == pytest.approx(_cdist_energy(x, y) ** 2, rel=1e-3)


@needs_geomloss
def test_energy_distance_edge_cases():
    x = _randn(40, 2, seed=16)
    assert energy_distance(x, x) == 0.0
    bad = x.clone()
    bad[5] = math.nan
    assert energy_distance(bad, x) == math.inf
    with pytest.raises(ValueError, match="non-finite"):
        energy_distance(x, bad)
    with pytest.raises(ValueError, match="event size"):
        energy_distance(x, _randn(40, 3))


# ------------------------------------------------------------------------------ distribution_errors

@needs_pot
@needs_geomloss
def test_distribution_errors_values_and_non_finite_rows():
    x, y = _randn(64, 2, seed=17), _randn(64, 2, seed=18)
    values, notes = distribution_errors(x, y, seed=3)
    assert notes == []
    assert values == {"sliced_wasserstein": sliced_wasserstein(x, y, seed=3), "energy_distance": energy_distance(x, y)}
    x[0, 0] = math.inf
    values, _ = distribution_errors(x, y)
    assert values == {"sliced_wasserstein": math.inf, "energy_distance": math.inf}
    with pytest.raises(ValueError, match="unknown distribution metric"):
        distribution_errors(x, y, names=("wasserstein",))


@needs_geomloss
def test_distribution_errors_missing_library_gives_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "ot", None)  # `import ot` now raises ImportError
    x, y = _randn(32, 2, seed=19), _randn(32, 2, seed=20)
    values, notes = distribution_errors(x, y)
    assert set(values) == {"energy_distance"}
    assert notes == ["sliced Wasserstein needs POT (pip install 'flowsolve[bench]')"]
    assert sliced_wasserstein(x, y) is None
    assert metrics.unavailable("sliced_wasserstein") == notes[0]
    monkeypatch.setitem(sys.modules, "geomloss", None)
    assert energy_distance(x, y) is None
    assert distribution_errors(x, y)[0] == {}


# ------------------------------------------------------------------------------ fit_order

@pytest.mark.parametrize("p", [1.0, 2.0, 4.0])
def test_fit_order_recovers_the_power(p):
    nfe = np.array([10, 20, 40, 80, 160])
    fit = fit_order(nfe, 3.0 * nfe.astype(float) ** -p)
    assert fit["order"] == pytest.approx(p, abs=1e-10)
    assert (fit["nfe_lo"], fit["nfe_hi"], fit["points"]) == (10, 160, 5)


def test_fit_order_drops_points_at_the_floor_and_bad_points():
    nfe = np.array([10, 20, 40, 80, 160, 320, 640], dtype=float)
    floor = 1e-9
    err = 1.0 * nfe ** -3.0 + floor  # 1e-3 ... ~3.8e-9: the last ones sit near the floor
    fit = fit_order(nfe, err, floor=floor)
    assert fit["nfe_hi"] == 320 and fit["points"] == 6  # 640^-3 = 3.8e-9 < 10 * floor is dropped
    assert fit["order"] == pytest.approx(3.0, abs=0.01)
    # non-finite, None and zero errors are left out; fewer than two distinct NFE -> None
    fit = fit_order([10, 20, 40, 80], [1e-2, None, math.inf, 1e-2 * 8.0 ** -2])
    assert fit["order"] == pytest.approx(2.0, abs=1e-12) and fit["points"] == 2
    assert fit_order([10, 10, 20], [1e-2, 1e-2, math.nan]) is None
    assert fit_order([10], [1.0]) is None
    assert fit_order([10, 20], [1e-10, 1e-11], floor=1e-10) is None
