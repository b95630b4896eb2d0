"""The relay's durable store: SQLite in WAL mode with ``synchronous=FULL``.

An acknowledgement is sent only after the transaction holding the change has
committed, so an acknowledged change survives ``kill -9`` of the relay (and power
loss). Tables:

``records``   a snapshot of every record: its full state as of ``version``, tombstone
              flag, creator and owner (the changes logged after ``version`` complete it)
``changes``   every accepted change, in sequence order: the resume log, the history
              the conflict check reads (who changed which field, to what, when), and
              the truth of a record past its snapshot
``uniques``   the values of ``unique`` fields, one row per (object, field, value)
``client_ids`` which replica first used each CRDT client id (forged ids are refused)
``refused_ops`` the CRDT operations of refused changes (they may never come back)
``replicas``  which user each replica id belongs to
``shares``    manual shares of one record with one user (read or edit)
``access_log`` when a user gained or lost access to a record (for resume)
``replica_hidden`` fields ever hidden from a replica (it holds placeholders for them)
``meta``      the sequence counter, the relay's own id and CRDT client id

Sequence numbers (versions) are server-wide and strictly increasing.

Inside a :meth:`RelayStorage.transaction`, record rows and log rows are *staged*: a
record written several times in one push frame is written once, and the frame's log
rows go in with one ``executemany``, when the transaction commits. Reads see their own
writes: :meth:`RelayStorage.get_record` and :meth:`RelayStorage.live_record_exists`
answer from the staged rows, and every other read of ``records`` or ``changes`` writes
the staged rows first.

A record's row is a snapshot and the log is the truth after it. The common edit
(:mod:`.fastpath`) only logs its change; the relay writes the record's row again after
at most ``SNAPSHOT_EVERY`` such changes, or with any other change. A record read back
(:meth:`RelayStorage.get_record`, :meth:`RelayStorage.get_records`) is its row with the
updates logged since merged in, and :meth:`RelayStorage.compact` writes a snapshot of a
record before it drops an update the record's row does not hold yet.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import msgpack
import pycrdt

from crdtsync.core.exceptions import FormatError
from crdtsync.core.record import merged_state
from crdtsync.core.sqlite_meta import (
    IN_CHUNK,
    Migration,
    SqlConnection,
    create_private,
    get_meta,
    open_format,
    pack,
    rows_in,
    set_meta,
    unpack,
)

from .database import (
    SCHEMA_LOCK_KEY,
    Database,
    PostgresDatabase,
    SqliteDatabase,
    is_lock_timeout,
    is_postgres_url,
    waits_past_a_stall,
)
from .errors import StorageError

log = logging.getLogger("crdtsync.storage")

#: 1: the first released format. 2: ``changes.update_`` may be NULL (compacted).
#: 3: a record's row is a snapshot, which the changes logged after it complete.
FORMAT_VERSION = 3

#: the most changes the relay logs after a record's snapshot before it writes a new one
SNAPSHOT_EVERY = 64

# The tables, written once for both engines: ``{int}`` is a 64-bit integer (SQLite's
# ``INTEGER``, which makes ``changes.seq`` the rowid; PostgreSQL's ``BIGINT``), ``{blob}``
# bytes, ``{real}`` a double; ``"user"`` is quoted (a reserved word in PostgreSQL).
_CHANGES_TABLE = """CREATE TABLE IF NOT EXISTS changes (
    seq       {int} PRIMARY KEY,
    record_id TEXT NOT NULL,
    object    TEXT NOT NULL,
    change_id TEXT UNIQUE,
    replica   TEXT,
    "user"    TEXT,
    kind      TEXT NOT NULL,
    fields    {blob} NOT NULL,
    update_   {blob},
    at        {real} NOT NULL
)"""

_TABLES = (
    """CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value {blob});
CREATE TABLE IF NOT EXISTS records (
    id         TEXT PRIMARY KEY,
    object     TEXT NOT NULL,
    state      {blob} NOT NULL,
    version    {int} NOT NULL,
    deleted    INTEGER NOT NULL DEFAULT 0,
    created_by TEXT,
    owner      TEXT
);
CREATE INDEX IF NOT EXISTS records_object_version ON records (object, version);
"""
    + _CHANGES_TABLE
    + """;
