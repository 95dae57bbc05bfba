"""Randomness of a solve: per-sample noise streams, and a per-sample Brownian path that stays
consistent when an adaptive SDE solver rejects a step.

Every draw is made for *all* samples, every time, in a fixed order, whatever the samples' states:
sample i's k-th draw is therefore the same whatever the batch size or the other samples.

The streams come from the counter-based generator Philox4x32-10 (Salmon, Moraes, Dror & Shaw 2011,
"Parallel random numbers: as easy as 1, 2, 3", SC'11, Sec. 4.2 and Table 2; the generator of CUDA's
curand and of torch's CUDA generator): a bijection of a 128-bit counter under a 64-bit key,
computed here in torch integer ops on the state's own device. Its integer output is the same bit
for bit on every device, and no noise is drawn on the host.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._validation import check_event_shape, check_int

# Philox4x32 (Salmon et al. 2011, Sec. 4.2; Random123's philox.h): round multipliers, Weyl key increments
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
PHILOX_ROUNDS = 10
_MASK32 = 0xFFFFFFFF
NORMALS_PER_BLOCK = 4  # one Philox block (four 32-bit words) makes two Box-Muller pairs
# counter word c3 of the draws that are not positions of the Gaussian stream (gamma rounds): top bit set
_SPECIAL_LANE = 1 << 31
_GAMMA_MAX_ROUNDS = 64  # rejection rounds of Marsaglia-Tsang; each accepts with probability >= 0.95


def philox4x32(counter: torch.Tensor, key, rounds: int = PHILOX_ROUNDS) -> torch.Tensor:
    """Philox4x32-``rounds`` (Salmon et al. 2011, Sec. 4.2): the four 32-bit counter words
    ``c0..c3`` as an int64 tensor of shape ``(4, ...)``, ``key = (k0, k1)`` two 32-bit ints; returns
    the four output words, shape ``(4, ...)``, int64 in ``[0, 2^32)``. One round is

        (c0, c1, c2, c3) <- (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1, lo(M0 c0)),

    ``hi``/``lo`` the upper/lower 32-bit halves of the 64-bit product, with the key bumped by the
    Weyl constants ``(W0, W1)`` between rounds. A product of two 32-bit values is formed in int64,
    whose multiplication wraps modulo 2^64: its bits are the exact unsigned product's, so
    ``(p >> 32) & 0xFFFFFFFF`` is the high word even when the int64 reads negative. Integer ops
    only: the same bits on every device.
    """
    counter = torch.as_tensor(counter)
    if counter.dtype != torch.int64 or counter.shape[:1] != (4,):
        raise ValueError(f"counter must be an int64 tensor of shape (4, ...), got {counter.dtype} "
                         f"{tuple(counter.shape)}")
    a, lo = _philox_pairs(counter.unbind(0), key, check_int("rounds", rounds, 1))
    # an even number of rounds leaves a = [c0, c2], lo = [c1, c3]; an odd one a = [c2, c0], lo = [c3, c1]
    if rounds % 2 == 0:
        return torch.stack([a[0], lo[0], a[1], lo[1]])
    return torch.stack([a[1], lo[1], a[0], lo[0]])


def _philox_pairs(counter, key, rounds: int = PHILOX_ROUNDS):
    """The rounds of :func:`philox4x32` on the words ``counter = (c0, c1, c2, c3)`` (int64 tensors
    that broadcast together), two words per tensor op: ``a`` holds the two words that are
    multiplied in a round and ``lo`` the low halves of the last products. Returns ``(a, lo)``
    (see :func:`philox4x32` for their order)."""
    c0, c1, c2, c3 = counter
    shape = torch.broadcast_shapes(c0.shape, c1.shape, c2.shape, c3.shape)
    k0, k1 = (int(k) & _MASK32 for k in key)
    view = (2,) + (1,) * len(shape)
    round_keys = []
    for r in range(rounds):
        # round r multiplies [c0, c2] (r even) or [c2, c0] (r odd): hi(M0 c0) takes k1, hi(M1 c2) k0
        round_keys.append([k1, k0] if r % 2 == 0 else [k0, k1])
        k0, k1 = (k0 + PHILOX_W0) & _MASK32, (k1 + PHILOX_W1) & _MASK32
    device = c0.device
    round_keys = torch.tensor(round_keys, dtype=torch.int64, device=device).view((rounds,) + view)
    mults = torch.tensor([[PHILOX_M0, PHILOX_M1], [PHILOX_M1, PHILOX_M0]], dtype=torch.int64,
                         device=device).view((2,) + view)
    a, lo = torch.stack(torch.broadcast_tensors(c0, c2)), None
    for r in range(rounds):
        p = a * mults[r % 2]
        h = p >> 32
        # each high half is xored with the low half of the *other* product (the first round: c3, c1)
        if lo is None:
            h[0] ^= c3
            h[1] ^= c1
        else:
            h[0] ^= lo[1]
            h[1] ^= lo[0]
        h ^= round_keys[r]
        h &= _MASK32
        a, lo = h, p  # lo's upper bits are garbage until masked: the xor above is masked after
    return a, lo & _MASK32


def box_muller(radius_words: torch.Tensor, angle_words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent standard normals per pair of 32-bit words (Box & Muller 1958), in float64:
    ``u = (w_r + 1/2) 2^-32`` in (0, 1) (never 0, so the log is finite), ``theta = 2 pi w_a 2^-32``,
    ``(z1, z2) = sqrt(-2 ln u) (cos theta, sin theta)``. The radius is at most ``sqrt(66 ln 2) = 6.76``:
    the law's radius tail beyond it has probability ``2^-33 = 1.2e-10`` (``P(|z| > 6.76) = 1.3e-11``)."""
    z = _box_muller_pairs(radius_words, angle_words)
    return z[..., 0], z[..., 1]


