"""The relay's SQL connection: an embedded SQLite file or a PostgreSQL database, behind
one small interface (:class:`Database`).

:class:`~.storage.RelayStorage` writes its SQL once, in what both engines read the
same way: ``?`` placeholders, ``INSERT … ON CONFLICT …``, the ``"user"`` column quoted
(a reserved word in PostgreSQL), no engine-specific literals. Each connection runs
outside any implicit transaction; the storage opens, commits and rolls back its own,
and uses savepoints inside them (both engines have them):

* ``database =`` a file path (or ``:memory:``) selects :class:`SqliteDatabase`; a
  ``postgresql://`` (or ``postgres://``) URL selects :class:`PostgresDatabase`.
* :meth:`Database.begin`: SQLite's ``BEGIN IMMEDIATE`` takes the write lock at once;
  PostgreSQL's ``BEGIN`` is read committed.
* A commit is durable when it returns: SQLite in WAL mode with ``synchronous=FULL``;
  PostgreSQL through its own WAL (``fsync`` and ``synchronous_commit`` on, its defaults).
* One relay per database: an OS lock beside a SQLite file
  (:class:`~crdtsync.core.sqlite_meta.OwnerLock`); a session advisory lock on a
  PostgreSQL database (:meth:`PostgresDatabase.hold_alone`).

PostgreSQL is reached through psycopg 3 (``pip install 'crdtsync[postgres]'``), imported
only when a ``postgresql://`` database is opened.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from crdtsync.core.sqlite_meta import Rows

from .errors import StorageError

#: What an application's ``database`` setting starts with to select PostgreSQL.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")

#: The key of the advisory lock a relay holds on its PostgreSQL database
#: (``pg_advisory_lock``'s one-bigint form; an arbitrary constant: "crdtsync" in ASCII).
RELAY_LOCK_KEY = 0x6372647473796E63
#: The key of the transaction lock taken while the tables are checked and created (two
#: relays starting at once on a new database create them once).
SCHEMA_LOCK_KEY = RELAY_LOCK_KEY + 1


def is_postgres_url(database: str) -> bool:
    """``database`` names a PostgreSQL database (a URL), not a SQLite file."""
    return database.startswith(POSTGRES_SCHEMES)


def shown_url(url: str) -> str:
    """``url`` fit for a message or a log line: its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


class Database(Protocol):
    """One connection to the relay's database, driven by :class:`~.storage.RelayStorage`
    (one thread at a time). SQL is written as the module docstring says."""

    #: ``"sqlite"`` or ``"postgresql"``
    kind: str
    #: the database as a message names it (a path; a URL without its password)
    where: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    def begin(self) -> None:
        """Open a write transaction (:meth:`commit` or :meth:`rollback` ends it)."""

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    @property
    def in_transaction(self) -> bool: ...

    def close(self) -> None: ...


class SqliteDatabase:
    """A SQLite file in WAL mode with ``synchronous=FULL``: a commit is on disk when it
    returns."""

    kind = "sqlite"

    def __init__(self, path: str) -> None:
        self.where = path
        self.connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if path != ":memory:":
            self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=FULL")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        return self.connection.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.connection.executemany(sql, rows)

    def begin(self) -> None:
        self.connection.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.connection.execute("COMMIT")

    def rollback(self) -> None:
        if self.connection.in_transaction:
            self.connection.execute("ROLLBACK")

    @property
    def in_transaction(self) -> bool:
        return self.connection.in_transaction

    def close(self) -> None:
        self.connection.close()


_PLACEHOLDER = re.compile(r"\?")


class PostgresDatabase:
    """A PostgreSQL database over psycopg 3, in autocommit mode with explicit
    transactions (as :class:`SqliteDatabase`). A commit is durable when it returns, as
    far as the server is configured to make it so (``fsync`` and ``synchronous_commit``
    on, their defaults).

    Connecting fails with a :class:`~.errors.StorageError` that names the server (never
    the password) and what the driver said."""

    kind = "postgresql"

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self.where = shown_url(url)
        try:
            import psycopg
        except ImportError:
            raise StorageError(
                f"{self.where}: PostgreSQL needs psycopg: pip install 'crdtsync[postgres]'"
            ) from None
        self._psycopg = psycopg
        #: what the driver raises (``psycopg.Error``)
        self.Error: type[Exception] = psycopg.Error
        try:
            self.connection = psycopg.connect(
                url, autocommit=True, connect_timeout=max(1, round(connect_timeout))
            )
        except psycopg.Error as exc:
            raise StorageError(f"{self.where}: cannot connect: {_first_line(exc)}") from None
        self._translated: dict[str, str] = {}

    def _sql(self, sql: str) -> str:
        """``sql`` with psycopg's ``%s`` placeholders for ``?`` (memoised: the storage
        runs a few dozen distinct statements)."""
        found = self._translated.get(sql)
        if found is None:
            if "%" in sql:
                raise ValueError(f"a literal % in the storage's SQL: {sql!r}")
            found = self._translated[sql] = _PLACEHOLDER.sub("%s", sql)
        return found

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        cursor: Rows = self.connection.execute(self._sql(sql), params or None)
        return cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.connection.cursor() as cursor:
            cursor.executemany(self._sql(sql), rows)

    def begin(self) -> None:
        self.connection.execute("BEGIN")

    def commit(self) -> None:
        self.connection.execute("COMMIT")

    def rollback(self) -> None:
        if self.in_transaction:
            self.connection.execute("ROLLBACK")

    @property
    def in_transaction(self) -> bool:
        status = self.connection.info.transaction_status
        return bool(status != self._psycopg.pq.TransactionStatus.IDLE)

    def hold_alone(self) -> bool:
        """Take the relay's advisory lock on this database for as long as this connection
        lives (the server drops it when the connection ends, ``kill -9`` of the relay
        included); False if another connection holds it."""
        row = self.connection.execute(
            "SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK_KEY,)
        ).fetchone()
        return bool(row and row[0])

    def close(self) -> None:
        self.connection.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def open_database(database: str) -> Database:
    """The connection for a ``database`` setting: a ``postgresql://`` URL, else a SQLite
    path."""
    if is_postgres_url(database):
        return PostgresDatabase(database)
    return SqliteDatabase(database)
