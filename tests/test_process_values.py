"""Processes as values, user subclasses, and shapes ``(n, *event_shape)``.

Reference values are computed here from the DESIGN table and from SciPy's laws, not from
flowsolve's own schedules.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import flowsolve as fs
from flowsolve.processes import GaussianKernel, StudentTKernel
from flowsolve.processes.base import Process

F64 = torch.float64
FP16_MAX = 65504.0
# KS tests below use p > 1e-4: each false-alarms with probability 1e-4 (fixed seeds make
# the runs deterministic; the rate is what a new seed would risk).
KS_ALPHA = 1e-4


def named():
    return [fs.VE(), fs.VE(sigma_min=0.002, sigma_max=380.0), fs.VP(), fs.VP(beta_min=1.0, beta_max=1.0),
            fs.SubVP(), fs.EDM(), fs.EDM(sigma_min=0.01, sigma_max=10.0), fs.PFGMPP(D=128), fs.PFGMPP(D=2.5),
            fs.Poisson()]


# ------------------------------------------------------------------------------- equality
def test_named_processes_compare_by_value():
    assert fs.EDM() == fs.EDM() and hash(fs.EDM()) == hash(fs.EDM())
    assert fs.Poisson() == fs.Poisson() and hash(fs.Poisson()) == hash(fs.Poisson())
    assert fs.PFGMPP(D=128) == fs.PFGMPP(D=128.0) and hash(fs.PFGMPP(D=128)) == hash(fs.PFGMPP(D=128.0))
    assert fs.PFGMPP(D=128) != fs.PFGMPP(D=64)
    assert fs.VP() != fs.SubVP()  # same parameters, another process
    assert fs.VP() == fs.VP(beta_min=0.1, beta_max=20.0, t_min=1e-3, t_max=1)
    assert fs.VP(beta_max=10.0) != fs.VP()
    assert fs.VP(t_min=1e-5) != fs.VP()
    assert fs.VE(sigma_max=50) == fs.VE() and fs.VE(sigma_max=60.0) != fs.VE()
    assert fs.EDM(sigma_max=79.0) != fs.EDM()
    assert fs.EDM() != fs.PFGMPP(D=1e15)  # D = 1e15 is EDM to float64 precision, but not the same object
    assert fs.EDM() != fs.VE() and fs.EDM() != "EDM" and fs.EDM() is not None
    # PFGM is PFGM++ with D = 1: the same process, whichever class made it
    assert fs.Poisson() == fs.PFGMPP(D=1) and hash(fs.Poisson()) == hash(fs.PFGMPP(D=1))
    assert fs.Poisson(sigma_max=10.0) != fs.PFGMPP(D=1)
    for a, b in zip(named(), named()):
        assert a is not b and a == b and hash(a) == hash(b) and not (a != b)


def test_processes_in_sets_and_dicts():
    procs = [fs.EDM(), fs.EDM(), fs.VP(), fs.VP(), fs.SubVP(), fs.PFGMPP(D=128), fs.PFGMPP(D=128),
             fs.PFGMPP(D=64), fs.Poisson(), fs.PFGMPP(D=1)]
    assert len(set(procs)) == 6
    table = {fs.EDM(): "edm", fs.PFGMPP(D=128): "pf128", fs.VP(): "vp"}
    assert table[fs.EDM()] == "edm" and table[fs.PFGMPP(D=128.0)] == "pf128" and table[fs.VP()] == "vp"
    assert fs.PFGMPP(D=64) not in table and fs.SubVP() not in table


def test_kernels_compare_by_value():
    assert GaussianKernel() == GaussianKernel() and hash(GaussianKernel()) == hash(GaussianKernel())
    assert StudentTKernel(3) == StudentTKernel(3.0) and hash(StudentTKernel(3)) == hash(StudentTKernel(3.0))
    assert StudentTKernel(3) != StudentTKernel(4) and StudentTKernel(3) != GaussianKernel()
    assert fs.PFGMPP(D=3).kernel == StudentTKernel(3) and fs.VP().kernel == fs.EDM().kernel
    assert len({StudentTKernel(2), StudentTKernel(2.0), StudentTKernel(5), GaussianKernel()}) == 3


def _sigma_a(t):
    return 0.1 + t**2


def _sigma_b(t):  # the same formula, another object
    return 0.1 + t**2


def test_composed_processes_compare_callables_by_identity():
    a = fs.Diffusion(sigma=_sigma_a, t_min=0.0, t_max=2.0)
    assert a == fs.Diffusion(sigma=_sigma_a, t_min=0.0, t_max=2.0)
    assert hash(a) == hash(fs.Diffusion(sigma=_sigma_a, t_min=0.0, t_max=2.0))
    assert a != fs.Diffusion(sigma=_sigma_b, t_min=0.0, t_max=2.0)
    assert a != fs.Diffusion(sigma=_sigma_a, t_min=0.0, t_max=1.0)
    assert a != fs.Diffusion(scale=torch.exp, sigma=_sigma_a, t_min=0.0, t_max=2.0)
    assert len({a, fs.Diffusion(sigma=_sigma_a, t_min=0.0, t_max=2.0), fs.Diffusion(sigma=_sigma_b, t_max=2.0)}) == 2


def test_linear_sde_compares_by_callables_not_by_its_solution():
    f, g = (lambda t: -0.5 * t), (lambda t: 1.0 + 0.0 * t)
    a = fs.LinearSDE(f=f, g=g, t_min=0.05, t_max=1.0)
    b = fs.LinearSDE(f=f, g=g, t_min=0.05, t_max=1.0)
    assert a._dense is not b._dense  # derived state, solved twice
    assert a == b and hash(a) == hash(b)
    assert a != fs.LinearSDE(f=lambda t: -0.5 * t, g=g, t_min=0.05, t_max=1.0)
    assert a != fs.LinearSDE(f=f, g=g, t_min=0.05, t_max=1.0, t0=-0.1)
    assert a != fs.Diffusion(sigma=_sigma_a)


def test_general_sde_compares_by_callables():
    drift, diffusion = (lambda x, t: -x), (lambda t: 1.0)
    a = fs.SDE(drift, diffusion)
    assert a == fs.SDE(drift, diffusion) and hash(a) == hash(fs.SDE(drift, diffusion))
    assert a != fs.SDE(drift, lambda t: 1.0) and a != fs.SDE(drift, diffusion, t_max=2.0)


@pytest.mark.parametrize("process", named() + [fs.VP(beta_min=0.5, beta_max=10.0, t_min=1e-4, t_max=0.9)], ids=repr)
def test_repr_of_named_processes_can_be_pasted(process):
    rebuilt = eval(repr(process), {"VE": fs.VE, "VP": fs.VP, "SubVP": fs.SubVP, "EDM": fs.EDM, "PFGMPP": fs.PFGMPP,
                                   "Poisson": fs.Poisson})
    assert rebuilt == process and type(rebuilt) is type(process)


def test_repr_of_composed_processes_names_the_callables():
    assert repr(fs.Diffusion(sigma=_sigma_a)) == "Diffusion(sigma=_sigma_a, t_min=0.0, t_max=1.0)"
    lin = repr(fs.LinearSDE(f=_sigma_a, g=_sigma_b, t_min=0.5, t_max=1.0))
    assert lin == "LinearSDE(f=_sigma_a, g=_sigma_b, t_min=0.5, t_max=1.0, t0=0.0)"


# ------------------------------------------------------------------------- user subclasses
class Cosine(fs.Diffusion):
    """The cosine schedule (Nichol & Dhariwal 2021) as a user would write it."""

    def __init__(self, s=0.008):
        self.s = s
        super().__init__(t_min=1e-3, t_max=0.99)

    def _alpha(self, t):
        return torch.cos(0.5 * math.pi * (t + self.s) / (1 + self.s))

    def _scale(self, t):
        return self._alpha(t)

    def _sigma(self, t):
        return torch.sqrt(1 - self._alpha(t) ** 2) / self._alpha(t)


def _cos_alpha(t, s=0.008):
    return np.cos(0.5 * np.pi * (t + s) / (1 + s))


def test_diffusion_subclass_end_to_end(gen):
    p = Cosine()
    t = np.linspace(1e-3, 0.99, 9)
    alpha = _cos_alpha(t)
    tt = torch.tensor(t)
    np.testing.assert_allclose(p.scale(tt).numpy(), alpha, rtol=1e-13)
    np.testing.assert_allclose(p.sigma(tt).numpy(), np.sqrt(1 - alpha**2) / alpha, rtol=1e-12)
    torch.testing.assert_close(p.t_of_sigma(p.sigma(tt)), tt, rtol=1e-10, atol=1e-12)  # bisection
    # forward SDE from the generic formulas: f = s'/s, g = s sqrt(2 sigma sigma')
    c = 0.5 * np.pi / (1 + 0.008)
    f = -c * np.tan(c * (t + 0.008))
    np.testing.assert_allclose(p.drift_coefficient(tt).numpy(), f, rtol=1e-10)
    sig, dsig = np.tan(c * (t + 0.008)), c / alpha**2  # sigma = sqrt(1 - alpha^2) / alpha = tan(c (t + s))
    np.testing.assert_allclose(p.diffusion(tt).numpy(), alpha * np.sqrt(2 * sig * dsig), rtol=1e-9)
    # kernel, prior, grids, values
    x = p.perturb(torch.zeros(20_000, 2, 3, dtype=F64), 0.5, generator=gen)
    s5, sig5 = _cos_alpha(0.5), math.sqrt(1 - _cos_alpha(0.5) ** 2) / _cos_alpha(0.5)
    assert abs(float(x.std()) / (s5 * sig5) - 1) < 0.02
    assert p.prior_sample(4, (2, 3), generator=gen).shape == (4, 2, 3)
    assert p.prior_std == pytest.approx(math.sqrt(1 - _cos_alpha(0.99) ** 2), rel=1e-12)
    grid = fs.make_grid(p, "karras", 10)
    assert float(grid[0]) == 0.99 and float(grid[-1]) == 1e-3 and bool((grid[1:] < grid[:-1]).all())
    assert p == Cosine() and hash(p) == hash(Cosine()) and p != Cosine(s=0.01) and p != fs.VP()
    assert repr(p) == "Cosine(t_min=0.001, t_max=0.99)"


class DoubledVP(fs.VP):
    """VP with sigma doubled: VP's closed-form inverse and derivatives no longer apply."""

    def _sigma(self, t):
        return 2.0 * torch.sqrt(torch.expm1(2.0 * self._L(t)))


