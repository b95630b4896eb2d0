"""crdtsync: offline-first record replication on CRDT documents.

``import crdtsync`` is the client library's API (:class:`Client`, its events, values and
errors, and the schema). The package is layered (see ``docs/architecture.md``):
:mod:`crdtsync.core` is shared with the relay, :mod:`crdtsync.client` is the library,
:mod:`crdtsync.apps` the CLI, demos and reference web app. The names below are loaded on
first use, so the relay, which imports only :mod:`crdtsync.core`, never loads the client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from crdtsync.client.events import (
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
    from crdtsync.client.facade import Client
    from crdtsync.client.model import (
        FieldChange,
        FieldConflict,
        PendingChange,
        Problem,
        Record,
        Status,
    )
    from crdtsync.core.exceptions import (
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
    from crdtsync.core.fieldtypes import FieldType
    from crdtsync.core.protocol import ChangeKind, UnresolvableReason
    from crdtsync.core.schema import FieldSpec, ObjectSpec, Rule, Schema

# public name -> the module that defines it
_LAZY = {
    "AccessLost": "crdtsync.client.events",
    "AuthenticationFailed": "crdtsync.client.events",
    "ChangeKind": "crdtsync.core.protocol",
    "Client": "crdtsync.client.facade",
    "ConnectivityChanged": "crdtsync.client.events",
    "CrdtsyncError": "crdtsync.core.exceptions",
    "Event": "crdtsync.client.events",
    "EventsDropped": "crdtsync.client.events",
    "FieldChange": "crdtsync.client.model",
    "FieldConflict": "crdtsync.client.model",
    "FieldError": "crdtsync.core.exceptions",
    "FieldSpec": "crdtsync.core.schema",
    "FieldType": "crdtsync.core.fieldtypes",
    "InvalidOperation": "crdtsync.core.exceptions",
    "ObjectSpec": "crdtsync.core.schema",
    "OfflineError": "crdtsync.core.exceptions",
    "PendingChange": "crdtsync.client.model",
    "PendingChanged": "crdtsync.client.events",
    "Problem": "crdtsync.client.model",
    "Record": "crdtsync.client.model",
    "RecordDeleted": "crdtsync.core.exceptions",
    "RecordLocked": "crdtsync.core.exceptions",
    "RecordNeedsAttention": "crdtsync.client.events",
    "RecordNotFound": "crdtsync.core.exceptions",
    "RemoteChangeArrived": "crdtsync.client.events",
    "Rule": "crdtsync.core.schema",
    "Schema": "crdtsync.core.schema",
    "SchemaError": "crdtsync.core.exceptions",
    "Status": "crdtsync.client.model",
    "StoreError": "crdtsync.core.exceptions",
    "SyncError": "crdtsync.core.exceptions",
    "SyncFailed": "crdtsync.client.events",
    "SyncFinished": "crdtsync.client.events",
    "SyncProgress": "crdtsync.client.events",
    "SyncStarted": "crdtsync.client.events",
    "UnknownObject": "crdtsync.core.exceptions",
    "UnresolvableReason": "crdtsync.core.protocol",
    "ValidationError": "crdtsync.core.exceptions",
}


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'crdtsync' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


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
