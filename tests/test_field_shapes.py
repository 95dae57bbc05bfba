"""Fields and toy laws on states of any shape ``(n, *event_shape)``; network fields with extra
arguments; the solvers' fast path (``evaluate``, ``denoised_from``); output dtypes and low
precision.

References are independent of the code under test: flattened states (an image-shaped field
must give exactly the numbers of the flattened one), per-sample calls, direct calls of the
wrapped network, and the inverse conversions written out here from the module's equations
(rearranged, with the schedules from the process's public methods).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import flowsolve as fs
from flowsolve import toy
from flowsolve.fields import KINDS, Field
from flowsolve.toy.exact import MixtureField, exact_field

F64 = torch.float64
EVENT = (3, 4, 4)
N = math.prod(EVENT)


def gaussian_kinds(field):
    return ["denoiser", "eps", "score", "velocity"] + (["poisson_field"] if field.is_poisson else [])


def processes():
    return {"VP": fs.VP(), "EDM": fs.EDM(), "PFGMPP": fs.PFGMPP(D=16.0), "Poisson": fs.Poisson(sigma_max=10.0)}


def laws(event_shape=None):
    """Mixture (full covariances), Gaussian and empirical laws in N = 48 dimensions."""
    g = torch.Generator().manual_seed(0)
    return {
        "mixture": toy.random_mixture(N, 2, seed=1, event_shape=event_shape),
        "gaussian": toy.Gaussian(torch.randn(N, generator=g, dtype=F64), torch.rand(N, generator=g, dtype=F64) + 0.1,
                                 event_shape=event_shape),
        "empirical": toy.Empirical(torch.randn(5, N, generator=g, dtype=F64) * 2, event_shape=event_shape),
    }


def times(process, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g, dtype=F64)
    u[0], u[-1] = 0.0, 1.0
    return process.t_min + (process.t_max - process.t_min) * u


def states(process, n, shape, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed + 1)
    t = times(process, n, seed)
    s = process.scale(t).reshape(-1, *[1] * len(shape))
    sig = process.sigma(t).reshape(-1, *[1] * len(shape))
    x = s * (torch.randn(n, *shape, generator=g, dtype=F64) * 2.0 + sig * torch.randn(n, *shape, generator=g, dtype=F64))
    return x.to(dtype), t


# ------------------------------------------------------------- image-shaped exact fields
@pytest.mark.parametrize("pname", list(processes()))
@pytest.mark.parametrize("dname", ["mixture", "gaussian", "empirical"])
def test_image_shaped_exact_field_equals_flattened(pname, dname):
    process = processes()[pname]
    image = exact_field(process, laws(EVENT)[dname])
    flat = exact_field(process, laws()[dname])
    assert image.event_shape == EVENT and flat.event_shape == (N,) and image.dim == flat.dim == N
    x, t = states(process, 6, EVENT)
    for tt in (t, float(t[2])):
        for kind in gaussian_kinds(image):
            got = getattr(image, kind)(x, tt)
            assert got.shape == x.shape
            assert torch.equal(got, getattr(flat, kind)(x.flatten(1), tt).reshape(x.shape)), kind
        assert torch.equal(image.log_prob(x, tt), flat.log_prob(x.flatten(1), tt))


@pytest.mark.parametrize("pname", ["VP", "PFGMPP"])
@pytest.mark.parametrize("dname", ["mixture", "empirical"])
def test_per_sample_times_with_event_shape_equal_single_calls(pname, dname):
    """t of shape (n,) with image-shaped states: sample i's result equals a batch-of-one call
    at its own time, bit for bit (batch-size independence)."""
    process = processes()[pname]
    field = exact_field(process, laws(EVENT)[dname])
    x, t = states(process, 5, EVENT, seed=3)
    for kind in ["denoiser", "score", "velocity"]:
        batched = getattr(field, kind)(x, t)
        for i in range(len(t)):
            assert torch.equal(batched[i], getattr(field, kind)(x[i:i + 1], float(t[i]))[0]), (kind, i)


@pytest.mark.parametrize("pname", ["EDM", "PFGMPP"])
@pytest.mark.parametrize("dname", ["mixture", "empirical"])
def test_exact_fields_take_any_batch_shape(pname, dname):
    process = processes()[pname]
    field = exact_field(process, laws((4, 12))[dname])
    x, t = states(process, 6, (4, 12), seed=5)
    xb, tb = x.reshape(2, 3, 4, 12), t.reshape(2, 3)
    t_rows = tb[:, :1]  # one time per row of the batch, broadcast over its columns
    for kind in gaussian_kinds(field):
        # reference: one call per sample at its own (scalar) time
        ref = torch.stack([getattr(field, kind)(x[i:i + 1], float(t[i]))[0] for i in range(6)]).reshape(xb.shape)
        assert torch.equal(getattr(field, kind)(xb, tb), ref)
        rows = torch.stack([getattr(field, kind)(x[i:i + 1], float(t_rows[i // 3, 0]))[0] for i in range(6)])
        assert torch.equal(getattr(field, kind)(xb, t_rows), rows.reshape(xb.shape))
        # no batch dims at all: one event and a scalar time
        assert torch.equal(getattr(field, kind)(x[4], float(t[4])), ref[1, 1])
    log_ref = torch.stack([field.log_prob(x[i:i + 1], float(t[i]))[0] for i in range(6)])
    assert torch.equal(field.log_prob(xb, tb), log_ref.reshape(2, 3))
    with pytest.raises(ValueError, match=r"\bt\b"):
        field.denoiser(xb, t)  # (6,) does not broadcast to the batch shape (2, 3)
    for bad in (torch.zeros(6, 12, 4, dtype=F64), torch.zeros(6, 48, dtype=F64), torch.zeros(12, dtype=F64)):
        with pytest.raises(ValueError, match=r"\bx\b.*event shape \(4, 12\)"):
            field.denoiser(bad, 1.0)


@pytest.mark.parametrize("pname", ["VP", "PFGMPP"])
def test_empty_batch(pname):
    process = processes()[pname]
    for field in (exact_field(process, laws(EVENT)["mixture"]), exact_field(process, laws(EVENT)["empirical"])):
        x = torch.zeros(0, *EVENT, dtype=F64)
        for kind in gaussian_kinds(field):
            assert getattr(field, kind)(x, process.t_max).shape == (0, *EVENT)
            assert field.evaluate(kind, x, torch.zeros(0, dtype=F64), {}).shape == (0, *EVENT)


# ------------------------------------------------------------------- network fields
class ConvNet(nn.Module):
    """A small conditional denoiser on (n, 3, 8, 8): records what it was called with."""

    def __init__(self, n_classes=4):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 3, 3, padding=1, dtype=F64)
            self.embed = nn.Embedding(n_classes, 3, dtype=F64)
        self.calls = []

    def forward(self, x, t, class_labels=None, gain=1.0):
        self.calls.append(dict(t=t, class_labels=class_labels, gain=gain))
        h = gain * self.conv(x)
        if class_labels is not None:
            h = h + self.embed(class_labels)[:, :, None, None]
        c = (t / (1.0 + t)).view(-1, 1, 1, 1)
        return (1.0 - c) * x + c * torch.tanh(h)


def conv_case(n=5, seed=0):
    process = fs.EDM(sigma_max=10.0)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g, dtype=F64) * 3.0
    t = times(process, n, seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    return process, x, t, labels


def test_network_field_passes_fixed_and_per_call_kwargs():
    process, x, t, labels = conv_case()
    net = ConvNet()
    field = Field.from_denoiser(process, net, event_shape=(3, 8, 8), gain=2.0)
    assert field.event_shape == (3, 8, 8) and field.dim == 192 and field.fixed == {"gain": 2.0}
    with torch.no_grad():
        got = field.denoiser(x, t, class_labels=labels)
        seen = net.calls[-1]
        assert seen["class_labels"] is labels and seen["gain"] == 2.0
        assert seen["t"].shape == (5,) and seen["t"].dtype == x.dtype and torch.equal(seen["t"], t)
        assert torch.equal(got, net(x, t, class_labels=labels, gain=2.0))
        # the labels matter, so they really reached the network
        assert not torch.allclose(got, field.denoiser(x, t, class_labels=(labels + 1) % 4))
        # per-call arguments override fixed ones
        field.denoiser(x, t, class_labels=labels, gain=0.5)
        assert net.calls[-1]["gain"] == 0.5
        # every quantity forwards the arguments and converts the network's denoiser
        den = net(x, t, class_labels=labels, gain=2.0)
        sig = t.view(-1, 1, 1, 1)  # EDM: s = 1, sigma = t, velocity = (x - D)/sigma
        for kind, want in [("eps", (x - den) / sig), ("score", (den - x) / sig**2), ("velocity", (x - den) / sig)]:
            torch.testing.assert_close(getattr(field, kind)(x, t, class_labels=labels), want, rtol=1e-12, atol=1e-12)
            assert net.calls[-1]["class_labels"] is labels
            assert torch.equal(field.evaluate(kind, x, t, {"class_labels": labels}),
                               getattr(field, kind)(x, t, class_labels=labels))


@pytest.mark.parametrize("kind", ["denoiser", "eps", "velocity"])
def test_network_field_on_images_equals_flattened(kind):
    """The conversions broadcast the schedules as (n, 1, 1, 1): the image-shaped field gives
    exactly the numbers of the same network on the flattened state."""
    process, x, t, labels = conv_case(seed=2)
    net = ConvNet()
    image = getattr(Field, f"from_{kind}")(process, net, event_shape=(3, 8, 8))
    flat = getattr(Field, f"from_{kind}")(process, lambda z, tt, **kw: net(z.view(-1, 3, 8, 8), tt, **kw).flatten(1))
    with torch.no_grad():
        for q in ["denoiser", "eps", "score", "velocity"]:
            got = getattr(image, q)(x, t, class_labels=labels)
            assert torch.equal(got, getattr(flat, q)(x.flatten(1), t, class_labels=labels).view(x.shape)), q


def test_network_field_event_shape_is_checked_only_when_given():
    process, x, t, _ = conv_case()
    net = ConvNet()
    with pytest.raises(ValueError, match=r"\bx\b.*\(3, 8, 8\)"):
        Field.from_denoiser(process, net, event_shape=(3, 8, 8)).denoiser(x[:, :, :, :7], t)
    free = Field.from_denoiser(process, lambda z, tt: 0.5 * z)
    assert free.event_shape is None and free.dim is None
    assert free.denoiser(x[:, :, :, :7], t).shape == (5, 3, 8, 7)
    for bad in ((3, 0, 8), (3, -1), "3x8x8", (3.5, 8), True):
        with pytest.raises(ValueError, match="event_shape"):
            Field.from_denoiser(process, net, event_shape=bad)
    assert Field.from_denoiser(process, net, event_shape=192).event_shape == (192,)


def test_fixed_kwargs_may_use_any_name():
    """process and fn are positional-only, so a network's own keywords never collide."""
    process, x, t, _ = conv_case()
    seen = {}

    def fn(z, tt, **kw):
        seen.update(kw)
        return z.clone()

    field = Field.from_eps(process, fn, process="a", fn="b", kind="c")
    field.eps(x, t, x="d")
    assert seen == {"process": "a", "fn": "b", "kind": "c", "x": "d"}


