"""What the dead-letter topic holds: each bad input record, where it came from, and why.

The joiner never stops for bad input. A record it cannot use (malformed bytes, a schema
violation, an impression that clashes with another, an action whose user is not its
impression's) becomes one :class:`DeadLetter` on the dead-letter topic, counted in the metrics.
A record's origin (topic, partition, offset) is its identity: a restarted joiner recognises the
dead letters it already wrote and writes none twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from freshrec.errors import SchemaError

__all__ = ["DeadLetter", "decode_dead_letters", "encode_dead_letters"]


class DeadLetter(
    msgspec.Struct, tag_field="kind", tag="dead_letter", kw_only=True, frozen=True, forbid_unknown_fields=True
):
    """One rejected input record."""

    topic: str  # where the record was read
    partition: int
    offset: int
    field: str  # the field that failed ("<record>" for malformed bytes)
    reason: str  # "<kind>.<field>: <why>", as the event decoders word it
    record: bytes  # the record's bytes as read

    @property
    def origin(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(DeadLetter)


def encode_dead_letters(letters: Iterable[DeadLetter]) -> list[bytes]:
    enc = _encoder.encode
    return [enc(d) for d in letters]


def decode_dead_letters(blobs: Sequence[bytes]) -> list[DeadLetter]:
    """Records of the dead-letter topic; :class:`SchemaError` if one is not a dead letter."""
    out = []
    for i, b in enumerate(blobs):
        try:
            out.append(_decoder.decode(b))
        except (msgspec.MsgspecError, TypeError) as exc:
            raise SchemaError(f"dead_letters[{i}]: not a dead letter: {exc}") from exc
    return out
