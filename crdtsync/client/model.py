"""The values an application reads: records, pending changes, statuses and problem details.

All are small frozen ``attrs`` classes; conflicts and rejections are described here as
values (:class:`Problem`), never raised.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

from crdtsync.core.exceptions import FieldError
from crdtsync.core.protocol import ChangeKind as ChangeKind  # re-exported: a pending change's kind
from crdtsync.core.protocol import UnresolvableReason as UnresolvableReason


class Status(enum.StrEnum):
    """Where a record stands. One model for the pending list, object homes and highlights."""

    SYNCED = "synced"  #: no unsynced change
    PENDING = "pending"  #: waiting to sync
    SYNCING = "syncing"  #: in flight to the relay
    CONFLICT = "conflict"  #: needs the user: concurrent same-field edit or failed validation
    UNRESOLVABLE = "unresolvable"  #: deleted elsewhere or access lost; can only be dismissed

    @property
    def locked(self) -> bool:
        """A locked record refuses ``update`` / ``delete`` until resolved or dismissed."""
        return self in (Status.CONFLICT, Status.UNRESOLVABLE)


@attrs.frozen
class Record:
    """A record as this replica sees it, local changes included."""

    id: str
    object: str
    fields: Mapping[str, Any]
    status: Status
    version: int = 0  #: the relay's version this replica last saw (0: never synced)


@attrs.frozen
class FieldChange:
    """One field a pending change writes: its value at the base version, and the new one."""

    old: Any
    new: Any


@attrs.frozen(kw_only=True)
class FieldConflict:
    """A field someone else changed, to another value, since this change's base version."""

    field: str
    base: Any
    mine: Any
    theirs: Any
    changed_by: str | None = None


@attrs.frozen(kw_only=True)
class Problem:
    """Why a pending change needs attention: the details shown beside its status."""

    conflicts: tuple[FieldConflict, ...] = ()
    errors: tuple[FieldError, ...] = ()
    reason: UnresolvableReason | None = None
    message: str = ""
    readable: bool = False  #: forbidden to change, but the user may still read the record

    def describe(self) -> str:
        """One line for people."""
        parts = [
            f"{c.field}: changed by {c.changed_by or 'someone else'} to {c.theirs!r}"
            for c in self.conflicts
        ]
        parts += [str(error) for error in self.errors]
        if self.message:
            parts.append(self.message)
        elif self.reason is UnresolvableReason.DELETED:
            parts.append("deleted by someone else")
        elif self.reason is UnresolvableReason.FORBIDDEN:
            parts.append("you no longer have access to this record")
        return "; ".join(parts)


@attrs.frozen(kw_only=True)
class PendingChange:
    """One record's unsynced change: successive offline edits coalesce into one entry."""

    record_id: str
    object: str
    kind: ChangeKind
    changes: Mapping[str, FieldChange]
    status: Status
    problem: Problem | None = None
    base_version: int = 0
    change_id: str = ""
    note: str = ""  #: why a pending change waits (e.g. for a record it references)
