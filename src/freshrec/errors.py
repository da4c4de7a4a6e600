"""Every exception freshrec raises, in one tree.

    FreshrecError                 base of everything below; catch this to catch all of ours
    ├── ConfigError               a configuration is invalid (unknown key, bad value, bad file)
    ├── InputError(ValueError)    a caller passed bad data; nothing was changed
    │   ├── NonFiniteError        NaN or Inf in gradients, losses or dense features
    │   ├── SchemaError           an event or record does not match its schema
    │   ├── DataError             a data file is empty, misses a column, has a wrong type
    │   └── TooLargeError         a record is larger than the event log takes (Kafka's
    │                             message.max.bytes): no retry will take it
    ├── StateError                the operation is not allowed in the component's current state
    │                             (message names the state: "cannot push: the PS is closed")
    ├── CapacityError             a hard limit was reached (e.g. a table index beyond 2**32 slots)
    ├── CorruptionError           a file failed its checksum, is truncated, or its manifest lies;
    │                             it was not loaded, not even in part
    ├── BackendError              an engine we call (SQLite, Kafka, Ray, the OS) failed; the
    │                             original exception is chained as __cause__
    └── SyncError                 train->serve sync cannot proceed (version gap, no snapshot)

Foreign exceptions are translated where they enter (``raise BackendError(...) from exc``); the
HTTP layer maps this tree onto status codes in exactly one handler.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "CapacityError",
    "ConfigError",
    "CorruptionError",
    "DataError",
    "FreshrecError",
    "InputError",
    "NonFiniteError",
    "SchemaError",
    "StateError",
    "SyncError",
    "TooLargeError",
]


class FreshrecError(Exception):
    """Base class of every error raised by freshrec."""


class ConfigError(FreshrecError, ValueError):
    """A configuration is invalid: unknown key, value out of range, unreadable file. A ValueError
    too, as pydantic's ValidationError (what a config built in Python raises) is."""


class InputError(FreshrecError, ValueError):
    """A caller passed bad data (dtype, shape, range). Nothing was changed."""


class NonFiniteError(InputError):
    """NaN or Inf where a finite number is required. Nothing was changed."""


class SchemaError(InputError):
    """An event or record does not match its declared schema."""


class DataError(InputError):
    """A data file is empty, lacks a column, or holds a value of the wrong type."""


class TooLargeError(InputError):
    """A record is larger than the event log takes (Kafka's ``message.max.bytes``); retrying
    the same record does not help."""


class StateError(FreshrecError):
    """The operation is not allowed in the component's current lifecycle state."""


class CapacityError(FreshrecError):
    """A hard capacity limit was reached."""


class CorruptionError(FreshrecError):
    """A stored file is truncated or fails its checksum; it was not loaded."""


class BackendError(FreshrecError):
    """An external engine (SQLite, Kafka, Ray, the file system) failed."""


class SyncError(FreshrecError):
    """Train-to-serve synchronisation cannot proceed (gap in versions, missing snapshot)."""
