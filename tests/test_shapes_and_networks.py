"""Real-model use of the solvers: states of any shape, network fields with extra arguments,
no autograd graph unless asked, and the per-step callback (issue 6, section 1).

The reference for an image-shaped solve is the same solve on the flattened state: the network
sees the same numbers, the noise streams draw the same numbers (a sample's draw is one
contiguous block of its stream, whatever its shape), and every per-sample reduction runs over
the same elements in the same order, so the two must agree bit for bit.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import flowsolve as fs

F64 = torch.float64
SHAPE = (3, 8, 8)
SOLVERS = fs.available_solvers()


class TinyDenoiser(nn.Module):
    """A small convolutional denoiser D(x, t, class_labels) for images (n, 3, 8, 8): the exact
    denoiser of N(0, I) data, x / (1 + sigma^2), plus a bounded learned correction that depends
    on the class label, so every solver stays well-behaved."""

    def __init__(self, classes: int = 4):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv_in = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_out = nn.Conv2d(8, 3, 3, padding=1)
        self.embed = nn.Embedding(classes, 8)
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        self.calls = 0

    def forward(self, x, t, class_labels=None):
        self.calls += 1
        sigma = t.reshape(-1, 1, 1, 1)
        h = self.conv_in(x / torch.sqrt(1 + sigma**2))
        if class_labels is not None:
            h = h + self.embed(class_labels)[:, :, None, None]
        return x / (1 + sigma**2) + 0.1 * torch.tanh(self.conv_out(torch.tanh(h))) / (1 + sigma)


def _net():
    return TinyDenoiser().double()


def _fields(process, net):
    image = fs.Field.from_denoiser(process, net, event_shape=SHAPE)

    def flat(x, t, **kw):
        return net(x.reshape(-1, *SHAPE), t, **kw).reshape(x.shape[0], -1)

    return image, fs.Field.from_denoiser(process, flat, event_shape=(math.prod(SHAPE),))


def _budget(name):
    info = SOLVERS[name]
    if info["adaptive"]:
        return dict(rtol=1e-2, atol=1e-2)
    if name == "annealed_langevin":
        return dict(steps=2, n_steps_each=2)
    return dict(steps=3)


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_image_shaped_sample_equals_the_flattened_one(solver):
    """Every solver on a conv-net field over (n, 3, 8, 8), with per-sample class labels, gives
    what the same solve gives on the flattened (n, 192) state."""
    process = fs.EDM(sigma_max=20.0)
    net = _net()
    image, flat = _fields(process, net)
    labels = torch.tensor([0, 1, 2, 3, 1])
    kw = dict(seed=3, dtype=F64, extra_args={"class_labels": labels}, **_budget(solver))
    a = fs.sample(process, image, 5, solver, **kw)
    b = fs.sample(process, flat, 5, solver, **kw)
    assert a.success and b.success, (a.message, b.message)
    assert a.x.shape == (5, *SHAPE) and b.x.shape == (5, math.prod(SHAPE))
    assert torch.equal(a.x.reshape(5, -1), b.x), float((a.x.reshape(5, -1) - b.x).abs().max())
    assert torch.equal(a.nfe, b.nfe) and torch.equal(a.n_steps, b.n_steps)


def test_shape_from_the_argument_when_the_field_does_not_know_it():
    process = fs.EDM(sigma_max=20.0)
    net = _net()
    field = fs.Field.from_denoiser(process, net)  # no event_shape
    with pytest.raises(ValueError, match="shape="):
        fs.sample(process, field, 2, "heun", steps=2)
    sol = fs.sample(process, field, 2, "heun", steps=2, shape=SHAPE, dtype=F64)
    ref = fs.sample(process, _fields(process, net)[0], 2, "heun", steps=2, dtype=F64)
    assert sol.x.shape == (2, *SHAPE) and torch.equal(sol.x, ref.x)


def test_class_labels_reach_the_network_and_matter():
    process = fs.EDM(sigma_max=20.0)
    net = _net()
    image, _ = _fields(process, net)
    kw = dict(steps=4, seed=1, dtype=F64)
    a = fs.sample(process, image, 3, "heun", extra_args={"class_labels": torch.tensor([0, 0, 0])}, **kw)
    b = fs.sample(process, image, 3, "heun", extra_args={"class_labels": torch.tensor([1, 2, 3])}, **kw)
    assert not torch.allclose(a.x, b.x)
    fixed = fs.Field.from_denoiser(process, net, event_shape=SHAPE, class_labels=torch.tensor([1, 2, 3]))
    c = fs.sample(process, fixed, 3, "heun", **kw)
    assert torch.equal(b.x, c.x)  # fixed arguments of the wrapper == per-call extra_args


@pytest.mark.parametrize("solver", ["dopri5", "adaptive_sde"])
def test_adaptive_solvers_slice_per_sample_arguments(solver):
    """Adaptive solvers evaluate the samples still running only; a per-sample tensor argument is
    sliced with them, so each sample is solved with its own label, as alone."""
    process = fs.EDM(sigma_max=20.0)
    image, _ = _fields(process, _net())
    labels = torch.tensor([3, 0, 2, 1])
    # starts of very different sizes, so that the samples take different numbers of steps
    x0 = torch.randn(4, *SHAPE, dtype=F64, generator=torch.Generator().manual_seed(0))
    x0 = x0 * torch.tensor([0.1, 2.0, 20.0, 200.0], dtype=F64).reshape(4, 1, 1, 1)
    kw = dict(seed=2, rtol=0.1, atol=0.1) if solver == "adaptive_sde" else dict(rtol=1e-4, atol=1e-4)
    full = fs.sample(process, image, 4, solver, x_init=x0, extra_args={"class_labels": labels}, **kw)
    assert len(set(full.n_steps.tolist())) > 1  # the samples really took different steps
    for i in range(4):
        offset = dict(offset=i) if solver == "adaptive_sde" else {}
        alone = fs.sample(process, image, 1, solver, x_init=x0[i:i + 1], extra_args={"class_labels": labels[i:i + 1]},
                          **offset, **kw)
        assert torch.equal(alone.x[0], full.x[i]) and int(alone.nfe[0]) == int(full.nfe[i])


def test_non_tensor_extra_arguments_pass_unchanged():
    process = fs.EDM()
    seen = []

    def den(x, t, scale=1.0, tag=None):
        seen.append((scale, tag))
        return x / (1 + t.reshape(-1, 1) ** 2) * scale

    field = fs.Field.from_denoiser(process, den, event_shape=(2,))
    fs.sample(process, field, 3, "dopri5", extra_args={"scale": 0.5, "tag": "guided"}, rtol=1e-2, atol=1e-2)
    assert seen and all(s == (0.5, "guided") for s in seen)


# ------------------------------------------------------------------------- autograd
def test_sampling_builds_no_graph_by_default():
    process = fs.EDM(sigma_max=20.0)
    net = TinyDenoiser()  # float32 parameters that require grad
    field = fs.Field.from_denoiser(process, net, event_shape=SHAPE)
    x0 = torch.randn(2, *SHAPE, requires_grad=True)
    for solver, kw in (("heun", dict(steps=2)), ("dopri5", dict(rtol=1e-2, atol=1e-2)), ("pc", dict(steps=2))):
        sol = fs.sample(process, field, 2, solver, x_init=x0, **kw)
        assert not sol.x.requires_grad, solver


@pytest.mark.parametrize("solver,kw", [("euler", dict(steps=3)), ("dpmpp_2m", dict(steps=3)),
                                       ("dopri5", dict(rtol=1e-6, atol=1e-6))])
def test_differentiable_solve_gradients(solver, kw):
    """differentiable=True keeps the graph: d(sum of outputs)/d(x_init) and d/d(network weights)
    match central finite differences."""
    process = fs.EDM(sigma_max=20.0)
    net = _net()
    field = fs.Field.from_denoiser(process, net, event_shape=SHAPE)
    x0 = torch.randn(2, *SHAPE, dtype=F64, generator=torch.Generator().manual_seed(5)) * 20.0

    def loss(x_init):
        return fs.sample(process, field, 2, solver, x_init=x_init, differentiable=True, **kw).x.square().sum()

    x = x0.clone().requires_grad_(True)
    out = loss(x)
    out.backward()
    direction = torch.randn_like(x0)
    eps = 1e-4
    fd = (loss(x0 + eps * direction) - loss(x0 - eps * direction)) / (2 * eps)
    # adaptive: the step sizes are held fixed in the derivative (as in diffrax), while finite
    # differences see them move with x_init, by about the tolerance
    rtol = 1e-3 if solver == "dopri5" else 1e-6
    assert torch.allclose((x.grad * direction).sum(), fd.detach(), rtol=rtol, atol=1e-8)
    weight = net.conv_out.weight
    assert weight.grad is not None and float(weight.grad.abs().sum()) > 0
    w0 = weight.detach().clone()
    with torch.no_grad():
        weight.copy_(w0 + eps)
        up = loss(x0)
        weight.copy_(w0 - eps)
        down = loss(x0)
        weight.copy_(w0)
    assert torch.allclose(weight.grad.sum(), (up - down) / (2 * eps), rtol=rtol, atol=1e-8)


# ------------------------------------------------------------------------- callback
@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp_2m", "edm_stochastic", "ancestral"])
def test_callback_sees_every_step_with_the_denoised_estimate(solver):
    process = fs.EDM()
    data = fs.toy.Gaussian([0.5, -1.0], [0.3, 0.8])
    field = fs.exact_field(process, data)
    calls = []
    sol = fs.sample(process, field, 4, solver, steps=5, dtype=F64, seed=0,
                    callback=lambda i, t, x, denoised: calls.append((i, t, x.clone(), denoised)))
    grid = sol.extras["grid"].tolist()
    assert [c[0] for c in calls] == list(range(5)) and [c[1] for c in calls] == grid[:-1]
    assert torch.equal(calls[0][2], fs.sample(process, field, 4, solver, steps=0 + 1, dtype=F64, seed=0,
                                              save_at=True).xs[0])
    for i, t, x, denoised in calls:
        assert denoised is not None and denoised.shape == x.shape
        if solver in ("euler", "heun", "dpmpp_2m", "ancestral"):  # their first evaluation is at (x_i, t_i)
            torch.testing.assert_close(denoised, field.denoiser(x, t), rtol=1e-10, atol=1e-10)


def test_callback_must_be_callable_and_adaptive_gets_per_sample_times():
    process = fs.EDM()
    field = fs.exact_field(process, fs.toy.Gaussian([0.5], [0.3]))
    with pytest.raises(ValueError, match="callback"):
        fs.sample(process, field, 2, "heun", steps=2, callback=3)
    seen = []
    fs.sample(process, field, 3, "dopri5", rtol=1e-3, atol=1e-3, callback=lambda i, t, x, d: seen.append(t.clone()))
    assert seen and all(t.shape == (3,) for t in seen)
    assert torch.all(seen[-1] == process.t_min)