def _vp_sigma(t, bmin=0.1, bmax=20.0):
    return np.sqrt(np.expm1(2.0 * ((bmax - bmin) / 4.0 * t * t + bmin / 2.0 * t)))


def test_vp_subclass_overriding_sigma(gen):
    p = DoubledVP()
    t = torch.linspace(1e-3, 1.0, 11, dtype=F64)
    np.testing.assert_allclose(p.sigma(t).numpy(), 2 * _vp_sigma(t.numpy()), rtol=1e-13)
    # the inherited closed forms were written for VP's sigma: the generic ones replace them
    torch.testing.assert_close(p.t_of_sigma(p.sigma(t)), t, rtol=1e-10, atol=1e-12)
    h = 1e-6
    fd = (2 * _vp_sigma(t.numpy()[1:-1] + h) - 2 * _vp_sigma(t.numpy()[1:-1] - h)) / (2 * h)
    np.testing.assert_allclose(p.sigma_derivative(t[1:-1]).numpy(), fd, rtol=1e-6)
    s = p.scale(t)
    expected_g = s * torch.sqrt(2 * p.sigma(t) * p.sigma_derivative(t))
    torch.testing.assert_close(p.diffusion(t), expected_g, rtol=1e-12, atol=0)
    assert not torch.allclose(p.diffusion(t), fs.VP().diffusion(t))
    x = p.perturb(torch.zeros(20_000, 3, dtype=F64), 0.5, generator=gen)
    assert abs(float(x.std()) / float(p.scale(0.5) * p.sigma(0.5)) - 1) < 0.02
    assert p.prior_sample(3, 4).shape == (3, 4) and p.prior_std == pytest.approx(2 * fs.VP().prior_std)
    assert p == DoubledVP() and p != fs.VP()


