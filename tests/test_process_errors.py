"""Bad input to processes and the shared argument checks: a ValueError naming the argument
and the allowed range, raised before any work. Every refusal is paired with the nearest
valid input, so a check that refused everything would fail too."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import flowsolve as fs
from flowsolve import _validation as v
from flowsolve.processes import StudentTKernel
from flowsolve.processes.base import SCHEDULE_CHECK_POINTS
from flowsolve.processes.kernels import D_MAX

F64 = torch.float64


def _grid_time(i, t_min=0.0, t_max=1.0):
    """The i-th time of the construction check grid (computed here, as the check does)."""
    return float(torch.linspace(t_min, t_max, SCHEDULE_CHECK_POINTS, dtype=F64)[i])


# ------------------------------------------------------------------------ check_bool
@pytest.mark.parametrize("value", [True, False, np.bool_(True), np.bool_(False)])
def test_check_bool_accepts_bools(value):
    assert v.check_bool("flag", value) is bool(value)


@pytest.mark.parametrize("value", ["no", "yes", "True", 1, 0, 1.0, None, torch.tensor(True), [True]])
def test_check_bool_refuses_everything_else(value):
    with pytest.raises(ValueError, match=r"^flag must be True or False, got"):
        v.check_bool("flag", value)


# ------------------------------------------------------------------------- check_int
@pytest.mark.parametrize("value, expected", [(3, 3), (3.0, 3), (np.int64(7), 7), (np.float32(2.0), 2), (10, 10),
                                             (1, 1), (torch.tensor(4), 4)])
def test_check_int_accepts_integer_values(value, expected):
    out = v.check_int("steps", value, 1, 10)
    assert out == expected and type(out) is int


@pytest.mark.parametrize("value", [True, False, "3", 2.5, math.nan, math.inf, -math.inf, None, 1j, 11, 0, -3,
                                   11.0, np.bool_(True), [3]])
def test_check_int_refuses(value):
    with pytest.raises(ValueError, match=r"^steps must be an integer in \[1, 10\], got"):
        v.check_int("steps", value, 1, 10)


def test_check_int_without_maximum():
    assert v.check_int("n", 10**30) == 10**30 and v.check_int("n", 1e30) == int(1e30)
    with pytest.raises(ValueError, match=r"^n must be an integer in \[0, inf\), got -1"):
        v.check_int("n", -1)


# ------------------------------------------------------------------------ check_real
@pytest.mark.parametrize("value", [1, 1.5, np.float32(2.0), np.int8(3), torch.tensor(2.5), torch.tensor(2)])
def test_check_real_accepts_real_numbers(value):
    out = v.check_real("x", value)
    assert out == float(value) and type(out) is float


@pytest.mark.parametrize("value", ["1", "nan", True, np.bool_(False), 1j, None, [1.0], torch.ones(2), math.nan,
                                   math.inf, -math.inf])
def test_check_real_refuses(value):
    with pytest.raises(ValueError, match=r"^x must be a finite real number, got"):
        v.check_real("x", value)


def test_check_real_ranges_and_infinity():
    assert v.check_real("x", 0.0, 0.0) == 0.0
    with pytest.raises(ValueError, match=r"^x must be a finite real number > 0, got 0.0"):
        v.check_real("x", 0.0, 0.0, strict_min=True)
    assert v.check_real("x", 1.0, 0.0, 1.0) == 1.0
    with pytest.raises(ValueError, match=r"^x must be a finite real number in \[0, 1\), got 1.0"):
        v.check_real("x", 1.0, 0.0, 1.0, strict_max=True)
    with pytest.raises(ValueError, match=r"^x must be a finite real number <= 1, got 1.5"):
        v.check_real("x", 1.5, maximum=1.0)
    with pytest.raises(ValueError, match=r"^x must be a finite real number in \(0, 1\], got -0.1"):
        v.check_real("x", -0.1, 0.0, 1.0, strict_min=True)
    assert v.check_real("x", math.inf, 0.0, allow_inf=True) == math.inf
    with pytest.raises(ValueError, match=r"^x must be a real number >= 0, got -inf"):
        v.check_real("x", -math.inf, 0.0, allow_inf=True)
    with pytest.raises(ValueError, match=r"^x must be a real number"):
        v.check_real("x", math.nan, allow_inf=True)  # nan is never a number here
    with pytest.raises(ValueError, match=r"^x must be a finite real number"):
        v.check_real("x", 10**400)  # overflows float: infinite


def test_check_positive_refuses_strings():
    assert v.check_positive("D", 128) == 128.0
    for bad in ("128", True, 0, -1.0, math.nan, math.inf, None):
        with pytest.raises(ValueError, match=r"^D must be a finite real number > 0"):
            v.check_positive("D", bad)


# ------------------------------------------------------------------ dtypes, devices
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_check_float_dtype_accepts_floating(dtype):
    assert v.check_float_dtype("dtype", dtype) is dtype


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.complex64, torch.uint8, "float32",
                                   np.float32, float, 3])
def test_check_float_dtype_refuses(dtype):
    with pytest.raises(ValueError, match=r"^dtype must be a floating dtype \(torch.float16, torch.bfloat16"):
        v.check_float_dtype("dtype", dtype)


def test_check_float_dtype_passes_none_through():
    assert v.check_float_dtype("dtype", None) is None


@pytest.mark.parametrize("device", [None, "cpu", torch.device("cpu")])
def test_check_device_accepts(device):
    out = v.check_device("device", device)
    assert out == (None if device is None else torch.device("cpu"))


@pytest.mark.parametrize("device, match", [
    ("meta", "holds data.*'meta'"), (torch.device("meta"), "'meta'"), ("nonsense", "device string"),
    (True, "device string"), (1.5, "device string"),
])
def test_check_device_refuses(device, match):
    with pytest.raises(ValueError, match=r"^device .*" + match):
        v.check_device("device", device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_check_device_refuses_cuda_without_cuda():
    with pytest.raises(ValueError, match=r"^device='cuda': CUDA is not available"):
        v.check_device("device", "cuda")


# --------------------------------------------------------------------- unknown_choice
def test_unknown_choice_suggests_the_closest():
    err = v.unknown_choice("grid", "karas", ["uniform", "karras", "log_sigma"])
    assert isinstance(err, ValueError)
    assert str(err) == "grid must be one of ['uniform', 'karras', 'log_sigma'], got 'karas'; did you mean 'karras'?"
    assert str(v.unknown_choice("grid", "Karras", ["karras"])).endswith("did you mean 'karras'?")


def test_unknown_choice_without_a_close_match():
    assert str(v.unknown_choice("grid", "zzzz", ["uniform", "karras"])) == \
        "grid must be one of ['uniform', 'karras'], got 'zzzz'"
    assert str(v.unknown_choice("solver", 3, ["euler"])) == "solver must be one of ['euler'], got 3"


# ----------------------------------------------------------------- check_time_range
def test_time_slack_sized_by_the_dtype():
    lo, hi = 0.002, 80.0
    below32 = torch.tensor(lo * (1 - 5e-7), dtype=torch.float32)  # float32 behaviour kept: 1e-6
    v.check_time_range("t", below32, lo, hi)
    with pytest.raises(ValueError, match=r"^t must lie in \[0.002, 80.0\]"):
        v.check_time_range("t", torch.tensor(lo * (1 - 5e-6), dtype=torch.float32), lo, hi)
    # bfloat16 (eps 2^-7) and float16 (eps 2^-10): one unit of their precision
    t_bf16 = torch.tensor(lo, dtype=torch.bfloat16)
    assert 1 - float(t_bf16) / lo > 5e-4  # rounds out by far more than float32's slack
    v.check_time_range("t", t_bf16, lo, hi)
    with pytest.raises(ValueError, match=r"^t must lie in"):
        v.check_time_range("t", t_bf16.to(torch.float32), lo, hi)  # the same value in float32: outside
    with pytest.raises(ValueError, match=r"^t must lie in"):
        v.check_time_range("t", torch.tensor(lo * (1 - 0.02), dtype=F64).to(torch.bfloat16), lo, hi)
    v.check_time_range("t", torch.tensor(hi * (1 + 9e-4), dtype=F64).to(torch.float16), lo, hi)
    with pytest.raises(ValueError, match=r"^t must lie in"):
        v.check_time_range("t", torch.tensor(hi * (1 + 4e-3), dtype=F64).to(torch.float16), lo, hi)
    # a float64 time (or a Python float) clearly outside is refused
    for bad in (lo * (1 - 1e-4), torch.tensor(lo * (1 - 1e-4), dtype=F64), torch.tensor([hi * (1 + 1e-5)], dtype=F64)):
        with pytest.raises(ValueError, match=r"^t must lie in"):
            v.check_time_range("t", bad, lo, hi)


@pytest.mark.parametrize("t, match", [
    ("0.5", "real number"), (None, "real number"), (1j, "real number"), (torch.tensor([0.5j]), "real"),
    (torch.tensor([True]), "real"), (torch.zeros(2, device="meta"), "meta"), (math.nan, "finite"),
])
def test_time_range_refuses_non_times(t, match):
    with pytest.raises(ValueError, match=r"^t .*" + match):
        v.check_time_range("t", t, 0.0, 1.0)


def test_bfloat16_t_min_accepted_by_processes():
    for p in (fs.EDM(), fs.VP(), fs.PFGMPP(D=16.0), fs.Poisson()):
        t = torch.tensor(p.t_min, dtype=torch.bfloat16)
        assert float(t) != p.t_min  # it does round off the span's end
        p.sigma(t)
        p.perturb(torch.zeros(1, 2, dtype=torch.bfloat16), t)


# -------------------------------------------------------------- schedule validation
def test_named_processes_with_default_parameters_pass():
    for make in (fs.VE, fs.VP, fs.SubVP, fs.EDM, fs.PFGMPP, fs.Poisson):
        make()._check_schedules()


def test_vp_with_overflowing_sigma_refused():
    # L(t) = 2500 t^2 + 0.05 t; sigma = sqrt(expm1(2 L)) overflows once 2 L > log(DBL_MAX) = 709.78
    i = next(i for i in range(SCHEDULE_CHECK_POINTS) if 2 * (2499.975 * _grid_time(i, 1e-3) ** 2
                                                              + 0.05 * _grid_time(i, 1e-3)) > 709.78)
    with pytest.raises(ValueError, match=r"^sigma\(t\) must be finite, but it overflows to inf; "
                                         r"VP\(beta_min=0.1, beta_max=10000.0, .*\) fails at t = "
                                         + str(_grid_time(i, 1e-3)).replace(".", r"\.") + ","):
        fs.VP(beta_max=1e4)
    fs.VP(beta_max=1e3)  # sigma(1) = e^250: large, but finite


def test_subvp_with_overflowing_sigma_refused():
    # s = exp(-L) and sigma = 2 sinh(L): 1/s overflows (L > 709.78) just before sigma (L > 710.48)
    with pytest.raises(ValueError, match=r"^scale\(t\) must be positive and finite.*SubVP\(beta_min=0.1, beta_max=10000.0"):
        fs.SubVP(beta_max=1e4)
    fs.SubVP(beta_max=1e3)


@pytest.mark.parametrize("sigma, first_bad, match", [
    (lambda t: torch.exp(800 * t), next(i for i in range(SCHEDULE_CHECK_POINTS) if 800 * _grid_time(i) > 709.78),
     r"sigma\(t\) must be finite, but it overflows to inf"),
    (lambda t: t, 0, r"sigma\(t\) must be > 0"),  # sigma(t_min) = 0: the data itself
    (lambda t: t - 0.5, 0, r"sigma\(t\) must be > 0"),
    (lambda t: 2.0 - t, 1, r"sigma\(t\) must be strictly increasing"),
    (lambda t: 1.0 + 0.0 * t, 1, r"sigma\(t\) must be strictly increasing"),
    (lambda t: 1.0 + (t - 0.5) ** 2, 1, r"sigma\(t\) must be strictly increasing"),
    (lambda t: 1.0 + t - 2.0 * torch.relu(t - 0.75), 769, r"sigma\(t\) must be strictly increasing"),
    (lambda t: torch.where(t < 0.25, 1.0 + t, math.nan), 256, r"sigma\(t\) must be finite, but it is nan"),
    (lambda t: 1.0 + 1e-20 * t, 1, r"sigma\(t\) must be strictly increasing in t \(in float64\)"),
])
def test_diffusion_sigma_validation_names_the_first_bad_time(sigma, first_bad, match):
    with pytest.raises(ValueError) as info:
        fs.Diffusion(sigma=sigma)
    msg = str(info.value)
    assert re.match(match, msg), msg
    assert f"fails at t = {_grid_time(first_bad)!r}," in msg
    assert "Diffusion(sigma=<lambda>, t_min=0.0, t_max=1.0)" in msg


@pytest.mark.parametrize("scale, first_bad", [
    (lambda t: 1.0 - t, SCHEDULE_CHECK_POINTS - 1),  # s(t_max) = 0
    (lambda t: 0.5 - t, 512),  # s(0.5) = 0
    # exp(-800 t) is positive until 800 t > 745, but 1/s overflows once 800 t > log(DBL_MAX) = 709.78
    (lambda t: torch.exp(-800 * t), next(i for i in range(SCHEDULE_CHECK_POINTS) if 800 * _grid_time(i) > 709.79)),
    (lambda t: torch.where(t < 0.5, 1.0, math.inf), 512),
    (lambda t: 1e-310 + 0.0 * t, 0),  # positive, but 1/s overflows
])
def test_diffusion_scale_validation_names_the_first_bad_time(scale, first_bad):
    with pytest.raises(ValueError, match=r"^scale\(t\) must be positive and finite") as info:
        fs.Diffusion(scale=scale, sigma=lambda t: 1.0 + t)
    assert f"fails at t = {_grid_time(first_bad)!r}," in str(info.value)


def test_noise_std_overflow_refused():
    first = next(i for i in range(SCHEDULE_CHECK_POINTS) if math.isinf(1e200 * (1e100 + 1e109 * _grid_time(i))))
    with pytest.raises(ValueError, match=r"^scale\(t\) \* sigma\(t\), the noise std of x_t, must be finite") as info:
        fs.Diffusion(scale=lambda t: 1e200 + 0.0 * t, sigma=lambda t: 1e100 + 1e109 * t)
    assert f"fails at t = {_grid_time(first)!r}," in str(info.value) and 0 < first < SCHEDULE_CHECK_POINTS - 1
    fs.Diffusion(scale=lambda t: 1e200 + 0.0 * t, sigma=lambda t: 1e100 + 1e107 * t)


def test_earliest_problem_is_reported():
    # scale goes bad at t = 0.75, sigma stops increasing at t = 0.5: sigma is named
    with pytest.raises(ValueError, match=r"^sigma\(t\) must be strictly increasing.*t = 0\.5009765625,"):
        fs.Diffusion(scale=lambda t: 0.75 - t + 1e-9, sigma=lambda t: 1.0 + torch.clamp(t, max=0.5))


def test_linear_sde_and_subclass_validation():
    with pytest.raises(ValueError, match=r"^g\(t\) must be > 0"):
        fs.LinearSDE(f=lambda t: 0.0 * t, g=lambda t: 0.0 * t, t_min=0.1, t_max=1.0)
    with pytest.raises(ValueError, match=r"^could not integrate f and g on \[0.0, 1.0\]"):
        fs.LinearSDE(f=lambda t: -400.0 + 0.0 * t, g=lambda t: 1.0 + 0.0 * t, t_min=0.1, t_max=1.0)
    fs.LinearSDE(f=lambda t: -300.0 + 0.0 * t, g=lambda t: 1.0 + 0.0 * t, t_min=0.1, t_max=1.0)

    class Stalling(fs.EDM):
        def _sigma(self, t):
            return torch.clamp(t, max=40.0)

    with pytest.raises(ValueError, match=r"^sigma\(t\) must be strictly increasing.*Stalling\(sigma_min=0.002"):
        Stalling()


def test_time_span_arguments():
    for bad in ("0", None, math.nan, math.inf, True):
        with pytest.raises(ValueError, match=r"^t_min must be a finite real number"):
            fs.Diffusion(sigma=lambda t: 1.0 + t, t_min=bad)
        with pytest.raises(ValueError, match=r"^t_min must be a finite real number"):
            fs.SDE(lambda x, t: x, lambda t: 1.0, t_min=bad)
    with pytest.raises(ValueError, match=r"^t0 must be a finite real number"):
        fs.LinearSDE(f=lambda t: 0.0 * t, g=lambda t: 1.0 + 0.0 * t, t_min=0.1, t_max=1.0, t0="0")
    with pytest.raises(ValueError, match=r"^scale_derivative must be a callable"):
        fs.Diffusion(sigma=lambda t: 1.0 + t, scale_derivative=2.0)


# ------------------------------------------------------------------------------- D
@pytest.mark.parametrize("D", ["128", b"128", True, None, 1j, [128]])
def test_D_must_be_a_real_number(D):
    with pytest.raises(ValueError, match=r"^D must be a real number > 0, got"):
        fs.PFGMPP(D=D)


@pytest.mark.parametrize("D", [1e308, 1e16, D_MAX * (1 + 1e-12), math.inf])
def test_D_above_the_bound_refused_with_the_reason(D):
    for make in (lambda: fs.PFGMPP(D=D), lambda: StudentTKernel(D)):
        with pytest.raises(ValueError, match=r"^D must be a real number in \(0, 1e15\].*float64 precision.*fs\.EDM"):
            make()


def test_D_at_the_bound_works_everywhere(gen):
    """At D = 1e15 sampling, densities, the radius and the prior are finite, and the kernel is
    the Gaussian one to ~1e-12 (the Student-t correction is ~N^2/D)."""
    p, edm = fs.PFGMPP(D=D_MAX), fs.EDM()
    x = torch.tensor([[0.3, -2.0, 0.1], [5.0, 1.0, -7.0]], dtype=F64)
    y = torch.zeros(3, dtype=F64)
    torch.testing.assert_close(p.kernel_log_prob(x, y, 1.7), edm.kernel_log_prob(x, y, 1.7), rtol=0, atol=1e-11)
    torch.testing.assert_close(p.prior_log_prob(x), edm.prior_log_prob(x), rtol=0, atol=1e-11)
    assert torch.isfinite(p.perturb(torch.zeros(1000, 3), 80.0, generator=gen)).all()
    prior = p.prior_sample(2000, 3, generator=gen, dtype=F64)
    assert torch.isfinite(prior).all() and abs(float(prior.std()) / 80.0 - 1) < 0.05
    assert float(p.r(2.0)) == pytest.approx(2.0 * math.sqrt(D_MAX)) and float(p.t_of_r(p.r(2.0))) == pytest.approx(2.0)


# --------------------------------------------------------------------- kernel I/O
PROCS = [fs.VP(), fs.EDM(), fs.PFGMPP(D=4.0)]


@pytest.mark.parametrize("process", PROCS, ids=repr)
def test_prior_sample_bad_arguments(process):
    for dtype in (torch.int32, torch.bool, torch.complex64, "float32"):
        with pytest.raises(ValueError, match=r"^dtype must be a floating dtype"):
            process.prior_sample(3, 2, dtype=dtype)
    with pytest.raises(ValueError, match=r"^device must be a device that holds data"):
        process.prior_sample(3, 2, device="meta")
    for shape in (0, (3, 0), "3", 2.5, (2, 2.5), None, True, -1):
        with pytest.raises(ValueError, match=r"^shape must be an int >= 1 \(the data dimension\) or a tuple"):
            process.prior_sample(3, shape)
    for n in (True, -1, 2.5, "3"):
        with pytest.raises(ValueError, match=r"^n must be an integer in \[0, inf\)"):
            process.prior_sample(n, 2)
    assert process.prior_sample(3, (2,), dtype=torch.bfloat16, device="cpu").dtype == torch.bfloat16


@pytest.mark.parametrize("process", PROCS, ids=repr)
def test_time_shape_must_be_one_per_sample(process):
    tm = 0.5 * (process.t_min + process.t_max)
    x = torch.zeros(4, 3, 2, dtype=F64)
    for t in (torch.full((3,), tm, dtype=F64), torch.full((4, 3), tm, dtype=F64), torch.full((4, 1), tm, dtype=F64)):
        with pytest.raises(ValueError, match=r"^t must be a float, a 0-d tensor or a tensor of shape \(n,\) = \(4,\)"):
            process.perturb(x, t)
        with pytest.raises(ValueError, match=r"^t must be a float, a 0-d tensor or a tensor of shape \(n,\)"):
            process.kernel_log_prob(x, x, t)
    assert process.perturb(x, torch.full((4,), tm, dtype=F64)).shape == (4, 3, 2)


@pytest.mark.parametrize("process", PROCS, ids=repr)
def test_kernel_inputs_must_be_floating_batches(process):
    tm = 0.5 * (process.t_min + process.t_max)
    for bad in (torch.tensor(1.0), torch.zeros(3, 2, dtype=torch.long), [[1.0, 2.0]], None):
        with pytest.raises(ValueError, match=r"^x0 must be a floating tensor of shape \(n, \*event_shape\)"):
            process.perturb(bad, tm)
        with pytest.raises(ValueError, match=r"^x must be a floating tensor of shape \(n, \*event_shape\)"):
            process.kernel_log_prob(bad, torch.zeros(2), tm)
        with pytest.raises(ValueError, match=r"^x must be a floating tensor of shape \(n, \*event_shape\)"):
            process.prior_log_prob(bad)
    x = torch.zeros(4, 3, 2, dtype=F64)
    for y in (torch.zeros(4, 3, 3, dtype=F64), torch.zeros(5, 3, 2, dtype=F64), torch.zeros(2, 4, 3, 2, dtype=F64)):
        with pytest.raises(ValueError, match=r"^y of shape .* does not broadcast to x's shape \(4, 3, 2\)"):
            process.kernel_log_prob(x, y, tm)
    with pytest.raises(ValueError, match=r"^y must be a tensor"):
        process.kernel_log_prob(x, [0.0, 0.0], tm)
    assert process.kernel_log_prob(x, torch.zeros(3, 1, dtype=F64), tm).shape == (4,)


def test_require_canonical_lives_with_the_processes():
    from flowsolve.processes import require_canonical
    from flowsolve.processes.base import require_canonical as in_base
    import flowsolve.processes.sde as sde_module

    assert require_canonical is in_base and not hasattr(sde_module, "require_canonical")  # one place
    require_canonical(fs.EDM(), "this")
    with pytest.raises(ValueError, match=r"^this needs a canonical process .* got SDE"):
        require_canonical(fs.SDE(lambda x, t: -x, lambda t: 1.0), "this")
