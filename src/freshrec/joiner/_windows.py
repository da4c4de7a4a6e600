"""The open windows kept in memory: columns of slots behind a compiled hash index, and the join's
hot path over them (numba).

An open impression in memory is a *slot*: its event time, window end, key hash, arrival seq,
labels, down-sampling decision and "emitted" flag in three small arrays, plus a reference
``(batch, index)`` to the Python objects it came from (the record bytes, ids, partition and
offset), which stay in the lists the joiner read them into. Slots are found through a
linear-probing index on a 64-bit hash of the key ``(request_id, item_id)`` and closed in
``(window end, seq)`` order from a FIFO (impressions arrive in event-time order, so almost
all windows end in arrival order) merged with a heap for the few that do not.

:func:`run` walks a batch of events in processing order. It moves the clock, closes the windows
the watermark passes (into ``out``, for Python to emit), opens the windows of new impressions
and counts late impressions and lifecycle events. Everything else stops it and is handed back
to Python in order, with the clock already moved for that event: actions, bad records, an
impression whose key hash is already open (a duplicate, a refusal, or a hash shared by two
keys), is awaited by held actions, or may be on disk; also a watermark move past a held action's
time or a spilled window's end (those need SQLite and Python), a full memory budget, and a lack
of free slots. A hash match is never trusted as a key match: Python compares the keys.

The index never holds two slots with one hash. A key whose hash is taken by another key's open
window goes to the SQLite spill table instead (see :class:`~freshrec.joiner.state.StateStore`).
Hashes are Python's ``hash`` of the key with 0 mapped to 1 (0 marks an empty index cell): they
are never stored, the index is rebuilt from the entries at restore.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from freshrec._numba import JIT

__all__ = ["Windows", "key_hash", "key_hashes"]

# slot columns
F_T, F_END = 0, 1  # s_f (float64)
I_HASH, I_SEQ, I_BT, I_BJ, I_LABELS = 0, 1, 2, 3, 4  # s_i (int64)
B_KEEP, B_EMITTED, B_LIVE = 0, 1, 2  # s_b (uint8)
# counters (int64)
C_OPEN, C_HEAD, C_TAIL, C_HEAP, C_FREE, C_SEQ, C_LATE, C_OTHER, C_OUT, C_MEMMAX, C_BLOOM, C_PENDING, C_I, \
    C_DONE = range(14)  # fmt: skip
N_CTR = 14
# clock (float64)
K_NOW, K_WM, K_STOP, K_WINDOW, K_LATENESS = range(5)
# run() statuses
DONE, STOP_EVENT, STOP_ADVANCE, STOP_SPILL, NEED_SLOTS = range(5)
# event kinds
KIND_IMPRESSION, KIND_ACTION, KIND_BAD, KIND_OTHER = 0, 1, 2, 3

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_S33 = np.uint64(33)
_S32 = np.uint64(32)
_ONE = np.uint64(1)


def key_hash(key: object) -> int:
    """The index hash of one key (as :func:`key_hashes`)."""
    h = hash(key)
    return h if h != 0 else 1


def key_hashes(keys) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The index hashes of an iterable of keys, int64."""
    h = np.fromiter(map(hash, keys), np.int64)
    h[h == 0] = 1
    return h


# ---- hash index ------------------------------------------------------------------------------


@njit(inline="always", **JIT)
def _home(h, mask):
    x = np.uint64(h)
    x ^= x >> _S33
    x *= _M1
    x ^= x >> _S33
    return np.int64(x & np.uint64(mask))


@njit(inline="always", **JIT)
def _probe(ix, h):
    """The cell holding ``h``, or the empty cell where it would go."""
    mask = ix.shape[0] - 1
    j = _home(h, mask)
    while ix[j, 0] != h and ix[j, 0] != 0:
        j = (j + 1) & mask
    return j


@njit(inline="always", **JIT)
def _unindex(ix, j):
    """Empty cell ``j``, shifting back the cells that probed past it."""
    mask = ix.shape[0] - 1
    ix[j, 0] = 0
    i = j
    while True:
        i = (i + 1) & mask
        k = ix[i, 0]
        if k == 0:
            return
        home = _home(k, mask)
        inside = (j < home <= i) if j < i else (home > j or home <= i)  # home in (j, i], cyclically
        if not inside:
            ix[j, 0], ix[j, 1] = k, ix[i, 1]
            ix[i, 0] = 0
            j = i


@njit(**JIT)
def find(ix, h):
    """The slot of hash ``h``, or -1."""
    j = _probe(ix, h)
    return ix[j, 1] if ix[j, 0] == h else -1