class ShiftedEDM(fs.EDM):
    """EDM with sigma(t) = t + c and a parameter of its own."""

    def __init__(self, c=0.5, **kw):
        self.c = c
        super().__init__(**kw)

    def _sigma(self, t):
        return t + self.c


def test_edm_subclass_with_a_parameter():
    p = ShiftedEDM(sigma_min=0.01, sigma_max=5.0)
    t = torch.tensor([0.01, 1.0, 5.0], dtype=F64)
    assert p.sigma(t).tolist() == [0.51, 1.5, 5.5]
    torch.testing.assert_close(p.t_of_sigma(torch.tensor([0.51, 2.0, 5.5], dtype=F64)),
                               torch.tensor([0.01, 1.5, 5.0], dtype=F64), rtol=1e-12, atol=1e-14)
    assert p.sigma_min == pytest.approx(0.51) and p.sigma_derivative(1.0) == pytest.approx(1.0)
    x0 = torch.zeros(4, 2, 2, dtype=F64)
    assert p.perturb(x0, torch.tensor([0.01, 1.0, 2.0, 5.0], dtype=F64)).shape == (4, 2, 2)
    assert p.prior_std == pytest.approx(5.5)
    assert p == ShiftedEDM(sigma_min=0.01, sigma_max=5.0) and p != ShiftedEDM(c=0.6, sigma_min=0.01, sigma_max=5.0)
    assert p != fs.EDM(sigma_min=0.01, sigma_max=5.0)


