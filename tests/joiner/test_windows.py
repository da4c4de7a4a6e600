"""The compiled open windows (``_windows.py``) against a dict model: the hash index under inserts
and backward-shift deletions, the close order across the FIFO and the heap, growth with closed
slots still waiting to be released, and the held-action hash counts."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.joiner import _windows as W

hashes = st.sampled_from([1, 2, 3, 5, 8, 13, -1, -7, 2**62, -(2**63), 2**63 - 1])
ops = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), hashes, st.sampled_from([0.0, 1.0, 2.0, 2.0, 5.0])),
        st.tuples(st.just("close"), st.sampled_from([0.5, 2.0, 2.5, 9.0])),
        st.tuples(st.just("spill"), st.integers(1, 3)),
        st.tuples(st.just("release")),
        st.tuples(st.just("grow")),
        st.tuples(st.just("pending"), hashes, st.sampled_from([1, 1, -1])),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops)
def test_windows_match_a_dict_model(ops):
    w = W.Windows(memory_max=10**6, window_s=10.0, capacity=2)
    w.batch_slot(0)
    model: dict[int, tuple[float, int]] = {}  # hash -> (end, seq)
    pending: dict[int, int] = {}
    waiting: list[int] = []  # closed slots not released yet
    seq = 0
    for op in ops:
        if op[0] == "insert":
            _, h, end = op
            s = w.insert(h, end - 10.0, end, seq, True, 0, False, 0, seq)
            if h in model:
                assert s == -1
            else:
                assert s >= 0 and w.s_i[s, W.I_HASH] == h
                model[h] = (end, seq)
            seq += 1
        elif op[0] in ("close", "spill"):
            wm, limit = (op[1], None) if op[0] == "close" else (np.inf, op[1])
            want = sorted((v, h) for h, v in model.items() if v[0] < wm)[: limit or len(model)]
            start = int(w.ctr[W.C_OUT])
            got = w.close_before(wm, limit=limit)[:, 0].tolist()
            assert [(float(w.s_f[s, W.F_END]), int(w.s_i[s, W.I_SEQ])) for s in got] == [v for v, _ in want]
            assert [int(w.s_i[s, W.I_HASH]) for s in got] == [h for _, h in want]
            for _, h in want:
                del model[h]
            if op[0] == "spill":  # spilled slots go back at once, as StateStore.spill does
                w.ctr[W.C_OUT] = start
                w.release(np.array(got, np.int64))
            else:
                waiting += got
        elif op[0] == "release":
            w.release(np.array(waiting, np.int64))
            w.ctr[W.C_OUT] = 0
            waiting = []
        elif op[0] == "grow":
            before = w.out[: int(w.ctr[W.C_OUT]), 0].tolist()
            w.grow()
            assert w.out[: int(w.ctr[W.C_OUT]), 0].tolist() == before == waiting
        else:
            _, h, delta = op
            if delta > 0 or pending.get(h, 0) > 0:
                w.pending_add(h, delta)
                pending[h] = pending.get(h, 0) + delta
        assert len(w) == len(model)
        for h in {1, 2, 3, 5, 8, 13, -1, -7, 2**62, -(2**63), 2**63 - 1}:
            s = w.find(h)
            assert (s >= 0) == (h in model)
            if s >= 0:
                assert w.s_i[s, W.I_HASH] == h and w.s_b[s, W.B_LIVE] == 1
        held = {h for h, c in pending.items() if c > 0}
        assert int(w.ctr[W.C_PENDING]) == len(held)
        assert {int(h) for h in w.px[w.px[:, 0] != 0, 0]} == held
        want_top = min((v for v in model.values()), default=None)
        assert w.top_end() == (want_top[0] if want_top else np.inf)
    # every slot is accounted for: open, waiting, or free
    assert len(model) + len(waiting) + int(w.ctr[W.C_FREE]) == w.cap


def test_key_hashes_never_use_the_empty_mark():
    assert W.key_hash(0) == 1 and W.key_hashes([0, (1, "a")])[0] == 1
    assert W.key_hash((-1, "a")) == W.key_hash((-2, "a"))  # why the store compares keys on a hash match
