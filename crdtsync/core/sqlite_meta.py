"""What the replica's store and the relay's storage share: msgpack blobs in SQLite, a
``meta (key, value)`` table of small settings and counters, versioned formats with
their migrations, and an OS lock that keeps a database file to one owner at a time."""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import msgpack

from crdtsync.core.exceptions import FormatError, LockedError

META_TABLE = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB)"


class Rows(Protocol):
    """What running a statement gives: its rows (tuples), in order."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


class SqlConnection(Protocol):
    """What the helpers here need of a connection: ``execute`` with ``?`` placeholders
    (a ``sqlite3.Connection``, or the relay's PostgreSQL connection, which translates
    them)."""

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Rows: ...


def _bind_bytes_as_they_are() -> None:
    """Give ``bytes`` parameters the identity adapter, unless the application gave them
    one already.

    CPython's sqlite3 (3.11) binds ints, floats, strs and bytearrays directly but looks
    every other parameter up in its adapter registry first, and for ``bytes`` with no
    adapter that lookup raises and clears an ``AttributeError``: some 3,300 instructions
    per blob bound, more than inserting the row's index entries. The stores bind a CRDT
    update and a msgpack blob or two per change. ``bytes.__bytes__(b)`` is ``b`` itself, so
    nothing bound changes."""
    sqlite3.adapters.setdefault((bytes, sqlite3.PrepareProtocol), bytes.__bytes__)


_bind_bytes_as_they_are()


def pack(value: Any) -> bytes:
    """A value as a msgpack blob."""
    return bytes(msgpack.packb(value, use_bin_type=True))


def unpack(blob: bytes | None) -> Any:
    """The value of a msgpack blob (``None`` for SQL NULL)."""
    return None if blob is None else msgpack.unpackb(blob, raw=False, strict_map_key=False)


#: Values bound in one ``IN (...)`` list: well within SQLite's parameter limit.
IN_CHUNK = 500


def rows_in(db: SqlConnection, sql: str, values: Sequence[Any], *rest: Any) -> Iterator[Any]:
    """The rows of ``sql`` for every one of ``values``: ``sql`` holds ``{marks}`` where
    its ``IN (...)`` list goes (then ``rest`` as the remaining parameters), and runs once
    per :data:`IN_CHUNK` values."""
    for start in range(0, len(values), IN_CHUNK):
        chunk = values[start : start + IN_CHUNK]
        yield from db.execute(sql.format(marks=", ".join("?" * len(chunk))), (*chunk, *rest))


def get_meta(db: SqlConnection, key: str, default: Any = None) -> Any:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return default if row is None else unpack(row[0])


def set_meta(db: SqlConnection, key: str, value: Any) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, pack(value)),
    )


#: A migration from format ``n`` to ``n + 1``: SQL run on the open connection, inside
#: the transaction that opens the database.
Migration = Callable[[sqlite3.Connection], None]


def open_format(
    db: sqlite3.Connection,
    *,
    schema: str,
    version: int,
    migrations: Mapping[int, Migration],
    kind: str,
) -> int | None:
    """Bring the database on ``db`` to format ``version``; return the format it had
    (``None``: it was empty and now holds ``schema``).

    Call inside a transaction: SQLite DDL is transactional, so a crash mid-migration
    leaves the old format intact and the next open migrates again. An older format is
    migrated one step at a time (``migrations[n]`` takes format ``n`` to ``n + 1``), then
    ``schema`` (``CREATE ... IF NOT EXISTS`` statements) adds what a step did not need to.
    A newer or unknown format raises :class:`FormatError`, and so does a database of the
    other ``kind`` (``"client store"`` or ``"relay database"``): both are crdtsync
    formats with the same numbers, told apart by ``meta.kind``, or for files written
    before it by the table only the other kind has.
    """
    found = check_format(db, version=version, kind=kind)
    if found is not None:
        for step in range(found, version):
            migrations[step](db)
    for statement in schema.split(";"):
        if statement.strip():
            db.execute(statement)
    if found != version:
        set_meta(db, "format_version", version)
    if get_meta(db, "kind") != kind:
        set_meta(db, "kind", kind)
    return found


def check_format(db: sqlite3.Connection, *, version: int, kind: str) -> int | None:
    """The format of the database on ``db`` (``None``: empty), read without changing
    anything; :class:`FormatError` if it is not a ``kind`` in format ``version`` or an
    older one (see :func:`open_format`)."""
    has_meta = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    found = get_meta(db, "format_version") if has_meta else None
    if found is None and db.execute("SELECT 1 FROM sqlite_master").fetchone():
        raise FormatError("it holds tables of something else")
    if found is None:
        return None
    other = get_meta(db, "kind") or _kind_by_tables(db)
    if other is not None and other != kind:
        raise FormatError(f"it is a crdtsync {other}, not a {kind}")
    if not isinstance(found, int) or found < 1:
        raise FormatError(f"format {found!r} is not one crdtsync ever wrote")
    if found > version:
        raise FormatError(f"format {found} is newer than this crdtsync reads ({version})")
    return found


#: a table only one kind of crdtsync database has
_KIND_TABLES = {"pending": "client store", "changes": "relay database"}


def _kind_by_tables(db: sqlite3.Connection) -> str | None:
    for table, kind in _KIND_TABLES.items():
        found = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        if found:
            return kind
    return None


def create_private(path: str) -> None:
    """Create the database file ``path``, empty and readable by its owner only, unless it
    exists (SQLite gives its ``-wal`` and ``-shm`` files the same mode): what it holds
    (records, pending changes, the relay's log) is nobody else's business on the host."""
    if path == ":memory:" or path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class OwnerLock:
    """An exclusive OS lock (``flock``) on ``PATH-lock`` beside a database file, held
    until :meth:`release` or the process ends (``kill -9`` included: the OS drops it).

    The lock is on a file of its own, never on the database: closing a second
    descriptor of a SQLite file would drop SQLite's own locks on it.
    """

    def __init__(self, database: str) -> None:
        self.path = f"{database}-lock"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(f"{database} is in use by another open store") from None
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
