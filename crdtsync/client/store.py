"""The replica's durable local store: SQLite (stdlib ``sqlite3``) in WAL mode.

Three tables hold everything a replica knows while offline:

``records``
    one row per record: its local document (``local``, the user's changes included),
    the last version confirmed by the relay (``server`` and ``version``), and whether
    the user deleted it locally.
``pending``
    the outbox, at most one row per record (successive edits coalesce into it), in the
    order changes were first made (``seq``).
``meta``
    replica identity, counters and caches.

Every public mutation of the replica runs inside one :meth:`LocalStore.transaction`,
so a ``kill -9`` leaves either all or nothing of it. This module stores rows; the rules
about what goes into them live in :mod:`crdtsync.client.replica`, which moves an entry
through its states with the transitions named here (:meth:`PendingRow.renewed`,
:meth:`FieldEdit.marked_sent`, :meth:`FieldEdit.marked_unsent`).
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import attrs

from crdtsync.core.exceptions import FormatError, LockedError, StoreError
from crdtsync.core.protocol import ChangeKind
from crdtsync.core.sqlite_meta import (
    META_TABLE,
    OwnerLock,
    create_private,
    get_meta,
    open_format,
    pack,
    rows_in,
    set_meta,
    unpack,
)

from .model import Status

#: 1: the first released format. 2: a pending change's field edits record the value that
#: went out with the change in flight (:attr:`FieldEdit.sent`).
FORMAT_VERSION = 2

_SCHEMA = (
    META_TABLE
    + """;
