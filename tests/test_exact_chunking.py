"""The exact fields compute in blocks of rows (``flowsolve.toy.exact._map_rows``): with any
block size their numbers are those of one unchunked call, bit for bit, for Gaussian-kernel
mixtures (isotropic, diagonal, full covariance) and empirical data under either kernel, in
float32 and float64, flat or image-shaped (the PFGM++ mixture quadrature: see its test);
``_rotate`` (per-component rotations, no matmul) agrees with a float64 matmul to rounding; the
blocks respect the byte bound."""

from __future__ import annotations

import math

import pytest
import torch

import flowsolve as fs
from flowsolve.toy import exact
from flowsolve.toy.exact import MixtureField, exact_field

F64 = torch.float64
EVENT = (3, 4, 4)
N = math.prod(EVENT)
UNCHUNKED = 2**62


def laws(event_shape=None):
    g = torch.Generator().manual_seed(0)
    means = 2.0 * torch.randn(3, N, generator=g, dtype=F64)
    return {
        "isotropic": fs.toy.GaussianMixture(means, [0.3, 0.5, 1.0], [0.2, 0.3, 0.5], event_shape=event_shape),
        "diagonal": fs.toy.GaussianMixture(means, 0.1 + torch.rand(3, N, generator=g, dtype=F64),
                                           event_shape=event_shape),
        "full": fs.toy.random_mixture(N, 3, seed=2, event_shape=event_shape),
        "empirical": fs.toy.Empirical(2.0 * torch.randn(6, N, generator=g, dtype=F64), event_shape=event_shape),
    }


def points(process, n, dtype, event_shape=(N,), seed=1):
    """n points, 2 from the origin, at times spread over the process's range (both ends included)."""
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(n, *event_shape, generator=g, dtype=F64)
    u = torch.tensor([0.0, 1e-3, 0.01, 0.1, 0.3, 0.6, 1.0], dtype=F64)[torch.arange(n) % 7]
    return x.to(dtype), process.t_min + (process.t_max - process.t_min) * u


def results(field, x, t):
    out = {kind: getattr(field, kind)(x, t) for kind in ("denoiser", "score", "velocity")}
    out["log_prob"] = field.log_prob(x, t)
    return out


def assert_identical(a, b):
    for kind in a:
        assert a[kind].dtype == b[kind].dtype and torch.equal(a[kind], b[kind]), kind


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("name", ["isotropic", "diagonal", "full", "empirical"])
@pytest.mark.parametrize("process", [fs.EDM(), fs.VP()], ids=["EDM", "VP"])
def test_gaussian_kernel_blocks_equal_one_call(monkeypatch, process, name, dtype):
    field = exact_field(process, laws()[name])
    x, t = points(process, 7, dtype)
    monkeypatch.setattr(exact, "_CHUNK_BYTES", UNCHUNKED)
    whole = results(field, x, t)
    for rows in (1, 3):  # one row per block, and blocks of 3 with a short last one
        per_row = 2 * field.data.points.numel() if name == "empirical" else field.data.n_components * N
        monkeypatch.setattr(exact, "_CHUNK_BYTES", rows * per_row * dtype.itemsize)
        assert_identical(results(field, x, t), whole)