CREATE INDEX IF NOT EXISTS changes_record ON changes (record_id, seq);
CREATE TABLE IF NOT EXISTS uniques (
    object    TEXT NOT NULL,
    field     TEXT NOT NULL,
    value     {blob} NOT NULL,
    record_id TEXT NOT NULL,
    PRIMARY KEY (object, field, value)
);
CREATE INDEX IF NOT EXISTS uniques_record ON uniques (record_id);
CREATE TABLE IF NOT EXISTS client_ids (client_id TEXT PRIMARY KEY, replica TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS refused_ops (
    record_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    start     {int} NOT NULL,
    end_      {int} NOT NULL,
    change_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS refused_ops_client ON refused_ops (record_id, client_id, start);
CREATE TABLE IF NOT EXISTS replicas (replica_id TEXT PRIMARY KEY, "user" TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shares (
    record_id TEXT NOT NULL,
    "user"    TEXT NOT NULL,
    access    INTEGER NOT NULL,
    PRIMARY KEY (record_id, "user")
);
CREATE TABLE IF NOT EXISTS access_log (
    seq       {int} NOT NULL,
    record_id TEXT NOT NULL,
    "user"    TEXT NOT NULL,
    gained    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS access_log_user ON access_log ("user", seq);
CREATE TABLE IF NOT EXISTS replica_hidden (
    replica_id TEXT NOT NULL,
    object     TEXT NOT NULL,
    field      TEXT NOT NULL,
    PRIMARY KEY (replica_id, object, field)
)
"""
)
_SQLITE_TYPES = {"int": "INTEGER", "blob": "BLOB", "real": "REAL"}
_SCHEMA = _TABLES.format(**_SQLITE_TYPES)
#: PostgreSQL's tables (format 3 from the start: it has no older formats)
_POSTGRES_SCHEMA = _TABLES.format(int="BIGINT", blob="BYTEA", real="DOUBLE PRECISION")

_RELAY_KIND = "relay database"


def _open_postgres(storage: RelayStorage, *, create: bool) -> None:
    """Check the PostgreSQL database's tables and create them if it has none (unless
    ``create`` is false), in one transaction under a lock (relays starting together
    create them once). A database holding other tables, another crdtsync kind or a
    newer format is refused (:class:`StorageError`), untouched."""
    db = storage._db
    assert isinstance(db, PostgresDatabase)
    try:
        # A transaction of its own (not RelayStorage.begin, which locks the sequence row
        # these statements may be about to create).
        db.begin()
        try:
            db.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK_KEY,))
            tables = {
                str(row[0])
                for row in db.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema()"
                )
            }
            found = get_meta(db, "format_version") if "meta" in tables else None
            if found is None and tables:
                raise StorageError(
                    f"{db.where}: not a crdtsync relay database: it holds tables of "
                    f"something else ({', '.join(sorted(tables)[:5])})"
                )
            if found is None and not create:
                raise StorageError(f"{db.where}: no relay database there (no crdtsync tables)")
            if found is not None:
                other = get_meta(db, "kind")
                if other != _RELAY_KIND:
                    raise StorageError(
                        f"{db.where}: it is a crdtsync {other}, not a relay database"
                    )
                if found != FORMAT_VERSION:
                    raise StorageError(
                        f"{db.where}: format {found!r} is not the one this crdtsync reads "
                        f"({FORMAT_VERSION})"
                    )
            if found is None:
                # Only into an empty database: DDL on tables other relays are writing to
                # would lock them against those writes (and deadlock with the sequence).
                for statement in _POSTGRES_SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                set_meta(db, "format_version", FORMAT_VERSION)
                set_meta(db, "kind", _RELAY_KIND)
            if get_meta(db, "seq") is None:
                # the sequence row every write transaction locks first (RelayStorage.begin)
                set_meta(db, "seq", 0)
        except BaseException:
            db.rollback()
            raise
        db.commit()
    except db.Error as exc:
        raise StorageError(f"{db.where}: cannot open the relay database: {exc}") from None


def _changes_update_nullable(db: sqlite3.Connection) -> None:
    """Format 1 → 2: ``changes.update_`` loses NOT NULL (a compacted change's update is
    NULL). SQLite cannot alter a column: rebuild the table, keeping every row."""
    db.execute("ALTER TABLE changes RENAME TO changes_format1")
    db.execute("DROP INDEX changes_record")
    db.execute(_CHANGES_TABLE.format(**_SQLITE_TYPES))
    db.execute("INSERT INTO changes SELECT * FROM changes_format1")
    db.execute("DROP TABLE changes_format1")


def _rows_are_snapshots(db: sqlite3.Connection) -> None:
    """Format 2 → 3: every row of a format-2 database is whole, a snapshot with nothing
    logged after it, so only the format number changes (a relay that predates snapshots
    then refuses the file instead of reading rows as whole that are not)."""


_MIGRATIONS: dict[int, Migration] = {1: _changes_update_nullable, 2: _rows_are_snapshots}


_RECORD_COLUMNS = "id, object, state, version, deleted, created_by, owner"
_CHANGE_COLUMNS = 'seq, record_id, object, change_id, replica, "user", kind, fields, update_, at'


@attrs.frozen(kw_only=True)
class StoredRecord:
    id: str
    object: str
    state: bytes
    version: int
    deleted: bool = False
    created_by: str | None = None
    owner: str | None = None  #: the owner field's value (owners change only via admins)
    #: as read back: how many logged changes its row lacked (merged into ``state``)
    behind: int = attrs.field(default=0, eq=False)

    def at(self, version: int, state: bytes | None = None) -> StoredRecord:
        """This record at ``version`` (with ``state``, if given): ``attrs.evolve``
        without its introspection, on the push path."""
        return StoredRecord(
            id=self.id,
            object=self.object,
            state=self.state if state is None else state,
            version=version,
            deleted=self.deleted,
            created_by=self.created_by,
            owner=self.owner,
        )

    @classmethod
    def from_tuple(cls, row: Sequence[Any]) -> StoredRecord:
        """The record of a row of ``records``, its columns as ``_RECORD_COLUMNS`` lists
        them."""
        record_id, object_name, state, version, deleted, created_by, owner = row
        return cls(
            id=str(record_id),
            object=str(object_name),
            state=bytes(state),
            version=int(version),
            deleted=bool(deleted),
            created_by=created_by,
            owner=owner,
        )


@attrs.frozen(kw_only=True)
class ChangeRow:
    """An accepted change. ``fields`` maps each field it touched to the value the record
    held for it afterwards (stored encoding; ``None`` for ``text`` fields). A
    ``compacted`` change kept its facts but not its CRDT update (``update`` is empty):
    whoever needs it gets the record's full state instead."""

    seq: int
    record_id: str
    object: str
    change_id: str | None
    replica: str | None
    user: str | None
    kind: str
    fields: Mapping[str, Any]
    update: bytes
    at: float = 0.0
    compacted: bool = False

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> ChangeRow:
        """The change of a row of ``changes``, its columns as ``_CHANGE_COLUMNS`` lists
        them."""
        seq, record_id, object_name, change_id, replica, user, kind, fields, update, at = row
        return cls(
            seq=int(seq),
            record_id=str(record_id),
            object=str(object_name),
            change_id=change_id,
            replica=replica,
            user=user,
            kind=str(kind),
            fields=unpack(fields),
            update=b"" if update is None else bytes(update),
            at=float(at),
            compacted=update is None,
        )


def read_records(
    db: SqlConnection, record_ids: Sequence[str] | None = None
) -> dict[str, StoredRecord]:
    """The records of the relay database ``db`` (all, or those of ``record_ids`` that
    exist) as they stand: each row with the changes logged after it merged in. Reading
    needs nothing but a connection (read-only is enough): this is how anything besides
    the relay reads its records.

    Each row and the changes logged after it are read in one statement, so they come
    from one snapshot even while other relays write (a row rewritten between two reads
    would otherwise be merged with the wrong part of the log)."""
    sql = (
        f"SELECT 0, {_RECORD_COLUMNS} FROM records r{{rows}} "
        "UNION ALL SELECT 1, c.record_id, NULL, c.update_, c.seq, NULL, NULL, NULL "
        "FROM changes c JOIN records r ON r.id = c.record_id "
        "WHERE c.seq > r.version{tail} ORDER BY 1, 2, 5"
    )
    rows: Iterable[Any]
    if record_ids is None:
        rows = db.execute(sql.format(rows="", tail=""))
    else:
        wanted = list(dict.fromkeys(record_ids))
        chunked = sql.format(rows=" WHERE r.id IN ({marks})", tail=" AND c.record_id IN ({marks})")
        rows = _rows_in_twice(db, chunked, wanted)
    found: dict[str, StoredRecord] = {}
    tails: dict[str, list[tuple[int, bytes | None]]] = {}
    for part, *row in rows:
        if part == 0:
            record = StoredRecord.from_tuple(row)
            found[record.id] = record
        else:
            record_id, _object, update, seq = row[:4]
            tails.setdefault(str(record_id), []).append((int(seq), update))
    for record_id, logged in tails.items():
        if record_id in found:
            found[record_id] = _caught_up(found[record_id], logged)
    return found


def _rows_in_twice(db: SqlConnection, sql: str, values: list[str]) -> Iterator[Any]:
    """:func:`rows_in` for a statement whose two ``IN ({marks})`` lists take the same
    values."""
    for start in range(0, len(values), IN_CHUNK):
        chunk = values[start : start + IN_CHUNK]
        marks = ", ".join("?" * len(chunk))
        yield from db.execute(sql.replace("{marks}", marks), (*chunk, *chunk))


def _caught_up(row: StoredRecord, tail: list[tuple[int, bytes | None]]) -> StoredRecord:
    """The record whose row is ``row``, with ``tail`` (the ``(seq, update)`` of each change
    logged after the row, in order) merged in."""
    if any(update is None for _seq, update in tail):
        # compact() writes a snapshot before it drops an update a row lacks: this is a
        # database something else has changed.
        raise StorageError(
            f"record {row.id}: a change logged after its snapshot lost its update; "
            "the database was changed by something other than crdtsync"
        )
    state = merged_state(row.state, [bytes(update) for _seq, update in tail if update])
    return StoredRecord(
        id=row.id,
        object=row.object,
        state=state,
        version=tail[-1][0],
        deleted=row.deleted,
        created_by=row.created_by,
        owner=row.owner,
        behind=len(tail),
    )


def new_private_file(path: str) -> int:
    """Create the file ``path``, which must not exist, readable by its owner only; return
    a descriptor open for writing. A backup never overwrites a file."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise StorageError(f"{path} exists: a backup never overwrites a file") from None
    except OSError as exc:
        raise StorageError(f"cannot create {path}: {exc.strerror}") from None


class RelayStorage:
    """The relay's rows in one database: a SQLite file, or PostgreSQL (see
    :mod:`.database`). Writes happen inside :meth:`transaction`."""

    def __init__(self, database: str, *, create: bool = True) -> None:
        """Open the relay database ``database`` (a SQLite path or ``:memory:``, or a
        ``postgresql://`` URL), creating its tables unless ``create`` is false (then a
        missing SQLite file, or a PostgreSQL database without them, is a
        :class:`StorageError`, and nothing is created)."""
        self.path = database
        # Rows written inside the transaction, not yet sent to the database (see the
        # module docstring): the latest row of each record, and log rows as parameter
        # tuples.
        self._staged_records: dict[str, StoredRecord] = {}
        self._staged_changes: list[tuple[Any, ...]] = []
        # One packer for the log's field blobs (what sqlite_meta.pack makes per call):
        # the storage is used by one thread at a time, as its connection is.
        self._pack_fields = msgpack.Packer(use_bin_type=True).pack
        self._in_transaction = False
        self._db: Database
        if is_postgres_url(database):
            self._db = PostgresDatabase(database)
            try:
                _open_postgres(self, create=create)
            except BaseException:
                self._db.close()
                raise
        else:
            self._db = self._open_sqlite(database, create=create)
        self._seq: int = self.get_meta("seq", 0)
        #: called as ``(after, through)`` when a transaction begins on a PostgreSQL
        #: database others wrote to since this storage last looked: the changes logged
        #: in ``(after, through]`` are another relay's (see :meth:`begin`)
        self.on_behind: Callable[[int, int], None] | None = None
        # Caches of rows that never change once committed (cleared on a rollback, and
        # when another relay may have written).
        self._refused_records: set[str] | None = None  # records with refused ops (lazy)
        self._refused_ranges: dict[str, dict[int, list[tuple[int, int, str]]]] = {}
        self._client_owners: dict[int, str | None] = {}

    def _open_sqlite(self, path: str, *, create: bool) -> SqliteDatabase:
        if not create and path != ":memory:" and not os.path.isfile(path):
            raise StorageError(f"{path}: no relay database there")
        try:
            create_private(path)
            self._db = db = SqliteDatabase(path)
            with self.transaction():
                open_format(
                    db.connection,
                    schema=_SCHEMA,
                    version=FORMAT_VERSION,
                    migrations=_MIGRATIONS,
                    kind=_RELAY_KIND,
                )
        except FormatError as exc:
            raise StorageError(f"{path}: not a crdtsync relay database: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"{path}: not a crdtsync relay database ({exc})") from None
        except OSError as exc:
            raise StorageError(f"{path}: cannot create the database: {exc.strerror}") from None
        return db

    @property
    def kind(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._db.kind

    @property
    def node(self) -> str | None:
        """On PostgreSQL, what names this storage's commits in the notices other relays
        hear (:mod:`.commit_notices`); ``None`` on SQLite, which one relay holds."""
        return self._db.node if isinstance(self._db, PostgresDatabase) else None

    @property
    def where(self) -> str:
        """The database as messages name it (a path; a URL without its password)."""
        return self._db.where

    def close(self) -> None:
        self._db.close()

    @property
    def in_transaction(self) -> bool:
        return bool(getattr(self, "_in_transaction", False))

    def begin(self) -> None:
        """Open a transaction (:meth:`transaction` does this, or a push group: see
        ``PushPipeline``); :meth:`commit` or :meth:`rollback` ends it.

        On PostgreSQL, where several relays may share the database, the transaction
        first locks the sequence row: write transactions run one at a time across
        relays, so sequence numbers commit in order (a reader that has seen version n
        has seen every version below it) and no record is decided by two relays at
        once. If others committed since this storage last looked, :attr:`on_behind`
        hears of their versions before anything is decided."""
        self._db.begin()
        self._in_transaction = True
        self._seq_at_begin = getattr(self, "_seq", 0)
        if isinstance(self._db, PostgresDatabase):
            try:
                row = self._lock_sequence(self._db)
                self._catch_up(int(unpack(row[0])) if row is not None else 0)
            except BaseException:
                self.rollback()
                raise
        self._seq_at_begin = getattr(self, "_seq", 0)

    def _lock_sequence(self, db: PostgresDatabase) -> Any:
        """Lock the sequence row (and read it). If the wait runs out because a relay
        stopped inside its transaction holds it, that relay's session is ended and the
        lock taken again, once; otherwise the wait's error stands."""
        sql = "SELECT value FROM meta WHERE key = 'seq' FOR UPDATE"
        try:
            return db.execute(sql).fetchone()
        except db.Error as exc:
            if not is_lock_timeout(exc):
                raise
            db.rollback()
            if not db.end_stalled_relays():
                raise
            log.warning("ended the session of a relay stopped in its transaction")
            db.begin()
            return db.execute(sql).fetchone()

    def agree_on_configuration(self, fingerprint: str) -> None:
        """PostgreSQL: make sure every relay serving the database runs the configuration
        whose digest is ``fingerprint`` (the schema, the roles). The first relay records
        it; a relay that starts with another one while a relay with the recorded one is
        connected is refused (:class:`StorageError`); with none connected, the new
        configuration is recorded (a configuration changes while every relay is
        stopped). Nothing to agree on with a SQLite file, which one relay holds.

        A relay stopped inside its transaction may hold the sequence row: the wait for it
        is tried again until that relay has been stopped long enough to be ended
        (:func:`~.database.waits_past_a_stall`), as a push's would be; a row held longer
        than that by a session that is no relay's is reported."""
        if not isinstance(self._db, PostgresDatabase):
            return
        attempts = waits_past_a_stall()
        for attempt in range(1, attempts + 1):
            try:
                self._agree(self._db, fingerprint)
                return
            except self._db.Error as exc:
                if is_lock_timeout(exc) and attempt < attempts:
                    log.warning(
                        "waiting for the relays' sequence row, held by another session "
                        "(a relay stopped in its transaction is ended once it has been "
                        "stopped long enough)"
                    )
                    continue
                why = (
                    "another session has held the relays' sequence row for longer than the "
                    "lock timeout (a relay stopped in its transaction?): try again"
                    if is_lock_timeout(exc)
                    else str(exc).strip().splitlines()[0]
                )
                raise StorageError(
                    f"{self._db.where}: cannot check the configuration the relays run: {why}"
                ) from None

    def _agree(self, db: PostgresDatabase, fingerprint: str) -> None:
        """:meth:`agree_on_configuration`, once."""
        with self.transaction():  # the sequence lock: relays starting together agree
            recorded = self.get_meta("configuration")
            if recorded == fingerprint:
                return
            if recorded is not None and db.other_relays_connected():
                raise StorageError(
                    f"{db.where} is served by relays with another configuration "
                    "(schema or roles): start this one with the same configuration file, "
                    "or stop every relay on the database to change it"
                )
            self.set_meta("configuration", fingerprint)

    def end_stuck_listeners(self) -> int:
        """PostgreSQL: end relays' listening sessions that hold back the server's
        notification queue (:meth:`.database.PostgresDatabase.end_stuck_listeners`); how
        many. Nothing to do on SQLite."""
        if not isinstance(self._db, PostgresDatabase):
            return 0
        return self._db.end_stuck_listeners()

    def cluster_seq(self) -> int:
        """The last version committed by any relay on this database (read, not locked);
        :attr:`seq` on SQLite, which one relay holds alone."""
        if not isinstance(self._db, PostgresDatabase):
            return self._seq
        return int(self.get_meta("seq", 0))

    def follow(self) -> None:
        """Outside a transaction: take in what other relays committed since this storage
        last looked (:attr:`on_behind`), and move :attr:`seq` there."""
        assert not self.in_transaction, "a transaction catches up when it begins"
        self._catch_up(self.cluster_seq())

    def _catch_up(self, cluster: int) -> None:
        """Move :attr:`seq` to ``cluster``, once :attr:`on_behind` has taken in the
        versions between (if it fails, the position stays and the next look tries again:
        nothing another relay committed is passed over)."""
        after = getattr(self, "_seq", 0)
        if cluster <= after:
            return
        # what other relays may have written: client id bindings, refused operations
        self._client_owners = {k: v for k, v in self._client_owners.items() if v is not None}
        self._refused_records, self._refused_ranges = None, {}
        if self.on_behind is not None:
            self.on_behind(after, cluster)
        self._seq = cluster

    def commit(self) -> None:
        """Write what is staged and commit it all at once (one fsync); if that fails,
        roll everything back and raise."""
        try:
            self._flush()
            if getattr(self, "_seq", 0) != self._seq_at_begin:
                if isinstance(self._db, PostgresDatabase):  # with a notice to the others
                    self._db.write_sequence(pack(self._seq), self._seq)
                else:
                    self.set_meta("seq", self._seq)
            self._db.commit()
        except BaseException:
            self.rollback()
            raise
        self._in_transaction = False

    def rollback(self) -> None:
        """Undo the open transaction, and what this object cached from inside it."""
        self._staged_records, self._staged_changes = {}, []
        self._db.rollback()
        self._seq = self._seq_at_begin
        self._refused_records, self._refused_ranges = None, {}
        self._client_owners = {}
        self._in_transaction = False

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Commit everything inside at once (one fsync), or nothing. Inside an open
        transaction it is part of that one."""
        if self.in_transaction:
            yield
            return
        self.begin()
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit()

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """Inside a transaction: what happens inside is kept with it, or, if it raises,
        undone alone (what came before stays)."""
        assert self.in_transaction, "a savepoint belongs to a transaction"
        self._flush()
        seq = self._seq
        self._db.execute("SAVEPOINT part")
        try:
            yield
            self._flush()
        except BaseException:
            self._staged_records, self._staged_changes = {}, []
            self._db.execute("ROLLBACK TO part")
            self._db.execute("RELEASE part")
            self._seq = seq
            self._refused_records, self._refused_ranges = None, {}
            self._client_owners = {}
            raise
        self._db.execute("RELEASE part")

    def _flush(self) -> None:
        """Write the staged record and log rows (one statement each)."""
        if self._staged_records:
            self._db.executemany(
                "INSERT INTO records (id, object, state, version, deleted, created_by, owner) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "state = excluded.state, version = excluded.version, "
                "deleted = excluded.deleted, owner = excluded.owner",
                [
                    (r.id, r.object, r.state, r.version, int(r.deleted), r.created_by, r.owner)
                    for r in self._staged_records.values()
                ],
            )
            self._staged_records = {}
        if self._staged_changes:
            self._db.executemany(
                'INSERT INTO changes (seq, record_id, object, change_id, replica, "user", kind, '
                "fields, update_, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                self._staged_changes,
            )
            self._staged_changes = []

    # -- meta and sequence ------------------------------------------------------------

    def get_meta(self, key: str, default: Any = None) -> Any:
        return get_meta(self._db, key, default)

    def set_meta(self, key: str, value: Any) -> None:
        set_meta(self._db, key, value)

    @property
    def seq(self) -> int:
        """The last sequence number handed out (0: nothing accepted yet)."""
        return self._seq

    def next_seq(self) -> int:
        """The next sequence number; persisted with the transaction that uses it."""
        self._seq += 1
        return self._seq

    # -- records ----------------------------------------------------------------------

    def get_record(self, record_id: str) -> StoredRecord | None:
        """The record as it stands: its row with the changes logged since merged in."""
        staged = self._staged_records.get(record_id)
        if staged is not None:
            return staged
        return self.get_records((record_id,)).get(record_id)

    def get_records(self, record_ids: Sequence[str]) -> dict[str, StoredRecord]:
        """:meth:`get_record` of those of ``record_ids`` that exist, read at once (a push
        frame's records not in the cache: two queries per 500, however many)."""
        found = {
            rid: self._staged_records[rid] for rid in record_ids if rid in self._staged_records
        }
        wanted = [rid for rid in dict.fromkeys(record_ids) if rid not in found]
        if wanted:
            self._flush()  # the frame's own log rows are part of its records
            found.update(read_records(self._db, wanted))
        return found

    def record_heads(self, record_ids: Sequence[str]) -> dict[str, StoredRecord]:
        """The rows of those of ``record_ids`` that exist, as written and without their
        state (``state`` is ``b""``): their ``version`` may lag behind the changes logged
        since (everything else is current). For a reader that reads the log after a
        position anyway (the backlog); :meth:`get_records` gives records as they stand."""
        self._flush()
        sql = (
            "SELECT id, object, version, deleted, created_by, owner FROM records "
            "WHERE id IN ({marks})"
        )
        rows = rows_in(self._db, sql, list(dict.fromkeys(record_ids)))
        heads = (StoredRecord.from_tuple((rid, obj, b"", *rest)) for rid, obj, *rest in rows)
        return {record.id: record for record in heads}

    def put_record(self, record: StoredRecord) -> None:
        """Store ``record`` as the record's row (its ``created_by`` is kept from the first
        row). Staged until the transaction commits (see the module docstring)."""
        self._staged_records[record.id] = record
        if not self._in_transaction:
            self._flush()

    def live_record_exists(self, object_name: str, record_id: str) -> bool:
        staged = self._staged_records.get(record_id)
        if staged is not None:
            return staged.object == object_name and not staged.deleted
        row = self._db.execute(
            "SELECT 1 FROM records WHERE id = ? AND object = ? AND deleted = 0",
            (record_id, object_name),
        ).fetchone()
        return row is not None

    def record_ids_since(self, objects: Iterable[str], version: int) -> list[str]:
        """Ids of the records of ``objects`` changed after ``version``, oldest change
        first (a snapshot: the records are read one by one afterwards). A record's last
        change is its row's version or a change logged after it, whichever is later:
        the rows and the log after ``version`` are read (a range of each)."""
        names = list(objects)
        if not names:
            return []
        self._flush()
        marks = ", ".join("?" for _ in names)
        rows = self._db.execute(
            f"SELECT id, MAX(latest) AS latest FROM ("
            f"SELECT id, version AS latest FROM records WHERE object IN ({marks}) AND version > ? "
            f"UNION ALL SELECT record_id, seq FROM changes WHERE object IN ({marks}) AND seq > ?"
            f") AS changed GROUP BY id ORDER BY latest",
            (*names, version, *names, version),
        )
        return [str(row[0]) for row in rows]

    # -- changes ----------------------------------------------------------------------

    def add_change(self, change: ChangeRow) -> None:
        """Log an accepted change (staged until the transaction commits)."""
        self._staged_changes.append(
            (
                change.seq,
                change.record_id,
                change.object,
                change.change_id,
                change.replica,
                change.user,
                # as an exact str: sqlite3 binds a str subclass (a ChangeKind) only after
                # a failed adapter lookup that costs more than the row's index entries
                str.__str__(change.kind),
                self._pack_fields(
                    change.fields if type(change.fields) is dict else dict(change.fields)
                ),
                change.update,
                change.at or time.time(),
            )
        )
        if not self._in_transaction:
            self._flush()

    def known_change_ids(self, change_ids: Sequence[str]) -> set[str]:
        """Which of ``change_ids`` were accepted before."""
        self._flush()
        sql = "SELECT change_id FROM changes WHERE change_id IN ({marks})"
        return {str(row[0]) for row in rows_in(self._db, sql, change_ids)}

    def find_change(self, change_id: str) -> ChangeRow | None:
        self._flush()
        row = self._db.execute(
            f"SELECT {_CHANGE_COLUMNS} FROM changes WHERE change_id = ?", (change_id,)
        ).fetchone()
        return None if row is None else ChangeRow.from_row(row)

    def log_between(self, after: int, through: int) -> list[ChangeRow]:
        """Every change logged with ``after < seq <= through``, in order."""
        self._flush()
        rows = self._db.execute(
            f"SELECT {_CHANGE_COLUMNS} FROM changes WHERE seq > ? AND seq <= ? ORDER BY seq",
            (after, through),
        )
        return [ChangeRow.from_row(row) for row in rows]

    def changes_of(self, record_id: str, after: int = 0) -> list[ChangeRow]:
        """The record's accepted changes with ``seq > after``, in order."""
        self._flush()
        rows = self._db.execute(
            f"SELECT {_CHANGE_COLUMNS} FROM changes WHERE record_id = ? AND seq > ? ORDER BY seq",
            (record_id, after),
        )
        return [ChangeRow.from_row(row) for row in rows]

    def updates_since(
        self, record_ids: Sequence[str], after: int
    ) -> dict[str, list[tuple[int, bytes | None]]]:
        """The ``(seq, update)`` of each change to ``record_ids`` with ``seq > after``, in
        order, per record (one query per 500; records without any left out). ``update``
        is ``None`` for a change compaction dropped the update of."""
        self._flush()
        out: dict[str, list[tuple[int, bytes | None]]] = {}
        sql = (
            "SELECT record_id, seq, update_ FROM changes "
            "WHERE record_id IN ({marks}) AND seq > ? ORDER BY seq"
        )
        for record_id, seq, update in rows_in(
            self._db, sql, list(dict.fromkeys(record_ids)), after
        ):
            out.setdefault(str(record_id), []).append((int(seq), update))
        return out

    def change_fields(self, record_id: str, after: int = 0) -> list[ChangeRow]:
        """The record's changes with ``seq > after``, in order, without their updates
        (who changed which fields to what: what the conflict checks read)."""
        self._flush()
        rows = self._db.execute(
            'SELECT seq, record_id, object, change_id, replica, "user", kind, fields, '
            "?, at FROM changes WHERE record_id = ? AND seq > ? ORDER BY seq",
            (b"", record_id, after),
        )
        return [ChangeRow.from_row(row) for row in rows]

    def state_at(self, record_id: str, version: int) -> bytes | None:
        """The record's CRDT state as of ``version`` (its logged updates up to it, merged),
        or ``None`` if compaction dropped one of them."""
        updates = []
        for change in self.changes_of(record_id):
            if change.seq > version:
                break
            if change.compacted:
                return None
            if change.update:
                updates.append(change.update)
        return bytes(pycrdt.merge_updates(*updates)) if updates else b""

    def field_value_at(self, record_id: str, field: str, version: int) -> Any:
        """The value ``field`` had at ``version`` (stored encoding; None if unset)."""
        self._flush()
        rows = self._db.execute(
            "SELECT fields FROM changes WHERE record_id = ? AND seq <= ? ORDER BY seq DESC",
            (record_id, version),
        )
        for row in rows:
            fields = unpack(row[0])
            if field in fields:
                return fields[field]
        return None

    # -- uniques ----------------------------------------------------------------------

    def unique_holder(self, object_name: str, field: str, value: Any) -> str | None:
        row = self._db.execute(
            "SELECT record_id FROM uniques WHERE object = ? AND field = ? AND value = ?",
            (object_name, field, pack(value)),
        ).fetchone()
        return None if row is None else str(row[0])

    def set_uniques(self, object_name: str, record_id: str, values: Mapping[str, Any]) -> None:
        """Replace the record's unique values by ``values`` (``None`` values are skipped)."""
        self._db.execute("DELETE FROM uniques WHERE record_id = ?", (record_id,))
        for field, value in values.items():
            if value is not None:
                self._db.execute(
                    "INSERT INTO uniques (object, field, value, record_id) VALUES (?, ?, ?, ?)",
                    (object_name, field, pack(value), record_id),
                )

    # -- CRDT client ids ----------------------------------------------------------------

    def client_id_owner(self, client_id: int) -> str | None:
        """The replica that first used ``client_id`` (bindings never change: cached)."""
        if client_id in self._client_owners:
            return self._client_owners[client_id]
        row = self._db.execute(
            "SELECT replica FROM client_ids WHERE client_id = ?", (str(client_id),)
        ).fetchone()
        owner = None if row is None else str(row[0])
        self._client_owners[client_id] = owner
        return owner

    def bind_client_id(self, client_id: int, replica: str) -> None:
        self._db.execute(
            "INSERT INTO client_ids (client_id, replica) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (str(client_id), replica),
        )
        if self._client_owners.get(client_id) is None:
            self._client_owners[client_id] = replica

    def add_refused(
        self, record_id: str, change_id: str, ranges: Mapping[int, tuple[int, int]]
    ) -> None:
        """Remember the operations (client, clock range) of a refused change to a record
        (clocks count per record document)."""
        if self._refused_records is not None:
            self._refused_records.add(record_id)
        known = self._refused_ranges.get(record_id)
        for client, (start, end) in ranges.items():
            if known is not None:
                known.setdefault(client, []).append((start, end, change_id))
            self._db.execute(
                "INSERT INTO refused_ops (record_id, client_id, start, end_, change_id) "
                "VALUES (?, ?, ?, ?, ?)",
                (record_id, str(client), start, end, change_id),
            )

    def refused_by(self, record_id: str, client_id: int, start: int, end: int) -> str | None:
        """The id of a refused change to the record whose operations overlap
        ``[start, end)`` of ``client_id``."""
        if self._refused_records is None:
            self._refused_records = {
                str(row[0])
                for row in self._db.execute("SELECT DISTINCT record_id FROM refused_ops")
            }
        if record_id not in self._refused_records:
            return None
        ranges = self._refused_ranges.get(record_id)
        if ranges is None:
            ranges = self._refused_ranges[record_id] = {}
            rows = self._db.execute(
                "SELECT client_id, start, end_, change_id FROM refused_ops WHERE record_id = ?",
                (record_id,),
            )
            for client, first, last, change in rows:
                ranges.setdefault(int(client), []).append((first, last, str(change)))
        for first, last, change in ranges.get(client_id, ()):
            if first < end and last > start:
                return change
        return None

    def replica_user(self, replica_id: str) -> str | None:
        row = self._db.execute(
            'SELECT "user" FROM replicas WHERE replica_id = ?', (replica_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def bind_replica(self, replica_id: str, user: str) -> None:
        """A replica id belongs to the first user who connects with it."""
        with self.transaction():
            self._db.execute(
                'INSERT INTO replicas (replica_id, "user") VALUES (?, ?) ON CONFLICT DO NOTHING',
                (replica_id, user),
            )

    def shares_of(self, record_id: str) -> dict[str, int]:
        """``{user: access}`` of the record's manual shares."""
        rows = self._db.execute(
            'SELECT "user", access FROM shares WHERE record_id = ?', (record_id,)
        )
        return {str(row[0]): int(row[1]) for row in rows}

    def shares_of_records(self, record_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """:meth:`shares_of` of several records at once: record id -> ``{user: access}``
        (every record asked for is there, most with no shares)."""
        out: dict[str, dict[str, int]] = {record_id: {} for record_id in record_ids}
        sql = 'SELECT record_id, "user", access FROM shares WHERE record_id IN ({marks})'
        for record_id, user, access in rows_in(self._db, sql, list(out)):
            out[str(record_id)][str(user)] = int(access)
        return out

    def set_share(self, record_id: str, user: str, access: int | None) -> None:
        """Share the record with ``user`` (``None``: remove the share)."""
        if access is None:
            self._db.execute(
                'DELETE FROM shares WHERE record_id = ? AND "user" = ?', (record_id, user)
            )
        else:
            self._db.execute(
                'INSERT INTO shares (record_id, "user", access) VALUES (?, ?, ?) '
                'ON CONFLICT (record_id, "user") DO UPDATE SET access = excluded.access',
                (record_id, user, int(access)),
            )

    def log_access(self, seq: int, record_id: str, user: str, gained: bool) -> None:
        self._db.execute(
            'INSERT INTO access_log (seq, record_id, "user", gained) VALUES (?, ?, ?, ?)',
            (seq, record_id, user, int(gained)),
        )

    def access_gained_at(self, record_id: str, user: str) -> int:
        """The version at which ``user`` last gained read access to the record through an
        administrator's action (a share, an owner change); 0 if none is logged."""
        row = self._db.execute(
            'SELECT MAX(seq) FROM access_log WHERE record_id = ? AND "user" = ? AND gained = 1',
            (record_id, user),
        ).fetchone()
        return int(row[0] or 0)

    def access_changed_at(self, seq: int) -> dict[str, bool]:
        """``{user: gained}``: whose read access the change at version ``seq`` changed."""
        rows = self._db.execute('SELECT "user", gained FROM access_log WHERE seq = ?', (seq,))
        return {str(row[0]): bool(row[1]) for row in rows}

    def access_events(self, user: str, after: int) -> dict[str, bool]:
        """``{record_id: gained}``: the last access change of each record for ``user``
        after version ``after``."""
        rows = self._db.execute(
            'SELECT record_id, gained FROM access_log WHERE "user" = ? AND seq > ? ORDER BY seq',
            (user, after),
        )
        return {str(row[0]): bool(row[1]) for row in rows}

    def remember_hidden(self, replica_id: str, hidden: Mapping[str, frozenset[str]]) -> None:
        """Record the fields hidden from a replica (``{object: fields}``)."""
        with self.transaction():
            for object_name, fields in hidden.items():
                for field in fields:
                    self._db.execute(
                        "INSERT INTO replica_hidden (replica_id, object, field) "
                        "VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                        (replica_id, object_name, field),
                    )

    def ever_hidden(self, replica_id: str) -> dict[str, frozenset[str]]:
        """``{object: fields}`` ever hidden from the replica."""
        rows = self._db.execute(
            "SELECT object, field FROM replica_hidden WHERE replica_id = ?", (replica_id,)
        )
        out: dict[str, set[str]] = {}
        for object_name, field in rows:
            out.setdefault(str(object_name), set()).add(str(field))
        return {name: frozenset(fields) for name, fields in out.items()}

    # -- compaction -------------------------------------------------------------------

    def compact(self, through: int, *, chunk: int = 5_000) -> int:
        """Drop the CRDT updates of the changes with ``seq <= through``, keeping every
        other fact of them (who changed which field to what: conflict checks and their
        details still read them). Return how many updates were dropped.

        Nothing a replica can receive changes: a resume or retransmitted ack that would
        need a dropped update gets the record's full state instead. A record whose row
        does not hold an update to be dropped yet (it was logged after the row's
        snapshot) gets a new snapshot first, in the same transaction. Each chunk of
        ``chunk`` changes commits on its own and every row is either whole or
        compacted, so a crash at any point leaves a consistent database; run it again
        to finish.
        """
        dropped = 0
        start = self._db.execute(
            "SELECT min(seq) FROM changes WHERE update_ IS NOT NULL"
        ).fetchone()[0]
        if start is None:
            return 0
        for low in range(start, through + 1, chunk):
            high = min(low + chunk - 1, through)
            with self.transaction():
                self._snapshot_behind(low, high)
                cursor = self._db.execute(
                    "UPDATE changes SET update_ = NULL "
                    "WHERE seq BETWEEN ? AND ? AND update_ IS NOT NULL",
                    (low, high),
                )
                dropped += cursor.rowcount
                self.set_meta("compacted_through", high)
        return dropped

    def _snapshot_behind(self, low: int, high: int) -> None:
        """Write a snapshot of each record whose row lacks a change logged between
        ``low`` and ``high`` (its state as it stands: row and log merged)."""
        lagging = [
            str(row[0])
            for row in self._db.execute(
                "SELECT DISTINCT c.record_id FROM changes c JOIN records r ON r.id = c.record_id "
                "WHERE c.seq BETWEEN ? AND ? AND c.seq > r.version AND c.update_ IS NOT NULL",
                (low, high),
            )
        ]
        for record in self.get_records(lagging).values():
            self.put_record(record)

    def compacted_through(self) -> int:
        """The highest sequence number a compaction has reached (0: never compacted)."""
        return int(self.get_meta("compacted_through", 0))

    def seq_before(self, at: float) -> int:
        """The last change accepted before the time ``at`` (0: none). Sequence numbers
        grow with acceptance time, so a binary search over the primary key finds it."""
        low, high = 0, self._seq
        while low < high:  # invariant: every seq <= low was accepted before ``at``
            middle = (low + high + 1) // 2
            row = self._db.execute(
                "SELECT at FROM changes WHERE seq >= ? ORDER BY seq LIMIT 1", (middle,)
            ).fetchone()
            if row is not None and row[0] < at:
                low = middle
            else:
                high = middle - 1
        return low

    def integrity_check(self) -> str:
        """SQLite's own check of the file (``"ok"``); PostgreSQL checks its pages itself,
        and this answers ``"ok"`` once the tables are readable."""
        if isinstance(self._db, SqliteDatabase):
            return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])
        self._db.execute("SELECT count(*) FROM meta").fetchone()
        return "ok"
