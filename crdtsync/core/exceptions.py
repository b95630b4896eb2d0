"""Every exception crdtsync raises.

Conflicts and rejections from the relay are *values* (see :mod:`crdtsync.client.model`),
never exceptions. Exceptions are for misuse of the API and for faults::

    CrdtsyncError
     ├── SchemaError          the schema or configuration itself is invalid
     ├── ValidationError      values break the schema; nothing was stored or queued
     ├── UnknownObject        no such object type in the schema
     ├── RecordNotFound       no such record in the local store
     ├── RecordDeleted        the record is deleted (locally or on the relay)
     ├── RecordLocked         the record has a conflict or is unresolvable
     ├── InvalidOperation     the call does not fit the record's or the client's state
     ├── OfflineError         a sync was asked for but the relay cannot be reached
     ├── SyncError            the relay refused this client in a way retrying cannot fix
     ├── StoreError           the local store cannot be opened or is damaged
     ├── ProtocolError        a peer sent what the wire protocol does not allow
     ├── UpdateDecodeError    bytes that are not a well-formed Yjs update (a ValueError too)
     ├── FormatError          a database's format is newer than this code, or not one at all
     └── LockedError          another open store holds the database's OS lock

The core (:mod:`crdtsync.core`) raises the last four; the client library raises them
all. The relay's own errors derive from :class:`CrdtsyncError` too (see
``crdtsync_server.errors``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from crdtsync.core.protocol import ErrorCode


@attrs.frozen
class FieldError:
    """One problem with one field: ``field`` is the field name (``""`` for the record)."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    def to_wire(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}

    @classmethod
    def from_wire(cls, data: object) -> FieldError:
        if not isinstance(data, dict):
            raise TypeError(f"field error must be a map, got {type(data).__name__}")
        field, message = data.get("field"), data.get("message")
        if not isinstance(field, str) or not isinstance(message, str):
            raise TypeError("field error needs string 'field' and 'message'")
        return cls(field, message)


class CrdtsyncError(Exception):
    """Base class of every error raised by crdtsync."""


class SchemaError(CrdtsyncError):
    """The schema or configuration is invalid; the message names the offending entry."""


class ValidationError(CrdtsyncError):
    """Values break the schema. ``errors`` names each bad field; nothing was changed."""

    def __init__(self, object_name: str, errors: Iterable[FieldError]) -> None:
        self.object_name = object_name
        self.errors: tuple[FieldError, ...] = tuple(errors)
        detail = "; ".join(str(error) for error in self.errors)
        super().__init__(f"invalid {object_name}: {detail}")

    @property
    def fields(self) -> tuple[str, ...]:
        """The names of the bad fields, in the order they were reported."""
        return tuple(error.field for error in self.errors)


class UnknownObject(CrdtsyncError):
    """The object type is not in the schema."""


class RecordNotFound(CrdtsyncError):
    """No record with this id exists in the local store."""


class RecordDeleted(CrdtsyncError):
    """The record was deleted; it cannot be edited."""


class RecordLocked(CrdtsyncError):
    """The record's pending change is in conflict or unresolvable.

    Call ``resolve`` (conflict) or ``dismiss`` (either) before changing it again.
    """

    def __init__(self, record_id: str, status: str) -> None:
        self.record_id = record_id
        self.status = status
        way_out = "resolve() or dismiss()" if status == "conflict" else "dismiss()"
        super().__init__(f"record {record_id} is locked ({status}): call {way_out} first")


class InvalidOperation(CrdtsyncError):
    """The call does not fit the record's current state (e.g. resolving a clean record)."""


class OfflineError(CrdtsyncError):
    """``sync()`` could not reach the relay (no URL, switched offline, or unreachable)."""


class SyncError(CrdtsyncError):
    """The relay refused this client for a reason retrying cannot fix (a rejected
    token, no common protocol version, an app the relay does not run): ``code`` is the
    protocol's error code, the message says what to do. Pending changes are kept."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class StoreError(CrdtsyncError):
    """The local store cannot be opened, or its content is not what crdtsync wrote."""


class ProtocolError(CrdtsyncError):
    """A peer sent something the protocol does not allow. ``code`` (an
    :class:`~crdtsync.core.protocol.ErrorCode`) says what kind; ``message`` names the
    exact spot (``push.changes[2].delta: expected bytes``)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class UpdateDecodeError(CrdtsyncError, ValueError):
    """The bytes are not a well-formed update; says what is wrong and where."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"{reason} (at byte offset {offset})")
        self.reason = reason
        self.offset = offset

    def __reduce__(self) -> tuple[type[UpdateDecodeError], tuple[str, int]]:
        return (type(self), (self.reason, self.offset))


class FormatError(CrdtsyncError):
    """The database's format is newer than this code reads, or not a format at all."""


class LockedError(CrdtsyncError):
    """Another open store (in this process or another) holds the database's lock."""