@njit(**JIT)
def pending_add(px, ctr, h, delta):
    """Count ``delta`` more held actions on hash ``h`` (a cell at zero is removed)."""
    j = _probe(px, h)
    if px[j, 0] == h:
        px[j, 1] += delta
        if px[j, 1] <= 0:
            _unindex(px, j)
            ctr[C_PENDING] -= 1
    elif delta > 0:
        px[j, 0], px[j, 1] = h, delta
        ctr[C_PENDING] += 1


@njit(**JIT)
def reindex(ix, s_i, s_b):
    """Index every live slot (``ix`` empty)."""
    for s in range(s_b.shape[0]):
        if s_b[s, B_LIVE]:
            h = s_i[s, I_HASH]
            j = _probe(ix, h)
            ix[j, 0], ix[j, 1] = h, s


# ---- the disk filter ---------------------------------------------------------------------------


@njit(inline="always", **JIT)
def _bloom_has(bits, mask, h):
    x = np.uint64(h)
    step = (x >> _S32) | _ONE
    m = np.uint64(mask)
    for _ in range(4):
        b = x & m
        if not bits[b >> np.uint64(3)] & (np.uint8(1) << np.uint8(b & np.uint64(7))):
            return False
        x += step
    return True


@njit(**JIT)
def bloom_add(bits, mask, hashes):
    m = np.uint64(mask)
    for i in range(hashes.shape[0]):
        x = np.uint64(hashes[i])
        step = (x >> _S32) | _ONE
        for _ in range(4):
            b = x & m
            bits[b >> np.uint64(3)] |= np.uint8(1) << np.uint8(b & np.uint64(7))
            x += step


@njit(**JIT)
def bloom_has(bits, mask, h):
    return _bloom_has(bits, mask, h)


# ---- the close order ---------------------------------------------------------------------------


@njit(inline="always", **JIT)
def _before(s_f, s_i, a, b):
    """Slot ``a`` closes before slot ``b``: (end, seq) order."""
    ea, eb = s_f[a, F_END], s_f[b, F_END]
    return ea < eb or (ea == eb and s_i[a, I_SEQ] < s_i[b, I_SEQ])


@njit(inline="always", **JIT)
def _heap_up(heap, s_f, s_i, k):
    while k > 0:
        p = (k - 1) >> 1
        if _before(s_f, s_i, heap[k], heap[p]):
            heap[k], heap[p] = heap[p], heap[k]
            k = p
        else:
            return


@njit(inline="always", **JIT)
def _heap_pop(heap, s_f, s_i, n):
    """Remove the top of a heap of ``n`` slots (n - 1 remain)."""
    n -= 1
    heap[0] = heap[n]
    k = 0
    while True:
        c = 2 * k + 1
        if c >= n:
            return
        if c + 1 < n and _before(s_f, s_i, heap[c + 1], heap[c]):
            c += 1
        if _before(s_f, s_i, heap[c], heap[k]):
            heap[k], heap[c] = heap[c], heap[k]
            k = c
        else:
            return


@njit(inline="always", **JIT)
def _top(fifo, heap, s_f, s_i, ctr):
    """The open slot that closes first, or -1."""
    cap = fifo.shape[0]
    fs = fifo[ctr[C_HEAD] % cap] if ctr[C_HEAD] != ctr[C_TAIL] else -1
    if ctr[C_HEAP] == 0:
        return fs
    hs = heap[0]
    if fs < 0 or _before(s_f, s_i, hs, fs):
        return hs
    return fs


@njit(**JIT)
def _top_slot(fifo, heap, s_f, s_i, ctr):
    """:func:`_top`, for Python."""
    return _top(fifo, heap, s_f, s_i, ctr)


@njit(inline="always", **JIT)
def _pop_top(fifo, heap, s_f, s_i, ctr, s):
    if ctr[C_HEAD] != ctr[C_TAIL] and fifo[ctr[C_HEAD] % fifo.shape[0]] == s:
        ctr[C_HEAD] += 1
    else:
        _heap_pop(heap, s_f, s_i, ctr[C_HEAP])
        ctr[C_HEAP] -= 1


@njit(inline="always", **JIT)
def _take(ix, fifo, heap, s_f, s_i, s_b, ctr, s):
    """Remove open slot ``s`` (the top of the close order) from the index and the order."""
    _pop_top(fifo, heap, s_f, s_i, ctr, s)
    _unindex(ix, _probe(ix, s_i[s, I_HASH]))
    s_b[s, B_LIVE] = 0
    ctr[C_OPEN] -= 1


