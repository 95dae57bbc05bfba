"""The counter-based noise of ``fs.NoiseSource`` (Philox4x32-10, Salmon et al. 2011): the raw
words against Random123's published known-answer vectors and a pure-Python reference written
from the paper, the Box-Muller transform at its edges, the per-sample property (batch sizes,
splits, offsets across the 32-bit word boundary, successive draws of any size), and the laws:
moments, KS tests, and correlations across samples, draws, streams, seeds and within a block."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import flowsolve as fs
from flowsolve.solvers.noise import NORMALS_PER_BLOCK, box_muller, philox4x32, philox_key

F32, F64 = torch.float32, torch.float64
MASK = 0xFFFFFFFF


def philox_reference(counter, key, rounds=10):
    """Philox4x32 from Salmon et al. 2011, Sec. 4.2, in Python integers (no wrapping arithmetic)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(rounds):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK, (p0 >> 32) ^ c3 ^ k1, p0 & MASK
        k0, k1 = (k0 + 0x9E3779B9) & MASK, (k1 + 0xBB67AE85) & MASK
    return [c0, c1, c2, c3]


# Random123 kat_vectors, philox4x32_10 (counter, key, output)
KAT = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
       ((MASK,) * 4, (MASK, MASK), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
       ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]


@pytest.mark.parametrize("counter, key, expected", KAT)
def test_philox_known_answers(counter, key, expected):
    out = philox4x32(torch.tensor(counter, dtype=torch.int64).view(4, 1), key)
    assert [int(w) for w in out[:, 0]] == list(expected)
    assert philox_reference(counter, key) == list(expected)


@pytest.mark.parametrize("rounds", [1, 7, 10])
def test_philox_matches_the_reference_on_random_counters(rounds):
    rng = np.random.default_rng(0)
    counters = rng.integers(0, 2**32, size=(4, 300), dtype=np.uint64).astype(np.int64)
    counters[:, 0] = MASK  # the largest words: products read negative in int64
    key = tuple(int(k) for k in rng.integers(0, 2**32, size=2, dtype=np.uint64))
    out = philox4x32(torch.from_numpy(counters), key, rounds=rounds)
    assert out.min() >= 0 and out.max() <= MASK
    for j in range(counters.shape[1]):
        assert [int(w) for w in out[:, j]] == philox_reference([int(c) for c in counters[:, j]], key, rounds)


def test_box_muller_edges():
    words = torch.tensor([0, MASK, 1 << 31], dtype=torch.int64)
    cos, sin = box_muller(words, torch.tensor([0, 1 << 30, MASK], dtype=torch.int64))
    radius = torch.hypot(cos, sin)
    assert torch.isfinite(radius).all()
    # u = (w + 1/2) 2^-32: w = 0 gives the largest radius sqrt(66 ln 2); w = 2^31 gives u = 1/2 + 2^-33
    assert radius[0].item() == pytest.approx(math.sqrt(66 * math.log(2)), rel=1e-12)
    assert radius[2].item() == pytest.approx(math.sqrt(-2 * math.log(0.5 + 2.0**-33)), rel=1e-12)
    assert sin[0].item() == 0.0 and cos[1].item() == pytest.approx(0.0, abs=1e-15)  # angles 0 and pi/2


def test_noise_is_the_philox_stream_of_each_sample():
    """Sample j's normals 4b..4b+3 are Box-Muller on the Philox block (j lo, j hi, b lo, b hi)."""
    seed, stream, offset = 7, 2, 2**32 - 2  # sample indices cross the 32-bit word boundary
    src = fs.NoiseSource(seed, 4, 6, dtype=F64, offset=offset, stream=stream)
    z = torch.cat([src.randn(), src.randn()], dim=1)  # 12 normals = 3 blocks per sample
    key = philox_key(seed, stream)
    for i in range(4):
        j = offset + i
        for b in range(3):
            w = philox_reference([j & MASK, j >> 32, b, 0], key)
            cos, sin = box_muller(torch.tensor([w[0], w[2]]), torch.tensor([w[1], w[3]]))
            expected = torch.stack([cos, sin], dim=-1).reshape(-1)  # (cos, sin) of pair (w0, w1), then (w2, w3)
            assert torch.equal(z[i, NORMALS_PER_BLOCK * b:NORMALS_PER_BLOCK * (b + 1)], expected)


@pytest.mark.parametrize("event", [(1,), (3,), (2, 5)])
def test_per_sample_across_batches_splits_and_draw_sizes(event):
    whole = fs.NoiseSource(11, 300, event, dtype=F64)
    head = fs.NoiseSource(11, 3, event, dtype=F64)
    part = fs.NoiseSource(11, 150, event, dtype=F64, offset=150)
    one = fs.NoiseSource(11, 1, event, dtype=F64, offset=299)
    for _ in range(5):  # successive draws cross and straddle the 4-normal blocks
        a, b, c, d = whole.randn(), head.randn(), part.randn(), one.randn()
        assert a.shape == (300, *event)
        assert torch.equal(b, a[:3]) and torch.equal(c, a[150:]) and torch.equal(d, a[299:])
    # the stream does not depend on how it is cut into draws
    flat = fs.NoiseSource(11, 5, 12, dtype=F64).randn()
    cut = fs.NoiseSource(11, 5, 4, dtype=F64)
    assert torch.equal(torch.cat([cut.randn() for _ in range(3)], dim=1), flat)


