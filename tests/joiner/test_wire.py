"""The joiner's wire decoders mirror the event schema, reject exactly what it rejects, and word the
reasons as it does."""

from __future__ import annotations

import re

import msgspec
import pytest

from freshrec.errors import SchemaError
from freshrec.joiner._wire import Bad, Header, WireAction, WireImpression, decode_batch, impression
from freshrec.stream import Action, Impression, ItemLifecycle, decode_many, encode


@pytest.mark.parametrize(("wire", "event"), [(WireImpression, Impression), (WireAction, Action)])
def test_mirrors_have_the_schema_fields_and_types(wire, event):
    w, e = msgspec.structs.fields(wire), msgspec.structs.fields(event)
    assert [f.name for f in w] == [f.name for f in e]
    raw = {"user_features", "item_features", "context"}
    for fw, fe in zip(w, e, strict=True):
        if fw.name in raw:
            assert fw.type is msgspec.Raw
        else:
            assert fw.type == fe.type, fw.name
            assert fw.default == fe.default, fw.name
    assert wire.__struct_config__.tag == event.__struct_config__.tag
    assert wire.__struct_config__.forbid_unknown_fields


def test_the_header_is_a_validated_subset_of_the_impression():
    fields = {f.name: f for f in msgspec.structs.fields(Impression)}
    for f in msgspec.structs.fields(Header):
        assert f.type == fields[f.name].type and f.required, f.name
    assert Header.__struct_config__.tag == "impression"


GOOD = [
    Impression(event_id=1, request_id="r", event_time=1.5, user_id=3, item_id="i", position=2,
               model_version="m", user_features={"a": 1}, item_features={"p": 2.5, "tags": ["x", 1]},
               context={"h": "x"}),
    Action(event_id=2, request_id="r", event_time=2.0, user_id=3, item_id="i", type="bid", value=9.5),
    ItemLifecycle(event_id=3, event_time=2.0, item_id="i", status="listed", features={"c": 1}),
]  # fmt: skip


def test_good_events_decode():
    records = encode(GOOD)
    items = decode_batch(records)
    assert [type(i) for i in items] == [Header, WireAction, ItemLifecycle]
    assert (items[0].event_id, items[0].request_id, items[0].user_id, items[0].item_id) == (1, "r", 3, "i")
    assert items[1] == msgspec.convert(msgspec.structs.asdict(GOOD[1]), WireAction)
    imp, user, item, context = impression(records[0])
    assert (user, item, context) == ({"a": 1}, {"p": 2.5, "tags": ["x", 1]}, {"h": "x"})
    assert (imp.position, imp.model_version) == (2, "m")


def _bad_records():
    base = msgspec.msgpack.decode(encode(GOOD[:2])[0]), msgspec.msgpack.decode(encode(GOOD[:2])[1])
    imp, act = base
    return [
        b"\xc1",  # never-used msgpack byte
        b"",
        msgspec.msgpack.encode({**imp, "event_time": -1.0}),
        msgspec.msgpack.encode({**imp, "event_time": float("nan")}),
        msgspec.msgpack.encode({**imp, "kind": "nope"}),
        msgspec.msgpack.encode({k: v for k, v in imp.items() if k != "user_id"}),
        msgspec.msgpack.encode({**imp, "item_id": 1.5}),
        msgspec.msgpack.encode({**act, "type": "like"}),
        msgspec.msgpack.encode({**act, "value": float("inf")}),
        msgspec.msgpack.encode({**act, "item_id": ""}),
        msgspec.msgpack.encode([1, 2]),
    ]


def test_records_bad_in_what_the_join_needs_are_refused_on_read_with_the_event_decoders_reasons():
    blobs = _bad_records()
    items = decode_batch(blobs)
    _, bad = decode_many(blobs)
    assert all(type(i) is Bad for i in items)
    assert [(i.field, i.reason, i.record) for i in items] == [(b.field, b.reason, b.blob) for b in bad]
    assert items[2].reason.startswith("impression.event_time: expected a finite float >= 0")


def test_the_rest_of_an_impression_is_validated_when_used_with_the_schemas_reason():
    imp = msgspec.msgpack.decode(encode(GOOD[:1])[0])
    for change, why in [
        ({"position": -1}, "impression.position: expected `int` >= 0"),
        ({"position": 2**63}, "impression.position: expected `int` <= 9223372036854775807"),
        ({"surprise": 1}, "impression.surprise: object contains unknown field `surprise`"),
        ({"schema_version": 9}, "impression.schema_version: unsupported schema version"),
        ({"item_features": {"p": float("nan")}}, "impression.item_features[...]: expected a finite float"),
        ({"user_features": {"": 1}}, "impression.user_features[key]: expected `str` of length >= 1"),
        ({"context": {"x": None}}, "impression.context[...]: expected `int | float | str | array`"),
        ({"context": 5}, "impression.context: expected `object`, got `int`"),
    ]:
        blob = msgspec.msgpack.encode({**imp, **change})
        (item,) = decode_batch([blob])
        assert type(item) is Header  # what the join needs is fine
        with pytest.raises(SchemaError, match=rf"^{re.escape(why)}"):
            impression(blob)
        _, bad = decode_many([blob])
        assert bad[0].reason.startswith(why)