def test_user_subclass_implementing_denoise():
    """A Field subclass that implements only _denoise(x, t, kwargs) gets every quantity, with
    t as float64 (n,) and the per-call kwargs."""
    seen = {}

    class Shrink(Field):
        def _denoise(self, x, t, kwargs):
            seen.update(t=t, **kwargs)
            return x * kwargs.get("factor", 0.5)

    process = fs.VP()
    field = Shrink(process, event_shape=(2, 3))
    x, t = states(process, 4, (2, 3), seed=9)
    direct = Field.from_denoiser(process, lambda z, tt, factor: z * factor, event_shape=(2, 3))
    for kind in ["denoiser", "eps", "score", "velocity"]:
        assert torch.equal(getattr(field, kind)(x, t, factor=0.25), getattr(direct, kind)(x, t, factor=0.25)), kind
        assert seen["factor"] == 0.25 and seen["t"].dtype == F64 and torch.equal(seen["t"], t)
    with pytest.raises(ValueError, match=r"\bx\b"):
        field.denoiser(x.flatten(1), t)


# ----------------------------------------------------------------------- output dtypes
@pytest.mark.parametrize("out_dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_wrapped_output_of_another_floating_dtype_is_cast(out_dtype):
    process = fs.VP()
    x = torch.randn(4, 2, 3, dtype=torch.float32)
    den = 0.3 * x.double()
    field = Field.from_denoiser(process, lambda z, tt: den.to(out_dtype))
    assert field.denoiser(x, 0.5).dtype == torch.float32
    assert torch.equal(field.denoiser(x, 0.5), den.to(out_dtype).float())
    for kind in ["eps", "score", "velocity"]:
        out = getattr(field, kind)(x, 0.5)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        assert torch.equal(out, field.evaluate(kind, x, 0.5, {}))


@pytest.mark.parametrize("bad", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_wrapped_non_floating_output_refused(bad):
    field = Field.from_denoiser(fs.VP(), lambda z, tt: torch.zeros(z.shape, dtype=bad))
    x = torch.randn(3, 2)
    for kind in ["denoiser", "eps", "velocity"]:
        with pytest.raises(ValueError, match="floating"):
            getattr(field, kind)(x, 0.5)
        with pytest.raises(ValueError, match="floating"):
            field.evaluate(kind, x, 0.5, {})


# ------------------------------------------------------------------------ fast path
def fields_under_test():
    """(name, process, field, event shape) for exact and wrapped fields of both kernels."""
    out = []
    for pname in ["VP", "PFGMPP"]:
        process = processes()[pname]
        for dname in ["mixture", "empirical"]:
            out.append((f"{pname}-exact-{dname}", process, exact_field(process, laws(EVENT)[dname]), EVENT))
        exact = exact_field(process, laws(EVENT)["mixture"])
        for kind in ["denoiser", "eps", "velocity"] + (["poisson_field"] if exact.is_poisson else ["score"]):
            net = (lambda k: lambda z, tt: exact.evaluate(k, z, tt, {}))(kind)  # a "network" with no checks
            out.append((f"{pname}-from_{kind}", process, getattr(Field, f"from_{kind}")(process, net), EVENT))
    return out


FIELDS = fields_under_test()


@pytest.mark.parametrize("case", FIELDS, ids=[c[0] for c in FIELDS])
def test_evaluate_equals_public_methods(case):
    _, process, field, shape = case
    x, t = states(process, 4, shape, seed=7)
    for kind in gaussian_kinds(field):
        if kind == "score" and field.is_poisson and not hasattr(field, "log_prob"):
            continue
        for dtype in (F64, torch.float32):
            xd = x.to(dtype)
            assert torch.equal(field.evaluate(kind, xd, t, {}), getattr(field, kind)(xd, t)), kind
            tm = float(t[1])
            assert torch.equal(field.evaluate(kind, xd, tm, {}), getattr(field, kind)(xd, tm)), kind
            assert field.evaluate(kind, xd, t, {}).dtype == dtype


def ref_denoiser(process, kind, x, t, value):
    """D from each quantity, rearranged from the module's equations, with the schedules from
    the process's public methods (float64)."""
    view = (-1,) + (1,) * (x.ndim - 1)
    s, sig = process.scale(t).view(view), process.sigma(t).view(view)
    if kind == "eps":  # eps = (x/s - D)/sigma
        return (x - s * sig * value) / s
    if kind == "score":  # score = (s D - x)/(s sigma)^2
        return x / s + s * sig**2 * value
    if kind == "poisson_field":  # E_x/E_r = (x/s - D)/(sigma sqrt(D))
        return (x - s * sig * math.sqrt(process.kernel.D) * value) / s
    if kind == "velocity":  # v = (s'/s) x + (sigma'/sigma)(x - s D)
        a = process.scale_derivative(t).view(view) / s
        b = process.sigma_derivative(t).view(view) / sig
        return ((a + b) * x - value) / (b * s)
    return value


@pytest.mark.parametrize("case", FIELDS, ids=[c[0] for c in FIELDS])
def test_denoised_from_inverts_every_kind(case):
    _, process, field, shape = case
    x, t = states(process, 6, shape, seed=11)
    den = field.evaluate("denoiser", x, t, {})
    size = (x.abs() / process.scale(t).view(-1, 1, 1, 1) + den.abs()).flatten(1).amax(1).view(-1, 1, 1, 1)
    for kind in KINDS:
        if kind == "poisson_field" and not field.is_poisson:
            continue
        if kind == "score" and field.is_poisson:
            with pytest.raises(ValueError, match="score"):
                field.denoised_from(kind, x, t, x)
            continue
        value = field.evaluate(kind, x, t, {})
        back = field.denoised_from(kind, x, t, value)
        assert back.shape == x.shape and back.dtype == x.dtype
        # the round trip gives the denoiser (exact fields: Tweedie's formula for the score)
        assert bool(((back - den).abs() <= 1e-9 * size).all()), kind
        # and agrees with the independent inverse
        assert bool(((back - ref_denoiser(process, kind, x, t, value)).abs() <= 1e-11 * size).all()), kind
        if getattr(field, "kind", None) == kind:  # the wrapped network's own quantity: the same numbers
            assert torch.equal(back, den)


def test_fast_path_refusals():
    process = processes()["PFGMPP"]
    wrapped = Field.from_denoiser(process, lambda z, tt: z.clone())
    exact = exact_field(process, laws(EVENT)["empirical"])
    x, t = states(process, 2, EVENT)
    with pytest.raises(ValueError, match="score"):
        wrapped.evaluate("score", x, t, {})
    assert exact.evaluate("score", x, t, {}).shape == x.shape  # the true gradient of log p_t
    for field in (wrapped, exact):
        with pytest.raises(ValueError, match="kind"):
            field.evaluate("energy", x, t, {})
        with pytest.raises(ValueError, match="kind"):
            field.denoised_from("energy", x, t, x)
    gauss = Field.from_denoiser(fs.VP(), lambda z, tt: z.clone())
    with pytest.raises(ValueError, match="poisson_field"):
        gauss.evaluate("poisson_field", x, 0.5, {})


def test_evaluate_does_not_synchronise(monkeypatch):
    """The fast path never reads a tensor's value on the host (no .item(), bool(tensor),
    float(tensor), .tolist(), .cpu(), .numpy()): those would stall a GPU pipeline."""
    cases = [(p, f) for _, p, f, _ in FIELDS]
    x, t = states(processes()["VP"], 3, EVENT)
    # warm-up (parameter caches are filled once, outside the loop a solver runs)
    # and a Python-float time's schedule numbers, which are computed once on host (CPU) scalars and
    # kept: reading those is no device synchronisation, but the patched conversions cannot tell
    for process, field in cases:
        field.evaluate("denoiser", x, times(process, 3), {})
        for kind in gaussian_kinds(field):
            try:
                field.evaluate(kind, x, 0.5 * (process.t_min + process.t_max), {})
            except ValueError:  # a kind this field cannot give (the score of a Poisson field without log_prob)
                pass

    def refuse(*args, **kwargs):
        raise AssertionError("host synchronisation in the fast path")

    runs = []
    for process, field in cases:
        tp = times(process, 3)
        kinds = [k for k in gaussian_kinds(field) if not (k == "score" and field.is_poisson and not hasattr(field, "log_prob"))]
        with monkeypatch.context() as m:
            for name in ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "cpu", "numpy"):
                m.setattr(torch.Tensor, name, refuse)
            for kind in kinds:
                for tt in (tp, 0.5 * (process.t_min + process.t_max)):
                    value = field.evaluate(kind, x, tt, {})
                    if not (kind == "score" and field.is_poisson):
                        field.denoised_from(kind, x, tt, value)
                    runs.append(kind)
    assert len(runs) > 40
    with monkeypatch.context() as m:  # the check itself can fail: the public path validates t on the host
        m.setattr(torch.Tensor, "__float__", refuse)
        with pytest.raises(AssertionError, match="synchronisation"):
            cases[0][1].denoiser(x, times(cases[0][0], 3))


def test_evaluate_skips_the_time_range_check():
    """The public methods refuse a t outside the span; the fast path leaves that to the solver."""
    process = fs.EDM()
    field = Field.from_denoiser(process, lambda z, tt: z * 0.0)
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"\bt\b"):
        field.eps(x, process.t_max * 1.5)
    assert torch.equal(field.evaluate("eps", x, process.t_max * 1.5, {}), x / (process.t_max * 1.5))