def test_device_and_dtype():
    a = fs.NoiseSource(3, 9, 5, dtype=F64).randn()
    b = fs.NoiseSource(3, 9, 5, dtype=F32, device="cpu").randn()
    assert b.dtype == F32 and b.device.type == "cpu" and torch.equal(b, a.float())
    assert fs.NoiseSource(3, 0, 5).randn().shape == (0, 5)


def test_laws_and_independence():
    n, d = 4000, 48
    z = fs.NoiseSource(5, n, d, dtype=F64).randn()
    flat = z.reshape(-1).numpy()
    se = 1 / math.sqrt(flat.size)
    assert abs(flat.mean()) < 5 * se and abs(flat.var() - 1) < 5 * math.sqrt(2) * se
    assert abs(stats.skew(flat)) < 5 * math.sqrt(6) * se and abs(stats.kurtosis(flat)) < 5 * math.sqrt(24) * se
    assert stats.kstest(flat, "norm").pvalue > 1e-3
    # |z| tail up to the radius bound: P(|z| > 4) matches the normal law
    tail = (np.abs(flat) > 4).mean()
    assert abs(tail - 2 * stats.norm.sf(4)) < 5 * math.sqrt(2 * stats.norm.sf(4) / flat.size)

    def corr(u, v):
        return np.corrcoef(u.reshape(-1), v.reshape(-1))[0, 1]

    limit = 5 / math.sqrt((n - 1) * d)
    assert abs(corr(z[:-1].numpy(), z[1:].numpy())) < limit  # adjacent samples (adjacent counters)
    nxt = fs.NoiseSource(5, n, d, dtype=F64)
    nxt.randn()
    assert abs(corr(z.numpy(), nxt.randn().numpy())) < limit  # successive draws
    for other in (fs.NoiseSource(5, n, d, dtype=F64, stream=1), fs.NoiseSource(6, n, d, dtype=F64)):
        assert abs(corr(z.numpy(), other.randn().numpy())) < limit  # streams, seeds
    blocks = z.reshape(n, -1, NORMALS_PER_BLOCK).numpy()[:, :12]  # one Philox block's four normals
    for p, q in ((0, 1), (0, 2), (1, 3), (2, 3)):
        assert abs(corr(blocks[..., p], blocks[..., q])) < 5 / math.sqrt(blocks[..., 0].size)
        assert abs(corr(blocks[..., p] ** 2, blocks[..., q] ** 2)) < 5 * math.sqrt(2) / math.sqrt(blocks[..., 0].size)


@pytest.mark.parametrize("concentration", [0.4, 2.5, 1e6])
def test_gamma_law_and_per_sample(concentration):
    g = fs.NoiseSource(4, 3000, 2).gamma(concentration)
    assert g.dtype == F64 and (g > 0).all()
    assert stats.kstest(g.numpy(), stats.gamma(concentration).cdf).pvalue > 1e-3
    part = fs.NoiseSource(4, 10, 2, offset=2990).gamma(concentration)
    assert torch.equal(part, g[2990:])


def test_gamma_and_gaussian_draws_do_not_share_words():
    src = fs.NoiseSource(8, 2000, 1, dtype=F64)
    g = src.gamma(3.0)
    z = src.randn()
    assert torch.equal(z, fs.NoiseSource(8, 2000, 1, dtype=F64).randn())  # gamma leaves the normal stream alone
    assert abs(np.corrcoef(g.numpy(), z[:, 0].numpy())[0, 1]) < 5 / math.sqrt(2000)


def test_student_t_kernel_noise():
    D, N = 5.0, 4
    t = fs.NoiseSource(2, 4000, N, dtype=F64).kernel_noise(fs.PFGMPP(D=D).kernel)
    f = ((t**2).sum(-1) / N).numpy()  # ||n||^2 / N ~ F(N, D)
    assert stats.kstest(f, stats.f(N, D).cdf).pvalue > 1e-3
    part = fs.NoiseSource(2, 5, N, dtype=F64, offset=100).kernel_noise(fs.PFGMPP(D=D).kernel)
    assert torch.equal(part, torch.from_numpy(t.numpy()[100:105]))


def test_blocks_scheme_reproduces_the_previous_draws():
    """scheme='blocks': block b of 64 samples draws from a CPU generator seeded by SeedSequence
    (seed, stream, b), in float64."""
    seed, stream = 3, 1
    z = fs.NoiseSource(seed, 70, 2, dtype=F64, stream=stream, scheme="blocks").randn()
    for b in (0, 1):
        state = np.random.SeedSequence([seed, stream, b]).generate_state(2, dtype=np.uint32)
        gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        expected = torch.randn(64, 2, generator=gen, dtype=F64)
        assert torch.equal(z[64 * b:64 * b + 64], expected[:len(z[64 * b:64 * b + 64])])


@pytest.mark.parametrize("kw, match", [(dict(scheme="mt"), "scheme"), (dict(stream=-1), "stream"),
                                        (dict(offset=2**63), "offset")])
def test_validation(kw, match):
    args = dict(seed=0, n=3, event_shape=2)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        fs.NoiseSource(**args)
    with pytest.raises(ValueError, match="concentration"):
        fs.NoiseSource(0, 3, 2).gamma(0.0)
    with pytest.raises(ValueError, match="counter"):
        philox4x32(torch.zeros(3, 2, dtype=torch.int64), (0, 0))
