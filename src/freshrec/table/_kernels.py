"""Compiled kernels behind :class:`freshrec.table.EmbeddingTable`. They trust their input.

Memory layout (see ``table.py`` for the contract these kernels serve):

* ``slots``: uint32[3 * C]; slot ``p`` is words ``3p .. 3p+2``: the low and
  high halves of ``h = _hash(key)`` and ``row + 1`` (0 = empty). ``_hash`` is a bijection on 64
  bits, so the stored hash identifies the key exactly: a probe verifies a key without touching
  its row, and the key is recovered with ``_unhash``. A key's home slot is the top 32 bits
  of ``h`` scaled to ``C`` (any C, so the index grows by 1.5x). Linear probing, backward-shift
  deletion, no tombstones; every int64 is a key.
* ``data``: float32[R, W] rows, ``W = dim + S + META``: the embedding first (what lookups read),
  then the optimizer state (what updates read next to it), then metadata read as uint32 through
  ``meta`` (the same buffer): last-seen event time (int64 ms, two words) and a word with the
  DIRTY bit (31) and the occurrence count (bits 0-30, saturating).
* ``dirty``: int64 keys whose row turned dirty since the last drain (each at most once while
  its row's DIRTY bit is set; removal clears the bit).
* ``ctr``: int64 counters and cursors (indices ``C_*`` below), shared with Python.

Hash-table work is bound by memory latency, so the batch kernels prefetch: the training lookup
by groups (for a group of keys, prefetch all home slots, then walk each probe and prefetch the
matched rows, then do the real work on warm caches: ``_prefetch_group``), read-only probes
software-pipelined (:func:`find_rows`, :func:`lookup_infer`).

Kernels that may need more room return ``(status, i)``: the Python wrapper grows the arrays (or
evicts) and calls again from ``i``; ``pending=1`` says element ``i`` was already admitted.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from freshrec._numba import JIT, prefetch, prefetch1

# ---- statuses -------------------------------------------------------------------------------
OK = 0
NEED_ROWS = 1  # the row arrays are full: grow them
NEED_INDEX = 2  # the index would exceed its load factor: rehash into twice the slots
NEED_EVICT = 3  # max_rows reached: evict, then resume

# ---- row metadata: uint32 words after embedding and state ------------------------------------
META = 3
M_TS_LO, M_TS_HI, M_FLAGS = 0, 1, 2  # offsets from the metadata column
F_DIRTY = np.uint32(1 << 31)
COUNT_MASK = np.uint32((1 << 31) - 1)

# ---- ctr indices ----------------------------------------------------------------------------
C_LIVE, C_HW, C_FREE, C_DIRTY = 0, 1, 2, 3
C_LOOKUPS, C_HITS, C_ADMITTED, C_FILTERED = 4, 5, 6, 7
C_EXPIRED, C_EVICTED, C_REMOVED, C_GRAD_ROWS = 8, 9, 10, 11
C_ASSIGNED, C_SKETCH_INCS, C_SKETCH_DECAYS, C_GRAD_MISSING = 12, 13, 14, 15
C_NONFINITE, C_RNG = 16, 17
C_PENDING_COUNT = 18  # the count decided for an admission paused for growth or eviction
N_CTR = 19

# ---- optimizer kinds (hyper-parameters in hp: float64[8]) -------------------------------------
OPT_SGD = 0  # hp: lr, momentum, weight_decay, nesterov
OPT_ADAGRAD = 1  # hp: lr, eps, weight_decay
OPT_ROWWISE_ADAGRAD = 2  # hp: lr, eps, weight_decay
OPT_ADAM = 3  # hp: lr, beta1, beta2, eps, weight_decay
OPT_FTRL = 4  # hp: alpha, beta, l1, l2

# ---- initializer kinds ------------------------------------------------------------------------
INIT_ZEROS = 0
INIT_UNIFORM = 1  # a=low, b=high
INIT_NORMAL = 2  # a=mean, b=std
INIT_TRUNCATED_NORMAL = 3  # a=mean, b=std, cut at 2 std (TensorFlow's convention)

# Load factor: grow (by 1.5x) when live/slots would exceed 3/4, so the load stays in [1/2, 3/4].
# Comparing the low hash word first makes a probe past a foreign slot cost one compare, so linear
# probing stays cheap at this load.
LOAD_NUM, LOAD_DEN = 3, 4
TRAIN_GROUP = 64  # keys a training lookup prefetches together
PROBE_AHEAD = 24  # a read-only probe prefetches the home slot of the key this far ahead
PROBE_RING = 32  # power of two > PROBE_AHEAD
COPY_LINES = 256  # cache lines a read-only lookup's copy pass prefetches per group
LOOKUP_AHEAD = 32  # keys between the stages of a pipelined read-only lookup (power of two)
PIPELINE_FROM_BYTES = 128 << 20  # a row array on huge pages from this size takes the pipeline
AHEAD = 8  # rows prefetched ahead in the optimizer loop
# a batch's gradients, summed over duplicate IDs, times sqrt(dim) stay within this: so a
# square (Adagrad, Adam, FTRL) and a row's sum of squares (row-wise Adagrad) stay under 1e36,
# finite in float32 (max 3.4e38). Gradients past it are a bug upstream, refused as NaN is.
# The accumulators of squares saturate at float32's max over many steps.
GRAD_MAX = 1e18
_F32_MAX = np.float32(3.4028235e38)
FUSED_INIT_DIM = 32  # up to this dim, init_values draws and maps each value in one pass

_U32 = np.uint64(0xFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SEED_SALT = np.uint64(0xD1B54A32D192ED03)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_M1_INV, _M2_INV = np.uint64(0x96DE1B173F119089), np.uint64(0x319642B2D24D8EC3)  # mod 2**64


@njit(inline="always", **JIT)
def _mix64(x):
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


@njit(inline="always", **JIT)
def _hash(key):
    """splitmix64 of the key: a bijection on 64 bits, so distinct keys never share a hash."""
    return _mix64(np.uint64(key) + _GOLDEN)


@njit(inline="always", **JIT)
def _unhash(h):
    """The key whose ``_hash`` is ``h`` (each step of splitmix64 is invertible)."""
    x = h ^ (h >> np.uint64(31)) ^ (h >> np.uint64(62))
    x = x * _M2_INV
    x = x ^ (x >> np.uint64(27)) ^ (x >> np.uint64(54))
    x = x * _M1_INV
    x = x ^ (x >> np.uint64(30)) ^ (x >> np.uint64(60))
    return np.int64(x - _GOLDEN)


@njit(inline="always", **JIT)
def _slot_hash(slots, p):
    return (np.uint64(slots[3 * p + 1]) << np.uint64(32)) | np.uint64(slots[3 * p])


@njit(inline="always", **JIT)
def _uniform01(x):
    """A uint64 to a float64 in [0, 1) from its top 53 bits."""
    return np.float64(x >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(inline="always", **JIT)
def _row_ts(meta, row, mo):
    return np.int64((np.uint64(meta[row, mo + M_TS_HI]) << np.uint64(32)) | np.uint64(meta[row, mo + M_TS_LO]))


@njit(inline="always", **JIT)
def _set_ts(meta, row, mo, ts):
    u = np.uint64(ts)
    meta[row, mo + M_TS_LO] = np.uint32(u & _U32)
    meta[row, mo + M_TS_HI] = np.uint32(u >> np.uint64(32))


@njit(inline="always", **JIT)
def _home(h, cap):
    """The home slot of hash ``h`` in an index of ``cap`` slots (any cap < 2**32): the top 32
    bits scaled to the range, so growth may be by any factor, not only by doubling."""
    return np.int64(((h >> np.uint64(32)) * np.uint64(cap)) >> np.uint64(32))


@njit(inline="always", **JIT)
def _next(pos, cap):
    pos += 1
    return pos if pos < cap else 0


@njit(inline="always", **JIT)
def _find(slots, cap, key):
    """(row, pos): the key's row and slot, or (-1, first empty slot on its probe path)."""
    return _find_hash(slots, cap, _hash(key))


