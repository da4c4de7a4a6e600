"""Compiled kernels behind :class:`freshrec.table.EmbeddingTable`. They trust their input.

Memory layout (see ``table.py`` for the contract these kernels serve):

* ``slots``: uint64[C], C a power of two. A slot is 0 (empty) or ``tag << 32 | (row + 1)``,
  where ``tag`` is the top 32 bits of ``_hash(key)``. A key's home slot is the top ``log2 C``
  bits of its hash (``tag >> tshift``), so rehashing and backward-shift deletion need only the
  tags, never the rows. Linear probing, no tombstones; every int64 is a valid key.
* ``data``: float32[R, W] rows, ``W = META + dim + S``. ``meta`` is the same buffer viewed as
  uint32: words 0-1 the key, 2-3 the last-seen event time (int64 ms), 4 the flags and count
  (bit 31 DIRTY, bit 30 LIVE, bits 0-29 occurrence count, saturating). The key sits next to the
  embedding and the optimizer state, so a lookup touches one place in memory, not three.
* ``ctr``: int64 counters and cursors (indices ``C_*`` below), shared with Python.

Kernels that may need more room return ``(status, i)``: the Python wrapper grows the arrays
(or evicts) and calls again from ``i``; ``pending=1`` says element ``i`` was already admitted.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from freshrec._numba import JIT

# ---- statuses -------------------------------------------------------------------------------
OK = 0
NEED_ROWS = 1  # the row arrays are full: grow them
NEED_INDEX = 2  # the index would exceed its load factor: rehash into twice the slots
NEED_EVICT = 3  # max_rows reached: evict, then resume

# ---- row metadata (uint32 words) -------------------------------------------------------------
META = 5
M_KEY_LO, M_KEY_HI, M_TS_LO, M_TS_HI, M_FLAGS = 0, 1, 2, 3, 4
F_DIRTY = np.uint32(1 << 31)
F_LIVE = np.uint32(1 << 30)
COUNT_MASK = np.uint32((1 << 30) - 1)

# ---- ctr indices ----------------------------------------------------------------------------
C_LIVE, C_HW, C_FREE, C_DIRTY = 0, 1, 2, 3
C_LOOKUPS, C_HITS, C_ADMITTED, C_FILTERED = 4, 5, 6, 7
C_EXPIRED, C_EVICTED, C_REMOVED, C_GRAD_ROWS = 8, 9, 10, 11
C_ASSIGNED, C_SKETCH_INCS, C_SKETCH_DECAYS, C_GRAD_MISSING = 12, 13, 14, 15
C_NONFINITE, C_RNG = 16, 17
N_CTR = 18

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

# Load factor: grow when live/slots would exceed 3/4. With 32-bit tags a probe that passes
# a foreign slot rarely reads its row, so linear probing stays cheap at this load.
LOAD_NUM, LOAD_DEN = 3, 4

_U32 = np.uint64(0xFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SEED_SALT = np.uint64(0xD1B54A32D192ED03)


@njit(inline="always", **JIT)
def _mix64(x):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(inline="always", **JIT)
def _hash(key):
    """splitmix64 of the key: a bijection on 64 bits, so distinct keys never share a hash."""
    return _mix64(np.uint64(key) + _GOLDEN)


@njit(inline="always", **JIT)
def _uniform01(x):
    """A uint64 to a float64 in [0, 1) from its top 53 bits."""
    return np.float64(x >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(inline="always", **JIT)
def _row_key(meta, row):
    return np.int64((np.uint64(meta[row, M_KEY_HI]) << np.uint64(32)) | np.uint64(meta[row, M_KEY_LO]))


@njit(inline="always", **JIT)
def _row_ts(meta, row):
    return np.int64((np.uint64(meta[row, M_TS_HI]) << np.uint64(32)) | np.uint64(meta[row, M_TS_LO]))


@njit(inline="always", **JIT)
def _set_ts(meta, row, ts):
    u = np.uint64(ts)
    meta[row, M_TS_LO] = np.uint32(u & _U32)
    meta[row, M_TS_HI] = np.uint32(u >> np.uint64(32))


@njit(inline="always", **JIT)
def _find(slots, tshift, mask, meta, key):
    """(row, pos): the key's row and slot, or (-1, first empty slot on its probe path)."""
    tag = _hash(key) >> np.uint64(32)
    pos = np.int64(tag >> np.uint64(tshift)) & mask
    while True:
        s = slots[pos]
        if s == 0:
            return -1, pos
        if (s >> np.uint64(32)) == tag:
            row = np.int64(s & _U32) - 1
            if _row_key(meta, row) == key:
                return row, pos
        pos = (pos + 1) & mask


