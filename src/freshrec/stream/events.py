"""The event schema: what clients, the simulator and the serving API write to the event log.

Three kinds of event, one tagged union (``kind`` is the tag), schema version 1:

    Impression     an item was shown: event/request ids, event time, user, item, position,
                   user/item/context features and the model version that ranked it
    Action         a user did something with a shown item: click / bid / purchase /
                   add_to_cart, with a value (the bid or price; 0 for a click)
    ItemLifecycle  an item was listed, updated or ended, with its features, so serving knows
                   which items are live

IDs are ``int`` (int64 range) or non-empty ``str``; a position is an int in ``0..2**63 - 1``
(the trainer's int64 column: a uint64 "unknown" sentinel is refused); a feature value is
``int | float | str | list[int | str]``; floats (event time, value, feature values) must be
finite. The log carries msgpack (:func:`encode`, :func:`decode`, :func:`decode_many`); the HTTP
edge carries JSON (:func:`encode_json`, :func:`decode_json`, :func:`decode_json_many`).

Contract: constructing a struct in Python does not validate it (that keeps the simulator fast);
every decode does, structurally and semantically, and :func:`validate` checks a constructed
event. A bad record raises :class:`~freshrec.errors.SchemaError` whose message starts with the
field that failed (``"impression.event_time: expected a finite float >= 0"``; event times are seconds,
at most ``MAX_EVENT_TIME`` = 1e11, so a Unix time in milliseconds is refused); the batch
decoders never raise on a bad record and return it as a :class:`BadRecord` with that reason, so
the joiner can route it to a dead-letter topic. Unknown fields are rejected (a typo at the edge
is an error, not silently dropped); a reader accepts schema versions 1..``SCHEMA_VERSION``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Literal, NamedTuple

import msgspec
from msgspec import Meta

from freshrec.errors import SchemaError

__all__ = [
    "ACTION_TYPES",
    "ITEM_STATUSES",
    "MAX_EVENT_TIME",
    "SCHEMA_VERSION",
    "Action",
    "BadRecord",
    "Event",
    "FeatureValue",
    "Features",
    "Id",
    "Impression",
    "ItemLifecycle",
    "decode",
    "decode_json",
    "decode_json_many",
    "decode_many",
    "encode",
    "encode_json",
    "validate",
]

SCHEMA_VERSION = 1

_FMAX = 1.7976931348623157e308  # largest finite double: "<= this" rejects +inf and NaN
_MAX_ID_LEN = 256  # an ID longer than this is a bug upstream, not an ID

Int64 = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
Id = Int64 | Annotated[str, Meta(min_length=1, max_length=_MAX_ID_LEN)]
MAX_EVENT_TIME = 1e11  # seconds (~ the year 5138): a Unix time in milliseconds (1.7e12) is refused
EventTime = Annotated[float, Meta(ge=0.0, le=MAX_EVENT_TIME)]  # seconds of event time
Finite = Annotated[float, Meta(ge=-_FMAX, le=_FMAX)]
# int64, as the trainer's position column: 2**64 - 1 (a uint64 "npos" sentinel) passed ge=0 and then
# stopped every trainer batch that held it
Position = Annotated[int, Meta(ge=0, le=2**63 - 1)]
FeatureValue = Int64 | Finite | str | list[Int64 | str]
Features = dict[Annotated[str, Meta(min_length=1)], FeatureValue]
Version = Annotated[int, Meta(ge=1, le=SCHEMA_VERSION)]

ActionType = Literal["click", "bid", "purchase", "add_to_cart"]
ItemStatus = Literal["listed", "updated", "ended"]
ACTION_TYPES: tuple[str, ...] = ("click", "bid", "purchase", "add_to_cart")
ITEM_STATUSES: tuple[str, ...] = ("listed", "updated", "ended")


class _Base(
    msgspec.Struct,
    tag_field="kind",
    kw_only=True,
    frozen=True,
    forbid_unknown_fields=True,
    gc=False,  # events hold only scalars and feature dicts, never cycles: skip GC tracking
):
    pass


class Impression(_Base, tag="impression"):
    """One item shown to one user in one request (a slate of k items is k impressions)."""

    event_id: Id
    request_id: Id
    event_time: EventTime
    user_id: Id
    item_id: Id
    position: Position  # 0 = top of the slate
    model_version: Id | None = None  # what ranked it (a sync version, a policy name); None = unknown
    user_features: Features = {}
    item_features: Features = {}
    context: Features = {}
    schema_version: Version = SCHEMA_VERSION


class Action(_Base, tag="action"):
    """A user's action on an item shown in request ``request_id`` (joined to its impression)."""

    event_id: Id
    request_id: Id
    event_time: EventTime
    user_id: Id
    item_id: Id
    type: ActionType
    value: Finite = 0.0  # money for bid / purchase / add_to_cart; 0 for a click
    schema_version: Version = SCHEMA_VERSION