class SquaredPFGMPP(fs.PFGMPP):
    """PFGM++ with sigma(t) = t^2 on t in [sigma_min, sigma_max]."""

    def _sigma(self, t):
        return t * t


def test_pfgmpp_subclass_end_to_end(gen):
    D = 6.0
    p = SquaredPFGMPP(D=D, sigma_min=0.1, sigma_max=3.0)
    assert p.sigma_min == pytest.approx(0.01) and p.sigma_max == pytest.approx(9.0)
    assert float(p.t_of_sigma(4.0)) == pytest.approx(2.0, rel=1e-12)
    assert float(p.r(2.0)) == pytest.approx(4.0 * math.sqrt(D))
    assert float(p.t_of_r(4.0 * math.sqrt(D))) == pytest.approx(2.0, rel=1e-12)
    # the kernel at t = 2 has sigma = 4: ||x - y||^2 / (D sigma^2) ~ Beta-prime(N/2, D/2)
    x = p.perturb(torch.zeros(20_000, 3, dtype=F64), 2.0, generator=gen)
    ratio = (x**2).sum(-1) / (D * 16.0)
    assert stats.kstest(ratio.numpy(), stats.betaprime(1.5, D / 2).cdf).pvalue > KS_ALPHA
    prior = p.prior_sample(20_000, 3, generator=gen, dtype=F64)
    assert stats.kstest(((prior**2).sum(-1) / (D * 81.0)).numpy(), stats.betaprime(1.5, D / 2).cdf).pvalue > KS_ALPHA
    assert p == SquaredPFGMPP(D=D, sigma_min=0.1, sigma_max=3.0) and p != fs.PFGMPP(D=D, sigma_min=0.1, sigma_max=3.0)


class NoSigma(fs.Diffusion):
    def __init__(self):
        super().__init__(t_min=0.0, t_max=1.0)


class BadSigma(fs.Diffusion):
    """sigma stops increasing at t = 0.5."""

    def __init__(self):
        super().__init__(t_min=0.0, t_max=1.0)

    def _sigma(self, t):
        return 0.1 + torch.clamp(t, max=0.5)


class NoInit(fs.Diffusion):
    def __init__(self):
        pass

    def _sigma(self, t):
        return 1.0 + t


class Float32Sigma(fs.Diffusion):
    def __init__(self):
        super().__init__()

    def _sigma(self, t):
        return (1.0 + t).float()


class SigmaTwice(fs.Diffusion):
    def __init__(self):
        super().__init__(sigma=lambda t: 1.0 + t)

    def _sigma(self, t):
        return 1.0 + t


def test_invalid_subclasses_refused():
    with pytest.raises(ValueError, match=r"NoSigma needs a noise schedule: pass sigma="):
        NoSigma()
    # the first grid time after 0.5 on the 1025-point check grid of [0, 1] is 0.5 + 1/1024
    with pytest.raises(ValueError, match=r"sigma\(t\) must be strictly increasing.*BadSigma.*t = 0\.5009765625,"):
        BadSigma()
    with pytest.raises(ValueError, match=r"NoInit.__init__ must call super\(\).__init__"):
        NoInit()
    with pytest.raises(ValueError, match=r"Float32Sigma._sigma\(t\) must return a float64 tensor"):
        Float32Sigma()
    with pytest.raises(ValueError, match=r"SigmaTwice overrides _sigma\(t\): do not also pass sigma="):
        SigmaTwice()
    with pytest.raises(ValueError, match=r"Process does not define sigma\(t\)"):
        Process(0.0, 1.0)

    class Raw(Process):
        def _sigma(self, t):
            return 1.0 + t

    with pytest.raises(ValueError, match=r"^Raw has no kernel: subclass Diffusion"):
        Raw(0.0, 1.0)

    class RawGaussian(Raw):
        kernel = GaussianKernel()

    assert RawGaussian(0.0, 1.0).perturb(torch.zeros(2, 3), 0.5).shape == (2, 3)


# ------------------------------------------------------------------------------- shapes
IMAGE = (3, 4, 4)  # N = 48