@njit(inline="always", **JIT)
def _close(ix, fifo, heap, s_f, s_i, s_b, out, ctr, wm, cause, limit):
    """Take up to ``limit`` slots whose window ends before ``wm``, in order, into ``out``
    (slot, cause)."""
    taken = 0
    while taken < limit:
        s = _top(fifo, heap, s_f, s_i, ctr)
        if s < 0 or not s_f[s, F_END] < wm:
            break
        _take(ix, fifo, heap, s_f, s_i, s_b, ctr, s)
        o = ctr[C_OUT]
        out[o, 0], out[o, 1] = s, cause
        ctr[C_OUT] = o + 1
        taken += 1
    return taken


@njit(**JIT)
def close_before(ix, fifo, heap, s_f, s_i, s_b, out, ctr, wm, cause, limit):
    """Python's entry to the close (and the spill, with ``wm`` = inf and a limit)."""
    return _close(ix, fifo, heap, s_f, s_i, s_b, out, ctr, wm, cause, limit)


@njit(**JIT)
def insert(ix, fifo, heap, free, s_f, s_i, s_b, bcount, ctr, h, t, end, seq, keep, labels, emitted, bt, bj):
    """Open one window from Python; returns its slot, -1 if the hash is taken, -2 if no slot is free."""
    j = _probe(ix, h)
    if ix[j, 0] == h:
        return -1
    if ctr[C_FREE] == 0:
        return -2
    return _put(ix, j, fifo, heap, free, s_f, s_i, s_b, bcount, ctr, h, t, end, seq, keep, labels, emitted, bt, bj)


@njit(inline="always", **JIT)
def _put(ix, j, fifo, heap, free, s_f, s_i, s_b, bcount, ctr, h, t, end, seq, keep, labels, emitted, bt, bj):
    ctr[C_FREE] -= 1
    s = free[ctr[C_FREE]]
    ix[j, 0], ix[j, 1] = h, s
    s_f[s, F_T], s_f[s, F_END] = t, end
    s_i[s, I_HASH], s_i[s, I_SEQ], s_i[s, I_BT], s_i[s, I_BJ], s_i[s, I_LABELS] = h, seq, bt, bj, labels
    s_b[s, B_KEEP], s_b[s, B_EMITTED], s_b[s, B_LIVE] = keep, emitted, 1
    cap = fifo.shape[0]
    head, tail = ctr[C_HEAD], ctr[C_TAIL]
    if head == tail or not _before(s_f, s_i, s, fifo[(tail - 1) % cap]):
        fifo[tail % cap] = s
        ctr[C_TAIL] = tail + 1
    else:  # ends before the last of the FIFO: out of order
        n = ctr[C_HEAP]
        heap[n] = s
        ctr[C_HEAP] = n + 1
        _heap_up(heap, s_f, s_i, n)
    ctr[C_OPEN] += 1
    bcount[bt] += 1
    return s


@njit(**JIT)
def release(slots, free, s_i, bcount, ctr, emptied):
    """Free closed (or spilled) slots; the batches left without a slot go to ``emptied``."""
    n_empty = 0
    for k in range(slots.shape[0]):
        s = slots[k]
        free[ctr[C_FREE]] = s
        ctr[C_FREE] += 1
        bt = s_i[s, I_BT]
        bcount[bt] -= 1
        if bcount[bt] == 0:
            emptied[n_empty] = bt
            n_empty += 1
    return n_empty


@njit(**JIT)
def live_since(s_i, s_b, seq0, out):
    """The live slots with seq >= ``seq0`` into ``out``; returns how many."""
    n = 0
    for s in range(s_b.shape[0]):
        if s_b[s, B_LIVE] and s_i[s, I_SEQ] >= seq0:
            out[n] = s
            n += 1
    return n


# ---- the join's hot path -----------------------------------------------------------------------


