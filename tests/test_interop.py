"""fs.to_torchsde: the reverse SDE as a torchsde object, checked against flowsolve's own
drift and diffusion and against the exact law at t_min."""

import math

import pytest
import torch
import torchsde

import flowsolve as fs
import flowsolve.testing as ft

LAW = fs.toy.Gaussian([1.0, -2.0], [[1.0, 0.5], [0.5, 0.75]])


def test_one_euler_step_is_the_reverse_sde_in_time_minus_t():
    """torchsde's Euler step from t to t - h is x + drift(x, t)(-h) + g(t) dW, with drift and g
    flowsolve's: the time map s = -t and the sign of the drift are right."""
    process = fs.VP()
    exact = fs.exact_field(process, LAW)
    calls = []

    def denoiser(x, t):
        calls.append(1)
        return exact.denoiser(x, t)

    sde = fs.to_torchsde(process, fs.Field.from_denoiser(process, denoiser, event_shape=(2,)))
    x0 = torch.tensor([[0.3, -0.4], [1.0, 2.0]], dtype=torch.float64)
    t0, t1 = 0.8, 0.7
    bm = torchsde.BrownianInterval(t0=-t0, t1=-t1, size=(2, 2), dtype=torch.float64,
                                   entropy=0, levy_area_approximation="none")
    ys = torchsde.sdeint(sde, x0, sde.times([t0, t1]), bm=bm, method="euler", dt=t0 - t1)
    flow = fs.reverse_sde(process, fs.exact_field(process, LAW))
    expected = x0 + flow.drift(x0, t0) * (t1 - t0) + float(flow.diffusion(t0)) * bm(-t0, -t1)
    torch.testing.assert_close(ys[-1], expected, rtol=1e-12, atol=1e-12)
    assert sde.nfe == len(calls) >= 1  # torchsde may add a step of rounding size: nfe counts it


@pytest.mark.parametrize("method, sde_type", [("euler", "ito"), ("srk", "ito"), ("reversible_heun", "stratonovich")])
def test_torchsde_solvers_reach_the_data_law(method, sde_type):
    """Sampling VP from its prior with torchsde's solvers ends in N(s mu, s^2 (C + sigma^2 I)) at
    t_min: mean z-scores below 5 and variances within 15 % (n = 1000, dt = 5e-3)."""
    process, n = fs.VP(), 1000
    sde = fs.to_torchsde(process, fs.exact_field(process, LAW), sde_type=sde_type)
    x0 = process.prior_sample(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bm = torchsde.BrownianInterval(t0=-process.t_max, t1=-process.t_min, size=(n, 2), dtype=torch.float64,
                                   entropy=1, levy_area_approximation="space-time" if method == "srk" else "none")
    ys = torchsde.sdeint(sde, x0, sde.times([process.t_max, process.t_min]), bm=bm, method=method, dt=5e-3)
    x = sde.unflatten(ys[-1])
    mean, cov = ft.marginal_moments(process, LAW, process.t_min)
    z = (x.mean(0) - mean) / torch.sqrt(torch.diagonal(cov) / n)
    assert float(z.abs().max()) < 5.0
    assert float((x.var(0) / torch.diagonal(cov) - 1).abs().max()) < 0.15


def test_image_shaped_states_are_flattened_and_restored():
    law = fs.toy.standard_gaussian(12, event_shape=(3, 2, 2))
    sde = fs.to_torchsde(fs.EDM(), fs.exact_field(fs.EDM(), law))
    assert sde.event_shape == (3, 2, 2)
    y = torch.randn(4, 12, dtype=torch.float64)
    assert sde.f(torch.tensor(-10.0), y).shape == (4, 12) and sde.g(torch.tensor(-10.0), y).shape == (4, 12)
    assert sde.unflatten(y).shape == (4, 3, 2, 2)


def test_bad_arguments_are_refused_by_name():
    field = fs.exact_field(fs.VP(), LAW)
    with pytest.raises(ValueError, match="sde_type must be one of"):
        fs.to_torchsde(fs.VP(), field, sde_type="ita")
    with pytest.raises(ValueError, match="reverse_sde needs a diffusion"):
        fs.to_torchsde(fs.PFGMPP(D=4.0), fs.exact_field(fs.PFGMPP(D=4.0), LAW))
    with pytest.raises(ValueError, match="event_shape is required"):
        fs.to_torchsde(fs.VP(), score=lambda x, t: -x)
    with pytest.raises(ValueError, match="strictly decreasing"):
        fs.to_torchsde(fs.VP(), field).times([0.1, 0.5])
    assert math.isclose(float(fs.to_torchsde(fs.VP(), score=lambda x, t: -x, event_shape=2).times([1.0, 0.5])[1]), -0.5)