@pytest.mark.parametrize("process", [fs.VP(), fs.EDM(), fs.VE()], ids=repr)
def test_perturb_image_gaussian_moments_per_sample(process, gen):
    """x0 of shape (n, 3, 4, 4), one time per sample: (x_t - s x0) / (s sigma) is N(0, I) per element."""
    n = 4000
    x0 = torch.randn(*IMAGE, generator=gen, dtype=F64).expand(n, *IMAGE)
    t = torch.linspace(process.t_min, process.t_max, n, dtype=F64)
    xt = process.perturb(x0, t, generator=gen)
    assert xt.shape == (n, *IMAGE) and xt.dtype == F64
    s, sig = process.scale(t).view(n, 1, 1, 1), process.sigma(t).view(n, 1, 1, 1)
    z = (xt - s * x0) / (s * sig)
    assert float(z.mean(0).abs().max()) < 5 / math.sqrt(n)  # per element, over samples
    assert float((z.var(0) - 1).abs().max()) < 5 * math.sqrt(2 / n)
    # and per sample, over its 48 elements: the squared norm is chi2(48)
    assert stats.kstest((z**2).flatten(1).sum(1).numpy(), stats.chi2(48).cdf).pvalue > KS_ALPHA


@pytest.mark.parametrize("D", [1.0, 5.0, 40.0])
def test_perturb_image_student_t_shares_u_across_the_event(D, gen):
    """PFGM++ on (n, 3, 4, 4): the kernel is over the whole event (N = 48), with one scale
    variable per sample, so ||x - y||^2 / (D sigma^2) ~ Beta-prime(N/2, D/2) with N = 48.
    (One u per element would give a sum of 48 independent t^2: far off this law.)"""
    p, sigma, n = fs.PFGMPP(D=D), 0.7, 4000
    y = torch.randn(*IMAGE, generator=gen, dtype=F64)
    x = p.perturb(y.expand(n, *IMAGE), sigma, generator=gen)
    ratio = ((x - y) ** 2).flatten(1).sum(1) / (D * sigma**2)
    assert stats.kstest(ratio.numpy(), stats.betaprime(24.0, D / 2).cdf).pvalue > KS_ALPHA
    # the direction is uniform: each element has the same spread
    z = (x - y) / ((x - y) ** 2).flatten(1).sum(1).sqrt().view(n, 1, 1, 1)
    assert float(((z**2).mean(0) * 48 - 1).abs().max()) < 0.2


@pytest.mark.parametrize("process", named() + [Cosine(), fs.LinearSDE(f=lambda t: -t, g=lambda t: 1 + t, t_min=0.1,
                                                                       t_max=1.0)], ids=repr)
def test_kernel_log_prob_on_images_equals_flattened(process, gen):
    n = 5
    x = torch.randn(n, *IMAGE, generator=gen, dtype=F64) * 3
    y = torch.randn(n, *IMAGE, generator=gen, dtype=F64)
    t = torch.linspace(process.t_min, process.t_max, n, dtype=F64)
    lp = process.kernel_log_prob(x, y, t)
    assert lp.shape == (n,)
    torch.testing.assert_close(lp, process.kernel_log_prob(x.flatten(1), y.flatten(1), t), rtol=1e-14, atol=0)
    # y broadcast over the batch equals y repeated
    torch.testing.assert_close(process.kernel_log_prob(x, y[0], t),
                               process.kernel_log_prob(x, y[0].expand_as(x).clone(), t), rtol=1e-14, atol=0)
    # the same density as SciPy's, for the Gaussian and the Student-t kernel over all 48 elements
    s, sig = process.scale(t), process.sigma(t)
    for i in range(n):
        d = ((x[i] / s[i] - y[i]) ** 2).sum().item()
        if math.isinf(process.kernel.D):
            ref = stats.multivariate_normal(np.zeros(48), float(sig[i]) ** 2 * np.eye(48)).logpdf(np.full(48, math.sqrt(d / 48)))
        else:
            ref = stats.multivariate_t(np.zeros(48), float(sig[i]) ** 2 * np.eye(48), df=process.kernel.D).logpdf(
                np.full(48, math.sqrt(d / 48)))
        assert float(lp[i]) == pytest.approx(ref - 48 * math.log(float(s[i])), rel=1e-10)