@njit(inline="always", **JIT)
def _find_hash(slots, cap, h):
    """:func:`_find` of the key whose hash is ``h`` (for callers that hashed it already)."""
    lo = np.uint32(h & _U32)
    hi = np.uint32(h >> np.uint64(32))
    pos = _home(h, cap)
    while True:
        r = slots[3 * pos + 2]
        if r == 0:
            return -1, pos
        if slots[3 * pos] == lo and slots[3 * pos + 1] == hi:
            return np.int64(r) - 1, pos
        pos = _next(pos, cap)


@njit(inline="always", **JIT)
def _put(slots, pos, key, row):
    _put_hash(slots, pos, _hash(key), row)


@njit(inline="always", **JIT)
def _put_hash(slots, pos, h, row):
    slots[3 * pos] = np.uint32(h & _U32)
    slots[3 * pos + 1] = np.uint32(h >> np.uint64(32))
    slots[3 * pos + 2] = np.uint32(row + 1)


@njit(inline="always", **JIT)
def _prefetch_probe(slots, cap, h):
    """Prefetch the cache line of hash ``h``'s home slot and the next one: a probe passes
    ~2 slots of 12 bytes at the index's load of 1/2 to 3/4, so about a quarter of them cross
    into the next 64-byte line (measured on 3.3M keys at load 0.71: 27%; lookup probes 18 ->
    14 ns per key with the second prefetch)."""
    p = 3 * _home(h, cap)
    prefetch1(slots, p)
    q = (p | 15) + 1  # the first word of the next line (the index starts page-aligned)
    if q < slots.shape[0]:
        prefetch1(slots, q)


@njit(inline="always", **JIT)
def _prefetch_row(data, row, c0, c1):
    """Prefetch the cache lines of ``data[row, c0:c1]`` (one per 16 float32 columns)."""
    for c in range(c0, c1, 16):
        prefetch(data, row, c)
    prefetch(data, row, c1 - 1)


@njit(inline="always", **JIT)
def _prefetch_group(slots, cap, data, ids, lo, hi, dim, mo, cand, hs, embeddings):
    """Warm the caches for ``ids[lo:hi]`` and find their rows (group prefetching, for the
    training lookup; inference lookups probe and copy in two passes, see :func:`lookup_infer`).

    Stage 1 hashes every key into ``hs[i - lo]`` and prefetches its home slot; stage 2 walks
    each probe, stores the key's row in ``cand[i - lo]`` (-1 if absent) and prefetches that row's
    metadata column ``mo`` and, if ``embeddings`` (the caller copies them out), its embedding.
    A key found absent must be probed again: an earlier key of the same group may have
    inserted it.
    """
    for i in range(lo, hi):
        h = _hash(ids[i])
        hs[i - lo] = h
        _prefetch_probe(slots, cap, h)
    for i in range(lo, hi):
        row, _ = _find_hash(slots, cap, hs[i - lo])
        cand[i - lo] = row
        if row >= 0:
            if embeddings:
                _prefetch_row(data, row, 0, dim)
            prefetch(data, row, mo)


