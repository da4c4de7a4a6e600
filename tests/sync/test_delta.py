"""The sync record: sparse deltas and dense states survive encoding exactly, big ones are cut into
parts under the size limit, and anything that is not a well-formed record is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save as np_save

from freshrec.errors import CorruptionError, SchemaError
from freshrec.sync.delta import (
    SparseShare,
    decode_sparse,
    encode_dense,
    encode_sparse,
    join_dense,
    load_dense,
    read_header,
)

LIMIT = 65536


def shares(rng: np.random.Generator, sizes: dict[str, tuple[int, int, int]]) -> list[SparseShare]:
    out = []
    for t, (n, dim, m) in sizes.items():
        ids = rng.choice(10**9, n + m, replace=False).astype(np.int64)
        out.append(SparseShare(t, ids[:n], rng.normal(size=(n, dim)).astype(np.float32), ids[n:]))
    return out


def joined(records: list[bytes]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every table's upserts and tombstones, concatenated over all parts in order."""
    acc: dict[str, list[SparseShare]] = {}
    for r in records:
        for s in decode_sparse(r):
            acc.setdefault(s.table, []).append(s)
    return {t: (np.concatenate([s.ids for s in p]), np.concatenate([s.embeddings for s in p]),
                np.concatenate([s.removed for s in p])) for t, p in acc.items()}  # fmt: skip


def test_a_big_delta_is_cut_into_parts_under_the_limit_and_joins_back_exactly():
    rng = np.random.default_rng(0)
    src = shares(rng, {"a": (3000, 16, 500), "b": (10, 3, 4000), "c": (0, 8, 7), "d": (900, 33, 0)})
    records = encode_sparse(src, model="rank", version=7, published_ms=123, max_bytes=LIMIT,
                            event_time=55.5, newest_arrival_ms=999)  # fmt: skip
    assert len(records) > 4 and all(len(r) <= LIMIT for r in records)
    heads = [read_header(r) for r in records]
    assert [h.part for h in heads] == list(range(len(records)))
    assert {(h.model, h.kind, h.version, h.parts, h.event_time, h.newest_arrival_ms, h.full)
            for h in heads} == {("rank", "sparse", 7, len(records), 55.5, 999, False)}  # fmt: skip
    got = joined(records)
    for s in src:
        ids, emb, rem = got[s.table]
        np.testing.assert_array_equal(ids, s.ids)
        np.testing.assert_array_equal(emb, s.embeddings)
        assert emb.shape[1] == s.embeddings.shape[1]
        np.testing.assert_array_equal(rem, s.removed)
    # deterministic: the same delta gives the same bytes
    assert records == encode_sparse(src, model="rank", version=7, published_ms=123, max_bytes=LIMIT,
                                    event_time=55.5, newest_arrival_ms=999)  # fmt: skip


def test_an_empty_delta_is_one_heartbeat_record():
    empty = [SparseShare("a", np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0, np.int64))]
    (record,) = encode_sparse(empty, model="rank", version=3, published_ms=1, max_bytes=LIMIT)
    h = read_header(record)
    assert (h.version, h.parts, h.tables, h.event_time) == (3, 1, [], None)
    assert decode_sparse(record) == [] and len(record) < 400


def test_dense_state_round_trips_through_parts():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(100, 300), torch.nn.ReLU(), torch.nn.Linear(300, 1))
    blob, records = encode_dense(module.state_dict(), model="rank", version=2, published_ms=5,
                                 max_bytes=LIMIT, logit_offset=-2.5)  # fmt: skip
    assert len(records) == -(-len(blob) // (LIMIT - 4096)) > 1 and all(len(r) <= LIMIT for r in records)
    h, back = join_dense(records)
    assert back == blob and h.logit_offset == -2.5 and h.kind == "dense"
    state = load_dense(back, "test")
    for k, v in module.state_dict().items():
        assert torch.equal(state[k], v)
    with pytest.raises(SchemaError, match="complete"):
        join_dense(records[:-1])
    with pytest.raises(SchemaError, match="complete"):
        join_dense(records[::-1])


def test_a_corrupted_dense_part_fails_the_checksum():
    module = torch.nn.Linear(50, 50)
    _, records = encode_dense(module.state_dict(), model="m", version=1, published_ms=1, max_bytes=LIMIT,
                              logit_offset=0.0)  # fmt: skip
    bad = bytearray(records[0])
    bad[-1] ^= 0xFF  # a byte of the chunk, not of the header
    with pytest.raises(CorruptionError, match="checksum"):
        join_dense([bytes(bad), *records[1:]])


@pytest.mark.parametrize(
    "blob",
    [b"", b"1234567", b"\xff" * 64, np_save({"x": np.zeros(3, np.float32)}),
     np_save({"x": np.zeros(3)}, metadata={"freshrec.sync": '{"format": "other"}'})],
)  # fmt: skip
def test_what_is_not_a_sync_record_is_refused(blob):
    with pytest.raises(SchemaError):
        read_header(blob)


def _with_header(**change) -> bytes:
    (record,) = encode_sparse([], model="m", version=3, published_ms=1, max_bytes=LIMIT)
    meta = {**json.loads(read_header(record).to_json()), **change}
    return np_save({"x": np.zeros(1, np.int64)}, metadata={"freshrec.sync": json.dumps(meta)})


@pytest.mark.parametrize(
    "change",
    [{"version": "3"}, {"parts": "1"}, {"version": True}, {"event_time": "soon"}, {"newest_arrival_ms": "x"},
     {"tables": [["a", "1", 0]]}, {"tables": 5}, {"kind": "both"}, {"surprise": 1}],
)  # fmt: skip
def test_a_header_field_of_the_wrong_type_is_refused(change):
    """A version that is a string raised TypeError where the subscriber compared it, on every poll,
    so the record was never seen as bad and the replica never bootstrapped past it."""
    assert read_header(_with_header()).version == 3
    with pytest.raises(SchemaError, match=r"^bad sync record header"):
        read_header(_with_header(**change))


def test_a_dense_part_without_its_chunk_is_refused():
    _, (record,) = encode_dense({"w": torch.ones(3)}, model="m", version=1, published_ms=1, max_bytes=LIMIT,
                                logit_offset=0.0)  # fmt: skip
    h = json.loads(read_header(record).to_json())
    with pytest.raises(SchemaError, match="no 'chunk' tensor"):  # was a KeyError
        join_dense([np_save({"x": np.zeros(1, np.uint8)}, metadata={"freshrec.sync": json.dumps(h)})])


def test_tensors_that_disagree_with_the_header_are_refused():
    src = shares(np.random.default_rng(1), {"a": (5, 4, 2)})
    (record,) = encode_sparse(src, model="m", version=1, published_ms=1, max_bytes=LIMIT)
    h = read_header(record)
    lying = type(h)(**{**h.__dict__, "tables": [("a", 6, 2)]})
    with pytest.raises(SchemaError, match="wrong shape"):
        decode_sparse(record, lying)