def _box_muller_pairs(radius_words: torch.Tensor, angle_words: torch.Tensor) -> torch.Tensor:
    """:func:`box_muller` as one tensor ``(..., 2)``: ``[..., 0]`` the cosine normal, ``[..., 1]`` the sine one."""
    u = radius_words.to(torch.float64).add_(0.5).mul_(2.0**-32)
    radius = u.log_().mul_(-2.0).sqrt_()
    theta = angle_words.to(torch.float64).mul_(2.0 * math.pi * 2.0**-32)
    return torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1).mul_(radius.unsqueeze(-1))


def philox_key(seed: int, stream: int) -> tuple[int, int]:
    """The 64-bit Philox key of ``(seed, stream)``: two 32-bit words of numpy's SeedSequence hash of
    ``[seed, stream]`` (any size of seed; nearby seeds give unrelated keys)."""
    words = np.random.SeedSequence([int(seed), int(stream)]).generate_state(2, dtype=np.uint32)
    return int(words[0]), int(words[1])


class NoiseSource:
    """Independent Gaussian streams per sample, made on the state's device.

    ``scheme="philox"`` (default): sample ``j = offset + i`` has its own stream of standard
    normals ``z_j[0], z_j[1], ...``: ``z_j[4b .. 4b+3]`` come from the Philox4x32-10 block with
    counter ``(j mod 2^32, j div 2^32, b mod 2^32, b div 2^32)`` under the key of ``(seed, stream)``
    (:func:`philox_key`), by Box-Muller on its two pairs of words (:func:`box_muller`). Each
    :meth:`randn` takes the next ``prod(event_shape)`` normals of every sample's stream. The noise
    of a sample therefore depends only on ``(seed, stream, offset + i, draw number)``: not on the
    batch size, the other samples, how the batch is split (pass ``offset`` for a later part) or the
    device (the integer words are identical everywhere; the float64 transform may differ by an ulp
    between devices' log/sin/cos). ``stream`` separates independent uses of one seed, e.g. the
    prior draw and the solver's noise. Normals are made in float64 and cast once, so a float32 run
    sees the float64 run's noise rounded.

    ``scheme="blocks"``: the scheme of flowsolve before the counter-based generator (samples in
    blocks of 64, one ``torch.Generator`` per block seeded by ``(seed, stream, block)``, drawn on
    the CPU in float64 and copied over): only to reproduce results computed with it.

    ``event_shape`` is one sample's shape (an int for vectors).
    """

    BLOCK = 64
    SCHEMES = ("philox", "blocks")
    # Philox blocks per tensor op on the CPU: the int64 intermediates stay in cache, and the ops stay
    # under torch's intra-op grain (on a loaded machine its thread pool costs 20 ms per op, measured)
    CPU_CHUNK = 8192
    # with a thread pool, blocks per float op: torch runs cos on 2048 elements or more in the pool
    CPU_FLOAT_CHUNK = 512
    DEVICE_CHUNK = 1 << 20

    def __init__(self, seed: int, n: int, event_shape, dtype=torch.float32, device=None, offset: int = 0,
                 stream: int = 0, scheme: str = "philox"):
        seed, offset = check_int("seed", seed, 0), check_int("offset", offset, 0)
        stream = check_int("stream", stream, 0)
        if scheme not in self.SCHEMES:
            raise ValueError(f"scheme must be one of {list(self.SCHEMES)}, got {scheme!r}")
        self.n, self.event_shape = check_int("n", n, 0), check_event_shape("event_shape", event_shape)
        if offset + self.n > 2**63:
            raise ValueError(f"offset + n must be at most 2^63 (sample indices are int64), got {offset + self.n}")
        self.dtype, self.device, self.scheme = dtype, device, scheme
        if scheme == "blocks":
            self._init_blocks(seed, stream, offset)
            return
        self.key, self._block_seed = philox_key(seed, stream), (seed, stream, offset)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        index = torch.arange(offset, offset + self.n, dtype=torch.int64, device=dev)
        self._index_words = (index & _MASK32, index >> 32)  # counter words c0, c1 of each sample
        self._position = 0  # normals of every stream used so far
        self._made = None  # (stream position, normals (n, m)) made ahead of use
        self._special_calls = 0  # gamma draws made so far (each has its own counter range)

    def _init_blocks(self, seed, stream, offset):
        idx = np.arange(offset, offset + self.n)
        blocks = idx // self.BLOCK
        self._gens = []
        for b in np.unique(blocks):
            state = np.random.SeedSequence([seed, int(stream), int(b)]).generate_state(2, dtype=np.uint32)
            self._gens.append(torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1])))
        first_block = {int(b): j for j, b in enumerate(np.unique(blocks))}
        self._rows = torch.as_tensor([first_block[int(b)] * self.BLOCK + int(i % self.BLOCK)
                                      for b, i in zip(blocks, idx)], dtype=torch.long)

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    @property
    def _device(self) -> torch.device:
        return self._index_words[0].device

    # --- the counter-based streams -------------------------------------------------------

    def _philox_words(self, rows, c2: torch.Tensor, c3: torch.Tensor):
        """Philox pairs ``(a, lo)`` (see :func:`_philox_pairs`) for the samples ``rows`` (a slice or
        an index tensor) and the counter words ``c2, c3`` (shape ``(m,)``): shapes ``(2, rows, m)``."""
        lo_idx, hi_idx = (w[rows].unsqueeze(1) for w in self._index_words)
        return _philox_pairs((lo_idx, hi_idx, c2.unsqueeze(0), c3.unsqueeze(0)), self.key)

    def _normal_blocks(self, first: int, count: int) -> torch.Tensor:
        """Normals of the stream blocks ``first .. first + count - 1`` of every sample:
        ``(n, 4 count)`` float64, block b's four normals at ``4 (b - first) ..``."""
        out = torch.empty((self.n, count, NORMALS_PER_BLOCK), dtype=torch.float64, device=self._device)
        block = torch.arange(first, first + count, dtype=torch.int64, device=self._device)
        c2, c3 = block & _MASK32, block >> 32
        on_cpu = self._device.type == "cpu"
        step = max(1, (self.CPU_CHUNK if on_cpu else self.DEVICE_CHUNK) // count)
        for r0 in range(0, self.n, step):
            rows = slice(r0, min(self.n, r0 + step))
            a, lo = self._philox_words(rows, c2, c3)  # 10 rounds (even): a = [w0, w2], lo = [w1, w3]
            a, lo = a.reshape(2, -1), lo.reshape(2, -1)
            flat = out[rows].view(-1, NORMALS_PER_BLOCK)
            piece = self.CPU_FLOAT_CHUNK if on_cpu and torch.get_num_threads() > 1 else flat.shape[0]
            for s0 in range(0, flat.shape[0], piece):
                cols = slice(s0, s0 + piece)
                # pairs (w0, w1) and (w2, w3): flat[:, 2p + q] is pair p's cos (q = 0) or sin (q = 1) normal
                flat[cols].view(-1, 2, 2).transpose(0, 1).copy_(_box_muller_pairs(a[:, cols], lo[:, cols]))
        return out.reshape(self.n, count * NORMALS_PER_BLOCK)

    def _stream_normals(self, count: int) -> torch.Tensor:
        """The next ``count`` normals of every sample's stream, ``(n, count)`` float64. Blocks are
        made ahead, at least ``CPU_CHUNK`` (or ``DEVICE_CHUNK``) over the batch, and kept: a small
        batch then pays the generator's fixed cost per op once for many draws."""
        start, stop = self._position, self._position + count
        held = self._made
        if held is None or not (held[0] <= start and stop <= held[0] + held[1].shape[1]):
            first, last = start // NORMALS_PER_BLOCK, (stop - 1) // NORMALS_PER_BLOCK
            chunk = self.CPU_CHUNK if self._device.type == "cpu" else self.DEVICE_CHUNK
            blocks = max(last - first + 1, -(-chunk // max(1, self.n)))
            held = self._made = (first * NORMALS_PER_BLOCK, self._normal_blocks(first, blocks))
        self._position = stop
        return held[1][:, start - held[0]:stop - held[0]]

    def _philox_randn(self, dtype) -> torch.Tensor:
        if self.n == 0 or self.dim == 0:
            return torch.empty((self.n, *self.event_shape), dtype=dtype, device=self._device)
        return self._stream_normals(self.dim).reshape(self.n, *self.event_shape).to(dtype, copy=True)

    def _philox_gamma(self, concentration: float) -> torch.Tensor:
        """``Gamma(a, 1)`` per sample by Marsaglia & Tsang 2000 ("A simple method for generating
        gamma variables", ACM TOMS 26(3), Sec. 3-6): ``d = a' - 1/3``, ``c = 1/sqrt(9 d)``; round k
        draws ``x ~ N(0, 1)``, ``u ~ U(0, 1)``, ``v = (1 + c x)^3`` and accepts ``d v`` if ``v > 0``
        and ``log u < x^2/2 + d - d v + d log v``; the first accepted round wins. For ``a < 1``,
        ``a' = a + 1`` and the result is multiplied by ``U^(1/a)`` (their Sec. 6 boost). Round k of
        this source's m-th gamma draw uses the Philox block with counter
        ``(j mod 2^32, j div 2^32, m, 2^31 + k)``: apart from the Gaussian stream, and the same for
        sample j whatever the batch. Every round accepts with probability >= 0.95; a sample not
        accepted after 64 rounds (probability < 1e-83) raises."""
        a = float(concentration)
        boost = a < 1.0
        d = (a + 1.0 if boost else a) - 1.0 / 3.0
        c = 1.0 / math.sqrt(9.0 * d)
        call, self._special_calls = self._special_calls, self._special_calls + 1
        dev = self._device
        out = torch.empty(self.n, dtype=torch.float64, device=dev)
        pending = torch.arange(self.n, device=dev)
        c2 = torch.full((1,), call & _MASK32, dtype=torch.int64, device=dev)
        boost_u = None
        for k in range(_GAMMA_MAX_ROUNDS):
            if pending.numel() == 0:
                break
            c3 = torch.full((1,), _SPECIAL_LANE + k, dtype=torch.int64, device=dev)
            a_words, lo_words = self._philox_words(pending, c2, c3)  # (2, m, 1)
            a_words, lo_words = a_words[..., 0], lo_words[..., 0]
            x = box_muller(a_words[:1], lo_words[:1])[0][0]  # the cosine normal of words (w0, w1)
            u = (a_words[1].to(torch.float64) + 0.5) * 2.0**-32  # w2
            if k == 0 and boost:
                boost_u = (lo_words[1].to(torch.float64) + 0.5) * 2.0**-32  # w3 of round 0
            v = (1.0 + c * x) ** 3
            safe_v = torch.where(v > 0, v, torch.ones_like(v))
            accept = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * safe_v + d * torch.log(safe_v))
            out[pending[accept]] = d * v[accept]
            pending = pending[~accept]
        else:
            if pending.numel():
                raise RuntimeError(f"gamma: {pending.numel()} sample(s) not accepted after {_GAMMA_MAX_ROUNDS} rounds")
        if boost:
            out = out * boost_u ** (1.0 / a)
        return out

    def _philox_kernel_noise(self, kernel) -> torch.Tensor:
        """The Gaussian kernel's noise is the next :meth:`randn` draw (float64); the Student-t
        kernel's (PFGM++) is ``g / sqrt(u)`` with ``g`` that draw and ``u = Gamma(D/2, 1) / (D/2)``
        (= chi2_D / D) from :meth:`gamma`, one per sample (as ``StudentTKernel.sample``)."""
        g = self._philox_randn(torch.float64)
        if kernel.name == "gaussian":
            return g
        half_d = 0.5 * kernel.D
        u = self._philox_gamma(half_d) / half_d
        return g / torch.sqrt(u).reshape(self.n, *([1] * len(self.event_shape)))

    # --- the block scheme (and GeneratorNoise) --------------------------------------------

    def _gather(self, draw) -> torch.Tensor:
        """``draw(generator, rows, device)`` per block (one block of rows each, on the CPU), gathered
        to the batch's rows."""
        if self.n == 0:
            return draw(torch.Generator(), 0, "cpu")
        return torch.cat([draw(g, self.BLOCK, "cpu") for g in self._gens], dim=0)[self._rows]

    def _deliver(self, out: torch.Tensor, dtype) -> torch.Tensor:
        """Cast (where the draw is: the same rounding on every device), then move; a CPU draw bound
        for an accelerator goes through pinned memory without blocking the host."""
        out = out.to(dtype)
        device = torch.device(self.device) if self.device is not None else out.device
        if out.device.type == "cpu" and device.type != "cpu":
            return out.pin_memory().to(device, non_blocking=True)
        return out.to(device)

    # --- draws ------------------------------------------------------------------------------

    def randn(self) -> torch.Tensor:
        """The next standard-normal draw of every sample, shape ``(n, *event_shape)``."""
        if self.scheme == "philox":
            return self._philox_randn(self.dtype)
        out = self._gather(lambda g, m, dev: torch.randn(m, *self.event_shape, generator=g, dtype=torch.float64,
                                                         device=dev))
        return self._deliver(out, self.dtype)

    def gamma(self, concentration: float) -> torch.Tensor:
        """The next ``Gamma(concentration, 1)`` draw of every sample, shape ``(n,)``, float64."""
        if self.scheme == "philox":
            concentration = float(concentration)
            if not (math.isfinite(concentration) and concentration > 0):
                raise ValueError(f"concentration must be a finite number > 0, got {concentration!r}")
            return self._philox_gamma(concentration)
        out = self._gather(lambda g, m, dev: torch._standard_gamma(
            torch.full((m,), float(concentration), dtype=torch.float64, device=dev), generator=g))
        return self._deliver(out, torch.float64)

    def kernel_noise(self, kernel, dtype=torch.float64) -> torch.Tensor:
        """A draw of the process kernel's unit noise ``n`` for every sample, shape
        ``(n, *event_shape)``, in ``dtype`` (float64 by default: scale it, then cast). The Gaussian
        and Student-t (PFGM++) kernels are drawn from the streams; another kernel by its own
        ``sample(shape, generator=...)`` from per-block CPU generators (the ``"blocks"`` scheme)."""
        if self.scheme == "philox" and getattr(kernel, "name", None) in ("gaussian", "student_t"):
            return self._philox_kernel_noise(kernel).to(dtype)
        if self.scheme == "philox" and not hasattr(self, "_gens"):
            self._init_blocks(*self._block_seed)  # another kernel: its own sampler, per-block generators
        out = self._gather(lambda g, m, dev: kernel.sample((m, *self.event_shape), generator=g, dtype=torch.float64,
                                                           device=dev))
        return self._deliver(out, dtype)


class GeneratorNoise(NoiseSource):
    """Draws from one ``torch.Generator`` for the whole batch (``generator=`` in
    :func:`~flowsolve.solve`/:func:`~flowsolve.sample`), on the generator's own device (a CUDA
    generator draws on the GPU): reproducible for a fixed batch, but sample i's noise then
    depends on the batch size, unlike :class:`NoiseSource` streams."""

    scheme = "generator"

    def __init__(self, generator: torch.Generator, n: int, event_shape, dtype=torch.float32, device=None):
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator, self.n, self.event_shape = generator, check_int("n", n, 0), check_event_shape("event_shape", event_shape)
        self.dtype, self.device = dtype, device

    def _gather(self, draw) -> torch.Tensor:
        return draw(self.generator, self.n, self.generator.device)


class BrownianMemory:
    """One Brownian path per sample, consistent across rejected steps (Rackauckas & Nie 2017,
    "Adaptive methods for stochastic differential equations via natural embeddings and rejection
    sampling with memory").

    A sample at time ``t`` asks for the increment ``W(t_next) - W(t)``. Points of its path beyond
    ``t`` that earlier, rejected attempts have fixed are kept (time and increment from the previous
    kept point); the new increment sums the kept increments up to ``t_next`` and, if ``t_next`` is
    not a kept point, draws the rest from the Brownian bridge between the kept points around it
    (``W(s) | W(0) = 0, W(L) = w  ~  N(s w / L, s (L - s) / L)``), or freshly beyond the last one.
    Each attempt uses exactly one standard-normal draw ``z`` per sample (used or not), so the path
    of sample i depends on its own stream only. After the attempt, :meth:`commit` moves accepted
    samples to ``t_next`` (dropping the points they passed) and keeps ``t_next`` as a point of the
    path of rejected ones. The path is therefore a Brownian motion whatever the step sizes, and a
    rejection neither redraws nor selects the noise.

    Times are float64; increments are in the state's dtype. ``direction`` is +1 or -1 (the sign of
    ``t_end - t_start``); "beyond" means further along it.
    """

    def __init__(self, n: int, event_shape: tuple, direction: float, dtype, device, capacity: int = 4):
        self.direction = float(direction)
        self.times = torch.full((n, capacity), math.nan, dtype=torch.float64, device=device)
        self.incs = torch.zeros((n, capacity, *event_shape), dtype=dtype, device=device)
        self.count = torch.zeros(n, dtype=torch.long, device=device)
        self._pending = None
        # the largest count as of the last commit, copied to host memory without waiting for the
        # device (pinned memory for an accelerator); read at the next commit, after the adaptive
        # loop's own synchronisation has completed the copy
        on_host = self.count.device.type == "cpu"
        self._max_count = torch.zeros(1, dtype=torch.long, pin_memory=not on_host and torch.cuda.is_available())
        self._max_count_value = self._max_count.numpy()  # a view of the same host memory
        self._max_count_copied = None if on_host else _event(self.count.device)

    def _grow(self):
        self.times = torch.cat([self.times, torch.full_like(self.times, math.nan)], dim=1)
        self.incs = torch.cat([self.incs, torch.zeros_like(self.incs)], dim=1)

    def increment(self, rows: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``W(t_next) - W(t)`` for the samples ``rows`` (at times ``t``), using the draws ``z``."""
        times, incs, count = self.times[rows], self.incs[rows], self.count[rows]
        k = times.shape[1]
        slot = torch.arange(k, device=times.device)
        kept = slot < count.unsqueeze(1)
        dist = (times - t.unsqueeze(1)) * self.direction  # > 0 for kept points
        h = (t_next - t) * self.direction
        passed = kept & (dist <= h.unsqueeze(1))  # a prefix: kept points are in path order
        n_passed = passed.sum(1)
        view = (-1, k) + (1,) * (incs.ndim - 2)
        summed = (incs * passed.reshape(view).to(incs.dtype)).sum(1)
        before = (n_passed - 1).clamp(min=0)
        d_before = torch.where(n_passed > 0, dist.gather(1, before.unsqueeze(1)).squeeze(1), torch.zeros_like(h))
        exact = (n_passed > 0) & (d_before == h)
        inside = (n_passed < count) & ~exact  # t_next falls between two kept points (or t and the first)
        after = n_passed.clamp(max=k - 1)
        d_after = dist.gather(1, after.unsqueeze(1)).squeeze(1)
        w_after = incs[torch.arange(len(rows), device=incs.device), after]
        gap = torch.where(inside, d_after - d_before, torch.ones_like(h))
        frac = torch.where(inside, (h - d_before) / gap, torch.zeros_like(h))
        bridge_mean = _rows_times(frac, w_after)
        bridge_std = torch.sqrt((frac * (1.0 - frac) * gap).clamp(min=0.0))
        fresh_std = torch.sqrt((h - d_before).clamp(min=0.0))
        std = torch.where(inside, bridge_std, torch.where(exact, torch.zeros_like(h), fresh_std))
        piece = torch.where(_per_row(inside, z), bridge_mean, torch.zeros_like(z)) + _rows_times(std, z)
        self._pending = (rows, t_next, n_passed, exact, inside, piece)
        return summed + piece

    def commit(self, accepted: torch.Tensor):
        """Keep the last :meth:`increment` call's attempt: ``accepted`` (per row of that call) moves
        those samples to ``t_next``; the others keep ``t_next`` as a point of their path."""
        rows, t_next, n_passed, exact, inside, piece = self._pending
        self._pending = None
        # a commit adds at most one point per sample: room for the last known largest count + 1
        # is enough, and that count needs no read-back now
        if self._max_count_copied is not None:
            self._max_count_copied.synchronize()  # done already when the loop has synchronised
        if int(self._max_count_value[0]) + 1 > self.times.shape[1]:
            self._grow()
        times, incs, count = self.times[rows], self.incs[rows], self.count[rows]
        k = times.shape[1]
        slot = torch.arange(k, device=times.device).unsqueeze(0)
        r = torch.arange(len(rows), device=times.device).unsqueeze(1)
        # accepted: drop the points passed; the point after t_next keeps only the increment beyond it
        src = (slot + n_passed.unsqueeze(1)).clamp(max=k - 1)
        acc_times = torch.where(slot < (count - n_passed).unsqueeze(1), times[r, src], math.nan)
        acc_incs = incs[r, src]
        acc_incs[:, 0] = torch.where(_per_row(inside, piece), acc_incs[:, 0] - piece, acc_incs[:, 0])
        # rejected: insert t_next after the points passed (unless it is one of them)
        insert = (~exact).unsqueeze(1)
        at = n_passed.unsqueeze(1)
        src_r = torch.where(insert & (slot > at), slot - 1, slot).clamp(max=k - 1)
        rej_times = torch.where(insert & (slot == at), t_next.unsqueeze(1), times[r, src_r])
        rej_incs = incs[r, src_r]
        new_slot = insert & (slot == at)
        rej_incs = torch.where(_per_slot(new_slot, rej_incs), piece.unsqueeze(1), rej_incs)
        shrunk = insert & (slot == at + 1) & inside.unsqueeze(1)
        rej_incs = torch.where(_per_slot(shrunk, rej_incs), rej_incs - piece.unsqueeze(1), rej_incs)
        rej_count = count + (~exact).long()
        rej_times = torch.where(slot < rej_count.unsqueeze(1), rej_times, math.nan)
        keep = accepted.unsqueeze(1)
        self.times[rows] = torch.where(keep, acc_times, rej_times)
        self.incs[rows] = torch.where(_per_slot(keep.expand(-1, k), acc_incs), acc_incs, rej_incs)
        self.count[rows] = torch.where(accepted, count - n_passed, rej_count)
        self._max_count.copy_(self.count.max().reshape(1), non_blocking=self._max_count_copied is not None)
        if self._max_count_copied is not None:
            self._max_count_copied.record()


def _event(device: torch.device):
    """An event of ``device``'s stream (to know when an asynchronous copy has landed), or None
    where the backend has none."""
    backend = getattr(torch, device.type, None)
    event = getattr(backend, "Event", None)
    return event() if event is not None else None


def _per_row(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(mask.shape[0], *([1] * (like.ndim - 1)))


def _per_slot(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(*mask.shape, *([1] * (like.ndim - 2)))


def _rows_times(scale: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``scale[i] * v[i]`` per row (scale float64, v in its own dtype)."""
    return _per_row(scale.to(v.dtype), v) * v
