"""The event schema: round trips, validation errors that name their field, batch decoding."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from freshrec.errors import InputError, SchemaError
from freshrec.stream.events import (
    ACTION_TYPES,
    SCHEMA_VERSION,
    Action,
    BadRecord,
    Impression,
    ItemLifecycle,
    decode,
    decode_json,
    decode_json_many,
    decode_many,
    encode,
    encode_json,
    validate,
)


def impression(**kw):
    base = dict(
        event_id=1, request_id="r-1", event_time=12.5, user_id=7, item_id="it3", position=2,
        model_version=42, user_features={"segment": 3, "age_bucket": 1},
        item_features={"category": 4, "seller_id": "s9", "price": 19.99, "tags": [1, "sale"]},
        context={"hour": 21, "device": "ios"},
    )  # fmt: skip
    base.update(kw)
    return Impression(**base)


def action(**kw):
    base = dict(event_id=2, request_id="r-1", event_time=15.0, user_id=7, item_id="it3", type="bid", value=21.5)
    base.update(kw)
    return Action(**base)


def item(**kw):
    base = dict(event_id=3, event_time=1.0, item_id=99, status="listed", features={"category": 2})
    base.update(kw)
    return ItemLifecycle(**base)


# ---- round trips ------------------------------------------------------------------------------

ids = st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(min_size=1, max_size=20))
finite = st.floats(allow_nan=False, allow_infinity=False)
feature_values = st.one_of(
    st.integers(-(2**63), 2**63 - 1), finite, st.text(max_size=10),
    st.lists(st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=5)), max_size=4),
)  # fmt: skip
features = st.dictionaries(st.text(min_size=1, max_size=8), feature_values, max_size=4)
times = st.floats(min_value=0, max_value=1e11, allow_nan=False, allow_infinity=False)

events = st.one_of(
    st.builds(
        Impression, event_id=ids, request_id=ids, event_time=times, user_id=ids, item_id=ids,
        position=st.integers(0, 1000), model_version=st.one_of(st.none(), ids), user_features=features,
        item_features=features, context=features,
    ),
    st.builds(
        Action, event_id=ids, request_id=ids, event_time=times, user_id=ids, item_id=ids,
        type=st.sampled_from(ACTION_TYPES), value=finite,
    ),
    st.builds(
        ItemLifecycle, event_id=ids, event_time=times, item_id=ids,
        status=st.sampled_from(["listed", "updated", "ended"]), features=features,
    ),
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(events, max_size=5))
def test_round_trips_msgpack_and_json(evs):
    assert [decode(b) for b in encode(evs)] == evs
    assert [decode_json(encode_json(e)) for e in evs] == evs
    got, bad = decode_json_many(encode_json(evs))
    assert got == evs and bad == []
    for e in evs:
        assert validate(e) is e


def test_wire_format_is_tagged_and_versioned():
    obj = msgspec.json.decode(encode_json(action()))
    assert obj["kind"] == "action" and obj["schema_version"] == SCHEMA_VERSION
    assert msgspec.msgpack.decode(encode([item()])[0])["kind"] == "item"
    assert decode(encode([impression(model_version=None)])[0]).model_version is None


def test_ids_keep_their_type():
    e = decode(encode([impression(user_id=5, item_id="5")])[0])
    assert e.user_id == 5 and isinstance(e.user_id, int)
    assert e.item_id == "5" and isinstance(e.item_id, str)


# ---- validation: every error names its field -----------------------------------------------------

BAD = [
    (impression, "event_time", math.nan, "impression.event_time"),
    (impression, "event_time", math.inf, "impression.event_time"),
    (impression, "event_time", -1.0, "impression.event_time"),
    (impression, "event_time", 1.7e12, "impression.event_time"),  # milliseconds: windows and ttls would be 1000x off
    (impression, "user_id", "", "impression.user_id"),
    (impression, "user_id", None, "impression.user_id"),
    (impression, "item_id", 2**64 - 1, "impression.item_id"),
    (impression, "item_id", 1.5, "impression.item_id"),
    (impression, "request_id", "", "impression.request_id"),
    (impression, "event_id", "x" * 300, "impression.event_id"),
    (impression, "position", -1, "impression.position"),
    (impression, "position", 2**64 - 1, "impression.position"),  # a uint64 sentinel: stopped the trainer
    (impression, "model_version", "", "impression.model_version"),
    (impression, "user_features", {"age": [1.5]}, "impression.user_features"),
    (impression, "context", {"temperature": math.nan}, "impression.context"),
    (impression, "item_features", {"": 1}, "impression.item_features"),
    (impression, "schema_version", SCHEMA_VERSION + 1, "impression.schema_version"),
    (action, "type", "like", "action.type"),
    (action, "value", math.inf, "action.value"),
    (action, "value", math.nan, "action.value"),
    (action, "event_time", math.nan, "action.event_time"),
    (item, "status", "sold", "item.status"),
    (item, "item_id", "", "item.item_id"),
    (item, "features", {"x": {"nested": 1}}, "item.features"),
]


def _wire(make, field, value):
    obj = msgspec.to_builtins(make())
    obj[field] = value
    return obj


@pytest.mark.parametrize(("make", "field", "value", "prefix"), BAD)
def test_bad_field_is_named_in_msgpack_and_json(make, field, value, prefix):
    obj = _wire(make, field, value)
    with pytest.raises(SchemaError) as err:
        decode(msgspec.msgpack.encode(obj))
    assert str(err.value).startswith(prefix + ":") or str(err.value).startswith(prefix + "["), str(err.value)
    if isinstance(value, float) and not math.isfinite(value):
        return  # JSON has no NaN / Infinity: such a body is malformed, not a bad field
    with pytest.raises(SchemaError) as err:
        decode_json(msgspec.json.encode(obj))
    assert str(err.value).startswith(prefix), str(err.value)


def test_non_finite_floats_say_finite():
    with pytest.raises(SchemaError, match=r"action\.value: expected a finite float"):
        decode(msgspec.msgpack.encode(_wire(action, "value", math.inf)))
    with pytest.raises(SchemaError, match=r"impression\.event_time: expected a finite float >= 0"):
        decode(msgspec.msgpack.encode(_wire(impression, "event_time", math.nan)))
    for t in (math.inf, 1.7e12):
        with pytest.raises(SchemaError, match=r"impression\.event_time: expected seconds, a finite float <= 1e\+11 "
                           r"\(a Unix time in milliseconds must be divided by 1000\)"):  # fmt: skip
            decode(msgspec.msgpack.encode(_wire(impression, "event_time", t)))


def test_missing_unknown_and_kind_errors():
    obj = msgspec.to_builtins(action())
    del obj["user_id"]
    with pytest.raises(SchemaError, match=r"^action\.user_id: object missing required field `user_id`"):
        decode(msgspec.msgpack.encode(obj))
    obj = msgspec.to_builtins(action()) | {"usr_id": 3}
    with pytest.raises(SchemaError, match=r"^action\.usr_id: object contains unknown field"):
        decode(msgspec.msgpack.encode(obj))
    obj = msgspec.to_builtins(action()) | {"kind": "view"}
    with pytest.raises(SchemaError, match=r"^kind: unknown event kind 'view'"):
        decode(msgspec.msgpack.encode(obj))
    obj = msgspec.to_builtins(action())
    del obj["kind"]
    with pytest.raises(SchemaError, match=r"^kind: "):
        decode(msgspec.msgpack.encode(obj))
    with pytest.raises(SchemaError, match=r"^<record>: "):
        decode(b"\xc1")
    with pytest.raises(SchemaError, match=r"^<record>: "):
        decode_json(b"{not json")


def test_schema_error_is_an_input_error():
    with pytest.raises(InputError):
        decode(b"")
    with pytest.raises(ValueError):
        decode(b"")


def test_validate_checks_a_constructed_event():
    with pytest.raises(SchemaError, match=r"^action\.event_time: "):
        validate(action(event_time=math.nan))
    with pytest.raises(SchemaError, match=r"^impression\.position: "):
        validate(impression(position=-3))
    with pytest.raises(SchemaError, match=r"impression"):
        validate(impression(user_features={"x": object()}))
    with pytest.raises(SchemaError, match=r"^<record>: "):
        validate({"kind": "action"})  # type: ignore[arg-type]


# ---- batch decoders never raise on a bad record ----------------------------------------------------


def test_decode_many_routes_bad_records_with_reasons():
    good = encode([impression(), action(), item()])
    blobs = [
        good[0],
        msgspec.msgpack.encode(_wire(action, "type", "like")),
        good[1],
        b"\xc1garbage",
        None,
        msgspec.msgpack.encode(_wire(impression, "event_time", math.nan)),
        good[2],
        b"",
    ]
    got, bad = decode_many(blobs)
    assert got == [impression(), action(), item()]
    assert [b.index for b in bad] == [1, 3, 4, 5, 7]
    assert all(isinstance(b, BadRecord) for b in bad)
    by_index = {b.index: b for b in bad}
    assert by_index[1].field == "type" and by_index[1].reason.startswith("action.type:")
    assert by_index[5].field == "event_time" and "finite" in by_index[5].reason
    assert by_index[3].field == "<record>" and by_index[3].blob == b"\xc1garbage"
    assert by_index[4].field == "<record>" and "expected bytes" in by_index[4].reason


def test_decode_many_matches_decode_one_by_one():
    blobs = encode([impression(event_id=i) for i in range(50)])
    got, bad = decode_many(blobs)
    assert bad == [] and got == [decode(b) for b in blobs]


def test_decode_json_many_routes_bad_elements():
    body = b"[" + encode_json(action()) + b', {"kind": "action"}, 3, ' + encode_json(item()) + b"]"
    got, bad = decode_json_many(body)
    assert got == [action(), item()]
    assert [(b.index, b.field) for b in bad] == [(1, "event_id"), (2, "<record>")]
    with pytest.raises(SchemaError, match=r"^body: expected a JSON array"):
        decode_json_many(encode_json(action()))
    with pytest.raises(SchemaError, match=r"^body: "):
        decode_json_many(b"[1, 2")
