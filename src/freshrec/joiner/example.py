"""The training example the joiner emits (the paper's third queue), and its columnar form.

An :class:`Example` is one impression with its labels: the impression's ids, times, position and
model version, its user/item/context features merged into one flat dict, one 0/1 label per
configured action type, and the sample weight and negative sampling rate. It travels as msgpack
on the examples topic (:func:`encode_examples`, :func:`decode_examples`), versioned like the
events (``schema_version``), and :func:`examples_to_columns` turns a list of them into the
columns :meth:`FeatureSpec.encode <freshrec.features.FeatureSpec.encode>` reads::

    cols = examples_to_columns(examples)
    batch = spec.encode(cols, weights=cols["sample_weight"], event_time=cols["event_time"])

Feature names: the three dicts are merged as they are; a name that appears in more than one of
them, or that is also a column of its own (:data:`RESERVED_COLUMNS`, or a label), is prefixed
with its source (``user_``, ``item_``, ``context_``) in every dict that has it. A name still
ambiguous after that sends the impression to the dead-letter topic.

``example_id`` is the impression's event id, so an impression yields at most one example and a
restarted joiner recognises what it already wrote.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Any

import msgspec
import numpy as np
from msgspec import Meta

from freshrec.errors import InputError, SchemaError
from freshrec.stream.events import EventTime, Features, Id, Position

__all__ = [
    "EXAMPLE_SCHEMA_VERSION",
    "RESERVED_COLUMNS",
    "Example",
    "decode_example",
    "decode_examples",
    "encode_examples",
    "examples_to_columns",
    "merge_features",
]

EXAMPLE_SCHEMA_VERSION = 1
_FMAX = 1.7976931348623157e308  # largest finite double

# Columns examples_to_columns makes from the Example's own fields: a feature may not take these names.
RESERVED_COLUMNS: tuple[str, ...] = (
    "example_id",
    "request_id",
    "event_time",
    "emitted_at",
    "user_id",
    "item_id",
    "position",
    "model_version",
    "sample_weight",
    "sampling_rate",
)
_PREFIXES = ("user_", "item_", "context_")


class Example(
    msgspec.Struct,
    tag_field="kind",
    tag="example",
    kw_only=True,
    frozen=True,
    forbid_unknown_fields=True,
    gc=False,  # holds scalars and dicts of scalars, never cycles
):
    """One impression joined with its actions: a labelled, weighted training example."""

    example_id: Id  # the impression's event id
    request_id: Id
    event_time: EventTime  # the impression's
    emitted_at: EventTime  # the joiner's event-time clock (newest event time seen) at emission
    user_id: Id
    item_id: Id
    position: Position
    model_version: Id | None = None
    features: Features = {}
    labels: dict[Annotated[str, Meta(min_length=1)], Annotated[int, Meta(ge=0, le=1)]] = {}
    sample_weight: Annotated[float, Meta(gt=0.0, le=_FMAX)] = 1.0
    sampling_rate: Annotated[float, Meta(gt=0.0, le=1.0)] = 1.0  # negatives: kept with this probability
    schema_version: Annotated[int, Meta(ge=1, le=EXAMPLE_SCHEMA_VERSION)] = EXAMPLE_SCHEMA_VERSION


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Example)


def encode_examples(examples: Iterable[Example]) -> list[bytes]:
    """msgpack records for the examples topic, one per example."""
    enc = _encoder.encode
    return [enc(e) for e in examples]


def decode_example(blob: bytes) -> Example:
    """One record of the examples topic; :class:`SchemaError` naming the field on any problem."""
    try:
        return _decoder.decode(blob)
    except (msgspec.MsgspecError, TypeError) as exc:
        raise SchemaError(_reason(exc)) from exc


def decode_examples(blobs: Sequence[bytes]) -> list[Example]:
    """Decode records of the examples topic; the first bad one raises :class:`SchemaError`
    naming its index and field (the joiner writes only valid examples)."""
    dec = _decoder.decode
    try:
        return [dec(b) for b in blobs]
    except (msgspec.MsgspecError, TypeError):
        pass
    for i, b in enumerate(blobs):  # find the bad one for the message
        try:
            dec(b)
        except (msgspec.MsgspecError, TypeError) as exc:
            raise SchemaError(f"examples[{i}]: {_reason(exc)}") from exc
    raise AssertionError("unreachable: a decode failed and then succeeded")  # pragma: no cover


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)


def _reason(exc: Exception) -> str:
    if isinstance(exc, TypeError):
        return f"example.<record>: expected bytes ({exc})"
    m = _AT.match(str(exc))
    msg, path = (m.group("msg"), (m.group("path") or "").lstrip(".")) if m else (str(exc), "")
    named = re.search(r"Object (?:missing required|contains unknown) field `([^`]*)`", msg)
    if named:
        path = f"{path}.{named.group(1)}" if path else named.group(1)
    return f"example.{path or '<record>'}: {msg[:1].lower()}{msg[1:]}"


# ---- features ----------------------------------------------------------------------------------


def merge_features(
    user: dict[str, Any], item: dict[str, Any], context: dict[str, Any], reserved: frozenset[str]
) -> dict[str, Any]:
    """The flat feature dict of an example (the rule is in the module docstring). Raises
    :class:`SchemaError` if a name is still ambiguous after prefixing."""
    merged = {**user, **item, **context}
    if len(merged) == len(user) + len(item) + len(context) and reserved.isdisjoint(merged):
        return merged  # the common case: no name clashes
    sources = (user, item, context)
    seen: dict[str, int] = {}
    for d in sources:
        for name in d:
            seen[name] = seen.get(name, 0) + 1
    clash = {name for name, count in seen.items() if count > 1 or name in reserved}
    out: dict[str, Any] = {}
    for prefix, d in zip(_PREFIXES, sources, strict=True):
        for name, value in d.items():
            key = prefix + name if name in clash else name
            if key in out or key in reserved:
                raise SchemaError(
                    f"impression.features: feature {name!r} of the {prefix[:-1]} features and another "
                    f"feature both end up as {key!r} (names are prefixed where they clash)"
                )
            out[key] = value
    return out


# ---- columns -----------------------------------------------------------------------------------


def examples_to_columns(examples: Sequence[Example]) -> dict[str, list[Any] | np.ndarray]:
    """Columns of a list of examples, in the shape :meth:`FeatureSpec.encode` accepts.

    * ``example_id``, ``request_id``, ``user_id``, ``item_id``, ``model_version``: int64 arrays
      when every value is an int, else lists;
    * ``position`` int64, ``event_time`` / ``emitted_at`` float64 (seconds),
      ``sample_weight`` / ``sampling_rate`` float64;
    * one int8 column per label, named by its action type;
    * one column per feature name (in order of first appearance): int64 or float64 arrays when
      every example has a number there, else a list with None where an example lacks it.

    Raises :class:`InputError` if the examples disagree on their label names or a feature name
    is also a column name.
    """
    if isinstance(examples, Example) or not isinstance(examples, Sequence):
        raise InputError(f"examples must be a sequence of Example, got {type(examples).__name__}")
    n = len(examples)
    for i, e in enumerate(examples):
        if type(e) is not Example:
            raise InputError(f"examples[{i}] must be an Example, got {type(e).__name__}")
    cols: dict[str, list[Any] | np.ndarray] = {
        "example_id": _ids([e.example_id for e in examples]),
        "request_id": _ids([e.request_id for e in examples]),
        "user_id": _ids([e.user_id for e in examples]),
        "item_id": _ids([e.item_id for e in examples]),
        "model_version": _ids([e.model_version for e in examples]),
        "position": np.fromiter((e.position for e in examples), np.int64, n),
        "event_time": np.fromiter((e.event_time for e in examples), np.float64, n),
        "emitted_at": np.fromiter((e.emitted_at for e in examples), np.float64, n),
        "sample_weight": np.fromiter((e.sample_weight for e in examples), np.float64, n),
        "sampling_rate": np.fromiter((e.sampling_rate for e in examples), np.float64, n),
    }
    label_names = list(examples[0].labels) if n else []
    for i, e in enumerate(examples):
        if len(e.labels) != len(label_names) or any(name not in e.labels for name in label_names):
            raise InputError(f"examples[{i}] has labels {sorted(e.labels)}, examples[0] has {sorted(label_names)}")
    for name in label_names:
        if name in cols:
            raise InputError(f"label {name!r} has the name of a column of its own")
        cols[name] = np.fromiter((e.labels[name] for e in examples), np.int8, n)
    names: dict[str, None] = {}
    for e in examples:
        names.update(dict.fromkeys(e.features))
    for name in names:
        if name in cols:
            raise InputError(f"feature {name!r} has the name of a column of its own (or of a label)")
        cols[name] = _values([e.features.get(name) for e in examples])
    return cols


def _ids(values: list[Any]) -> list[Any] | np.ndarray:
    if all(type(v) is int for v in values):
        return np.array(values, dtype=np.int64)
    return values


def _values(values: list[Any]) -> list[Any] | np.ndarray:
    types = set(map(type, values))
    if types <= {int}:
        return np.array(values, dtype=np.int64)
    if types <= {int, float}:
        return np.array(values, dtype=np.float64)
    return values
