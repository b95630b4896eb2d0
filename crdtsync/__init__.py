"""crdtsync: offline-first record replication on CRDT documents.

See ``README.md`` for a tour and ``docs/`` for the contracts.
"""

from .client import Client
from .events import (
    AccessLost,
    AuthenticationFailed,
    ConnectivityChanged,
    Event,
    EventsDropped,
    PendingChanged,
    RecordNeedsAttention,
    RemoteChangeArrived,
    SyncFailed,
    SyncFinished,
    SyncProgress,
    SyncStarted,
)
from .exceptions import (
    CrdtsyncError,
    FieldError,
    InvalidOperation,
    OfflineError,
    RecordDeleted,
    RecordLocked,
    RecordNotFound,
    SchemaError,
    StoreError,
    SyncError,
    UnknownObject,
    ValidationError,
)
from .fieldtypes import FieldType
from .model import (
    ChangeKind,
    FieldChange,
    FieldConflict,
    PendingChange,
    Problem,
    Record,
    Status,
    UnresolvableReason,
)
from .schema import FieldSpec, ObjectSpec, Rule, Schema

__version__ = "0.1.0"

__all__ = [
    "AccessLost",
    "AuthenticationFailed",
    "ChangeKind",
    "Client",
    "ConnectivityChanged",
    "CrdtsyncError",
    "Event",
    "EventsDropped",
    "FieldChange",
    "FieldConflict",
    "FieldError",
    "FieldSpec",
    "FieldType",
    "InvalidOperation",
    "ObjectSpec",
    "OfflineError",
    "PendingChange",
    "PendingChanged",
    "Problem",
    "Record",
    "RecordDeleted",
    "RecordLocked",
    "RecordNeedsAttention",
    "RecordNotFound",
    "RemoteChangeArrived",
    "Rule",
    "Schema",
    "SchemaError",
    "Status",
    "StoreError",
    "SyncError",
    "SyncFailed",
    "SyncFinished",
    "SyncProgress",
    "SyncStarted",
    "UnknownObject",
    "UnresolvableReason",
    "ValidationError",
]