@njit(inline="always", **JIT)
def _delete_slot(slots, cap, pos):
    """Backward-shift deletion: close the hole at ``pos`` so every probe path stays unbroken."""
    i = pos
    j = pos
    while True:
        j = _next(j, cap)
        if slots[3 * j + 2] == 0:
            break
        k = _home(_slot_hash(slots, j), cap)
        # the entry at j may move to i only if its home k is not cyclically inside (i, j]
        if i <= j:
            stays = i < k <= j
        else:
            stays = k > i or k <= j
        if stays:
            continue
        slots[3 * i] = slots[3 * j]
        slots[3 * i + 1] = slots[3 * j + 1]
        slots[3 * i + 2] = slots[3 * j + 2]
        i = j
    slots[3 * i + 2] = 0


@njit(inline="always", **JIT)
def _mark_dirty(meta, mo, dirty, ctr, row, key):
    f = meta[row, mo + M_FLAGS]
    if (f & F_DIRTY) == 0:
        meta[row, mo + M_FLAGS] = f | F_DIRTY
        dirty[ctr[C_DIRTY]] = key
        ctr[C_DIRTY] += 1


@njit(inline="always", **JIT)
def _next_random(ctr):
    """The table's own deterministic RNG (splitmix64 sequence), state kept in ctr."""
    s = np.uint64(ctr[C_RNG]) + _GOLDEN
    ctr[C_RNG] = np.int64(s)
    return _uniform01(_mix64(s))


# ---- initializers ------------------------------------------------------------------------------

# Acklam's rational approximation of the inverse normal CDF (relative error < 1.15e-9).
_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
      -3.066479806614716e01, 2.506628277459239e00)  # fmt: skip
_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
      -1.328068155288572e01)  # fmt: skip
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
      4.374664141464968e00, 2.938163982698783e00)  # fmt: skip
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
_P_LOW = 0.02425  # below it (and above 1 - it) Acklam's tail formula applies
# truncation at +-2 std maps u in (0, 1) into [Phi(-2), Phi(2)]: inside the central formula's
# range up to its edge (max abs error there 3.4e-8), so truncated normal never needs a log
_PHI_M2 = 0.02275013194817921
_PHI_SPAN = 0.9772498680518208 - 0.02275013194817921


@njit(inline="always", **JIT)
def _ppf_central(p):
    q = p - 0.5
    r = q * q
    return (
        (((((_A[0] * r + _A[1]) * r + _A[2]) * r + _A[3]) * r + _A[4]) * r + _A[5])
        * q
        / (((((_B[0] * r + _B[1]) * r + _B[2]) * r + _B[3]) * r + _B[4]) * r + 1.0)
    )


@njit(inline="always", **JIT)
def _ppf_tail(p):
    lower = p < 0.5
    q = np.sqrt(-2.0 * np.log(p if lower else 1.0 - p))
    x = (((((_C[0] * q + _C[1]) * q + _C[2]) * q + _C[3]) * q + _C[4]) * q + _C[5]) / (
        (((_D[0] * q + _D[1]) * q + _D[2]) * q + _D[3]) * q + 1.0
    )
    return x if lower else -x


@njit(inline="always", **JIT)
def _open01(x):
    """A 32-bit value (in a uint64) to a float64 in (0, 1), never 0 or 1: the ppf stays finite."""
    return (np.float64(x) + 0.5) * (1.0 / 4294967296.0)