@njit(**JIT)
def run(kind, t, kh, keep, bt, ix, fifo, heap, free, s_f, s_i, s_b, bcount, px, bloom, out, ctr, clock):
    """Join events from ``ctr[C_I]`` (its clock step done if ``ctr[C_DONE]``) until one needs
    Python; returns the status, with ``ctr[C_I]``/``ctr[C_DONE]`` where to resume."""
    n = kind.shape[0]
    now, wm, stop = clock[K_NOW], clock[K_WM], clock[K_STOP]
    window, lateness = clock[K_WINDOW], clock[K_LATENESS]
    i, done = ctr[C_I], ctr[C_DONE]
    status = DONE
    big = out.shape[0]
    while i < n:
        ti = t[i]
        if done == 0 and ti > now:
            nw = ti - lateness
            if nw > wm:
                if nw > stop:  # a held action or a spilled window is due: Python moves the clock
                    status = STOP_ADVANCE
                    break
                wm = nw
                _close(ix, fifo, heap, s_f, s_i, s_b, out, ctr, wm, i, big)
            now = ti
        done = 0
        k = kind[i]
        if k == KIND_IMPRESSION:
            if ti < wm:
                ctr[C_LATE] += 1
                i += 1
                continue
            h = kh[i]
            j = _probe(ix, h)
            if (
                ix[j, 0] == h
                or (ctr[C_PENDING] > 0 and px[_probe(px, h), 0] == h)
                or (ctr[C_BLOOM] > 0 and _bloom_has(bloom, ctr[C_BLOOM], h))
            ):
                status = STOP_EVENT
                break
            if ctr[C_FREE] == 0:
                status = NEED_SLOTS
                done = 1
                break
            seq = ctr[C_SEQ]
            ctr[C_SEQ] = seq + 1
            _put(ix, j, fifo, heap, free, s_f, s_i, s_b, bcount, ctr, h, ti, ti + window, seq, keep[i], 0, 0, bt, i)
            if ctr[C_OPEN] > ctr[C_MEMMAX]:
                status = STOP_SPILL
                i += 1
                break
        elif k == KIND_OTHER:
            ctr[C_OTHER] += 1
        else:
            status = STOP_EVENT
            break
        i += 1
    clock[K_NOW], clock[K_WM] = now, wm
    ctr[C_I], ctr[C_DONE] = i, done
    return status


_warm = False


def warmup() -> None:
    """Load (or compile) every kernel now, once per process, so that no event pays for it."""
    global _warm
    if _warm:
        return
    _warm = True
    w = Windows(1, 10.0, capacity=4)
    kind, t = np.array([0, 0, 1, 3], np.int8), np.array([1.0, 2.0, 3.0, 40.0])
    kh, keep = np.array([5, 6, 5, 0], np.int64), np.ones(4, np.uint8)
    w.batch_slot(0)
    while run(kind, t, kh, keep, 0, w.ix, w.fifo, w.heap, w.free, w.s_f, w.s_i, w.s_b, w.bcount, w.px, w.bloom,
              w.out, w.ctr, w.clock) != DONE:  # fmt: skip
        w.ctr[C_I] += 1
        w.ctr[C_DONE] = 0
    w.release(w.out[: int(w.ctr[C_OUT]), 0].copy())
    w.ctr[C_OUT] = 0
    w.insert(7, 1.0, 11.0, 9, True, 0, False, 0, 0)
    w.find(7)
    w.top_end()
    w.live_since(0)
    w.pending_add(3, 1)
    w.pending_add(3, -1)
    w.release(w.close_before(np.inf)[:, 0].copy())
    w.ctr[C_OUT] = 0
    bits = np.zeros(8, np.uint8)
    bloom_add(bits, 63, kh)
    bloom_has(bits, 63, 5)
    w.grow()


