"""The offline replica: local-first records, the outbox of pending changes, and the
entry points through which the sync layer reports what the relay decided.

Every record is kept twice in the store: the **server** document (the last version the
relay confirmed) and the **local** document (the server's plus the user's unsynced
changes). A pending change is the difference between the two, kept as one outbox entry
per record:

* successive edits of a record coalesce into its entry (the first edit's place in the
  queue is kept, so changes sync in the order they were first made);
* create-then-delete before anything reached the relay cancels out;
* delete supersedes edits.

The sync layer drives the entry through its statuses with :meth:`Replica.outgoing`,
:meth:`Replica.requeue_inflight`, :meth:`Replica.apply_ack`,
:meth:`Replica.apply_conflict`, :meth:`Replica.apply_unresolvable` and
:meth:`Replica.apply_remote`::

    pending ──outgoing()──▶ syncing ──ack──▶ (gone; synced)
       ▲                      │ ├─conflict──────▶ conflict ──resolve()──▶ pending
       └──requeue_inflight()──┘ └─unresolvable──▶ unresolvable
                                        conflict / unresolvable ──dismiss()──▶ (gone)

A record in ``conflict`` or ``unresolvable`` is locked. ``resolve`` and ``dismiss``
rebuild the local document from the server's and switch to a fresh CRDT client id, so
a rejected operation can never travel again (no zombie ops).

The entry's :class:`~crdtsync.client.store.FieldEdit` values are the user's intent; the local
document shows it. Whenever the two could drift apart they are brought back together:
a remote update that a plain CRDT merge lets win over an unsent value of the user's is
written over again (the user's edit is causally later then, and still goes to the
relay, which judges it against the remote one); and when an entry settles (the part in
flight acknowledged, a field edited back to its base value, a resolve) the local
document is rebuilt as the server's plus exactly what is still pending, text fields as
the user's character edits rebased on the server's text.
"""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import pycrdt

from crdtsync.core.conflicts import ConflictCodec
from crdtsync.core.exceptions import (
    FieldError,
    InvalidOperation,
    RecordDeleted,
    RecordLocked,
    RecordNotFound,
    StoreError,
)
from crdtsync.core.fieldtypes import FieldType
from crdtsync.core.protocol import (
    ChangeFrame,
    Conflict,
    ErrorCode,
    RecordChange,
    WireConflict,
)
from crdtsync.core.record import BadStoredState, RecordDoc, merged_state
from crdtsync.core.schema import ObjectSpec, Schema

from .events import (
    AccessLost,
    Event,
    PendingChanged,
    RecordNeedsAttention,
    RemoteChangeArrived,
)
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
from .store import FieldEdit, LocalStore, PendingRow, RecordRow, RemoteTarget, new_change_id


def new_record_id() -> str:
    """A permanent, globally unique record id (random UUID)."""
    return str(uuid.uuid4())


def _new_client_id() -> int:
    # Below 2**53 so JavaScript (Yjs) peers read it exactly.
    return secrets.randbits(53) or 1