@njit(inline="always", **JIT)
def _delete_slot(slots, tshift, mask, pos):
    """Backward-shift deletion: close the hole at ``pos`` so every probe path stays unbroken."""
    i = pos
    j = pos
    while True:
        j = (j + 1) & mask
        s = slots[j]
        if s == 0:
            break
        k = np.int64((s >> np.uint64(32)) >> np.uint64(tshift)) & mask
        # the entry at j may move to i only if its home k is not cyclically inside (i, j]
        if i <= j:
            stays = i < k <= j
        else:
            stays = k > i or k <= j
        if stays:
            continue
        slots[i] = s
        i = j
    slots[i] = 0


@njit(inline="always", **JIT)
def _mark_dirty(meta, dirty, ctr, row):
    f = meta[row, M_FLAGS]
    if (f & F_DIRTY) == 0:
        meta[row, M_FLAGS] = f | F_DIRTY
        dirty[ctr[C_DIRTY]] = row
        ctr[C_DIRTY] += 1


@njit(inline="always", **JIT)
def _next_random(ctr):
    """The table's own deterministic RNG (splitmix64 sequence), state kept in ctr."""
    s = np.uint64(ctr[C_RNG]) + _GOLDEN
    ctr[C_RNG] = np.int64(s)
    return _uniform01(_mix64(s))


@njit(**JIT)
def init_values(data, row, key, off, dim, kind, a, b, seed):
    """Initialise ``dim`` values of ``row`` from ``off``: a pure function of (seed, key)."""
    if kind == INIT_ZEROS:
        for j in range(dim):
            data[row, off + j] = 0.0
        return
    # a stream of uniforms per (seed, key); the salt keeps seed and key mixes independent
    base = _hash(key) ^ _mix64(np.uint64(seed) ^ _SEED_SALT)
    if kind == INIT_UNIFORM:
        for j in range(dim):
            u = _uniform01(_mix64(base + np.uint64(j + 1) * _GOLDEN))
            data[row, off + j] = a + (b - a) * u
        return
    # normal: Box-Muller on pairs of uniforms
    j = 0
    while j < dim:
        u1 = _uniform01(_mix64(base + np.uint64(2 * j + 1) * _GOLDEN))
        u2 = _uniform01(_mix64(base + np.uint64(2 * j + 2) * _GOLDEN))
        r = np.sqrt(-2.0 * np.log(1.0 - u1))
        data[row, off + j] = a + b * r * np.cos(2.0 * np.pi * u2)
        if j + 1 < dim:
            data[row, off + j + 1] = a + b * r * np.sin(2.0 * np.pi * u2)
        j += 2


# ---- admission sketch ------------------------------------------------------------------------


@njit(inline="always", **JIT)
def _sketch_add(sk, seeds, key):
    """Count-min sketch with conservative update; returns the new estimate of key's count."""
    depth, width = sk.shape
    wmask = np.uint64(width - 1)
    u = np.uint64(key)
    est = np.uint32(0xFFFFFFFF)
    for d in range(depth):
        c = sk[d, np.int64(_mix64(u ^ seeds[d]) & wmask)]
        if c < est:
            est = c
    if est < np.uint32(0xFFFFFFFF):
        est += np.uint32(1)
    for d in range(depth):
        idx = np.int64(_mix64(u ^ seeds[d]) & wmask)
        if sk[d, idx] < est:
            sk[d, idx] = est
    return est


