"""A measurement for the joiner's next step, not part of the package: the join of ``freshrec bench
joiner``'s stream done by the real :class:`~freshrec.joiner.JoinCore` (Python objects) and by a
compiled prototype with columnar open windows, on the same log, in the same run.

    PYTHONPATH=src python scripts/prototype_compiled_join.py [--impressions 1000000]

The prototype keeps each open window in slot arrays (window end, time, key hash, user hash,
down-sampling decision, labels, emitted), finds them through a linear-probing index keyed by a
64-bit hash of ``(request_id, item_id)``, and closes them from a FIFO of slots in window-end
order: one numba call per 8,192 events. It covers what this stream exercises (impressions in
order, actions of label types after their impression, ``emit = first_action``, negatives kept
at rate 0.1) and counts what it leaves to Python instead of handling it (``stops``: a key
already open, an action with no open window or another user or outside the window). It leaves
out what a real one needs: an exact key check on a hash match, held actions, spilling beyond the
memory budget, snapshots, ``window_close`` emission. Its counts are checked against the real
join's, so the timing is of the same work.

Printed: seconds of the real join loop (``JoinCore.process`` without building examples), of the
prototype's column extraction from the decoded headers and of its kernel, for the same events.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from operator import attrgetter
from pathlib import Path

import numba as nb
import numpy as np

from freshrec.bench.joiner import JOIN, TOPICS, _stream
from freshrec.joiner import Joiner, JoinerConfig
from freshrec.joiner import core as core_mod
from freshrec.joiner._wire import Header, WireAction
from freshrec.joiner.sampling import keep_negatives
from freshrec.stream import LogConfig, open_log

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_S33 = np.uint64(33)
_ONE = np.uint64(1)


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _home(h, mask):  # type: ignore[no-untyped-def]
    x = h ^ (h >> _S33)
    x *= _M1
    return (x ^ (x >> _S33)) & mask


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _probe(idx_k, mask, h):  # type: ignore[no-untyped-def]
    """The slot holding ``h``, or the empty one where it would go."""
    j = _home(h, mask)
    while idx_k[j] != h and idx_k[j] != 0:
        j = (j + _ONE) & mask
    return j


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _delete(idx_k, idx_s, mask, j):  # type: ignore[no-untyped-def]
    """Empty index slot ``j``, shifting back the entries that probed past it."""
    idx_k[j] = 0
    i = j
    while True:
        i = (i + _ONE) & mask
        k = idx_k[i]
        if k == 0:
            return
        home = _home(k, mask)
        inside = (j < home <= i) if j < i else (home > j or home <= i)  # home in (j, i], cyclically
        if not inside:
            idx_k[j], idx_s[j] = k, idx_s[i]
            idx_k[i] = 0
            j = i


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _join(kind, t, kh, uh, bit, keep, window, lateness, clock, counts, idx_k, idx_s, s_end, s_t, s_kh,  # type: ignore[no-untyped-def]
          s_user, s_keep, s_labels, s_emitted, fifo, free):  # fmt: skip
    """One batch, in order. clock: [event time, watermark]; counts: [fifo head, fifo tail, free
    slots, kept negatives out, positives out, stops, dropped negatives, open]."""
    mask = np.uint64(idx_k.shape[0] - 1)
    now, wm = clock[0], clock[1]
    fh, ft, nfree, ndue, npos, nstop, ndrop, nopen = counts[0], counts[1], counts[2], counts[3], counts[4], \
        counts[5], counts[6], counts[7]  # fmt: skip
    cap = fifo.shape[0]
    for i in range(kind.shape[0]):
        ti = t[i]
        if ti > now:
            now = ti
            if ti - lateness > wm:
                wm = ti - lateness
                while fh != ft and s_end[fifo[fh % cap]] < wm:  # close windows in end order
                    s = fifo[fh % cap]
                    fh += 1
                    if not s_emitted[s]:
                        if s_labels[s] != 0 or s_keep[s]:
                            ndue += 1
                        else:
                            ndrop += 1
                    _delete(idx_k, idx_s, mask, _probe(idx_k, mask, s_kh[s]))
                    free[nfree] = s
                    nfree += 1
                    nopen -= 1
        if kind[i] == 0:  # impression
            if ti < wm:
                nstop += 1
                continue
            h = kh[i]
            j = _probe(idx_k, mask, h)
            if idx_k[j] == h:
                nstop += 1
                continue
            nfree -= 1
            s = free[nfree]
            idx_k[j], idx_s[j] = h, s
            s_end[s], s_t[s], s_kh[s], s_user[s] = ti + window, ti, h, uh[i]
            s_keep[s], s_labels[s], s_emitted[s] = keep[i], 0, False
            fifo[ft % cap] = s
            ft += 1
            nopen += 1
        elif kind[i] == 1:  # action of a label type
            h = kh[i]
            j = _probe(idx_k, mask, h)
            if idx_k[j] != h:
                nstop += 1
                continue
            s = idx_s[j]
            if s_user[s] != uh[i] or not s_t[s] <= ti <= s_t[s] + window:
                nstop += 1
                continue
            s_labels[s] |= bit[i]
            if not s_emitted[s]:
                s_emitted[s] = True
                npos += 1
    clock[0], clock[1] = now, wm
    counts[0], counts[1], counts[2], counts[3], counts[4], counts[5], counts[6], counts[7] = \
        fh, ft, nfree, ndue, npos, nstop, ndrop, nopen  # fmt: skip


_KIND = {Header: 0, WireAction: 1}
_req, _item, _user, _event, _time = map(attrgetter, ("request_id", "item_id", "user_id", "event_id", "event_time"))


def prototype(items: list, config: JoinerConfig, batch: int = 8192) -> tuple[float, float, np.ndarray]:
    """(seconds extracting columns, seconds in the kernel, counts) over ``items`` in order."""
    slots = 1 << 20
    idx_k, idx_s = np.zeros(2 * slots, np.uint64), np.zeros(2 * slots, np.int32)
    s_end, s_t = np.zeros(slots), np.zeros(slots)
    s_kh, s_user = np.zeros(slots, np.uint64), np.zeros(slots, np.int64)
    s_keep, s_labels, s_emitted = np.zeros(slots, np.bool_), np.zeros(slots, np.int8), np.zeros(slots, np.bool_)
    fifo, free = np.zeros(slots, np.int32), np.arange(slots - 1, -1, -1, dtype=np.int32)
    clock, counts = np.full(2, -np.inf), np.zeros(8, np.int64)
    counts[2] = slots
    bits = {t: 1 << i for i, t in enumerate(config.labels)}
    args = (config.window_s, config.allowed_lateness_s, clock, counts, idx_k, idx_s, s_end, s_t, s_kh, s_user,
            s_keep, s_labels, s_emitted, fifo, free)  # fmt: skip
    empty = np.zeros(0)
    _join(empty.astype(np.int8), empty, empty.astype(np.uint64), empty.astype(np.int64), empty.astype(np.int8),
          empty.astype(np.bool_), *args)  # compile before the clock starts  # fmt: skip
    t_extract = t_kernel = 0.0
    for lo in range(0, len(items), batch):
        chunk = items[lo : lo + batch]
        a = time.perf_counter()
        m = len(chunk)
        kind = np.fromiter(map(_KIND.get, map(type, chunk)), np.int8, m)
        t = np.fromiter(map(_time, chunk), np.float64, m)
        kh = np.fromiter(map(hash, zip(map(_req, chunk), map(_item, chunk), strict=True)), np.int64, m)
        kh = kh.view(np.uint64)
        kh[kh == 0] = 1  # 0 marks an empty index slot
        uh = np.fromiter(map(hash, map(_user, chunk)), np.int64, m)
        keep = keep_negatives(list(map(_event, chunk)), config.negative_rate, config.sampling_seed)
        bit = np.zeros(m, np.int8)
        for j in np.flatnonzero(kind == 1).tolist():
            bit[j] = bits.get(chunk[j].type, 0)
            kind[j] = 1 if bit[j] else 2
        b = time.perf_counter()
        _join(kind, t, kh, uh, bit, keep, *args)
        t_extract += b - a
        t_kernel += time.perf_counter() - b
    return t_extract, t_kernel, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--impressions", type=int, default=1_000_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="freshrec-proto-"))
    try:
        batches, n_imp, n_act = _stream(args.impressions, 0)
        config = JoinerConfig(state_dir=work / "state", **JOIN)
        with open_log(LogConfig(path=work / "log")) as log:
            for topic, parts in TOPICS:
                log.create_topic(topic, parts)
            for topic, values, keys in batches:
                log.append(topic, values, keys)
            # the real join, its loop timed without building examples
            spent = {"process": 0.0, "emit": 0.0}
            seen: list = []
            process, emit = core_mod.JoinCore.process, core_mod.JoinCore._emit

            def timed(name, f):  # type: ignore[no-untyped-def]
                def g(*a, **k):  # type: ignore[no-untyped-def]
                    t0 = time.perf_counter()
                    try:
                        return f(*a, **k)
                    finally:
                        spent[name] += time.perf_counter() - t0

                return g

            def recording(self, items, *rest):  # type: ignore[no-untyped-def]
                seen.extend(items)  # the events in the order the real join saw them
                return process(self, items, *rest)

            core_mod.JoinCore.process = timed("process", recording)  # type: ignore[method-assign]
            core_mod.JoinCore._emit = timed("emit", emit)  # type: ignore[method-assign]
            try:
                with Joiner(log, config) as joiner:
                    m = joiner.run(until_idle=True)
            finally:
                core_mod.JoinCore.process, core_mod.JoinCore._emit = process, emit  # type: ignore[method-assign]
        t_extract, t_kernel, c = prototype(seen, config)
        print(f"{len(seen):,} events ({n_imp:,} impressions, {n_act:,} actions)")
        print(f"real join: {spent['process'] - spent['emit']:.2f} s in the loop (+ {spent['emit']:.2f} s building "
              f"{m.examples_out:,} examples): {m.negatives_out:,} kept negatives, {m.positives_out:,} positives, "
              f"{m.open_impressions:,} open at the end")  # fmt: skip
        print(f"prototype: {t_extract:.2f} s extracting columns + {t_kernel:.2f} s in the kernel = "
              f"{t_extract + t_kernel:.2f} s: {c[3]:,} kept negatives, {c[4]:,} positives, {c[7]:,} open at the end, "
              f"{c[5]:,} events left to Python")  # fmt: skip
        same = (c[3], c[4], c[7]) == (m.negatives_out, m.positives_out, m.open_impressions)
        print("counts match the real join" if same else "COUNTS DIFFER: the timing is not of the same work")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