class Replica:
    """One replica's records and outbox, on a :class:`~crdtsync.client.store.LocalStore`.

    ``on_event`` is called synchronously with every event, after the change it reports
    is committed.
    """

    def __init__(
        self,
        store: LocalStore,
        schema: Schema,
        *,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.store = store
        self.schema = schema
        self._on_event = on_event or (lambda event: None)
        #: while a frame is applied (:meth:`applying`): its events, reported after it
        #: commits, and the cursor it has reached, stored with it
        self._deferred: list[Event] | None = None
        self._frame_cursor = 0
        #: while a frame of remote changes is applied (:meth:`apply_changes`): what is
        #: staged of records with no change of the user's, written when the frame ends
        self._staging: _Staging | None = None
        with store.transaction():
            self.replica_id: str = store.get_meta("replica_id") or uuid.uuid4().hex
            store.set_meta("replica_id", self.replica_id)
            self.client_id: int = store.get_meta("client_id") or _new_client_id()
            store.set_meta("client_id", self.client_id)
            # Nothing is in flight when a replica opens: what the store calls syncing was
            # sent by a process that died (kill -9) before its verdict came back.
            self._requeue()

    def _emit(self, event: Event) -> None:
        if self._deferred is not None:
            self._deferred.append(event)
        else:
            self._on_event(event)

    @contextlib.contextmanager
    def applying(self) -> Iterator[None]:
        """Apply what one relay frame carries as one unit: every sync entry point called
        inside (:meth:`apply_remote`, :meth:`apply_ack`, :meth:`advance_cursor`, …)
        joins one store transaction, the cursor is written once, with the changes it
        covers, and the events are reported after the commit, in the order they
        happened. If anything raises, nothing of the frame is stored and no event of it
        is reported: the store is as before the frame (the relay sends it again after
        a reconnect, from the cursor). Nested calls join the outer one."""
        if self._deferred is not None:
            yield
            return
        self._deferred = []
        self._frame_cursor = 0
        try:
            with self.store.transaction():
                yield
                if self._frame_cursor > int(self.store.get_meta("cursor", 0)):
                    self.store.set_meta("cursor", self._frame_cursor)
        except BaseException:
            self._deferred = None
            raise
        events, self._deferred = self._deferred, None
        for event in events:
            self._on_event(event)

    # -- reading ------------------------------------------------------------------------

    def get(self, record_id: str) -> Record | None:
        """The record with local changes, or ``None`` if unknown or deleted locally."""
        row = self.store.get_record(record_id)
        if row is None or row.deleted:
            return None
        entry = self.store.get_pending(record_id)
        return self._record(row, entry)

    def records(self, object_name: str | None = None) -> list[Record]:
        """Every record (of one object type, if given) that is not deleted locally."""
        if object_name is not None:
            self.schema.object(object_name)
        statuses = {entry.record_id: entry for entry in self.store.list_pending()}
        return [
            self._record(row, statuses.get(row.id))
            for row in self.store.list_records(object_name)
            if not row.deleted
        ]

    def pending(self) -> list[PendingChange]:
        """Every record with unsynced changes, in the order they were first made."""
        return [self._pending_change(entry) for entry in self.store.list_pending()]

    def summary(self) -> dict[str, dict[str, int]]:
        """Per object: how many records are ``synced`` and how many changes are in each
        pending status."""
        counts: dict[str, dict[str, int]] = {
            name: {status.value: 0 for status in Status} for name in self.schema.objects
        }
        for object_name, count in self.store.count_synced().items():
            if object_name not in counts:
                counts[object_name] = {s.value: 0 for s in Status}
            counts[object_name][Status.SYNCED] += count
        for (object_name, status), count in self.store.count_by_status().items():
            if object_name not in counts:
                counts[object_name] = {s.value: 0 for s in Status}
            counts[object_name][status] += count
        return counts

    # -- local changes ------------------------------------------------------------------

    def create(self, object_name: str, values: Mapping[str, object]) -> str:
        """Create a record locally and queue it; return its permanent id."""
        spec = self.schema.object(object_name)
        canonical = self.schema.validate_new(object_name, values)
        record_id = new_record_id()
        doc = RecordDoc(spec, client_id=self.client_id)
        doc.write({**_empty_texts(spec), **canonical})
        with self.store.transaction():
            self.store.put_record(
                RecordRow(id=record_id, object=object_name, local=doc.full_update())
            )
            self.store.put_pending(
                PendingRow(
                    record_id=record_id,
                    seq=self.store.next_counter("pending_seq"),
                    object=object_name,
                    kind=ChangeKind.CREATE,
                    base_version=0,
                    changes={
                        name: FieldEdit(None, spec.fields[name].type.encode(value), 0)
                        for name, value in canonical.items()
                    },
                    delta=doc.full_update(),
                    status=Status.PENDING,
                )
            )
        self._emit(PendingChanged(record_id, object_name, Status.PENDING))
        return record_id

    def update(self, record_id: str, values: Mapping[str, object]) -> None:
        """Change fields of a record locally and queue the change (coalescing).

        A field edited back to the value it had at its base is no longer part of the
        change (an update left with no field is no change at all), unless the change in
        flight carries it: then the relay holds the other value by now.
        """
        row, entry = self._editable(record_id)
        spec = self.schema.object(row.object)
        doc = self._load(spec, row.local, client_id=self.client_id)
        current = doc.read()
        canonical = self.schema.validate_update(row.object, current, values)
        if not doc.write(canonical):
            return
        changes = dict(entry.changes) if entry else {}
        for name, value in canonical.items():
            encoded = spec.fields[name].type.encode(value)
            if name in changes:
                changes[name] = attrs.evolve(changes[name], new=encoded)
            else:
                old = spec.fields[name].type.encode(current.get(name))
                changes[name] = FieldEdit(old, encoded, row.version)
        kind = entry.kind if entry else ChangeKind.UPDATE
        reverted = {
            name
            for name in canonical
            if not changes[name].in_flight
            and _same(spec, name, changes[name].old, changes[name].new)
        }
        in_flight = entry is not None and entry.inflight is not None
        if reverted:
            changes = {name: edit for name, edit in changes.items() if name not in reverted}
            if kind is ChangeKind.UPDATE and not in_flight:
                # Nothing of it was sent: its document is the server's plus what is left.
                doc = self._rebuilt(spec, row.server, self._intents(spec, changes, doc))
        with self.store.transaction():
            self.store.put_record(attrs.evolve(row, local=doc.full_update()))
            if not changes and not in_flight and kind is ChangeKind.UPDATE:
                self.store.remove_pending(record_id)
                status: Status | None = None
            else:
                status = (
                    Status.SYNCING if entry and entry.status == Status.SYNCING else Status.PENDING
                )
                self.store.put_pending(
                    PendingRow(
                        record_id=record_id,
                        seq=entry.seq if entry else self.store.next_counter("pending_seq"),
                        object=row.object,
                        kind=kind,
                        base_version=_base_version(
                            changes, entry.base_version if entry else row.version
                        ),
                        changes=changes,
                        delta=doc.delta(_state_of(row.server)),
                        status=status,
                        change_id=entry.change_id if entry else new_change_id(),
                        inflight=entry.inflight if entry else None,
                        sent_kind=entry.sent_kind if entry else None,
                        dirty=in_flight,
                        note=entry.note if entry else "",
                    )
                )
        self._emit(PendingChanged(record_id, row.object, status))

    def delete(self, record_id: str) -> None:
        """Delete a record locally and queue the delete (a create not yet sent cancels out)."""
        row, entry = self._editable(record_id)
        with self.store.transaction():
            never_sent = row.server is None and (entry is None or entry.inflight is None)
            if entry is not None and entry.kind == ChangeKind.CREATE and never_sent:
                self.store.remove_pending(record_id)
                self.store.remove_record(record_id)
                status: Status | None = None
            else:
                syncing = entry is not None and entry.status == Status.SYNCING
                status = Status.SYNCING if syncing else Status.PENDING
                self.store.put_record(attrs.evolve(row, deleted=True))
                self.store.put_pending(
                    PendingRow(
                        record_id=record_id,
                        seq=entry.seq if entry else self.store.next_counter("pending_seq"),
                        object=row.object,
                        kind=ChangeKind.DELETE,
                        base_version=row.version,
                        changes={},
                        delta=b"",
                        status=status,
                        change_id=entry.change_id if entry else new_change_id(),
                        inflight=entry.inflight if entry else None,
                        sent_kind=entry.sent_kind if entry else None,
                        dirty=entry is not None and entry.inflight is not None,
                    )
                )
        self._emit(PendingChanged(record_id, row.object, status))

    def resolve(self, record_id: str, values: Mapping[str, object] | None = None) -> None:
        """Rebase the user's change on the latest server version, with the conflict
        decided, and queue it again.

        The fields the conflict lists, and those in ``values``, are *decided*: each
        takes its value from ``values``, or keeps the user's ("mine"; pass the
        conflict's ``theirs`` to take theirs), against the latest server version. Every
        other field of the change keeps its own base, so a field someone else changed
        since comes back as a new conflict instead of being overwritten. ``text``
        fields keep the user's character edits merged with everyone else's (what the
        record shows), unless ``values`` gives a whole new text. A field that ends up
        equal to the server's value leaves the change; with none left the record is
        simply synced. For a delete in conflict, ``resolve`` means "delete anyway" and
        ``values`` must be empty; ``dismiss`` keeps the record. ``ValidationError``
        leaves the conflict as it was.
        """
        values = dict(values or {})
        row = self._row(record_id)
        entry = self.store.get_pending(record_id)
        if entry is None or entry.status != Status.CONFLICT:
            if entry is not None and entry.status == Status.UNRESOLVABLE:
                raise InvalidOperation(
                    f"record {record_id} is unresolvable: it can only be dismissed"
                )
            state = entry.status if entry else Status.SYNCED
            raise InvalidOperation(f"record {record_id} has no conflict to resolve ({state})")
        if entry.kind == ChangeKind.DELETE:
            self._delete_anyway(row, entry, values)
            return
        spec = self.schema.object(row.object)
        problem = _problem_from_stored(entry.problem, spec)
        decided = set(values)
        if problem is not None:
            decided |= {conflict.field for conflict in problem.conflicts}
        local = self._load(spec, row.local)
        target = {**self._intents(spec, entry.changes, local), **values}
        server_values = self._load(spec, row.server or b"").read()
        creating = row.server is None
        if creating:
            canonical = self.schema.validate_new(row.object, target)
        else:
            canonical = self.schema.validate_update(row.object, server_values, target)
        changes: dict[str, FieldEdit] = {}
        for name, value in canonical.items():
            field_type = spec.fields[name].type
            now = field_type.encode(server_values.get(name))
            if not creating and _same(spec, name, now, field_type.encode(value)):
                continue  # nothing left to change
            kept = entry.changes.get(name)
            if kept is None or name in decided:
                changes[name] = FieldEdit(now, field_type.encode(value), row.version)
            else:
                changes[name] = FieldEdit(kept.old, field_type.encode(value), kept.base)
        client_id = _new_client_id()  # the refused operations stay behind, for good
        doc = self._rebuilt(spec, row.server, canonical, client_id=client_id)
        with self.store.transaction():
            self._rotate_client_id(client_id)
            self.store.put_record(attrs.evolve(row, local=doc.full_update(), deleted=False))
            if not changes and not creating:
                self.store.remove_pending(record_id)
                status: Status | None = None
            else:
                status = Status.PENDING
                self.store.put_pending(
                    entry.renewed(
                        kind=ChangeKind.CREATE if creating else ChangeKind.UPDATE,
                        base_version=_base_version(changes, row.version),
                        changes=changes,
                        delta=doc.delta(_state_of(row.server)),
                    )
                )
        self._emit(PendingChanged(record_id, row.object, status))

    def _delete_anyway(
        self, row: RecordRow, entry: PendingRow, values: Mapping[str, object]
    ) -> None:
        """Resolve a delete in conflict: send it again, based on the latest version (a
        record the relay never had is simply gone)."""
        if values:
            raise InvalidOperation(
                "a delete in conflict is resolved with no values (delete anyway); "
                "dismiss() keeps the record"
            )
        with self.store.transaction():
            if row.server is None:
                self.store.remove_pending(row.id)
                self.store.remove_record(row.id)
                status: Status | None = None
            else:
                status = Status.PENDING
                self.store.put_pending(entry.renewed(base_version=row.version))
        self._emit(PendingChanged(row.id, row.object, status))

    def dismiss(self, record_id: str) -> None:
        """Discard the record's local changes: restore the server's version, or remove the
        record locally if it never reached the relay, is gone there, or is no longer
        readable."""
        row = self._row(record_id)
        entry = self.store.get_pending(record_id)
        if entry is None:
            raise InvalidOperation(f"record {record_id} has no local changes to dismiss")
        if entry.status == Status.SYNCING:
            raise InvalidOperation(f"record {record_id} is syncing: wait for its verdict")
        problem = _problem_from_stored(entry.problem, self.schema.object(row.object))
        gone = row.server is None or (
            entry.status == Status.UNRESOLVABLE
            and problem is not None
            and problem.reason is not None
            and not problem.readable
        )
        with self.store.transaction():
            self.store.remove_pending(record_id)
            if gone:
                self.store.remove_record(record_id)
            else:
                self._rotate_client_id(_new_client_id())
                assert row.server is not None
                self.store.put_record(attrs.evolve(row, local=row.server, deleted=False))
        self._emit(PendingChanged(record_id, row.object, None))

    # -- sync entry points ----------------------------------------------------------------

    def outgoing(self, limit: int | None = None) -> list[ChangeFrame]:
        """Mark the oldest ``pending`` changes ``syncing`` and return them as the push
        frame carries them.

        ``change_id`` is stable across retransmissions of the same content, so the relay
        can apply it exactly once: a change that was sent before but whose verdict never
        arrived is sent again with the same id and the same content. ``field_bases``
        gives, per changed field, the relay version the user saw when first changing it.
        """
        out: list[ChangeFrame] = []
        #: the entries to write, by record: marked ``syncing``, or with a new note
        written: dict[str, PendingRow] = {}
        with self.store.transaction():
            for entry in self.store.iter_pending(Status.PENDING):
                if limit is not None and len(out) >= limit:
                    break
                waiting = self._waiting_for(entry, written)
                if waiting:
                    if waiting != entry.note:
                        written[entry.record_id] = attrs.evolve(entry, note=waiting)
                    continue
                if entry.inflight is None:
                    entry = attrs.evolve(
                        entry,
                        status=Status.SYNCING,
                        note="",
                        inflight=entry.delta,
                        sent_kind=entry.kind,
                        changes={name: edit.marked_sent() for name, edit in entry.changes.items()},
                    )
                else:
                    entry = attrs.evolve(entry, status=Status.SYNCING, note="")
                written[entry.record_id] = entry
                out.append(
                    ChangeFrame(
                        change_id=entry.change_id,
                        record_id=entry.record_id,
                        object=entry.object,
                        kind=entry.sent_kind or entry.kind,
                        base_version=entry.base_version,
                        field_bases={name: edit.base for name, edit in entry.changes.items()},
                        delta=entry.inflight or b"",
                    )
                )
                if limit is not None and len(out) >= limit:
                    break  # (not reading the next page for nothing)
            self.store.put_pendings(written.values())
        for change in out:
            self._emit(PendingChanged(change.record_id, change.object, Status.SYNCING))
        return out

    def has_pushable(self) -> bool:
        """True if some pending change could be sent now (not waiting for another)."""
        return any(
            not self._waiting_for(entry) for entry in self.store.iter_pending(Status.PENDING)
        )

    def count_unsynced(self) -> int:
        """Changes waiting to sync or in flight."""
        return self.store.count_pending(Status.PENDING) + self.store.count_pending(Status.SYNCING)

    @property
    def cursor(self) -> int:
        """The last relay version this replica has seen everything up to (inside
        :meth:`applying`, as the frame will leave it)."""
        stored = int(self.store.get_meta("cursor", 0))
        return stored if self._deferred is None else max(stored, self._frame_cursor)

    @property
    def server_id(self) -> str | None:
        """The relay the cursor was issued by (``None`` before the first connection)."""
        server_id = self.store.get_meta("server_id")
        return None if server_id is None else str(server_id)

    def objects_held(self) -> set[str]:
        """The object types of the records this replica holds."""
        return self.store.objects()

    def conflict_problem(self, verdict: Conflict) -> Problem:
        """The problem a conflict verdict describes, its values decoded by the field
        types of the record's object (left as they came where there are none)."""
        record = self.store.get_record(verdict.record_id)
        spec = self.schema.objects.get(record.object) if record is not None else None
        codec = ConflictCodec(spec)
        return Problem(
            conflicts=tuple(_field_conflict(c, codec) for c in verdict.conflicts),
            errors=tuple(FieldError(e.field, e.message) for e in verdict.errors),
            message=verdict.message,
        )

    def fields_gained(self, schema: Schema) -> set[str]:
        """Objects whose fields in ``schema`` (the relay's view for this user) include
        some the previous view did not (none the first time)."""
        previous = self.store.get_meta("relay_view")
        if previous is None:
            return set()
        return {
            name
            for name, spec in schema.objects.items()
            if set(spec.fields) - set(previous.get(name, ()))
        }

    def objects_gained(self, readable: Sequence[str] | None) -> set[str]:
        """Objects in ``readable`` (those the relay says this user may read now) that the
        previous connection's list did not have (none the first time, or if not said)."""
        previous = self.store.get_meta("relay_readable")
        if previous is None or readable is None:
            return set()
        return set(readable) - set(previous)

    def objects_lost(self, readable: Sequence[str] | None) -> set[str]:
        """Objects the previous connection's list had and ``readable`` lacks (e.g. a role
        taken away): their records are no longer this user's to keep."""
        previous = self.store.get_meta("relay_readable")
        if previous is None or readable is None:
            return set()
        return set(previous) - set(readable)

    def revoke_objects(self, objects: set[str]) -> None:
        """This user may no longer read ``objects``: each of their records is revoked as
        :meth:`apply_revoked` does (forgotten, or its pending change unresolvable)."""
        for row in self.store.list_records():
            if row.object in objects:
                self.apply_revoked(row.id, row.object, row.version)

    def remember_view(self, schema: Schema, readable: Sequence[str] | None = None) -> None:
        """Record which fields and objects the relay lets this user read (see
        :meth:`fields_gained` and :meth:`objects_gained`)."""
        with self.store.transaction():
            self.store.set_meta(
                "relay_view", {name: list(spec.fields) for name, spec in schema.objects.items()}
            )
            if readable is not None:
                self.store.set_meta("relay_readable", list(readable))

    def forget_synced_records(self, objects: set[str]) -> None:
        """Drop the clean records of ``objects`` and start over from cursor 0, so the
        relay sends them again whole. Records with a pending change are kept."""
        with self.store.transaction():
            pending = {entry.record_id for entry in self.store.list_pending()}
            for row in self.store.list_records():
                if row.object in objects and row.id not in pending:
                    self.store.remove_record(row.id)
            self.store.set_meta("cursor", 0)

    def reset_cursor(self, server_id: str) -> None:
        """Forget the cursor: the relay (``server_id``) is not the one it was issued by."""
        with self.store.transaction():
            self.store.set_meta("cursor", 0)
            self.store.set_meta("server_id", server_id)

    def advance_cursor(self, version: int) -> None:
        if self._deferred is not None:  # written once, when the frame commits
            self._frame_cursor = max(self._frame_cursor, version)
        elif version > self.cursor:
            with self.store.transaction():
                self.store.set_meta("cursor", version)

    def _waiting_for(
        self, entry: PendingRow, written: Mapping[str, PendingRow] | None = None
    ) -> str:
        """Why ``entry`` must wait (it references a record whose create has not been
        accepted yet), or ``""``. A change is never sent before what it points to.
        ``written``: outbox entries by record, as they are about to be stored."""
        if entry.kind == ChangeKind.DELETE:
            return ""
        spec = self.schema.objects.get(entry.object)
        if spec is None:
            return ""
        for name, edit in entry.changes.items():
            field = spec.fields.get(name)
            target = edit.new
            if field is None or field.to is None or not isinstance(target, str):
                continue
            row = self.store.get_record(target)
            if row is not None and row.server is None:
                blocking = (written or {}).get(target) or self.store.get_pending(target)
                state = f" ({blocking.status})" if blocking is not None else ""
                return f"waiting for {field.to} {target} to sync{state}"
        return ""

    def requeue_inflight(self, change_ids: set[str] | None = None) -> int:
        """After a lost connection: every ``syncing`` change (of ``change_ids``, if given)
        becomes ``pending`` again, keeping its id and sent content so a retransmission
        is applied once."""
        entries = self._requeue(change_ids)
        for entry in entries:
            self._emit(PendingChanged(entry.record_id, entry.object, Status.PENDING))
        return len(entries)

    def _requeue(self, change_ids: set[str] | None = None) -> list[PendingRow]:
        entries = [
            entry
            for entry in self.store.list_pending(Status.SYNCING)
            if change_ids is None or entry.change_id in change_ids
        ]
        with self.store.transaction():
            for entry in entries:
                self.store.put_pending(attrs.evolve(entry, status=Status.PENDING))
        return entries

    def apply_ack(self, change_id: str, version: int, update: bytes | None = None) -> bool:
        """The relay accepted ``change_id`` as ``version``. ``update`` carries anything the
        relay added (e.g. a default owner). Returns False for an unknown (duplicate) ack.

        A record's version never goes backwards: the ack of a retransmission names the
        version the change was first accepted as, which this replica may have passed
        already (it caught up on later changes before the ack came back).
        """
        return self.apply_acks([(change_id, version, update)])[0]

    def apply_acks(self, acks: Sequence[tuple[str, int, bytes | None]]) -> list[bool]:
        """:meth:`apply_ack` of each ``(change_id, version, update)``, in order, as one
        unit (see :meth:`applying`): the entries and their records are read in one
        query, and written (or removed) with one statement of each kind. Returns, per
        ack, whether it was applied (False for an unknown or duplicate one)."""
        targets = self.store.ack_targets(change_id for change_id, _, _ in acks)
        applied: list[bool] = []
        removed: list[str] = []  # outbox entries done with
        gone: list[str] = []  # records deleted for good
        left: list[PendingRow] = []  # what is left of dirty entries, pending again
        rows: list[RecordRow] = []
        events: list[PendingChanged] = []
        with self.applying():
            for change_id, version, update in acks:
                # An entry is acknowledged once: a repeat in the frame finds nothing.
                target = targets.pop(change_id, None)
                if target is None or target.status != Status.SYNCING:
                    applied.append(False)
                    continue
                row = target.record
                if row is None:
                    raise RecordNotFound(f"no record {target.record_id!r} in this replica")
                applied.append(True)
                status: Status | None = None
                if target.sent_kind == ChangeKind.DELETE:
                    removed.append(row.id)
                    gone.append(row.id)
                else:
                    spec = self.schema.object(row.object)
                    added = [update] if update else []
                    row = RecordRow(
                        id=row.id,
                        object=row.object,
                        local=self._merged(spec, row.local, added) if added else row.local,
                        server=self._merged(
                            spec, row.server or b"", [target.inflight or b"", *added]
                        ),
                        version=max(version, row.version),
                        deleted=row.deleted,
                    )
                    entry = target.entry
                    remaining = (
                        self._remaining(row, entry, spec, acked=version)
                        if entry is not None
                        else None
                    )
                    if remaining is None:
                        removed.append(row.id)
                        if target.dirty:  # what was left of it was undone meanwhile
                            row = attrs.evolve(row, local=row.server or b"")
                    else:
                        status = Status.PENDING
                        entry_left, local_doc = remaining
                        left.append(entry_left)
                        row = attrs.evolve(row, local=local_doc.full_update())
                    rows.append(row)
                events.append(PendingChanged(row.id, row.object, status))
            # Each record has one outbox entry, acknowledged at most once here: the
            # statements touch distinct rows, so their order does not matter.
            self.store.remove_pendings(removed)
            self.store.remove_records(gone)
            self.store.put_pendings(left)
            self.store.put_records(rows)
            for event in events:
                self._emit(event)
        return applied

    def apply_conflict(
        self, change_id: str, problem: Problem, *, version: int, update: bytes | None = None
    ) -> bool:
        """The relay refused ``change_id`` as a conflict; ``update`` brings this replica's
        server version up to the relay's ``version``. The record is locked."""
        return self._refused(change_id, Status.CONFLICT, problem, version=version, update=update)

    def apply_unresolvable(self, change_id: str, problem: Problem) -> bool:
        """The relay refused ``change_id`` for good (deleted elsewhere, or forbidden)."""
        return self._refused(change_id, Status.UNRESOLVABLE, problem, version=None, update=None)

    def apply_unsendable(self, change_id: str, *, size: int, limit: int) -> bool:
        """``change_id`` is larger than the relay accepts in one message (``size`` bytes
        against its ``limit``): it can never be sent as it is, so it becomes
        ``unresolvable`` with a reason the user can act on (the rest still syncs)."""
        problem = Problem(
            message=f"this change is too large to sync: {_mib(size)} in one message, and "
            f"the relay accepts at most {_mib(limit)}. Copy what you need, dismiss it, and "
            "make it again in smaller parts"
        )
        return self._refused(change_id, Status.UNRESOLVABLE, problem, version=None, update=None)

    def apply_rejected(self, change_id: str, code: str, message: str) -> bool:
        """The relay refused ``change_id`` as malformed (an ``error`` verdict). An
        internal relay error is retried later; anything else cannot be saved as is and
        becomes ``unresolvable`` with the relay's message."""
        if code == ErrorCode.INTERNAL_ERROR:
            entry = self.store.find_pending(change_id)
            if entry is None or entry.status != Status.SYNCING:
                return False
            with self.store.transaction():
                self.store.put_pending(attrs.evolve(entry, status=Status.PENDING))
            self._emit(PendingChanged(entry.record_id, entry.object, Status.PENDING))
            return True
        problem = Problem(message=f"the relay refused this change ({code}): {message}")
        return self._refused(change_id, Status.UNRESOLVABLE, problem, version=None, update=None)

    def apply_revoked(self, record_id: str, object_name: str, version: int) -> None:
        """This user lost access to the record: forget it, unless a change of it is
        pending, which becomes ``unresolvable`` (forbidden) and is kept until dismissed."""
        row = self.store.get_record(record_id)
        if row is None:
            return
        entry = self.store.get_pending(record_id)
        problem = Problem(
            reason=UnresolvableReason.FORBIDDEN, message="you no longer have access to this record"
        )
        spec = self.schema.objects.get(row.object)
        with self.store.transaction():
            if entry is None:
                self.store.remove_record(record_id)
            elif entry.status != Status.SYNCING and spec is not None:
                self.store.put_pending(
                    attrs.evolve(
                        entry, status=Status.UNRESOLVABLE, problem=_problem_to_stored(problem, spec)
                    )
                )
        self._emit(AccessLost(record_id, object_name))
        if entry is not None and entry.status != Status.SYNCING:
            self._emit(RecordNeedsAttention(record_id, object_name, Status.UNRESOLVABLE, problem))

    def apply_changes(self, items: Sequence[RecordChange], *, advance_cursor: bool) -> None:
        """Apply the items of one ``changes`` frame as one unit (see :meth:`applying`),
        each as :meth:`apply_remote` (or :meth:`apply_revoked`) does, in order; items of
        objects this replica does not know are skipped. With ``advance_cursor`` (live
        fan-out, in version order) the cursor moves to the last item's version.

        A record with no change of the user's (its local document is the server's) is
        staged: its items are applied to its document at the end of the frame, all in
        one pycrdt transaction, and its row is written once, with every other such
        record's, in one statement. The frame's records are read in one query.
        """
        objects = self.schema.objects
        known = [item for item in items if item.object in objects]
        with self.applying():
            self._staging = _Staging(self.store.remote_targets(i.record_id for i in known))
            try:
                for item in known:
                    if item.revoked:
                        self._unstage(item.record_id)
                        self.apply_revoked(item.record_id, item.object, item.version)
                    else:
                        self.apply_remote(
                            item.record_id,
                            item.object,
                            item.version,
                            item.update,
                            deleted=item.deleted,
                            by=item.by,
                        )
                    if advance_cursor:
                        self.advance_cursor(item.version)
                self._write_staged()
            finally:
                self._staging = None

    def _stage(
        self,
        staging: _Staging,
        record_id: str,
        object_name: str,
        version: int,
        update: bytes | None,
        by: str | None,
    ) -> bool:
        """Stage a remote change of a record with no change of the user's (see
        :meth:`apply_changes`); False if the record is not such a record, or is no
        longer staged in this frame."""
        staged = staging.staged.get(record_id)
        if staged is None:
            if record_id in staging.unstaged:
                return False
            target = staging.targets.get(record_id)
            if target is None:  # a new record
                staged = _Staged(object_name, None, 0, False, new=True)
            elif target.pending or not target.clean or target.object != object_name:
                return False
            else:
                staged = _Staged(target.object, target.server, target.version, target.deleted)
            staging.staged[record_id] = staged
        if staged.version >= version and not (staged.new and not staged.updates):
            return True  # already applied (as apply_remote would ignore it)
        kind = ChangeKind.CREATE if staged.new and not staged.updates else ChangeKind.UPDATE
        staged.updates.append(update or b"")
        staged.version = version
        self._emit(RemoteChangeArrived(record_id, object_name, kind, by))
        return True

    def _unstage(self, record_id: str) -> None:
        """Write what is staged of a record (if anything) and apply its later changes in
        this frame one by one: the store holds it as they expect."""
        staging = self._staging
        if staging is None:
            return
        staging.unstaged.add(record_id)
        staged = staging.staged.pop(record_id, None)
        if staged is not None and staged.updates:
            self.store.put_record(self._staged_row(record_id, staged))

    def _write_staged(self) -> None:
        staging = self._staging
        assert staging is not None
        self.store.put_records(
            self._staged_row(record_id, staged)
            for record_id, staged in staging.staged.items()
            if staged.updates
        )
        staging.staged.clear()

    def _staged_row(self, record_id: str, staged: _Staged) -> RecordRow:
        """The record's row with its staged changes applied: its server document (also
        its local one) and every update, in one pycrdt transaction."""
        stored, updates = staged.server, staged.updates
        if stored is None:  # a new record: its first update is its whole document
            stored, updates = updates[0], updates[1:]
        full = self._merged(self.schema.object(staged.object), stored, updates)
        return RecordRow(
            id=record_id,
            object=staged.object,
            local=full,
            server=full,
            version=staged.version,
            deleted=staged.deleted,
        )

    def apply_remote(
        self,
        record_id: str,
        object_name: str,
        version: int,
        update: bytes | None = None,
        *,
        deleted: bool = False,
        by: str | None = None,
    ) -> None:
        """Another replica's change (or a deletion) reached this one at ``version``.

        A pending change of the record keeps showing the user's values (see the
        module's docstring), and a conflict shown for it is brought up to date: each
        field's "theirs" is the relay's latest value.
        """
        staging = self._staging
        if staging is not None:
            if not deleted and self._stage(staging, record_id, object_name, version, update, by):
                return
            self._unstage(record_id)
        spec = self.schema.object(object_name)
        row = self.store.get_record(record_id)
        entry = self.store.get_pending(record_id)
        if row is not None and version <= row.version:
            return
        gone: Problem | None = None  #: set when a pending edit becomes unresolvable
        left = False  #: set when a pending change leaves with the record
        with self.store.transaction():
            if deleted:
                kind = ChangeKind.DELETE
                if entry is None or entry.kind == ChangeKind.DELETE or _create_landed(entry):
                    self.store.remove_pending(record_id)
                    self.store.remove_record(record_id)
                    left = entry is not None
                elif entry.status != Status.SYNCING:  # an in-flight one gets its verdict
                    # Also a conflict or a refusal already shown: dismissing must not
                    # restore a record the relay no longer has.
                    gone = Problem(reason=UnresolvableReason.DELETED)
                    self.store.put_pending(
                        attrs.evolve(
                            entry,
                            status=Status.UNRESOLVABLE,
                            problem=_problem_to_stored(gone, spec),
                        )
                    )
            elif row is None:
                kind = ChangeKind.CREATE
                doc = self._load(spec, update or b"")
                self.store.put_record(
                    RecordRow(
                        id=record_id,
                        object=object_name,
                        local=doc.full_update(),
                        server=doc.full_update(),
                        version=version,
                    )
                )
            elif entry is None and row.local == row.server:
                # Nothing of the user's: the local document is the server's, merged once.
                kind = ChangeKind.UPDATE
                doc = self._load(spec, row.server)
                doc.apply(update or b"")
                full = doc.full_update()
                self.store.put_record(attrs.evolve(row, server=full, local=full, version=version))
            else:
                kind = ChangeKind.UPDATE
                server = self._load(spec, row.server or b"")
                local = self._load(spec, row.local, client_id=self.client_id)
                server.apply(update or b"")
                local.apply(update or b"")
                if entry is not None and entry.kind != ChangeKind.DELETE:
                    entry = self._keep_intent(spec, entry, server, local, by)
                    self.store.put_pending(entry)
                self.store.put_record(
                    attrs.evolve(
                        row, server=server.full_update(), local=local.full_update(), version=version
                    )
                )
        self._emit(RemoteChangeArrived(record_id, object_name, kind, by))
        if left:
            self._emit(PendingChanged(record_id, object_name, None))
        if gone is not None:
            self._emit(PendingChanged(record_id, object_name, Status.UNRESOLVABLE))
            self._emit(RecordNeedsAttention(record_id, object_name, Status.UNRESOLVABLE, gone))

    def _keep_intent(
        self,
        spec: ObjectSpec,
        entry: PendingRow,
        server: RecordDoc,
        local: RecordDoc,
        by: str | None,
    ) -> PendingRow:
        """After a remote update was applied to both documents: write the user's unsent
        values over whatever the merge let win in ``local``, keep the entry's delta in
        step, and refresh the "theirs" of a conflict it shows."""
        written = local.write(self._unsent_values(spec, entry))
        if written and entry.inflight is not None:
            entry = attrs.evolve(entry, dirty=True)  # goes out after the verdict
        elif written:
            entry = attrs.evolve(entry, delta=local.delta(server.state()))
        if entry.status == Status.CONFLICT and entry.problem is not None:
            entry = attrs.evolve(entry, problem=_refresh_theirs(entry.problem, spec, server, by))
        return entry

    # -- internals ------------------------------------------------------------------------

    def _refused(
        self,
        change_id: str,
        status: Status,
        problem: Problem,
        *,
        version: int | None,
        update: bytes | None,
    ) -> bool:
        entry = self.store.find_pending(change_id)
        if entry is None or entry.status != Status.SYNCING:
            return False
        row = self._row(entry.record_id)
        if entry.sent_kind == ChangeKind.CREATE and entry.kind == ChangeKind.DELETE:
            # Created, deleted here while the create was in flight, and the create was
            # refused: the record exists nowhere, so the two cancel out.
            with self.store.transaction():
                self.store.remove_pending(row.id)
                self.store.remove_record(row.id)
            self._emit(PendingChanged(row.id, row.object, None))
            return True
        spec = self.schema.object(row.object)
        refused = attrs.evolve(
            entry,
            changes={name: edit.marked_unsent() for name, edit in entry.changes.items()},
            status=status,
            problem=_problem_to_stored(problem, spec),
            inflight=None,
            sent_kind=None,
            dirty=False,
        )
        with self.store.transaction():
            if update or version is not None:
                server = self._load(spec, row.server or b"")
                local = self._load(spec, row.local, client_id=self.client_id)
                if update:
                    server.apply(update)
                    local.apply(update)
                if status is Status.CONFLICT and entry.kind != ChangeKind.DELETE:
                    # The record shows the user's values until it is resolved or
                    # dismissed, whichever side a plain CRDT merge would pick (both
                    # rebuild from the server's document, so these writes never travel);
                    # text fields show everyone's edits merged (text never conflicts).
                    local.write(self._unsent_values(spec, refused))
                row = attrs.evolve(
                    row,
                    server=server.full_update() if row.server is not None or update else None,
                    local=local.full_update(),
                    version=max(version or 0, row.version),
                )
                self.store.put_record(row)
            self.store.put_pending(refused)
        self._emit(PendingChanged(row.id, row.object, status))
        self._emit(RecordNeedsAttention(row.id, row.object, status, problem))
        return True

    def _remaining(
        self, row: RecordRow, entry: PendingRow, spec: ObjectSpec, *, acked: int
    ) -> tuple[PendingRow, RecordDoc] | None:
        """What is left of a dirty entry once the part in flight was accepted as
        ``acked`` (``row`` holds the server's document with it): the entry and the
        rebuilt local document, or ``None`` if nothing is left.

        A field sent and not changed since is done; one changed since is based on the
        acknowledged version; one never sent keeps its base. Text fields are left with
        the character edits the server's text does not have yet.
        """
        local = self._load(spec, row.local)
        if entry.kind == ChangeKind.DELETE:
            return entry.renewed(base_version=row.version), local
        server_values = self._load(spec, row.server or b"").read()
        intents = self._intents(spec, entry.changes, local)
        changes: dict[str, FieldEdit] = {}
        for name, edit in entry.changes.items():
            field = spec.fields.get(name)
            if field is None or (not edit.unsent and field.type is not FieldType.TEXT):
                continue
            now = field.type.encode(server_values.get(name))
            intent = field.type.encode(intents[name])
            if _same(spec, name, now, intent):
                continue
            if edit.in_flight and field.type is not FieldType.TEXT:
                changes[name] = FieldEdit(edit.sent, intent, acked)
            else:
                changes[name] = FieldEdit(edit.old, intent, edit.base)
        if not changes:
            return None
        doc = self._rebuilt(spec, row.server, {name: intents[name] for name in changes})
        left = entry.renewed(
            kind=ChangeKind.UPDATE,
            base_version=_base_version(changes, row.version),
            changes=changes,
            delta=doc.delta(_state_of(row.server)),
        )
        return left, doc

    def _intents(
        self, spec: ObjectSpec, changes: Mapping[str, FieldEdit], local: RecordDoc
    ) -> dict[str, Any]:
        """The values the user wants for the fields of ``changes``: their own for plain
        fields, and for text fields the text ``local`` shows (their edits merged with
        everyone else's)."""
        intents: dict[str, Any] = {}
        for name, edit in changes.items():
            field = spec.fields.get(name)
            if field is None:
                continue
            if field.type is FieldType.TEXT:
                intents[name] = local.stored_value(name) or ""
            else:
                intents[name] = field.type.decode(edit.new)
        return intents

    def _unsent_values(self, spec: ObjectSpec, entry: PendingRow) -> dict[str, Any]:
        """The plain field values of ``entry`` that have not gone out with a change in
        flight (what a remote update must not hide from the user)."""
        return {
            name: spec.fields[name].type.decode(edit.new)
            for name, edit in entry.changes.items()
            if name in spec.fields and spec.fields[name].type is not FieldType.TEXT and edit.unsent
        }

    def _rebuilt(
        self,
        spec: ObjectSpec,
        server: bytes | None,
        values: Mapping[str, Any],
        *,
        client_id: int | None = None,
    ) -> RecordDoc:
        """The server's document with ``values`` written over it (text as character
        edits of the server's text), editing as ``client_id`` (default: this replica's).

        Callers make sure no operation of the document they replace went to the relay
        under this client id, or pass a fresh one.
        """
        doc = self._load(spec, server or b"", client_id=client_id or self.client_id)
        doc.write({**(_empty_texts(spec) if server is None else {}), **values})
        return doc

    def _row(self, record_id: str) -> RecordRow:
        row = self.store.get_record(record_id)
        if row is None:
            raise RecordNotFound(f"no record {record_id!r} in this replica")
        return row

    def _editable(self, record_id: str) -> tuple[RecordRow, PendingRow | None]:
        row = self._row(record_id)
        entry = self.store.get_pending(record_id)
        if entry is not None and entry.status.locked:
            raise RecordLocked(record_id, entry.status)
        if row.deleted:
            raise RecordDeleted(f"record {record_id} is deleted")
        return row, entry

    def _rotate_client_id(self, client_id: int) -> None:
        self.client_id = client_id
        self.store.set_meta("client_id", client_id)

    @staticmethod
    def _merged(spec: ObjectSpec, stored: bytes, updates: Sequence[bytes]) -> bytes:
        """What :meth:`_load` of ``stored``, ``apply`` of each update and ``full_update``
        give, in one pycrdt transaction and with no document kept (:func:`merged_state`)."""
        try:
            return merged_state(stored, updates)
        except BadStoredState as exc:
            raise StoreError(f"stored document of a {spec.name} does not decode: {exc}") from exc

    @staticmethod
    def _load(spec: ObjectSpec, update: bytes, *, client_id: int | None = None) -> RecordDoc:
        try:
            return RecordDoc.from_update(spec, update, client_id=client_id)
        except Exception as exc:
            raise StoreError(f"stored document of a {spec.name} does not decode: {exc}") from exc

    def _record(self, row: RecordRow, entry: PendingRow | None) -> Record:
        spec = self.schema.object(row.object)
        return Record(
            id=row.id,
            object=row.object,
            fields=self._load(spec, row.local).read(),
            status=entry.status if entry else Status.SYNCED,
            version=row.version,
        )

    def _pending_change(self, entry: PendingRow) -> PendingChange:
        spec = self.schema.object(entry.object)
        changes = {}
        for name, edit in entry.changes.items():
            field = spec.fields.get(name)
            if field is not None:
                changes[name] = FieldChange(
                    field.type.decode(edit.old), field.type.decode(edit.new)
                )
        return PendingChange(
            record_id=entry.record_id,
            object=entry.object,
            kind=entry.kind,
            changes=changes,
            status=entry.status,
            problem=_problem_from_stored(entry.problem, spec),
            base_version=entry.base_version,
            change_id=entry.change_id,
            note=entry.note,
        )


class _Staged:
    """A record's remote changes staged in a frame (see :meth:`Replica.apply_changes`):
    its row as stored (``server`` is ``None`` for a new record) and the updates to apply."""

    __slots__ = ("deleted", "new", "object", "server", "updates", "version")

    def __init__(
        self,
        object_name: str,
        server: bytes | None,
        version: int,
        deleted: bool,
        *,
        new: bool = False,
    ) -> None:
        self.object = object_name
        self.server = server
        self.version = version
        self.deleted = deleted
        self.new = new
        self.updates: list[bytes] = []


@attrs.define
class _Staging:
    """One frame's staging: the records it read up front, what is staged of them, and
    the records it applies change by change from now on."""

    targets: dict[str, RemoteTarget]
    staged: dict[str, _Staged] = attrs.Factory(dict)
    unstaged: set[str] = attrs.Factory(set)


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB" if size >= 1024 * 1024 else f"{size:,} bytes"


def _same(spec: ObjectSpec, name: str, a: Any, b: Any) -> bool:
    """True if two stored values of field ``name`` are the same value (an empty text is
    a text with no value)."""
    field = spec.fields.get(name)
    if field is None:
        return bool(a == b)
    if field.type is FieldType.TEXT:
        return (a or "") == (b or "")
    try:
        x, y = field.type.decode(a), field.type.decode(b)
    except (ValueError, TypeError):
        return bool(a == b)
    return bool(x == y and type(x) is type(y))


def _base_version(changes: Mapping[str, FieldEdit], default: int) -> int:
    """The version a change is based on: the oldest of its fields' bases."""
    return min((edit.base for edit in changes.values()), default=default)


def _create_landed(entry: PendingRow) -> bool:
    """The entry is exactly a create that was sent (the relay may not have answered):
    if the relay has since deleted the record, the create reached it, and the delete
    leaves nothing of it to keep."""
    return (
        entry.sent_kind == ChangeKind.CREATE and entry.kind == ChangeKind.CREATE and not entry.dirty
    )


def _refresh_theirs(
    problem: dict[str, Any], spec: ObjectSpec, server: RecordDoc, by: str | None
) -> dict[str, Any]:
    """``problem`` (as stored) with each conflict's "theirs" the server's value now."""
    values = server.read()
    codec = ConflictCodec(spec)
    conflicts = []
    for conflict in problem.get("conflicts", []):
        theirs = codec.encode(conflict["field"], values.get(conflict["field"]))
        if not _same(spec, conflict["field"], theirs, conflict["theirs"]):
            conflict = {**conflict, "theirs": theirs, "changed_by": by}
        conflicts.append(conflict)
    return {**problem, "conflicts": conflicts}


def _empty_texts(spec: ObjectSpec) -> dict[str, str]:
    """Every text field of a new record, empty: its creator makes its one Y.Text, so the
    first edits of two users merge instead of one Y.Text replacing the other."""
    return dict.fromkeys(sorted(spec.text_fields), "")


def _state_of(update: bytes | None) -> bytes | None:
    """The state vector of a stored full update (``None``: nothing confirmed yet)."""
    return None if not update else bytes(pycrdt.get_state(update))


def _field_conflict(conflict: WireConflict, codec: ConflictCodec) -> FieldConflict:
    """A conflict as carried (by a verdict, or in the store) as the user reads it."""
    return FieldConflict(
        field=conflict.field,
        base=codec.decode(conflict.field, conflict.base),
        mine=codec.decode(conflict.field, conflict.mine),
        theirs=codec.decode(conflict.field, conflict.theirs),
        changed_by=conflict.changed_by,
    )


def _problem_to_stored(problem: Problem, spec: ObjectSpec) -> dict[str, Any]:
    """A problem as the ``pending.problem`` column keeps it: plain data, each conflict
    as a verdict carries it (values in their stored encoding, see :mod:`fieldtypes`)."""
    codec = ConflictCodec(spec)
    return {
        "conflicts": [
            WireConflict(
                field=c.field,
                base=codec.encode(c.field, c.base),
                mine=codec.encode(c.field, c.mine),
                theirs=codec.encode(c.field, c.theirs),
                changed_by=c.changed_by,
            ).to_wire()
            for c in problem.conflicts
        ],
        "errors": [error.to_wire() for error in problem.errors],
        "reason": None if problem.reason is None else problem.reason.value,
        "message": problem.message,
        "readable": problem.readable,
    }


def _problem_from_stored(data: dict[str, Any] | None, spec: ObjectSpec) -> Problem | None:
    """Read what :func:`_problem_to_stored` wrote."""
    if data is None:
        return None
    codec = ConflictCodec(spec)
    return Problem(
        conflicts=tuple(
            _field_conflict(WireConflict.from_wire(c, "stored problem.conflicts"), codec)
            for c in data.get("conflicts", [])
        ),
        errors=tuple(FieldError.from_wire(e) for e in data.get("errors", [])),
        reason=None if data.get("reason") is None else UnresolvableReason(data["reason"]),
        message=data.get("message", ""),
        readable=bool(data.get("readable", False)),
    )