@njit(**JIT)
def sketch_estimate(sk, seeds, keys, out):
    depth, width = sk.shape
    wmask = np.uint64(width - 1)
    for i in range(keys.shape[0]):
        u = np.uint64(keys[i])
        est = np.uint32(0xFFFFFFFF)
        for d in range(depth):
            c = sk[d, np.int64(_mix64(u ^ seeds[d]) & wmask)]
            if c < est:
                est = c
        out[i] = est


@njit(**JIT)
def _sketch_halve(sk):
    depth, width = sk.shape
    for d in range(depth):
        for w in range(width):
            sk[d, w] = sk[d, w] >> np.uint32(1)


# ---- lookups ---------------------------------------------------------------------------------


@njit(**JIT)
def lookup_infer(slots, tshift, mask, meta, data, ids, out, default, off, dim):
    """Embeddings of ``ids`` into ``out``; unknown IDs read ``default``. Returns hit count."""
    hits = 0
    for i in range(ids.shape[0]):
        row, _ = _find(slots, tshift, mask, meta, ids[i])
        if row >= 0:
            hits += 1
            for j in range(dim):
                out[i, j] = data[row, off + j]
        else:
            for j in range(dim):
                out[i, j] = default[j]
    return hits


@njit(**JIT)
def find_rows(slots, tshift, mask, meta, ids, rows_out):
    for i in range(ids.shape[0]):
        row, _ = _find(slots, tshift, mask, meta, ids[i])
        rows_out[i] = row


@njit(**JIT)
def lookup_train(
    slots, tshift, mask, meta, data, free, dirty, ctr,
    ids, start, pending, now_ms, out, copy_out, rows_out, default, dim, state_n,
    sk, sk_seeds, min_count, decay_every, p_admit,
    init_kind, init_a, init_b, seed, state_init, max_rows, rows_cap, track,
):  # fmt: skip
    """Find-or-insert through the admission filter, from element ``start``.

    Admitted or known IDs get their row in ``rows_out`` (and embedding in ``out`` when
    ``copy_out``); filtered IDs get -1 and ``default``. Known rows: count+1, last-seen = max.
    """
    off = META
    for i in range(start, ids.shape[0]):
        key = ids[i]
        row, pos = _find(slots, tshift, mask, meta, key)
        if row >= 0:
            f = meta[row, M_FLAGS]
            c = f & COUNT_MASK
            if c < COUNT_MASK:
                meta[row, M_FLAGS] = f + np.uint32(1)
            if _row_ts(meta, row) < now_ms:
                _set_ts(meta, row, now_ms)
            ctr[C_HITS] += 1
        else:
            count = np.uint32(1)
            if not (pending == 1 and i == start):
                admit = True
                if min_count > 1:
                    est = _sketch_add(sk, sk_seeds, key)
                    ctr[C_SKETCH_INCS] += 1
                    if decay_every > 0 and ctr[C_SKETCH_INCS] >= decay_every:
                        _sketch_halve(sk)
                        ctr[C_SKETCH_INCS] = 0
                        ctr[C_SKETCH_DECAYS] += 1
                    admit = est >= np.uint32(min_count)
                    count = est
                if admit and p_admit < 1.0:
                    admit = _next_random(ctr) < p_admit
                if not admit:
                    ctr[C_FILTERED] += 1
                    rows_out[i] = -1
                    if copy_out:
                        for j in range(dim):
                            out[i, j] = default[j]
                    continue
            elif min_count > 1:
                count = np.uint32(min_count)
            # admitted: make sure there is room, else hand back to Python and resume here
            if max_rows > 0 and ctr[C_LIVE] >= max_rows:
                return NEED_EVICT, i
            if (ctr[C_LIVE] + 1) * LOAD_DEN > (mask + 1) * LOAD_NUM:
                return NEED_INDEX, i
            if ctr[C_FREE] > 0:
                ctr[C_FREE] -= 1
                row = np.int64(free[ctr[C_FREE]])
            elif ctr[C_HW] < rows_cap:
                row = ctr[C_HW]
                ctr[C_HW] += 1
            else:
                return NEED_ROWS, i
            _write_new_row(
                meta,
                data,
                row,
                key,
                now_ms,
                count,
                off,
                dim,
                state_n,
                init_kind,
                init_a,
                init_b,
                seed,
                state_init,
            )
            tag = _hash(key) >> np.uint64(32)
            slots[pos] = (tag << np.uint64(32)) | np.uint64(row + 1)
            ctr[C_LIVE] += 1
            ctr[C_ADMITTED] += 1
            if track:
                _mark_dirty(meta, dirty, ctr, row)
        rows_out[i] = row
        if copy_out:
            for j in range(dim):
                out[i, j] = data[row, off + j]
    return OK, ids.shape[0]