# ----------------------------------------------------------------------- exact fields and kwargs
@pytest.mark.parametrize("dname", ["mixture", "empirical"])
def test_exact_fields_refuse_extra_arguments(dname):
    process = fs.EDM()
    field = exact_field(process, laws(EVENT)[dname])
    x, t = states(process, 2, EVENT)
    for kind in ["denoiser", "eps", "score", "velocity"]:
        with pytest.raises(ValueError, match="class_labels"):
            getattr(field, kind)(x, t, class_labels=torch.zeros(2, dtype=torch.long))
        with pytest.raises(ValueError, match="guidance"):
            field.evaluate(kind, x, t, {"guidance": 2.0})
    with pytest.raises(TypeError):
        field.log_prob(x, t, class_labels=1)


# ----------------------------------------------------------------------- low precision
def terms(process, x, t, den):
    """Per-sample size of the terms each quantity is computed from (x/s and D, over sigma etc.)."""
    view = (-1,) + (1,) * (x.ndim - 1)
    s, sig = process.scale(t).view(view), process.sigma(t).view(view)
    base = (x.abs() / s + den.abs()).flatten(1).amax(1).view(view)
    a = (process.scale_derivative(t) / process.scale(t)).abs().view(view)
    b = (process.sigma_derivative(t) / process.sigma(t)).abs().view(view)
    return {"denoiser": base, "eps": base / sig, "score": base / (s * sig**2),
            "velocity": a * x.abs().flatten(1).amax(1).view(view) + b * s * base,
            "poisson_field": base / (sig * math.sqrt(process.kernel.D))}


