"""How the joiner decodes input records: what it joins on when a record is read, the rest when
an example is built.

On read, an impression is decoded as a :class:`Header`: its kind, event, request, user and item
ids and its event time, validated as the event schema validates them; its other fields are
skipped, not even parsed into objects. The joiner keeps the record's bytes. When the impression
becomes an example, :func:`impression` decodes the record as a :class:`WireImpression` (every
field, unknown fields refused, as :class:`~freshrec.stream.events.Impression`, with the feature
maps left as ``msgspec.Raw``) and then the three feature maps, so the example is built from a
fully validated event; a bad one goes to the dead-letter topic then, with the event decoder's
reason. Decoding everything is ~5x the cost of the header, and most impressions never become
examples (negatives dropped by down-sampling, late or duplicate ones). Actions are decoded and
validated whole on read (:class:`WireAction`). Tests pin these mirrors to the event schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from freshrec.errors import SchemaError
from freshrec.stream import events
from freshrec.stream.events import ActionType, EventTime, Finite, Id, ItemLifecycle, Position, Version

__all__ = ["Bad", "Header", "WireAction", "WireImpression", "decode_batch", "impression"]

_EMPTY_MAP = msgspec.Raw(b"\x80")  # msgpack's empty map


class _Base(msgspec.Struct, tag_field="kind", kw_only=True, frozen=True, forbid_unknown_fields=True, gc=False):
    pass


class Header(
    msgspec.Struct, tag_field="kind", tag="impression", kw_only=True, frozen=True, gc=False
):  # unknown (= undeclared) fields are skipped
    """What the join needs of an impression, validated as the schema validates it."""

    event_id: Id
    request_id: Id
    event_time: EventTime
    user_id: Id
    item_id: Id


class WireImpression(_Base, tag="impression"):
    """A whole impression, validated, with its feature maps undecoded."""

    event_id: Id
    request_id: Id
    event_time: EventTime
    user_id: Id
    item_id: Id
    position: Position
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


_decoder = msgspec.msgpack.Decoder(Header | WireAction | ItemLifecycle)
_impression = msgspec.msgpack.Decoder(WireImpression)
_features = msgspec.msgpack.Decoder(events.Features)


def decode_batch(values: Sequence[bytes]) -> list[Any]:
    """Decode a batch of input records: a :class:`Header`, :class:`WireAction`,
    :class:`~freshrec.stream.events.ItemLifecycle` or :class:`Bad` per record."""
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
    """The event decoder's verdict on a record the joiner's decoder refused (same rules, so it
    refuses it too, and words the reason)."""
    _, bad = events.decode_many([blob])
    if not bad:  # pragma: no cover - only if the mirrors drift from the schema (a test pins them)
        return Bad("<record>", "<record>: refused by the joiner's decoder, accepted by the event schema", blob)
    return Bad(bad[0].field, bad[0].reason, bad[0].blob)


def impression(record: bytes) -> tuple[WireImpression, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The whole impression of ``record`` and its (user, item, context) feature dicts, validated;
    :class:`SchemaError` with the event decoder's reason if anything is wrong."""
    try:
        imp = _impression.decode(record)
        dec = _features.decode
        return imp, dec(imp.user_features), dec(imp.item_features), dec(imp.context)
    except (msgspec.MsgspecError, TypeError):
        pass
    events.decode(record)  # raises SchemaError with the schema's reason
    raise SchemaError("impression.<record>: refused by the joiner, accepted by the event schema")
