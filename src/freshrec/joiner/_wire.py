"""How the joiner decodes input records: everything it joins on at once, feature maps when used.

:class:`WireImpression` and :class:`WireAction` mirror :class:`~freshrec.stream.events.Impression`
and :class:`~freshrec.stream.events.Action` field for field, with the same validation, except that
an impression's three feature maps stay undecoded (``msgspec.Raw``: a view of the record's bytes).
Decoding and validating those maps is ~70% of the cost of decoding an impression, and most
impressions never need them: a negative dropped by down-sampling, a late or duplicate
impression. :func:`features` decodes and validates them when an example is built; a bad feature
map then sends the impression to the dead-letter topic with the reason the event decoder gives.
A test pins the mirrors to the event schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from freshrec.errors import SchemaError
from freshrec.stream import events
from freshrec.stream.events import ActionType, EventTime, Finite, Id, ItemLifecycle, Version

__all__ = ["Bad", "WireAction", "WireImpression", "decode_batch", "features", "record_of"]

_EMPTY_MAP = msgspec.Raw(b"\x80")  # msgpack's empty map


class _Base(msgspec.Struct, tag_field="kind", kw_only=True, frozen=True, forbid_unknown_fields=True, gc=False):
    pass


class WireImpression(_Base, tag="impression"):
    """An impression as the joiner holds it: validated ids and times, feature maps undecoded."""

    event_id: Id
    request_id: Id
    event_time: EventTime
    user_id: Id
    item_id: Id
    position: Annotated[int, Meta(ge=0)]
    model_version: Id | None = None
    user_features: msgspec.Raw = _EMPTY_MAP
    item_features: msgspec.Raw = _EMPTY_MAP
    context: msgspec.Raw = _EMPTY_MAP
    schema_version: Version = events.SCHEMA_VERSION


class WireAction(_Base, tag="action"):
    """An action, decoded and validated exactly as :class:`~freshrec.stream.events.Action`."""

    event_id: Id
    request_id: Id
    event_time: EventTime
    user_id: Id
    item_id: Id
    type: ActionType
    value: Finite = 0.0
    schema_version: Version = events.SCHEMA_VERSION


class Bad:
    """A record that failed to decode: ``event_time`` is -inf so it never moves the clock."""

    __slots__ = ("field", "reason", "record")
    event_time = float("-inf")

    def __init__(self, field: str, reason: str, record: bytes) -> None:
        self.field, self.reason, self.record = field, reason, record


Wire = WireImpression | WireAction | ItemLifecycle
_decoder = msgspec.msgpack.Decoder(Wire)
_features = msgspec.msgpack.Decoder(events.Features)
_encoder = msgspec.msgpack.Encoder()


def decode_batch(values: Sequence[bytes]) -> list[Any]:
    """Decode a batch of input records: a :data:`Wire` event or a :class:`Bad` per record."""
    dec = _decoder.decode
    out: list[Any] = []
    add = out.append
    for blob in values:
        try:
            add(dec(blob))
        except (msgspec.MsgspecError, TypeError):
            add(_bad(blob))
    return out


def _bad(blob: bytes) -> Bad:
    """The event decoder's verdict on a record the wire decoder refused (same rules, so it
    refuses it too, and words the reason)."""
    _, bad = events.decode_many([blob])
    if not bad:  # pragma: no cover - only if the mirrors drift from the schema (a test pins them)
        return Bad("<record>", "<record>: refused by the joiner's decoder, accepted by the event schema", blob)
    return Bad(bad[0].field, bad[0].reason, bad[0].blob)


def features(imp: WireImpression) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The impression's (user, item, context) feature dicts, validated; :class:`SchemaError`
    with the event decoder's reason if one is bad."""
    dec = _features.decode
    try:
        return dec(imp.user_features), dec(imp.item_features), dec(imp.context)
    except (msgspec.MsgspecError, TypeError):
        pass
    events.decode(record_of(imp))  # raises SchemaError with the schema's reason
    raise SchemaError("impression.<record>: feature maps refused by the joiner, accepted by the event schema")


def record_of(event: Any) -> bytes:
    """The msgpack record of a decoded wire event (the same fields and values as it was read)."""
    return _encoder.encode(event)