class ItemLifecycle(_Base, tag="item"):
    """An item was listed, its features changed (``updated``), or it ended (sold, closed)."""

    event_id: Id
    event_time: EventTime
    item_id: Id
    status: ItemStatus
    features: Features = {}
    schema_version: Version = SCHEMA_VERSION


Event = Impression | Action | ItemLifecycle


class BadRecord(NamedTuple):
    """A record a batch decoder rejected: its position in the batch, the field, the reason."""

    index: int
    field: str
    reason: str  # the full message, "<kind>.<field>: <why>"; the dead-letter reason
    blob: bytes


_mp_encoder = msgspec.msgpack.Encoder()
_mp_decoder = msgspec.msgpack.Decoder(Event)
_js_encoder = msgspec.json.Encoder()
_js_decoder = msgspec.json.Decoder(Event)
_js_raw_list = msgspec.json.Decoder(list[msgspec.Raw])


def encode(events: Iterable[Event]) -> list[bytes]:
    """msgpack records for the event log, one per event (not validated: see :func:`validate`)."""
    enc = _mp_encoder.encode
    return [enc(e) for e in events]


def decode(blob: bytes | bytearray | memoryview) -> Event:
    """One msgpack record -> its event; :class:`SchemaError` naming the field on any problem."""
    try:
        return _mp_decoder.decode(blob)
    except msgspec.MsgspecError as exc:
        raise SchemaError(_explain(exc, blob, msgspec.msgpack.decode)[1]) from exc


def decode_many(blobs: Sequence[bytes]) -> tuple[list[Event], list[BadRecord]]:
    """Decode a batch; good records in order, bad ones as :class:`BadRecord`. Never raises for a
    bad record."""
    dec = _mp_decoder.decode
    events: list[Event] = []
    bad: list[BadRecord] = []
    append = events.append
    for i, blob in enumerate(blobs):
        try:
            append(dec(blob))
        except (msgspec.MsgspecError, TypeError) as exc:  # TypeError: not bytes at all
            field, reason = _explain(exc, blob, msgspec.msgpack.decode)
            bad.append(BadRecord(i, field, reason, _as_bytes(blob)))
    return events, bad


def encode_json(event: Event | Sequence[Event]) -> bytes:
    """JSON for the HTTP edge: one event as an object, a sequence as an array."""
    return _js_encoder.encode(event if isinstance(event, _Base) else list(event))


def decode_json(body: bytes | str) -> Event:
    """One JSON object -> its event; :class:`SchemaError` naming the field on any problem."""
    try:
        return _js_decoder.decode(body)
    except msgspec.MsgspecError as exc:
        raise SchemaError(_explain(exc, body, msgspec.json.decode)[1]) from exc
    except UnicodeDecodeError as exc:
        raise SchemaError(f"<record>: invalid UTF-8 in a string ({exc.reason})") from exc


def decode_json_many(body: bytes | str) -> tuple[list[Event], list[BadRecord]]:
    """A JSON array of events -> (good events, bad records). Bad elements never raise; a body
    that is not a JSON array raises :class:`SchemaError`."""
    try:
        raws = _js_raw_list.decode(body)
    except msgspec.MsgspecError as exc:
        raise SchemaError(f"body: expected a JSON array of events ({_clean(str(exc))})") from exc
    events: list[Event] = []
    bad: list[BadRecord] = []
    for i, raw in enumerate(raws):
        try:
            events.append(_js_decoder.decode(raw))
        except msgspec.MsgspecError as exc:
            field, reason = _explain(exc, raw, msgspec.json.decode)
            bad.append(BadRecord(i, field, reason, bytes(raw)))
        except UnicodeDecodeError as exc:  # the array parsed, but a string inside is not UTF-8
            bad.append(BadRecord(i, "<record>", f"invalid UTF-8 in a string ({exc.reason})", bytes(raw)))
    return events, bad