@njit(inline="always", **JIT)
def _write_new_row(meta, data, row, key, now_ms, count, off, dim, state_n,
                   init_kind, init_a, init_b, seed, state_init):  # fmt: skip
    u = np.uint64(key)
    meta[row, M_KEY_LO] = np.uint32(u & _U32)
    meta[row, M_KEY_HI] = np.uint32(u >> np.uint64(32))
    _set_ts(meta, row, now_ms)
    # keep DIRTY if the freed row still sits on the dirty list; LIVE and the count are new
    meta[row, M_FLAGS] = (meta[row, M_FLAGS] & F_DIRTY) | F_LIVE | (count & COUNT_MASK)
    init_values(data, row, key, off, dim, init_kind, init_a, init_b, seed)
    for j in range(state_n):
        data[row, off + dim + j] = state_init


# ---- assignment, removal, expiry -------------------------------------------------------------


@njit(**JIT)
def assign_rows(
    slots, tshift, mask, meta, data, free, dirty, ctr,
    ids, start, values, width, ts, counts, rows_cap, track,
):  # fmt: skip
    """Upsert rows verbatim: ``values[i]`` (embedding [+ state]) into the row of ``ids[i]``.

    ``width`` values are written from the embedding on; the rest of the state is zeroed for
    new rows and kept for existing ones. The last duplicate wins.
    """
    off = META
    total = data.shape[1] - META
    for i in range(start, ids.shape[0]):
        key = ids[i]
        row, pos = _find(slots, tshift, mask, meta, key)
        if row < 0:
            if (ctr[C_LIVE] + 1) * LOAD_DEN > (mask + 1) * LOAD_NUM:
                return NEED_INDEX, i
            if ctr[C_FREE] > 0:
                ctr[C_FREE] -= 1
                row = np.int64(free[ctr[C_FREE]])
            elif ctr[C_HW] < rows_cap:
                row = ctr[C_HW]
                ctr[C_HW] += 1
            else:
                return NEED_ROWS, i
            u = np.uint64(key)
            meta[row, M_KEY_LO] = np.uint32(u & _U32)
            meta[row, M_KEY_HI] = np.uint32(u >> np.uint64(32))
            meta[row, M_FLAGS] = (meta[row, M_FLAGS] & F_DIRTY) | F_LIVE
            for j in range(width, total):
                data[row, off + j] = 0.0
            tag = _hash(key) >> np.uint64(32)
            slots[pos] = (tag << np.uint64(32)) | np.uint64(row + 1)
            ctr[C_LIVE] += 1
        for j in range(width):
            data[row, off + j] = values[i, j]
        _set_ts(meta, row, ts[i])
        c = counts[i]
        if c > COUNT_MASK:
            c = COUNT_MASK
        meta[row, M_FLAGS] = (meta[row, M_FLAGS] & (F_DIRTY | F_LIVE)) | np.uint32(c)
        ctr[C_ASSIGNED] += 1
        if track:
            _mark_dirty(meta, dirty, ctr, row)
    return OK, ids.shape[0]