class Windows:
    """The arrays of the open windows in memory and their growth (see the module docstring).
    Not thread-safe; the state store owns one."""

    def __init__(self, memory_max: int, window_s: float, lateness_s: float = 0.0, capacity: int = 1024) -> None:
        self.ctr = np.zeros(N_CTR, np.int64)
        self.ctr[C_MEMMAX] = memory_max
        self.clock = np.array([-np.inf, -np.inf, np.inf, window_s, lateness_s])
        self.px = np.zeros((64, 2), np.int64)  # held-action hashes -> count
        self.bloom = np.zeros(1, np.uint8)
        self.bcount = np.zeros(64, np.int64)
        self._alloc(capacity)

    def _alloc(self, cap: int) -> None:
        self.cap = cap
        self.s_f = np.zeros((cap, 2), np.float64)
        self.s_i = np.zeros((cap, 5), np.int64)
        self.s_b = np.zeros((cap, 3), np.uint8)
        self.ix = np.zeros((4 * cap, 2), np.int64)
        self.fifo = np.zeros(cap, np.int64)
        self.heap = np.zeros(cap, np.int64)
        self.free = np.arange(cap - 1, -1, -1, dtype=np.int64)
        self.out = np.zeros((cap, 2), np.int64)
        self.emptied = np.zeros(cap, np.int64)
        self.ctr[C_FREE] = cap

    def __len__(self) -> int:
        return int(self.ctr[C_OPEN])

    def grow(self) -> None:
        """Double the slots (closed slots waiting in ``out`` stay there)."""
        old = (self.s_f, self.s_i, self.s_b, self.fifo, self.heap, self.free, self.out)
        cap, head, tail, nfree = self.cap, int(self.ctr[C_HEAD]), int(self.ctr[C_TAIL]), int(self.ctr[C_FREE])
        self._alloc(2 * cap)
        self.s_f[:cap], self.s_i[:cap], self.s_b[:cap] = old[0], old[1], old[2]
        order = old[3][np.arange(head, tail) % cap]
        self.fifo[: order.shape[0]] = order
        self.ctr[C_HEAD], self.ctr[C_TAIL] = 0, order.shape[0]
        self.heap[: int(self.ctr[C_HEAP])] = old[4][: int(self.ctr[C_HEAP])]
        self.free[:cap] = np.arange(2 * cap - 1, cap - 1, -1)
        self.free[cap : cap + nfree] = old[5][:nfree]
        self.ctr[C_FREE] = cap + nfree
        n_out = int(self.ctr[C_OUT])
        self.out[:n_out] = old[6][:n_out]
        reindex(self.ix, self.s_i, self.s_b)

    def batch_slot(self, bt: int) -> None:
        """Room in the per-batch slot counts for batch index ``bt``."""
        if bt >= self.bcount.shape[0]:
            grown = np.zeros(max(2 * self.bcount.shape[0], bt + 1), np.int64)
            grown[: self.bcount.shape[0]] = self.bcount
            self.bcount = grown

    def pending_add(self, h: int, delta: int) -> None:
        if delta > 0 and 2 * (int(self.ctr[C_PENDING]) + 1) > self.px.shape[0]:
            old = self.px[self.px[:, 0] != 0]
            self.px = np.zeros((2 * self.px.shape[0], 2), np.int64)
            self.ctr[C_PENDING] = 0
            for k in range(old.shape[0]):
                pending_add(self.px, self.ctr, int(old[k, 0]), int(old[k, 1]))
        pending_add(self.px, self.ctr, h, delta)

    def pending_clear(self) -> None:
        self.px[:] = 0
        self.ctr[C_PENDING] = 0

    def insert(self, h: int, t: float, end: float, seq: int, keep: bool, labels: int, emitted: bool,
               bt: int, bj: int) -> int:  # fmt: skip
        """Open a window; its slot, or -1 if another open window has hash ``h``."""
        while True:
            s = insert(self.ix, self.fifo, self.heap, self.free, self.s_f, self.s_i, self.s_b, self.bcount,
                       self.ctr, h, t, end, seq, keep, labels, emitted, bt, bj)  # fmt: skip
            if s != -2:
                return int(s)
            self.grow()

    def find(self, h: int) -> int:
        return int(find(self.ix, h))

    def top_end(self) -> float:
        """The earliest window end in memory (inf if none)."""
        s = _top_slot(self.fifo, self.heap, self.s_f, self.s_i, self.ctr)
        return float(self.s_f[s, F_END]) if s >= 0 else float("inf")

    def close_before(self, wm: float, cause: int = -1, limit: int | None = None) -> np.ndarray:
        """Take the slots whose window ends before ``wm`` (at most ``limit``), in close order:
        an (n, 2) array of (slot, cause) that :meth:`release` must be given back."""
        lim = self.cap if limit is None else limit
        start = int(self.ctr[C_OUT])
        close_before(self.ix, self.fifo, self.heap, self.s_f, self.s_i, self.s_b, self.out, self.ctr, wm, cause, lim)
        return self.out[start : int(self.ctr[C_OUT])]

    def release(self, slots: np.ndarray) -> np.ndarray:
        """Give closed slots back; the batch indexes left without an open slot."""
        n = release(np.ascontiguousarray(slots, np.int64), self.free, self.s_i, self.bcount, self.ctr, self.emptied)
        return self.emptied[:n]

    def live_since(self, seq0: int) -> np.ndarray:
        """The open slots with seq >= ``seq0``, in seq order."""
        buf = np.empty(self.cap, np.int64)
        n = live_since(self.s_i, self.s_b, seq0, buf)
        slots = buf[:n]
        return slots[np.argsort(self.s_i[slots, I_SEQ], kind="stable")]

    def set_bloom(self, bits: np.ndarray, mask: int) -> None:
        self.bloom, self.ctr[C_BLOOM] = bits, mask

    def clear(self) -> None:
        """Forget every open window (the clock, counters and held-action hashes stay)."""
        self.ctr[[C_OPEN, C_HEAD, C_TAIL, C_HEAP, C_OUT]] = 0
        self.bcount[:] = 0
        self._alloc(self.cap)