def single_calls(field, x, t):
    """Each sample alone: a batch of one at its own time."""
    rows = [results(field, x[i:i + 1], t[i:i + 1]) for i in range(x.shape[0])]
    return {kind: torch.cat([r[kind] for r in rows]) for kind in rows[0]}


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("name", ["isotropic", "diagonal", "full", "empirical"])
def test_pfgmpp_blocks_equal_one_call(monkeypatch, name, dtype):
    """Blocks of one row. Empirical data and a mixture whose components have one eigenvalue
    group each (isotropic) give the unchunked numbers bit for bit. With many groups (diagonal,
    full), the quadrature's sums over the groups (``(M, pairs, nodes).sum(0)``) round according
    to the number of pairs integrated together (torch's outer reductions), so there the row
    blocks give exactly the numbers of one call per sample, and the unchunked call agrees to
    rounding."""
    process = fs.PFGMPP(D=16.0)
    field = exact_field(process, laws()[name])
    x, t = points(process, 5, dtype, seed=4)
    monkeypatch.setattr(exact, "_CHUNK_BYTES", UNCHUNKED)
    monkeypatch.setattr(MixtureField, "_CHUNK", UNCHUNKED)
    whole = results(field, x, t)
    monkeypatch.setattr(exact, "_CHUNK_BYTES", 1)
    monkeypatch.setattr(MixtureField, "_CHUNK", 1)
    chunked = results(field, x, t)
    if name in ("isotropic", "empirical"):
        assert_identical(chunked, whole)
    else:
        assert_identical(chunked, single_calls(field, x, t))
        tol = 1e-12 if dtype == F64 else 1e-6
        for kind in whole:
            scale = max(1.0, float(whole[kind].abs().max()))
            torch.testing.assert_close(chunked[kind], whole[kind], rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("process", [fs.EDM(), fs.PFGMPP(D=16.0)], ids=["EDM", "PFGMPP"])
def test_image_shaped_states_in_blocks(monkeypatch, process, dtype):
    """(n, 3, 4, 4) states in blocks of one row: the numbers of the flattened law (and for the
    Gaussian kernel those of one unchunked call; PFGM++: see above)."""
    image, flat = laws(EVENT)["full"], laws()["full"]
    x, t = points(process, 4, dtype, EVENT, seed=5)
    monkeypatch.setattr(exact, "_CHUNK_BYTES", UNCHUNKED)
    whole = results(exact_field(process, image), x, t)
    assert whole["denoiser"].shape == x.shape and whole["log_prob"].shape == (4,)
    monkeypatch.setattr(exact, "_CHUNK_BYTES", 1)
    monkeypatch.setattr(MixtureField, "_CHUNK", 1)
    field = exact_field(process, image)
    chunked = results(field, x, t)
    assert chunked["denoiser"].shape == x.shape and chunked["log_prob"].shape == (4,)
    assert_identical(chunked, single_calls(field, x, t) if field.is_poisson else whole)
    flat_out = results(exact_field(process, flat), x.flatten(1), t)
    assert_identical({k: v.reshape(flat_out[k].shape) for k, v in chunked.items()}, flat_out)


def test_batch_of_blocks_equals_single_calls(monkeypatch):
    """Sample i's numbers do not depend on its batch, nor on the block it falls in."""
    field = exact_field(fs.EDM(), laws()["full"])
    x, t = points(fs.EDM(), 7, torch.float32)
    monkeypatch.setattr(exact, "_CHUNK_BYTES", 3 * 3 * N * 4)
    batched = field.denoiser(x, t)
    for i in range(7):
        assert torch.equal(batched[i], field.denoiser(x[i:i + 1], float(t[i]))[0])


def test_blocks_keep_autograd(monkeypatch):
    """log p computed in blocks still differentiates to the score."""
    monkeypatch.setattr(exact, "_CHUNK_BYTES", 1)
    field = exact_field(fs.EDM(), laws()["full"])
    x, t = points(fs.EDM(), 5, F64)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(field.log_prob(x, t).sum(), x)
    torch.testing.assert_close(grad, field.score(x.detach(), t), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_rotate_is_the_matmul(monkeypatch, dtype):
    g = torch.Generator().manual_seed(3)
    v = torch.randn(9, 4, 64, generator=g, dtype=F64)
    vecs = torch.linalg.qr(torch.randn(4, 64, 64, generator=g, dtype=F64))[0]
    exact_prod = torch.einsum("bkn,knm->bkm", v, vecs)  # float64 reference
    got = exact._rotate(v.to(dtype), vecs.to(dtype))
    monkeypatch.setattr(exact, "_CHUNK_BYTES", 1)
    assert torch.equal(exact._rotate(v.to(dtype), vecs.to(dtype)), got)
    assert torch.equal(exact._rotate(v.to(dtype), vecs.transpose(-1, -2).to(dtype)),
                       torch.cat([exact._rotate(v[i:i + 1].to(dtype), vecs.transpose(-1, -2).to(dtype))
                                  for i in range(9)]))
    rel = float((got.double() - exact_prod).abs().max() / exact_prod.abs().max())
    assert rel < (1e-6 if dtype == torch.float32 else 1e-14), rel


def test_map_rows():
    calls = []

    def fn(a, b):
        calls.append(a.shape[0])
        return a + b, (a * b).sum(-1)

    a, b = torch.arange(14.0).reshape(7, 2), torch.ones(7, 1)
    s, p = exact._map_rows(fn, 3, a, b)
    assert calls == [3, 3, 1] and torch.equal(s, a + b) and torch.equal(p, a.sum(-1))
    assert torch.equal(exact._map_rows(lambda u: 2 * u, 2, a), 2 * a)
    empty = exact._map_rows(fn, 3, a[:0], b[:0])
    assert empty[0].shape == (0, 2) and empty[1].shape == (0,)
    assert exact._chunk_rows(10, torch.float32) == exact._CHUNK_BYTES // 40
    assert exact._chunk_rows(10**12, F64) == 1


def test_blocks_respect_the_bound(monkeypatch):
    """With the default bound, the (rows, K, N) temporaries of a Gaussian mixture and the
    (rows, K, N, N) products of the rotations stay under _CHUNK_BYTES."""
    seen = []
    real = exact._map_rows

    def spy(fn, rows, *args):
        seen.append((rows, args[0].shape))
        return real(fn, rows, *args)

    monkeypatch.setattr(exact, "_map_rows", spy)
    data = fs.toy.random_mixture(64, 4)
    x = torch.randn(3000, 64, dtype=F64)
    exact_field(fs.EDM(), data).denoiser(x, 1.0)
    posterior, rotations = seen[0], seen[1:]
    assert posterior == (exact._CHUNK_BYTES // (4 * 64 * 8), (3000, 64))
    assert rotations and all(r * 4 * 64 * 64 * 8 <= exact._CHUNK_BYTES for r, _ in rotations)