CREATE TABLE IF NOT EXISTS records (
    id       TEXT PRIMARY KEY,
    object   TEXT NOT NULL,
    local    BLOB NOT NULL,
    server   BLOB,
    version  INTEGER NOT NULL DEFAULT 0,
    deleted  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS records_object ON records (object);
CREATE TABLE IF NOT EXISTS pending (
    record_id    TEXT PRIMARY KEY,
    seq          INTEGER NOT NULL UNIQUE,
    object       TEXT NOT NULL,
    kind         TEXT NOT NULL,
    base_version INTEGER NOT NULL,
    changes      BLOB NOT NULL,
    delta        BLOB NOT NULL,
    status       TEXT NOT NULL,
    problem      BLOB,
    change_id    TEXT NOT NULL,
    inflight     BLOB,
    sent_kind    TEXT,
    dirty        INTEGER NOT NULL DEFAULT 0,
    note         TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS pending_change_id ON pending (change_id);
"""
)


def _mark_sent_in_flight(db: sqlite3.Connection) -> None:
    """Format 1 → 2: an entry in flight that the user has not changed since carries
    every field it lists, as it lists them. One changed since keeps its fields unsent:
    after its verdict, a field the relay does not hold as the user left it is sent
    again at its own base (a later edit by someone else then comes back as a conflict,
    never overwritten)."""
    rows = db.execute(
        "SELECT record_id, changes FROM pending WHERE inflight IS NOT NULL AND dirty = 0"
    )
    for record_id, packed in rows.fetchall():
        changes = {
            name: FieldEdit.from_stored(edit).marked_sent().to_stored()
            for name, edit in unpack(packed).items()
        }
        db.execute("UPDATE pending SET changes = ? WHERE record_id = ?", (pack(changes), record_id))


_MIGRATIONS = {1: _mark_sent_in_flight}


@attrs.frozen
class FieldEdit:
    """One field a pending change writes, values in their stored encoding.

    ``old`` is the field's value at ``base``, the relay version the user saw when they
    first changed it; ``new`` is the user's value (for a ``text`` field, the whole text
    as the user's replica shows it). ``in_flight`` says the change in flight carries
    this field with the value ``sent``: the user changed it again since when ``new``
    differs from ``sent``.

    The store's own record of an edit, not what an application reads: the public
    :class:`~crdtsync.client.model.FieldChange` of a
    :class:`~crdtsync.client.model.PendingChange` has only ``old`` and ``new``,
    decoded to the field type's values, and is built from this one.
    """

    old: Any
    new: Any
    base: int
    in_flight: bool = False
    sent: Any = None

    @property
    def unsent(self) -> bool:
        """True if ``new`` has not gone out with the change in flight."""
        return not self.in_flight or self.new != self.sent

    def marked_sent(self) -> FieldEdit:
        """This edit as it goes out now: in flight, with ``new`` as the value sent."""
        return FieldEdit(self.old, self.new, self.base, in_flight=True, sent=self.new)

    def marked_unsent(self) -> FieldEdit:
        """This edit as if it had never gone out (the change in flight was refused)."""
        return FieldEdit(self.old, self.new, self.base)

    def to_stored(self) -> list[Any]:
        """``[old, new, base]``, and ``sent`` fourth while in flight: the form kept in
        the ``pending.changes`` column (format 1 had the first three only)."""
        stored = [self.old, self.new, self.base]
        return [*stored, self.sent] if self.in_flight else stored

    @classmethod
    def from_stored(cls, data: Any) -> FieldEdit:
        """Read what :meth:`to_stored` wrote; :class:`StoreError` if it is not that."""
        if not isinstance(data, list) or len(data) not in (3, 4):
            raise StoreError(f"a stored field edit is {data!r}, not [old, new, base(, sent)]")
        if len(data) == 4:
            return cls(data[0], data[1], data[2], in_flight=True, sent=data[3])
        return cls(data[0], data[1], data[2])


@attrs.frozen(kw_only=True)
class RecordRow:
    """A stored record. ``server`` is ``None`` until the relay has confirmed a version."""

    id: str
    object: str
    local: bytes
    server: bytes | None = None
    version: int = 0
    deleted: bool = False

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> RecordRow:
        return cls(
            id=row["id"],
            object=row["object"],
            local=bytes(row["local"]),
            server=None if row["server"] is None else bytes(row["server"]),
            version=row["version"],
            deleted=bool(row["deleted"]),
        )


_PUT_RECORD = (
    "INSERT INTO records (id, object, local, server, version, deleted) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
    "object = excluded.object, local = excluded.local, server = excluded.server, "
    "version = excluded.version, deleted = excluded.deleted"
)


def _record_params(record: RecordRow) -> tuple[Any, ...]:
    return (
        record.id,
        record.object,
        record.local,
        record.server,
        record.version,
        int(record.deleted),
    )


class RemoteTarget(NamedTuple):
    """A stored record as a remote change of it finds it (:meth:`LocalStore.remote_targets`)."""

    object: str
    server: bytes | None
    version: int
    deleted: bool
    #: the local document is the server's (stored as the same bytes)
    clean: bool
    #: the record has an outbox entry
    pending: bool


class AckTarget(NamedTuple):
    """An outbox entry as the acknowledgement of its change finds it, with its record
    (:meth:`LocalStore.ack_targets`). The entry is decoded whole only when ``dirty``
    (what is left of it after the ack is worked out from it); ``None`` otherwise."""

    record_id: str
    object: str
    status: str
    sent_kind: str | None
    inflight: bytes | None
    dirty: bool
    #: the whole entry, if ``dirty``
    entry: PendingRow | None
    #: its record (``None`` if the store has no row for it)
    record: RecordRow | None


_PUT_PENDING = (
    "INSERT INTO pending (record_id, seq, object, kind, base_version, changes, delta, "
    "status, problem, change_id, inflight, sent_kind, dirty, note) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (record_id) DO UPDATE SET "
    "seq = excluded.seq, object = excluded.object, kind = excluded.kind, "
    "base_version = excluded.base_version, changes = excluded.changes, "
    "delta = excluded.delta, status = excluded.status, problem = excluded.problem, "
    "change_id = excluded.change_id, inflight = excluded.inflight, "
    "sent_kind = excluded.sent_kind, "
    "dirty = excluded.dirty, note = excluded.note"
)


def _pending_params(entry: PendingRow) -> tuple[Any, ...]:
    return (
        entry.record_id,
        entry.seq,
        entry.object,
        entry.kind.value,
        entry.base_version,
        pack({name: edit.to_stored() for name, edit in entry.changes.items()}),
        entry.delta,
        entry.status.value,
        None if entry.problem is None else pack(entry.problem),
        entry.change_id,
        entry.inflight,
        entry.sent_kind.value if entry.sent_kind is not None else None,
        int(entry.dirty),
        entry.note,
    )


def new_change_id() -> str:
    """A new change id: one per content the relay is asked to apply.

    32 hex digits, time-ordered: the milliseconds since 1970 (12 digits), then 80 random
    bits. Unique as a random id is, but ids made later sort later, so the relay's index
    of the change ids it has logged (which every push frame is checked against) grows at
    its end instead of at random places: with random ids each push's log rows cost the
    relay ~11 µs more CPU each, the index's pages being written all over."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


@attrs.frozen(kw_only=True)
class PendingRow:
    """A stored outbox entry.

    ``changes`` maps each field the change writes to its :class:`FieldEdit`.
    ``change_id`` names the content sent to the relay: it is kept while the entry
    coalesces edits or waits for a verdict, and a new one is drawn (:meth:`renewed`)
    whenever the entry becomes a different change to send. ``inflight`` and
    ``sent_kind`` are what was sent to the relay (kept until its verdict arrives, so a
    retransmission is identical); ``dirty`` says the user changed the record again since.
    """

    record_id: str
    seq: int
    object: str
    kind: ChangeKind = attrs.field(converter=ChangeKind)
    base_version: int
    changes: Mapping[str, FieldEdit]
    delta: bytes
    status: Status = attrs.field(converter=Status)
    problem: dict[str, Any] | None = None
    change_id: str = attrs.field(factory=new_change_id)  #: a new entry's is new
    inflight: bytes | None = None
    sent_kind: ChangeKind | None = attrs.field(
        default=None, converter=attrs.converters.optional(ChangeKind)
    )
    dirty: bool = False
    note: str = ""

    def renewed(self, **changes: Any) -> PendingRow:
        """This entry, with ``changes`` (as :func:`attrs.evolve` takes them), as a new
        change waiting to be sent: ``pending`` under a new change id, with no problem,
        nothing in flight and nothing changed since a send.

        Used whenever what goes to the relay next is no longer what a change id was
        issued for (a resolve, what is left after an acknowledgement), so the relay
        never takes it for a retransmission of the old one.
        """
        return attrs.evolve(
            self,
            **changes,
            status=Status.PENDING,
            problem=None,
            change_id=new_change_id(),
            inflight=None,
            sent_kind=None,
            dirty=False,
        )

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> PendingRow:
        return cls(
            record_id=row["record_id"],
            seq=row["seq"],
            object=row["object"],
            kind=row["kind"],
            base_version=row["base_version"],
            changes={
                name: FieldEdit.from_stored(edit) for name, edit in unpack(row["changes"]).items()
            },
            delta=bytes(row["delta"]),
            status=row["status"],
            problem=unpack(row["problem"]),
            change_id=row["change_id"],
            inflight=None if row["inflight"] is None else bytes(row["inflight"]),
            sent_kind=row["sent_kind"],
            dirty=bool(row["dirty"]),
            note=row["note"],
        )


class LocalStore:
    """Rows of one replica in one SQLite file (or ``":memory:"``).

    Mutating methods must be called inside :meth:`transaction`; reads may be called
    anywhere. Not thread-safe: one store belongs to one event loop.
    """

    def __init__(self, path: str, *, synchronous: str = "NORMAL") -> None:
        self.path = path
        self._depth = 0
        self._lock: OwnerLock | None = None
        if path != ":memory:":
            try:
                self._lock = OwnerLock(path)
            except LockedError:
                raise StoreError(
                    f"{path} is open in another client (in this process or another), or is "
                    "a running relay's database: a store belongs to one client at a time"
                ) from None
            except OSError as exc:
                raise StoreError(f"{path}: cannot open the store: {exc.strerror}") from None
        db: sqlite3.Connection | None = None
        try:
            create_private(path)
            db = self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            if path != ":memory:":
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode != "wal":
                    raise StoreError(f"{path}: cannot switch to WAL mode (got {mode})")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute("PRAGMA foreign_keys=ON")
            with self.transaction():
                open_format(
                    db,
                    schema=_SCHEMA,
                    version=FORMAT_VERSION,
                    migrations=_MIGRATIONS,
                    kind="client store",
                )
        except BaseException as exc:
            if db is not None:
                db.close()
            self._release()
            if isinstance(exc, FormatError):
                raise StoreError(
                    f"{path}: not a client store this version of crdtsync reads: {exc}"
                ) from None
            if isinstance(exc, sqlite3.DatabaseError):
                raise StoreError(f"{path}: not a crdtsync store ({exc})") from None
            if isinstance(exc, OSError):
                raise StoreError(f"{path}: cannot create the store: {exc.strerror}") from None
            raise

    def close(self) -> None:
        """Close the database and let another client open it."""
        self._db.close()
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together or not at all. Nested calls join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._depth = 1
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")
        finally:
            self._depth = 0

    # -- meta -------------------------------------------------------------------------

    def get_meta(self, key: str, default: Any = None) -> Any:
        return get_meta(self._db, key, default)

    def set_meta(self, key: str, value: Any) -> None:
        set_meta(self._db, key, value)

    def next_counter(self, key: str) -> int:
        """Increment and return a persistent counter (starts at 1)."""
        value = int(self.get_meta(key, 0)) + 1
        self.set_meta(key, value)
        return value

    # -- records ----------------------------------------------------------------------

    def get_record(self, record_id: str) -> RecordRow | None:
        row = self._db.execute("SELECT * FROM records WHERE id = ?", (record_id,)).fetchone()
        return None if row is None else RecordRow.from_row(row)

    def list_records(self, object_name: str | None = None) -> list[RecordRow]:
        if object_name is None:
            rows = self._db.execute("SELECT * FROM records ORDER BY rowid")
        else:
            rows = self._db.execute(
                "SELECT * FROM records WHERE object = ? ORDER BY rowid", (object_name,)
            )
        return [RecordRow.from_row(row) for row in rows]

    def put_record(self, record: RecordRow) -> None:
        self._db.execute(_PUT_RECORD, _record_params(record))

    def put_records(self, records: Iterable[RecordRow]) -> None:
        """:meth:`put_record` of each, in one statement (``executemany``)."""
        self._db.executemany(_PUT_RECORD, map(_record_params, records))

    def remote_targets(self, record_ids: Iterable[str]) -> dict[str, RemoteTarget]:
        """What a remote change of each of ``record_ids`` finds in the store, read in
        as few queries as possible: records that do not exist are left out."""
        found: dict[str, RemoteTarget] = {}
        rows = rows_in(
            self._db,
            "SELECT r.id, r.object, r.server, r.version, r.deleted, "
            "r.server IS NOT NULL AND r.local = r.server, p.record_id IS NOT NULL "
            "FROM records r LEFT JOIN pending p ON p.record_id = r.id WHERE r.id IN ({marks})",
            list(dict.fromkeys(record_ids)),
        )
        for record_id, obj, server, version, deleted, clean, pending in rows:
            found[record_id] = RemoteTarget(
                obj,
                None if server is None else bytes(server),
                version,
                bool(deleted),
                bool(clean),
                bool(pending),
            )
        return found

    def remove_record(self, record_id: str) -> None:
        self._db.execute("DELETE FROM records WHERE id = ?", (record_id,))

    # -- pending ----------------------------------------------------------------------

    def get_pending(self, record_id: str) -> PendingRow | None:
        row = self._db.execute("SELECT * FROM pending WHERE record_id = ?", (record_id,)).fetchone()
        return None if row is None else PendingRow.from_row(row)

    def find_pending(self, change_id: str) -> PendingRow | None:
        row = self._db.execute("SELECT * FROM pending WHERE change_id = ?", (change_id,)).fetchone()
        return None if row is None else PendingRow.from_row(row)

    def ack_targets(self, change_ids: Iterable[str]) -> dict[str, AckTarget]:
        """The outbox entries of ``change_ids`` with their records, read in as few
        queries as possible (:func:`~crdtsync.core.sqlite_meta.rows_in`): ids no entry has
        are left out."""
        found: dict[str, AckTarget] = {}
        rows = rows_in(
            self._db,
            "SELECT p.*, r.id AS r_id, r.local AS r_local, r.server AS r_server, "
            "r.version AS r_version, r.deleted AS r_deleted "
            "FROM pending p LEFT JOIN records r ON r.id = p.record_id "
            "WHERE p.change_id IN ({marks})",
            list(dict.fromkeys(change_ids)),
        )
        for row in rows:
            dirty = bool(row["dirty"])
            record = None
            if row["r_id"] is not None:
                server = row["r_server"]
                record = RecordRow(
                    id=row["r_id"],
                    object=row["object"],
                    local=bytes(row["r_local"]),
                    server=None if server is None else bytes(server),
                    version=row["r_version"],
                    deleted=bool(row["r_deleted"]),
                )
            inflight = row["inflight"]
            found[row["change_id"]] = AckTarget(
                record_id=row["record_id"],
                object=row["object"],
                status=row["status"],
                sent_kind=row["sent_kind"],
                inflight=None if inflight is None else bytes(inflight),
                dirty=dirty,
                entry=PendingRow.from_row(row) if dirty else None,
                record=record,
            )
        return found

    def list_pending(
        self, status: str | None = None, *, after_seq: int = 0, limit: int = -1
    ) -> list[PendingRow]:
        """Outbox entries in queue order (of one status, after ``after_seq``, at most
        ``limit`` of them; -1: all)."""
        if status is None:
            rows = self._db.execute(
                "SELECT * FROM pending WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
            )
        else:
            rows = self._db.execute(
                "SELECT * FROM pending WHERE status = ? AND seq > ? ORDER BY seq LIMIT ?",
                (status, after_seq, limit),
            )
        return [PendingRow.from_row(row) for row in rows]

    def iter_pending(self, status: str, page: int = 200) -> Iterator[PendingRow]:
        """Outbox entries of one status in queue order, read a page at a time (callers
        may stop early, and may write between pages)."""
        after = 0
        while True:
            rows = self.list_pending(status, after_seq=after, limit=page)
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1].seq

    def count_pending(self, status: str) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM pending WHERE status = ?", (status,))
        return int(row.fetchone()[0])

    def put_pending(self, entry: PendingRow) -> None:
        self._db.execute(_PUT_PENDING, _pending_params(entry))

    def put_pendings(self, entries: Iterable[PendingRow]) -> None:
        """:meth:`put_pending` of each, in one statement (``executemany``)."""
        self._db.executemany(_PUT_PENDING, map(_pending_params, entries))

    def remove_pendings(self, record_ids: Iterable[str]) -> None:
        """:meth:`remove_pending` of each, in one statement (``executemany``)."""
        self._db.executemany(
            "DELETE FROM pending WHERE record_id = ?", [(record_id,) for record_id in record_ids]
        )

    def remove_records(self, record_ids: Iterable[str]) -> None:
        """:meth:`remove_record` of each, in one statement (``executemany``)."""
        self._db.executemany(
            "DELETE FROM records WHERE id = ?", [(record_id,) for record_id in record_ids]
        )

    def remove_pending(self, record_id: str) -> None:
        self._db.execute("DELETE FROM pending WHERE record_id = ?", (record_id,))

    def objects(self) -> set[str]:
        """The object types of the records this store holds."""
        rows = self._db.execute("SELECT DISTINCT object FROM records")
        return {str(row[0]) for row in rows}

    def count_synced(self) -> dict[str, int]:
        """``{object: count}`` of the records not deleted locally and with no outbox
        entry (counted by SQLite: no record is read)."""
        rows = self._db.execute(
            "SELECT object, COUNT(*) FROM records r WHERE deleted = 0 AND NOT EXISTS "
            "(SELECT 1 FROM pending p WHERE p.record_id = r.id) GROUP BY object"
        )
        return {row[0]: row[1] for row in rows}

    def count_by_status(self) -> dict[tuple[str, str], int]:
        """``{(object, status): count}`` over the outbox."""
        rows = self._db.execute("SELECT object, status, COUNT(*) FROM pending GROUP BY 1, 2")
        return {(row[0], row[1]): row[2] for row in rows}

    def integrity_check(self) -> str:
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])