def assert_low_precision(got, ref, size, dtype, what):
    """Finite, in ``dtype``, and within the dtype's resolution of ``ref`` up to float32's
    resolution of the terms the quantity is computed from."""
    assert got.dtype == dtype and bool(torch.isfinite(got).all()), what
    tol = torch.finfo(dtype).eps * ref.abs() + 64 * torch.finfo(torch.float32).eps * size + 1e-30
    err = (got.double() - ref).abs()
    assert bool((err <= tol).all()), (what, float((err / tol).max()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("pname,dname", [("VP", "ring"), ("EDM", "ring"), ("VP", "empirical"), ("PFGMPP", "ring"),
                                         ("PFGMPP", "empirical")])
def test_low_precision_exact_fields(dtype, pname, dname):
    """At t_min, mid-span and t_max (the float16 overflow of squared distances was at t_max on
    toy.ring()): finite everywhere, and within the dtype's resolution of float64 evaluated on
    the same (rounded) input, up to float32's resolution of the cancelling terms."""
    process = processes()[pname]
    data = toy.ring() if dname == "ring" else toy.Empirical(toy.ring().sample(64, generator=torch.Generator().manual_seed(4)))
    field = exact_field(process, data)
    g = torch.Generator().manual_seed(0)
    n = 64 if isinstance(field, MixtureField) and field.is_poisson else 500  # the quadrature is dearer
    for t in [process.t_min, 0.5 * (process.t_min + process.t_max), process.t_max]:
        x = process.perturb(data.sample(n, generator=g, dtype=F64), t, generator=g).to(dtype)
        tt = torch.full((n,), t, dtype=F64)
        ref_den = field.denoiser(x.double(), t)
        size = terms(process, x.double(), tt, ref_den)
        for kind in gaussian_kinds(field):
            got = getattr(field, kind)(x, t)
            assert_low_precision(got, getattr(field, kind)(x.double(), t), size[kind], dtype, (kind, t))
            assert torch.equal(field.evaluate(kind, x, t, {}), got)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_low_precision_wrapped_conversions(dtype):
    """Conversions of a network's output run in float32 and come back in x's dtype: at t_min
    the score's (s sigma)^2 is 1e-4 to 1e-5, far below float16's resolution near 1."""
    process = fs.EDM()
    exact = exact_field(process, toy.ring())
    field = Field.from_denoiser(process, lambda z, tt: exact.denoiser(z, tt))
    g = torch.Generator().manual_seed(1)
    for t in (process.t_min, 1.0):
        x = process.perturb(toy.ring().sample(200, generator=g, dtype=F64), t, generator=g).to(dtype)
        den = field.denoiser(x, t)
        size = terms(process, x.double(), torch.full((200,), t, dtype=F64), den.double())
        for kind in ["eps", "score", "velocity"]:
            # the same conversion in float64 from the low-precision input and denoiser
            ref = Field.from_denoiser(process, lambda z, tt: den.double()).evaluate(kind, x.double(), t, {})
            assert_low_precision(getattr(field, kind)(x, t), ref, size[kind], dtype, (kind, t))


# ----------------------------------------------------------------------- toy laws
def shaped_laws():
    g = torch.Generator().manual_seed(2)
    pts = torch.randn(7, 12, generator=g, dtype=F64)
    return [
        ("mixture", lambda ev: toy.random_mixture(12, 3, seed=4, event_shape=ev)),
        ("gaussian", lambda ev: toy.Gaussian(torch.arange(12.0), torch.linspace(0.5, 2.0, 12), event_shape=ev)),
        ("standard", lambda ev: toy.standard_gaussian(12, event_shape=ev)),
        ("diag_mixture", lambda ev: toy.GaussianMixture(pts[:2], 0.5, event_shape=ev)),
        ("empirical", lambda ev: toy.Empirical(pts, event_shape=ev)),
    ]


SHAPED = shaped_laws()


@pytest.mark.parametrize("make", [c[1] for c in SHAPED], ids=[c[0] for c in SHAPED])
@pytest.mark.parametrize("event", [(3, 4), (12,), (2, 3, 2), (1, 12, 1)])
def test_toy_laws_with_event_shape(make, event):
    law, flat = make(event), make(None)
    assert law.event_shape == event and flat.event_shape == (12,) and law.dim == 12
    x = law.sample(9, generator=torch.Generator().manual_seed(3), dtype=F64)
    y = flat.sample(9, generator=torch.Generator().manual_seed(3), dtype=F64)
    assert x.shape == (9, *event) and torch.equal(x.flatten(1), y)
    assert law.sample(0).shape == (0, *event)
    assert law.mean().shape == event and torch.equal(law.mean().reshape(-1), flat.mean())
    assert torch.equal(law.covariance(), flat.covariance()) and law.covariance().shape == (12, 12)
    if hasattr(law, "log_prob"):
        assert torch.equal(law.log_prob(x), flat.log_prob(y))
        xb = x.reshape(3, 3, *event)
        assert law.log_prob(xb).shape == (3, 3) and torch.equal(law.log_prob(xb).reshape(-1), flat.log_prob(y))
        lp16 = law.log_prob(x.half())  # computed in float32, returned in float16
        assert lp16.dtype == torch.float16
        torch.testing.assert_close(lp16.double(), law.log_prob(x.half().double()), rtol=2e-3, atol=2e-3)
        if event != (12,):
            with pytest.raises(ValueError, match=r"\bx\b"):
                law.log_prob(y)  # a flattened x is not of the event shape
    if len(event) > 1:
        assert repr(event) in repr(law)
    assert exact_field(fs.EDM(), law).event_shape == event


@pytest.mark.parametrize("make", [c[1] for c in SHAPED], ids=[c[0] for c in SHAPED])
def test_toy_laws_refuse_bad_event_shape(make):
    for bad in [(5,), (3, 5), (0, 12), (12, 0), (-3, -4), (2.5, 4), "12", (True, 12), 13, [None]]:
        with pytest.raises(ValueError, match="event_shape"):
            make(bad)
    assert make(12).event_shape == (12,) and make([3, 4]).event_shape == (3, 4)
    assert make(torch.Size([4, 3])).event_shape == (4, 3)