@njit(inline="always", **JIT)
def _init_uniforms(base, n, ubuf):
    """The first ``n`` uniforms in (0, 1) of a row's stream into ``ubuf``: value j is a 32-bit half
    of the 64-bit hash number j // 2 (low half for even j), so one hash serves two values."""
    for k in range((n + 1) // 2):
        h = _mix64(base + np.uint64(k + 1) * _GOLDEN)
        ubuf[2 * k] = _open01(h & _U32)
        ubuf[2 * k + 1] = _open01(h >> np.uint64(32))


@njit(inline="always", **JIT)
def _init_uniform(base, j):
    """Uniform ``j`` of a row's stream on its own: the value :func:`_init_uniforms` puts in
    ``ubuf[j]`` (its pair's hash is computed once per value instead of once per pair)."""
    h = _mix64(base + np.uint64((j >> 1) + 1) * _GOLDEN)
    return _open01((h >> np.uint64(32 * (j & 1))) & _U32)


@njit(inline="always", **JIT)
def init_values(data, row, key, off, dim, kind, a, b, seed, ubuf):
    """Initialise ``dim`` values of ``row`` from ``off``: a pure function of (seed, key).

    The row's stream of uniforms goes into ``ubuf`` (scratch of at least ``dim + 1`` float64)
    first, one 64-bit hash per two values (hashing per value cost 40% more at dim 64). Uniform
    maps it linearly; normal maps it through the inverse CDF: the branch-free central formula
    for every value (vectorised), then the tail formula for the ~5% of values that need it
    (log + sqrt). That last pass is a search loop on purpose: written as a loop over every
    value with an ``if``, LLVM if-converts it and calls ``log`` for all of them (measured: 590
    ns per row of 64, against 190 ns this way). Truncated normal stays in the central formula
    and costs as little as uniform.

    Up to ``FUSED_INIT_DIM``, uniform and truncated normal draw and map each value in one pass
    instead, hashing per value (the same values). Below dim 32 the two-pass draw loop is too
    short to vectorise and the mapping pass's vector loads of its scalar stores stall (store
    forwarding): truncated normal, per row of 16, 54 ns two-pass against 25 ns fused; at dim 64
    the extra hashing makes fused the slower (59 against 49 ns; scratch timing, 100k rows).
    """
    if kind == INIT_ZEROS:
        for j in range(dim):
            data[row, off + j] = 0.0
        return
    # a stream per (seed, key); the salt keeps the seed and key mixes independent
    base = _hash(key) ^ _mix64(np.uint64(seed) ^ _SEED_SALT)
    if dim <= FUSED_INIT_DIM and kind != INIT_NORMAL:
        if kind == INIT_UNIFORM:
            for j in range(dim):
                data[row, off + j] = a + (b - a) * _init_uniform(base, j)
        else:
            for j in range(dim):
                data[row, off + j] = a + b * _ppf_central(_PHI_M2 + _PHI_SPAN * _init_uniform(base, j))
        return
    _init_uniforms(base, dim, ubuf)
    if kind == INIT_UNIFORM:
        for j in range(dim):
            data[row, off + j] = a + (b - a) * ubuf[j]
        return
    if kind == INIT_TRUNCATED_NORMAL:
        for j in range(dim):
            data[row, off + j] = a + b * _ppf_central(_PHI_M2 + _PHI_SPAN * ubuf[j])
        return
    for j in range(dim):
        data[row, off + j] = a + b * _ppf_central(ubuf[j])
    j = 0
    while True:
        while j < dim and _P_LOW <= ubuf[j] <= 1.0 - _P_LOW:
            j += 1
        if j >= dim:
            return
        data[row, off + j] = a + b * _ppf_tail(ubuf[j])
        j += 1


# ---- admission sketch ------------------------------------------------------------------------


@njit(inline="always", **JIT)
def _sketch_mins(sk, seeds, u):
    """The key's estimate in the current generation and in the previous one (one hash per row)."""
    depth, width = sk.shape[1], sk.shape[2]
    wmask = np.uint64(width - 1)
    est0 = np.uint32(0xFFFFFFFF)
    est1 = np.uint32(0xFFFFFFFF)
    for d in range(depth):
        idx = np.int64(_mix64(u ^ seeds[d]) & wmask)
        est0 = min(est0, sk[0, d, idx])
        est1 = min(est1, sk[1, d, idx])
    return est0, est1


@njit(inline="always", **JIT)
def _sat_add(a, b):
    return np.uint32(min(np.uint64(a) + np.uint64(b), np.uint64(0xFFFFFFFF)))


@njit(inline="always", **JIT)
def _sketch_min(sk, seeds, key):
    """A key's count: its estimate in the current generation plus the previous one's."""
    est0, est1 = _sketch_mins(sk, seeds, np.uint64(key))
    return _sat_add(est0, est1)


@njit(inline="always", **JIT)
def _sketch_add(sk, seeds, key, n):
    """``n`` more occurrences of ``key``: a count-min update with conservative update in the
    current generation (``sk[0]``); returns the key's count over both generations."""
    depth, width = sk.shape[1], sk.shape[2]
    wmask = np.uint64(width - 1)
    u = np.uint64(key)
    est0, est1 = _sketch_mins(sk, seeds, u)
    est = _sat_add(est0, n)
    for d in range(depth):
        idx = np.int64(_mix64(u ^ seeds[d]) & wmask)
        if sk[0, d, idx] < est:
            sk[0, d, idx] = est
    return _sat_add(est, est1)


@njit(**JIT)
def sketch_estimate(sk, seeds, keys, out):
    for i in range(keys.shape[0]):
        out[i] = _sketch_min(sk, seeds, keys[i])


@njit(**JIT)
def _sketch_turn(sk):
    """Start a new generation: the current one becomes the previous, the previous is dropped."""
    depth, width = sk.shape[1], sk.shape[2]
    for d in range(depth):
        for w in range(width):
            sk[1, d, w] = sk[0, d, w]
            sk[0, d, w] = 0


# ---- lookups ---------------------------------------------------------------------------------


@njit(**JIT)
def lookup_infer(slots, cap, data, ids, out, default, dim, pipelined):
    """Embeddings of ``ids`` into ``out``; unknown IDs read ``default``. Returns hit count.

    Two ways, chosen by the caller from where the rows live (``pipelined``: the row array is on
    huge pages and past :data:`PIPELINE_FROM_BYTES`):

    * two passes (:func:`_lookup_two_pass`): every key's row first (:func:`find_rows`), then
      the copies, group-prefetched. With 4 KiB pages this is the faster: the index's page-table
      entries stay cached while only the index is walked, and the rows' while only rows are
      (interleaving the two was 1.2-1.4x slower on 3.3M rows).
    * one pipeline (:func:`_lookup_pipelined`): with huge pages a TLB miss no longer comes with
      each random access, and keeping index and row misses in flight together wins. Measured on
      the bench's tables (3.3M rows uniform, 0.56M Zipf, 65,536-key batches), keys/s two-pass ->
      pipelined: uniform dim 32 39.3M -> 42.0M, dim 64 27.4M -> 32.6M, Zipf dim 32 73.9M ->
      83.6M, dim 64 46.0M -> 70.6M; 400k rows of dim 64 32.5M -> 46.2M; no worse from 158 MiB
      up. Below that (an index and rows mostly in cache) and on 4 KiB pages the pipeline was up
      to 12% slower.
    """
    if pipelined:
        return _lookup_pipelined(slots, cap, data, ids, out, default, dim)
    return _lookup_two_pass(slots, cap, data, ids, out, default, dim)


@njit(inline="always", **JIT)
def _lookup_two_pass(slots, cap, data, ids, out, default, dim):
    """The copy pass prefetches about ``COPY_LINES`` cache lines per group: 64 rows of dim 32,
    42 of dim 64 (measured on 3.3M random rows of dim 32: 42M rows/s in groups of 16, 63M in 32,
    ~90M in 64; dim 64 peaked near 48 rows)."""
    n = ids.shape[0]
    rows = np.empty(n, np.int64)
    find_rows(slots, cap, ids, rows)
    hits = 0
    group = min(max(COPY_LINES // (dim // 16 + 2), 16), 128)  # a row spans dim/16 + 1 or 2 lines
    for lo in range(0, n, group):
        hi = min(n, lo + group)
        for i in range(lo, hi):
            if rows[i] >= 0:
                _prefetch_row(data, rows[i], 0, dim)
        for i in range(lo, hi):
            row = rows[i]
            if row >= 0:
                hits += 1
                for j in range(dim):
                    out[i, j] = data[row, j]
            else:
                for j in range(dim):
                    out[i, j] = default[j]
    return hits


@njit(inline="always", **JIT)
def _lookup_pipelined(slots, cap, data, ids, out, default, dim):
    """Three stages ``LOOKUP_AHEAD`` keys apart, each key hashed once: key ``i + 2A`` is hashed
    and its home slot prefetched, key ``i + A`` probed and its row prefetched, key ``i`` copied.
    (Distances 16 to 48 per stage measured within 5% of each other; 32 was the best.) The copies
    are written out in both lookups: moved into a shared inline helper returning the hit, they
    ran at half the speed."""
    n = ids.shape[0]
    mask = 2 * LOOKUP_AHEAD - 1
    hs = np.empty(2 * LOOKUP_AHEAD, np.uint64)  # hashes between their prefetch and their probe
    rows = np.empty(2 * LOOKUP_AHEAD, np.int64)  # rows between their prefetch and their copy
    hits = 0
    for i in range(-2 * LOOKUP_AHEAD, n):
        a = i + 2 * LOOKUP_AHEAD
        if a < n:
            h = _hash(ids[a])
            hs[a & mask] = h
            _prefetch_probe(slots, cap, h)
        b = i + LOOKUP_AHEAD
        if 0 <= b < n:
            row, _ = _find_hash(slots, cap, hs[b & mask])
            rows[b & mask] = row
            if row >= 0:
                _prefetch_row(data, row, 0, dim)
        if i >= 0:
            row = rows[i & mask]
            if row >= 0:
                hits += 1
                for j in range(dim):
                    out[i, j] = data[row, j]
            else:
                for j in range(dim):
                    out[i, j] = default[j]
    return hits


@njit(**JIT)
def find_rows(slots, cap, ids, rows_out):
    """The row of each of ``ids`` (-1 if absent), software-pipelined: key ``i + PROBE_AHEAD`` is
    hashed and its home slot prefetched while key ``i`` is probed, each key hashed once. On 3.3M
    keys in 6.8M slots (a pre-sized index, load 0.48), per key: 26 ns with groups of 16 that
    hashed twice, 18 ns with groups of 32, 16 ns pipelined; the whole lookup of dim 32 went
    30 -> 35M keys/s (distance 8: 28M, 16: 33M, 32: 29M)."""
    n = ids.shape[0]
    ring = np.empty(PROBE_RING, np.uint64)  # hashes of the keys between prefetch and probe
    mask = PROBE_RING - 1
    for i in range(-PROBE_AHEAD, n):  # probe key i (once i >= 0), prefetch key i + PROBE_AHEAD
        a = i + PROBE_AHEAD
        if a < n:
            h = _hash(ids[a])
            ring[a & mask] = h
            _prefetch_probe(slots, cap, h)
        if i >= 0:
            row, _ = _find_hash(slots, cap, ring[i & mask])
            rows_out[i] = row


@njit(**JIT)
def lookup_train(
    slots, cap, meta, data, free, dirty, ctr,
    ids, occ, start, pending, now_ms, out, copy_out, rows_out, default, dim, state_n,
    sk, sk_seeds, min_count, decay_every, p_admit,
    init_kind, init_a, init_b, seed, state_init, max_rows, rows_cap, track,
):  # fmt: skip
    """Find-or-insert through the admission filter, from element ``start``.

    Admitted or known IDs get their row in ``rows_out`` (and embedding in ``out`` when
    ``copy_out``); filtered IDs get -1 and ``default``. Known rows: count+1, last-seen = max.

    ``occ[i]`` (when ``occ`` is not empty) says ``ids[i]`` stands for that many occurrences (a
    caller that deduplicated its batch): counts, the sketch and ``min_count`` see them all, and
    ``admit_probability`` applies per occurrence (1 - (1 - p) ** occurrences at or past the k-th).
    """
    mo = dim + state_n  # metadata column
    n = ids.shape[0]
    cand = np.empty(TRAIN_GROUP, np.int64)
    hs = np.empty(TRAIN_GROUP, np.uint64)
    ubuf = np.empty(dim + 1, np.float64)  # init_values' scratch
    g0 = start
    for i in range(start, n):
        if (i - start) % TRAIN_GROUP == 0:
            g0 = i
            _prefetch_group(slots, cap, data, ids, i, min(n, i + TRAIN_GROUP), dim, mo, cand, hs, copy_out)
        key = ids[i]
        c_i = occ[i] if occ.shape[0] else 1
        row = cand[i - g0]
        pos = -1
        if row < 0:  # absent at the group's start; an earlier key of the group may have inserted it
            row, pos = _find_hash(slots, cap, hs[i - g0])
        if row >= 0:
            f = meta[row, mo + M_FLAGS]
            c_new = min(np.uint64(f & COUNT_MASK) + np.uint64(c_i), np.uint64(COUNT_MASK))
            meta[row, mo + M_FLAGS] = (f & F_DIRTY) | np.uint32(c_new)
            if _row_ts(meta, row, mo) < now_ms:
                _set_ts(meta, row, mo, now_ms)
            ctr[C_HITS] += c_i
        else:
            count = np.uint32(min(c_i, np.int64(COUNT_MASK)))  # saturates, as a known row's count does
            if not (pending == 1 and i == start):
                admit = True
                eligible = c_i  # occurrences at or past the min_count-th
                if min_count > 1:
                    est = _sketch_add(sk, sk_seeds, key, c_i)
                    ctr[C_SKETCH_INCS] += c_i
                    if decay_every > 0 and ctr[C_SKETCH_INCS] >= decay_every:
                        _sketch_turn(sk)
                        ctr[C_SKETCH_INCS] = 0
                        ctr[C_SKETCH_DECAYS] += 1
                    admit = est >= np.uint32(min_count)
                    count = min(est, COUNT_MASK)
                    eligible = min(c_i, np.int64(est) - min_count + 1)
                if admit and p_admit < 1.0:
                    admit = _next_random(ctr) < 1.0 - (1.0 - p_admit) ** eligible
                if not admit:
                    ctr[C_FILTERED] += c_i
                    rows_out[i] = -1
                    if copy_out:
                        for j in range(dim):
                            out[i, j] = default[j]
                    continue
            else:
                # resumed after growth or eviction: the decision (and the sketch update) was made
                # before the pause, with this count (the sketch may have turned a generation since)
                count = np.uint32(ctr[C_PENDING_COUNT])
            # admitted: make sure there is room, else hand back to Python and resume here
            ctr[C_PENDING_COUNT] = count
            if max_rows > 0 and ctr[C_LIVE] >= max_rows:
                return NEED_EVICT, i
            if (ctr[C_LIVE] + 1) * LOAD_DEN > cap * LOAD_NUM:
                return NEED_INDEX, i
            fresh = False
            if ctr[C_FREE] > 0:
                ctr[C_FREE] -= 1
                row = np.int64(free[ctr[C_FREE]])
            elif ctr[C_HW] < rows_cap:
                row = ctr[C_HW]
                ctr[C_HW] += 1
                fresh = True  # never used: its memory is still zero (anonymous mapping)
            else:
                return NEED_ROWS, i
            _set_ts(meta, row, mo, now_ms)
            meta[row, mo + M_FLAGS] = count & COUNT_MASK
            if not (fresh and init_kind == INIT_ZEROS):
                init_values(data, row, key, 0, dim, init_kind, init_a, init_b, seed, ubuf)
            if not (fresh and state_init == 0.0):  # a fresh row's state is zero already
                for j in range(state_n):
                    data[row, dim + j] = state_init
            _put_hash(slots, pos, hs[i - g0], row)
            ctr[C_LIVE] += 1
            ctr[C_ADMITTED] += 1
            if track:
                _mark_dirty(meta, mo, dirty, ctr, row, key)
        rows_out[i] = row
        if copy_out:
            for j in range(dim):
                out[i, j] = data[row, j]
    return OK, n


# ---- assignment, removal, expiry -------------------------------------------------------------


@njit(**JIT)
def assign_rows(
    slots, cap, meta, data, free, dirty, ctr,
    ids, start, values, width, ts, counts, set_ts, set_counts, rows_cap, mo, track,
):  # fmt: skip
    """Upsert rows verbatim: ``values[i]`` (embedding [+ state]) into the row of ``ids[i]``.

    ``width`` values are written from the embedding on; the rest of the state is zeroed for
    new rows and kept for existing ones. Last-seen time and count come from ``ts`` and
    ``counts`` for new rows, and for existing ones only if ``set_ts`` / ``set_counts``. The
    last duplicate wins.
    """
    for i in range(start, ids.shape[0]):
        key = ids[i]
        row, pos = _find(slots, cap, key)
        new = row < 0
        if new:
            if (ctr[C_LIVE] + 1) * LOAD_DEN > cap * LOAD_NUM:
                return NEED_INDEX, i
            if ctr[C_FREE] > 0:
                ctr[C_FREE] -= 1
                row = np.int64(free[ctr[C_FREE]])
            elif ctr[C_HW] < rows_cap:
                row = ctr[C_HW]
                ctr[C_HW] += 1
            else:
                return NEED_ROWS, i
            meta[row, mo + M_FLAGS] = 0
            for j in range(width, mo):
                data[row, j] = 0.0
            _put(slots, pos, key, row)
            ctr[C_LIVE] += 1
        for j in range(width):
            data[row, j] = values[i, j]
        if new or set_ts:
            _set_ts(meta, row, mo, ts[i])
        if new or set_counts:
            c = counts[i]
            if c > COUNT_MASK:
                c = COUNT_MASK
            meta[row, mo + M_FLAGS] = (meta[row, mo + M_FLAGS] & F_DIRTY) | np.uint32(c)
        ctr[C_ASSIGNED] += 1
        if track:
            _mark_dirty(meta, mo, dirty, ctr, row, key)
    return OK, ids.shape[0]


@njit(**JIT)
def remove_keys(slots, cap, meta, mo, free, ctr, ids, removed_out):
    """Delete the rows of ``ids`` (absent ones ignored); their rows go to the free stack and
    lose their DIRTY bit (the key is reported as a tombstone instead). ``removed_out[i]`` is 1
    where ``ids[i]`` was present. Returns the number removed."""
    n = 0
    for i in range(ids.shape[0]):
        row, pos = _find(slots, cap, ids[i])
        if row < 0:
            removed_out[i] = 0
            continue
        _delete_slot(slots, cap, pos)
        meta[row, mo + M_FLAGS] = 0
        free[ctr[C_FREE]] = row
        ctr[C_FREE] += 1
        ctr[C_LIVE] -= 1
        removed_out[i] = 1
        n += 1
    return n


@njit(**JIT)
def collect_older(slots, meta, mo, cutoff_ms, keys_out):
    """Keys of live rows last seen strictly before ``cutoff_ms``; returns how many."""
    n = 0
    for p in range(slots.shape[0] // 3):
        r = slots[3 * p + 2]
        if r == 0:
            continue
        if _row_ts(meta, np.int64(r) - 1, mo) < cutoff_ms:
            keys_out[n] = _unhash(_slot_hash(slots, p))
            n += 1
    return n


@njit(**JIT)
def live_rows(slots, meta, mo, keys_out, rows_out, ts_out, counts_out):
    """Every live row, in slot order: key, row, last-seen ms, count. Returns how many."""
    n = 0
    for p in range(slots.shape[0] // 3):
        r = slots[3 * p + 2]
        if r == 0:
            continue
        row = np.int64(r) - 1
        keys_out[n] = _unhash(_slot_hash(slots, p))
        rows_out[n] = row
        ts_out[n] = _row_ts(meta, row, mo)
        counts_out[n] = np.int64(meta[row, mo + M_FLAGS] & COUNT_MASK)
        n += 1
    return n


@njit(**JIT)
def rehash(old_slots, new_slots, new_cap):
    """Move every entry into an index of a new size; the stored hash gives the new home."""
    for p in range(old_slots.shape[0] // 3):
        if old_slots[3 * p + 2] == 0:
            continue
        pos = _home(_slot_hash(old_slots, p), new_cap)
        while new_slots[3 * pos + 2] != 0:
            pos = _next(pos, new_cap)
        new_slots[3 * pos] = old_slots[3 * p]
        new_slots[3 * pos + 1] = old_slots[3 * p + 1]
        new_slots[3 * pos + 2] = old_slots[3 * p + 2]


@njit(**JIT)
def drain_dirty(slots, cap, meta, mo, dirty, ctr, keys_out, rows_out):
    """Clear the dirty list; keys on it that still have a row go to ``keys_out``/``rows_out``
    (once each). Returns how many."""
    n = 0
    for i in range(ctr[C_DIRTY]):
        key = dirty[i]
        row, _ = _find(slots, cap, key)
        if row < 0:
            continue  # removed since: a tombstone, not an upsert
        f = meta[row, mo + M_FLAGS]
        if (f & F_DIRTY) == 0:
            continue  # listed twice (removed and re-admitted): already taken
        meta[row, mo + M_FLAGS] = f & ~F_DIRTY
        keys_out[n] = key
        rows_out[n] = row
        n += 1
    ctr[C_DIRTY] = 0
    return n


@njit(**JIT)
def gather_rows(meta, data, rows, width, mo, values_out, ts_out, counts_out):
    """Copy rows out: ``width`` values from the embedding on, last-seen ms, count."""
    for i in range(rows.shape[0]):
        row = rows[i]
        for j in range(width):
            values_out[i, j] = data[row, j]
        ts_out[i] = _row_ts(meta, row, mo)
        counts_out[i] = np.int64(meta[row, mo + M_FLAGS] & COUNT_MASK)


# ---- gradients -------------------------------------------------------------------------------


@njit(**JIT)
def apply_gradients(slots, cap, meta, data, dirty, ctr, ids, rows_in, grads, now_ms, kind, hp,
                    dim, mo, track):  # fmt: skip
    """Merge duplicate IDs (sum their gradients), then one optimizer step per distinct row.
    IDs without a row (filtered, expired) are skipped and counted. Returns rows updated.
    ``rows_in``: the IDs' rows (-1: none) when the caller knows them, else empty (probe).

    A row seen once reads its gradient where it is (``grads[i]``); only a row seen again gets a
    row of ``acc``, where its gradients are summed: most IDs of a batch are distinct, and copying
    every gradient first would add a write and a read of the whole gradient matrix."""
    n = ids.shape[0]
    hcap = 16
    while hcap < 2 * n:
        hcap *= 2
    hmask = hcap - 1
    hkeys = np.full(hcap, -1, np.int64)
    hvals = np.empty(hcap, np.int64)
    urows = np.empty(n, np.int64)
    ukeys = np.empty(n, np.int64)
    usrc = np.empty(n, np.int64)  # >= 0: the row's gradient is grads[usrc]; < 0: acc[-1 - usrc]
    acc = np.empty((n, dim), np.float32)  # pages are touched only for duplicated rows
    nu = 0
    nacc = 0
    rows = rows_in
    if rows_in.shape[0] != n:  # no training lookup just found them: probe
        rows = np.empty(n, np.int64)
        find_rows(slots, cap, ids, rows)
    for i in range(n):
        row = rows[i]
        if row < 0:
            ctr[C_GRAD_MISSING] += 1
            continue
        h = np.int64(_mix64(np.uint64(row)) & np.uint64(hmask))
        while hkeys[h] != -1 and hkeys[h] != row:
            h = (h + 1) & hmask
        if hkeys[h] == -1:
            hkeys[h] = row
            hvals[h] = nu
            urows[nu] = row
            ukeys[nu] = ids[i]
            usrc[nu] = i
            nu += 1
        else:
            u = hvals[h]
            if usrc[u] >= 0:  # its second occurrence: start its sum
                first = usrc[u]
                for j in range(dim):
                    acc[nacc, j] = grads[first, j]
                usrc[u] = -1 - nacc
                nacc += 1
            k = -1 - usrc[u]
            for j in range(dim):
                acc[k, j] += grads[i, j]
    for u in range(nu):
        if u + AHEAD < nu:
            _prefetch_row(data, urows[u + AHEAD], 0, mo + META)
        row = urows[u]
        src = usrc[u]
        if src >= 0:
            _optimizer_step(data, row, grads, src, dim, kind, hp)
        else:
            _optimizer_step(data, row, acc, -1 - src, dim, kind, hp)
        if _row_ts(meta, row, mo) < now_ms:
            _set_ts(meta, row, mo, now_ms)
        if track:
            _mark_dirty(meta, mo, dirty, ctr, row, ukeys[u])
    ctr[C_GRAD_ROWS] += nu
    return nu


@njit(inline="always", **JIT)
def _optimizer_step(data, row, acc, u, dim, kind, hp):
    """One optimizer step of ``row`` with the gradient ``acc[u]`` (read only).

    The per-element math is float32, as torch.optim does it for float32 parameters: with the
    float64 hyper-parameters as they come, every operation was widened to float64, which halves
    the SIMD width and makes ``sqrt`` and the division several times slower (Adagrad at dim 64
    was compute-bound; 15% of a sparse step). Constants such as ``1 - beta2`` are rounded to
    float32 after the subtraction, as torch passes them (``1 - float32(beta2)`` is off by 1e-3
    relative at beta2 = 0.99999). FTRL's math is as it was (float32 state, float64 from the
    division by alpha on)."""
    s = dim  # state offset; the embedding starts at 0
    if kind == OPT_SGD:
        lr, mom, wd, nesterov = np.float32(hp[0]), np.float32(hp[1]), np.float32(hp[2]), hp[3]
        for j in range(dim):
            g = acc[u, j] + wd * data[row, j]
            if mom > 0.0:
                b = mom * data[row, s + j] + g
                data[row, s + j] = b
                g = g + mom * b if nesterov > 0.0 else b
            data[row, j] -= lr * g
    elif kind == OPT_ADAGRAD:
        lr, eps, wd = np.float32(hp[0]), np.float32(hp[1]), np.float32(hp[2])
        for j in range(dim):
            g = acc[u, j] + wd * data[row, j]
            h = min(data[row, s + j] + g * g, _F32_MAX)  # saturates: Inf would stop the row for good
            data[row, s + j] = h
            data[row, j] -= lr * g / (np.sqrt(h) + eps)
    elif kind == OPT_ROWWISE_ADAGRAD:
        lr, eps, wd = np.float32(hp[0]), np.float32(hp[1]), np.float32(hp[2])
        sq = np.float32(0.0)
        for j in range(dim):
            g = acc[u, j] + wd * data[row, j]
            sq += g * g
        h = min(data[row, s] + sq / np.float32(dim), _F32_MAX)
        data[row, s] = h
        step = lr / (np.sqrt(h) + eps)
        for j in range(dim):  # the same g again: data[row, :dim] is unchanged until here
            data[row, j] -= step * (acc[u, j] + wd * data[row, j])
    elif kind == OPT_ADAM:
        lr, b1d, b2d, eps, wd = hp[0], hp[1], hp[2], np.float32(hp[3]), np.float32(hp[4])
        t = data[row, s + 2 * dim] + 1.0
        data[row, s + 2 * dim] = t
        # the bias corrections in float64, as torch computes them (Python floats)
        step = np.float32(lr / (1.0 - b1d**t))
        bc2 = np.float32(np.sqrt(1.0 - b2d**t))
        b1, b2 = np.float32(b1d), np.float32(b2d)
        c1, c2 = np.float32(1.0 - b1d), np.float32(1.0 - b2d)
        for j in range(dim):
            g = acc[u, j] + wd * data[row, j]
            m = b1 * data[row, s + j] + c1 * g
            v = b2 * data[row, s + dim + j] + c2 * g * g
            data[row, s + j] = m
            data[row, s + dim + j] = v
            data[row, j] -= step * m / (np.sqrt(v) / bc2 + eps)
    elif kind == OPT_FTRL:
        alpha, beta, l1, l2 = hp[0], hp[1], hp[2], hp[3]
        for j in range(dim):
            g = acc[u, j]
            w = data[row, j]
            z = data[row, s + j]
            n = data[row, s + dim + j]
            n_new = min(n + g * g, _F32_MAX)
            sigma = (np.sqrt(n_new) - np.sqrt(n)) / alpha
            z = z + g - sigma * w
            data[row, s + j] = z
            data[row, s + dim + j] = n_new
            if abs(z) <= l1:
                data[row, j] = 0.0
            else:
                sign = 1.0 if z > 0.0 else -1.0
                data[row, j] = -(z - sign * l1) / ((beta + np.sqrt(n_new)) / alpha + l2)


_FINITE_CHUNK = 1 << 20  # values per isfinite pass: bounds the temporary to 1 MB of bools


def max_abs(a: np.ndarray) -> float:
    """The largest ``|a|`` of a float array: NaN if it holds a NaN, Inf if an Inf (0 if empty).
    numpy's max and min (which propagate NaN), not ``abs(a).max()``: no temporary; 0.38 ms for
    65,536 x 64, against 0.85 ms with ``abs`` and 0.29 ms for :func:`all_finite`."""
    if a.size == 0:
        return 0.0
    return float(np.maximum(a.max(), -a.min()))


def all_finite(a: np.ndarray) -> bool:
    """True when a 2-D float32 array holds no NaN or Inf. numpy's vectorised ``isfinite`` in
    chunks of rows, not a compiled loop: the loop's early exit kept LLVM from vectorising it
    (1.45 ms against 0.53 ms for 65,536 x 64, where the check was ~12% of a sparse step)."""
    rows = max(1, _FINITE_CHUNK // max(1, a.shape[1]))
    return all(bool(np.isfinite(a[i : i + rows]).all()) for i in range(0, a.shape[0], rows))


@njit(**JIT)
def unhash_keys(hashes, out):
    """Keys from stored hashes (for tests and tools)."""
    for i in range(hashes.shape[0]):
        out[i] = _unhash(np.uint64(hashes[i]))