@pytest.mark.parametrize("process", [fs.VP(), fs.PFGMPP(D=3.0)], ids=repr)
def test_prior_sample_tuple_shape_is_the_flat_draw_reshaped(process):
    img = process.prior_sample(6, IMAGE, generator=torch.Generator().manual_seed(5), dtype=F64)
    flat = process.prior_sample(6, 48, generator=torch.Generator().manual_seed(5), dtype=F64)
    assert img.shape == (6, *IMAGE) and torch.equal(img.flatten(1), flat)
    assert process.prior_sample(6, [3, 4, 4], generator=torch.Generator().manual_seed(5), dtype=F64).shape == (6, 3, 4, 4)
    assert process.prior_sample(6, torch.Size(IMAGE)).shape == (6, 3, 4, 4)
    assert process.prior_sample(0, IMAGE).shape == (0, 3, 4, 4)
    assert process.prior_sample(6, ()).shape == (6,)
    lp = process.prior_log_prob(img)
    assert lp.shape == (6,)
    torch.testing.assert_close(lp, process.prior_log_prob(flat), rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [1.0, 0.5])
def test_low_precision_prior_of_heavy_tailed_pfgmpp(dtype, D):
    """The prior is drawn and scaled in float64 and cast once: finite wherever the float64
    draw fits the dtype (the product prior_std * noise never overflows on its own)."""
    p = fs.Poisson() if D == 1.0 else fs.PFGMPP(D=D)
    low = p.prior_sample(4000, 2, generator=torch.Generator().manual_seed(0), dtype=dtype)
    ref = p.prior_sample(4000, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    big = FP16_MAX if dtype == torch.float16 else float(torch.finfo(torch.bfloat16).max)
    fits = ref.abs() <= big
    assert low.dtype == dtype
    assert bool(torch.isfinite(low[fits]).all())
    assert torch.equal(low[fits], ref[fits].to(dtype))
    if dtype == torch.float16:
        assert bool((~fits).any()) and bool(fits.float().mean() > 0.9)  # heavy tail: both cases occur
    # casting the noise first and scaling in the low precision rounds twice: not the same numbers
    twice = p.prior_std * (ref / p.prior_std).to(dtype)
    assert not torch.equal(twice[fits], low[fits])


def test_low_precision_perturb_is_computed_in_float32(gen):
    p = fs.Poisson()
    x16 = p.perturb(torch.zeros(2000, 2, dtype=torch.float16), 80.0, generator=torch.Generator().manual_seed(1))
    x32 = p.perturb(torch.zeros(2000, 2, dtype=torch.float32), 80.0, generator=torch.Generator().manual_seed(1))
    fits = x32.abs() <= FP16_MAX
    assert x16.dtype == torch.float16 and torch.equal(x16[fits], x32[fits].half())


@pytest.mark.parametrize("process", [fs.VP(), fs.EDM(), fs.PFGMPP(D=4.0)], ids=repr)
def test_schedule_like_shapes(process):
    x = torch.zeros(5, *IMAGE, dtype=torch.float32)
    tm = 0.5 * (process.t_min + process.t_max)
    for t in (tm, torch.tensor(tm), torch.full((5,), tm), torch.full((1,), tm)):
        s, sig = process._schedule_like(t, x)
        assert s.shape == sig.shape == (5, 1, 1, 1) and s.dtype == sig.dtype == torch.float32
        assert float(sig[3]) == pytest.approx(float(process.sigma(tm)), rel=1e-6)
    s, sig = process._schedule_like(torch.full((5, 2), tm), torch.zeros(5, 2, 7), batch_ndim=2)
    assert s.shape == (5, 2, 1)


@pytest.mark.parametrize("process", named(), ids=repr)
def test_bfloat16_times_at_the_ends_are_accepted(process):
    """t_min and t_max rounded to bfloat16 may land up to 2^-9 (relative) outside the span."""
    ends = torch.tensor([process.t_min, process.t_max], dtype=F64)
    for dtype in (torch.bfloat16, torch.float16):
        t = ends.to(dtype)
        assert process.sigma(t).dtype == dtype
        process.perturb(torch.zeros(2, 3, dtype=dtype), t)
        process.kernel_log_prob(torch.zeros(2, 3, dtype=dtype), torch.zeros(3, dtype=dtype), t)


def test_bfloat16_time_really_rounds_outside():
    # the case that was refused: EDM's t_min = 0.002 rounds below itself in bfloat16
    t = torch.tensor(0.002, dtype=torch.bfloat16)
    assert float(t) < 0.002 and 0.002 - float(t) > 1e-6 * 0.002
    assert float(fs.EDM().sigma(t)) == float(t)