@njit(**JIT)
def remove_keys(slots, tshift, mask, meta, free, ctr, ids, removed_out):
    """Delete the rows of ``ids`` (absent ones ignored); their rows go to the free stack.
    ``removed_out[i]`` is 1 where ``ids[i]`` was present. Returns the number removed."""
    n = 0
    for i in range(ids.shape[0]):
        row, pos = _find(slots, tshift, mask, meta, ids[i])
        if row < 0:
            removed_out[i] = 0
            continue
        _delete_slot(slots, tshift, mask, pos)
        meta[row, M_FLAGS] = meta[row, M_FLAGS] & F_DIRTY  # not LIVE; stays on the dirty list
        free[ctr[C_FREE]] = row
        ctr[C_FREE] += 1
        ctr[C_LIVE] -= 1
        removed_out[i] = 1
        n += 1
    return n


@njit(**JIT)
def collect_older(slots, meta, cutoff_ms, keys_out):
    """Keys of live rows last seen strictly before ``cutoff_ms``; returns how many."""
    n = 0
    for p in range(slots.shape[0]):
        s = slots[p]
        if s == 0:
            continue
        row = np.int64(s & _U32) - 1
        if _row_ts(meta, row) < cutoff_ms:
            keys_out[n] = _row_key(meta, row)
            n += 1
    return n


@njit(**JIT)
def live_rows(slots, meta, keys_out, rows_out, ts_out, counts_out):
    """Every live row, in slot order: key, row, last-seen ms, count. Returns how many."""
    n = 0
    for p in range(slots.shape[0]):
        s = slots[p]
        if s == 0:
            continue
        row = np.int64(s & _U32) - 1
        keys_out[n] = _row_key(meta, row)
        rows_out[n] = row
        ts_out[n] = _row_ts(meta, row)
        counts_out[n] = np.int64(meta[row, M_FLAGS] & COUNT_MASK)
        n += 1
    return n


@njit(**JIT)
def rehash(old_slots, new_slots, new_tshift, new_mask):
    """Move every entry into an index of a new size; tags alone give the new home."""
    for p in range(old_slots.shape[0]):
        s = old_slots[p]
        if s == 0:
            continue
        pos = np.int64((s >> np.uint64(32)) >> np.uint64(new_tshift)) & new_mask
        while new_slots[pos] != 0:
            pos = (pos + 1) & new_mask
        new_slots[pos] = s


@njit(**JIT)
def drain_dirty(meta, dirty, ctr, rows_out):
    """Clear the dirty list; the rows on it that are still live go to ``rows_out``."""
    n = 0
    for i in range(ctr[C_DIRTY]):
        row = dirty[i]
        f = meta[row, M_FLAGS]
        meta[row, M_FLAGS] = f & ~F_DIRTY
        if (f & F_LIVE) != 0:
            rows_out[n] = row
            n += 1
    ctr[C_DIRTY] = 0
    return n


@njit(**JIT)
def gather_rows(meta, data, rows, width, keys_out, values_out, ts_out, counts_out):
    """Copy rows out: key, ``width`` values from the embedding on, last-seen ms, count."""
    for i in range(rows.shape[0]):
        row = rows[i]
        keys_out[i] = _row_key(meta, row)
        for j in range(width):
            values_out[i, j] = data[row, META + j]
        ts_out[i] = _row_ts(meta, row)
        counts_out[i] = np.int64(meta[row, M_FLAGS] & COUNT_MASK)


# ---- gradients -------------------------------------------------------------------------------