def validate(event: Event) -> Event:
    """Check a Python-constructed event as a decoder would; returns it or raises SchemaError."""
    if not isinstance(event, _Base):
        raise SchemaError(f"<record>: expected an Impression, Action or ItemLifecycle, got {type(event)}")
    try:
        blob = _mp_encoder.encode(event)
    except (TypeError, msgspec.MsgspecError) as exc:  # e.g. an unencodable feature value
        raise SchemaError(f"{event.__struct_config__.tag}.<record>: {exc}") from exc
    decode(blob)
    return event


# ---- error messages: "<kind>.<field>: <reason>" ------------------------------------------------

_AT = re.compile(r"^(?P<msg>.*?)(?: - at (?P<key>`key` in )?`\$(?P<path>[^`]*)`)?$", re.DOTALL)
_NAMED = re.compile(r"Object (?:missing required|contains unknown) field `(?P<name>[^`]*)`")


def _explain(exc: Exception, blob: object, loose_decode) -> tuple[str, str]:
    """(field, "<kind>.<field>: <reason>") for a failed decode. Runs only on the error path."""
    if isinstance(exc, TypeError):
        return "<record>", f"<record>: expected bytes, got {type(blob).__name__}"
    m = _AT.match(str(exc))
    msg, path = (m.group("msg"), m.group("path") or "") if m else (str(exc), "")
    path = path.lstrip(".")
    if m and m.group("key"):  # a bad key of a mapping (e.g. an empty feature name)
        path += "[key]"
    named = _NAMED.search(msg)
    if named:
        path = f"{path}.{named.group('name')}" if path else named.group("name")
    if not isinstance(exc, msgspec.ValidationError):
        field = "<record>"  # malformed bytes: no field to blame
    else:
        field = path or "<record>"
    msg = _clean(msg)
    if field == "kind" and msg.startswith("invalid value"):
        msg = f"unknown event kind{msg[len('invalid value') :]} (expected one of {', '.join(_KINDS)})"
    kind = _kind_of(blob, loose_decode)
    prefix = f"{kind}." if kind in _KINDS and field != "kind" else ""
    return field, f"{prefix}{field}: {msg}"


_KINDS = ("impression", "action", "item")


def _kind_of(blob: object, loose_decode) -> str | None:
    try:
        obj = loose_decode(blob)
    except Exception:  # malformed: no kind to report
        return None
    return obj.get("kind") if isinstance(obj, dict) else None


_REWRITES = [
    (f"Expected `float` <= {_FMAX}", "expected a finite float"),
    (f"Expected `float` >= {-_FMAX}", "expected a finite float"),
    ("Expected `float` >= 0.0", "expected a finite float >= 0"),  # NaN fails ">= 0" too
    (  # +inf fails it too
        f"Expected `float` <= {MAX_EVENT_TIME}",
        f"expected seconds, a finite float <= {MAX_EVENT_TIME:.0e} "
        "(a Unix time in milliseconds must be divided by 1000)",
    ),
    (
        f"Expected `int` <= {SCHEMA_VERSION}",
        f"unsupported schema version (this reader knows 1..{SCHEMA_VERSION})",
    ),
]


def _clean(msg: str) -> str:
    for old, new in _REWRITES:
        if msg.startswith(old):
            msg = new + msg[len(old) :]
    if msg[:1].isupper() and msg[1:2].islower():  # "Expected ..." -> "expected ...", not "MessagePack"
        msg = msg[:1].lower() + msg[1:]
    return msg


def _as_bytes(blob: object) -> bytes:
    if isinstance(blob, bytes | bytearray | memoryview):
        return bytes(blob)
    return repr(blob).encode()