@njit(**JIT)
def apply_gradients(slots, tshift, mask, meta, data, dirty, ctr, ids, grads, now_ms, kind, hp,
                    dim, track):  # fmt: skip
    """Merge duplicate IDs (sum their gradients), then one optimizer step per distinct row.
    IDs without a row (filtered, expired) are skipped and counted. Returns rows updated."""
    n = ids.shape[0]
    hcap = 16
    while hcap < 2 * n:
        hcap *= 2
    hmask = hcap - 1
    hkeys = np.full(hcap, -1, np.int64)
    hvals = np.empty(hcap, np.int64)
    urows = np.empty(n, np.int64)
    acc = np.empty((n, dim), np.float32)
    nu = 0
    for i in range(n):
        row, _ = _find(slots, tshift, mask, meta, ids[i])
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
            for j in range(dim):
                acc[nu, j] = grads[i, j]
            nu += 1
        else:
            u = hvals[h]
            for j in range(dim):
                acc[u, j] += grads[i, j]
    for u in range(nu):
        row = urows[u]
        _optimizer_step(data, row, acc, u, dim, kind, hp)
        if _row_ts(meta, row) < now_ms:
            _set_ts(meta, row, now_ms)
        if track:
            _mark_dirty(meta, dirty, ctr, row)
    ctr[C_GRAD_ROWS] += nu
    return nu


@njit(inline="always", **JIT)
def _optimizer_step(data, row, acc, u, dim, kind, hp):
    e = META  # embedding offset
    s = META + dim  # state offset
    if kind == OPT_SGD:
        lr, mom, wd, nesterov = hp[0], hp[1], hp[2], hp[3]
        for j in range(dim):
            g = acc[u, j] + wd * data[row, e + j]
            if mom > 0.0:
                b = mom * data[row, s + j] + g
                data[row, s + j] = b
                g = g + mom * b if nesterov > 0.0 else b
            data[row, e + j] -= lr * g
    elif kind == OPT_ADAGRAD:
        lr, eps, wd = hp[0], hp[1], hp[2]
        for j in range(dim):
            g = acc[u, j] + wd * data[row, e + j]
            h = data[row, s + j] + g * g
            data[row, s + j] = h
            data[row, e + j] -= lr * g / (np.sqrt(h) + eps)
    elif kind == OPT_ROWWISE_ADAGRAD:
        lr, eps, wd = hp[0], hp[1], hp[2]
        sq = 0.0
        for j in range(dim):
            g = acc[u, j] + wd * data[row, e + j]
            acc[u, j] = g
            sq += g * g
        h = data[row, s] + sq / dim
        data[row, s] = h
        step = lr / (np.sqrt(h) + eps)
        for j in range(dim):
            data[row, e + j] -= step * acc[u, j]
    elif kind == OPT_ADAM:
        lr, b1, b2, eps, wd = hp[0], hp[1], hp[2], hp[3], hp[4]
        t = data[row, s + 2 * dim] + 1.0
        data[row, s + 2 * dim] = t
        bc1 = 1.0 - b1**t
        bc2 = np.sqrt(1.0 - b2**t)
        step = lr / bc1
        for j in range(dim):
            g = acc[u, j] + wd * data[row, e + j]
            m = b1 * data[row, s + j] + (1.0 - b1) * g
            v = b2 * data[row, s + dim + j] + (1.0 - b2) * g * g
            data[row, s + j] = m
            data[row, s + dim + j] = v
            data[row, e + j] -= step * m / (np.sqrt(v) / bc2 + eps)
    elif kind == OPT_FTRL:
        alpha, beta, l1, l2 = hp[0], hp[1], hp[2], hp[3]
        for j in range(dim):
            g = acc[u, j]
            w = data[row, e + j]
            z = data[row, s + j]
            n = data[row, s + dim + j]
            n_new = n + g * g
            sigma = (np.sqrt(n_new) - np.sqrt(n)) / alpha
            z = z + g - sigma * w
            data[row, s + j] = z
            data[row, s + dim + j] = n_new
            if abs(z) <= l1:
                data[row, e + j] = 0.0
            else:
                sign = 1.0 if z > 0.0 else -1.0
                data[row, e + j] = -(z - sign * l1) / ((beta + np.sqrt(n_new)) / alpha + l2)


@njit(**JIT)
def all_finite(a):
    """True when a 2-D float32 array holds no NaN or Inf (one pass, no temporaries)."""
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            x = a[i, j]
            if not np.isfinite(x):
                return False
    return True
